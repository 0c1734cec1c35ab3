"""``krylon bench [suite]``: every family's benchmark suite, or one, and the summary table."""

from __future__ import annotations


def register(cmd) -> None:
    from ..bench import EXTRA_SUITES, SUITES

    sub = cmd.top
    b = sub.add_parser("bench", help="run every family's quick benchmark suite and print one summary table "
                       "(or one suite): tables, JSON and PNGs under --out")
    b.set_defaults(run=_bench)
    b.add_argument("suite", nargs="?", default="all", choices=(*SUITES, *EXTRA_SUITES, "all"),
                   help="one suite, or all of them (the default) followed by the summary table; "
                        f"{', '.join(EXTRA_SUITES)} run only when named")
    b.add_argument("--size", default=None, choices=("quick", "default", "paper"),
                   help="problem sizes for every suite run (default: quick for all suites, default for one)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=1, help="CPU threads for krylon, numpy and scipy (default 1)")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported")
    b.add_argument("--rtol", type=float, default=None, help="tolerance of the krylov suite (default 1e-8)")
    b.add_argument("--out", default="bench-out", help="folder for JSON and PNG output")
    b.add_argument("--no-peers", action="store_true", help="skip scipy/pyamg")
    b.add_argument("--no-plot", action="store_true")
    b.add_argument("--data-dir", default=None, help="folder of neuraloperator's Darcy .pt files for the fno suite "
                   "(default: shared/data/neuralop next to or above the current folder or the repository)")
    b.add_argument("--part", default=None, choices=("darcy", "ns"),
                   help="fno suite: run only its Darcy comparison or only its Navier-Stokes case (default: both)")
    b.add_argument("--cases", default=None, choices=("noisy", "noiseless"),
                   help="dds suite: run only the noisy or only the noiseless measurements (default: both)")
    b.add_argument("--task", action="append", default=None, dest="tasks",
                   help="dds suite: run only this task (repeat for several; default: the size's tasks)")
    b.add_argument("--sampler-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="dds suite: run DDS and DPS once per seed and average each image's PSNR / SSIM (default 0)")
    b.add_argument("--images", default=None, choices=("test", "unlike", "natural"),
                   help="dds suite: the unseen test phantoms (default), images unlike the training set (skimage's "
                        "camera and coins) or the held-out photographs that priors and settings are chosen on")
    b.add_argument("--model", action="append", default=None,
                   help="DCDM checkpoint(s) for the dcdm suite instead of the shipped models (repeat for 2-D and 3-D)")


def _bench(args) -> int:
    if args.repeats < 1:
        raise SystemExit("krylon: --repeats must be >= 1")
    from ..bench import SUITES
    from ..bench.summary import run_suites
    from ..kernels import backend

    device = str(backend.resolve_device(args.device))
    every = args.suite == "all"
    size = args.size or ("quick" if every else "default")
    # the options each suite declares reach it (None: the suite's own default)
    options = {"repeats": args.repeats, "rtol": args.rtol, "peers": not args.no_peers, "plot": not args.no_plot,
               "models": args.model, "data_dir": args.data_dir,
               "part": args.part, "noisy": None if args.cases is None else args.cases == "noisy",
               "tasks": args.tasks, "sampler_seeds": args.sampler_seeds, "images": args.images}
    flags = {"--size": size, "--device": args.device, "--threads": args.threads, "--repeats": args.repeats,
             "--rtol": args.rtol, "--out": args.out, "--no-peers": args.no_peers or None, "--no-plot": args.no_plot or None,
             "--part": args.part, "--cases": args.cases, "--images": args.images}
    command = " ".join(["krylon bench", args.suite] + [k if v is True else f"{k} {v}" for k, v in flags.items() if v is not None]
                       + [f"--task {t}" for t in args.tasks or []] + [f"--model {m}" for m in args.model or []]
                       + (["--sampler-seeds " + " ".join(map(str, args.sampler_seeds))] if args.sampler_seeds else [])
                       + ([f"--data-dir {args.data_dir}"] if args.data_dir else []))
    record = run_suites(list(SUITES) if every else [args.suite], size, device=device, out=args.out, options=options,
                        command=command, isolate=every, write=every, plot=not args.no_plot)
    return 0 if record["ok"] else 1

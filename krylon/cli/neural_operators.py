"""Neural operators: ``krylon generate ns2d|darcy``, ``krylon convert``, ``krylon train fno|sfno``,
``krylon refine`` (Spectral-Refiner) and ``krylon evaluate``: OperatorLearner on HDF5 data sets."""

from __future__ import annotations

import argparse

from ._common import command_line, main_rank, ranks, torchrun_world


def register(cmd) -> None:
    _add_generate_ns2d(cmd.generate)
    _add_generate_darcy(cmd.generate)
    _add_convert(cmd.top)
    _add_train_refine_evaluate(cmd.top, cmd.train)


def _generate_common(q, batch: int) -> None:
    q.add_argument("--n", "--samples", dest="n", type=int, required=True, help="number of samples")
    q.add_argument("--out", required=True, help="output file (.h5); an unfinished FILE.partial is resumed")
    q.add_argument("--batch", type=int, default=batch, help=f"samples computed together as one tensor (default {batch})")
    q.add_argument("--seed", type=int, default=0, help="sample i is drawn from (seed, i) (default 0)")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto, CUDA when present)")
    q.add_argument("--store-dtype", default="float32", choices=("float32", "float64"), help="precision on disk (default float32)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_generate_ns2d(gsub) -> None:
    from ..datasets.presets import NS2D as PRESETS

    quick, paper = PRESETS["quick"], PRESETS["paper"]

    def both(key):
        return f"(default: {quick[key]:g} with --size quick, {paper[key]:g} with --size paper)"

    q = gsub.add_parser("ns2d", help="2-D Navier-Stokes vorticity trajectories (GRF initial state, forcing "
                        "0.1(sin 2pi(x+y) + cos 2pi(x+y)), CNAB2 with 2/3 dealiasing; simulated fine, stored coarse "
                        "by Fourier truncation): fields x (1,X,Y,t_in), y (1,X,Y,t_out)")
    _generate_common(q, batch=16)
    q.add_argument("--size", default="quick", choices=tuple(PRESETS),
                   help="defaults for the options below: quick (laptop CPU) or paper (Spectral-Refiner: 256^2 "
                        "simulation, dt 1e-3, 30 time units of warm-up) (default quick)")
    q.add_argument("--viscosity", type=float, default=1e-3, help="kinematic viscosity (default 1e-3)")
    q.add_argument("--resolution", type=int, default=None, help="stored grid per axis " + both("resolution"))
    q.add_argument("--sim-resolution", type=int, default=None, help="simulated grid per axis " + both("sim_resolution"))
    q.add_argument("--dt", type=float, default=None, help="time step " + both("dt"))
    q.add_argument("--warmup", type=float, default=None, help="time before the first snapshot " + both("warmup"))
    q.add_argument("--interval", type=float, default=None, help="time between snapshots " + both("interval"))
    q.add_argument("--t-in", type=int, default=10, help="input snapshots (default 10)")
    q.add_argument("--t-out", type=int, default=40, help="target snapshots, following the input ones (default 40)")
    q.set_defaults(run=_generate_ns2d)


def _add_generate_darcy(gsub) -> None:
    q = gsub.add_parser("darcy", help="2-D Darcy flow -div(a grad u) = 1, u = 0 on the unit square's boundary, "
                        "a = 12/3 from a thresholded GRF (alpha 2, tau 3), solved by CG: fields x = a (1,s,s), "
                        "y = u (1,s,s) on s x s nodes including the boundary")
    _generate_common(q, batch=32)
    q.add_argument("--resolution", type=int, default=64, help="grid nodes per axis, boundary included (default 64)")
    q.add_argument("--rtol", type=float, default=1e-10, help="CG relative tolerance (default 1e-10)")
    q.set_defaults(run=_generate_darcy)


@ranks
def _generate_ns2d(args) -> int:
    from ..datasets.navier_stokes import PRESETS, generate
    from ..datasets.parts import generate_sharded

    preset = PRESETS[args.size]
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else preset[k]) for k in preset}
    path = generate_sharded(args.out, generate, args.n, viscosity=args.viscosity, t_in=args.t_in, t_out=args.t_out,
                    batch_size=args.batch, seed=args.seed, device=args.device, store_dtype=args.store_dtype,
                    progress=not args.no_progress, **opts)
    print(f"wrote {path}")
    return 0


@ranks
def _generate_darcy(args) -> int:
    from ..datasets.darcy import generate
    from ..datasets.parts import generate_sharded

    path = generate_sharded(args.out, generate, args.n, resolution=args.resolution, batch_size=args.batch, seed=args.seed,
                    device=args.device, rtol=args.rtol, store_dtype=args.store_dtype, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def _add_convert(sub) -> None:
    c = sub.add_parser("convert", help="convert neuraloperator .pt, FNO .mat (v7.3 or v5) or PDEBench files into krylon HDF5")
    c.set_defaults(run=_convert)
    c.add_argument("source", help="the file to convert")
    c.add_argument("dest", help="the krylon HDF5 file to write (atomically; an interrupted run resumes)")
    c.add_argument("--layout", default="auto", help="auto (default), neuralop-pt, krylon, fno-mat, pdebench, "
                   "pdebench-darcy, pdebench-cfd or pdebench-seeds")
    c.add_argument("--input-steps", type=int, default=None, help="trajectories: snapshots that form the input x (default 10)")
    c.add_argument("--output-steps", type=int, default=None, help="trajectories: snapshots of the target y (default: the rest)")
    c.add_argument("--x-key", default=None, help="the input's name in the source, if it is misnamed")
    c.add_argument("--y-key", default=None, help="the target's (or trajectory's) name in the source, if it is misnamed")
    c.add_argument("--variables", nargs="+", default=None, help="pdebench-cfd: the variables to stack as channels")
    c.add_argument("--dtype", default=None, choices=("float32", "float64"), help="store floating fields in this dtype")
    c.add_argument("--force", action="store_true", help="replace an existing output file")


def _convert(args) -> int:
    from ..datasets import convert, open_dataset

    options = {"input_steps": args.input_steps, "output_steps": args.output_steps, "x_key": args.x_key,
               "y_key": args.y_key, "variables": args.variables}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        out = convert(args.source, args.dest, layout=args.layout, dtype=args.dtype, overwrite=args.force, **options)
    except KeyError as exc:  # a missing key in the source: an input error, reported like the others
        raise ValueError(exc.args[0] if exc.args else str(exc)) from exc
    ds = open_dataset(out)
    shapes = ", ".join(f"{k} {tuple(s)}" for k, s in ds.shapes.items())
    print(f"wrote {out}: {len(ds)} samples, {shapes}, from {ds.attrs['source']} ({ds.attrs['source_layout']}, "
          f"sha256 {ds.attrs['source_sha256'][:12]}...)")
    return 0


def _add_train_refine_evaluate(sub, tsub) -> None:
    for kind, help_ in (("fno", "a Fourier neural operator (neuraloperator's FNO) on an HDF5 data set of x -> y"),
                        ("sfno", "a space-time SFNO (x: (C, X, Y, T_in) -> y: (C, X, Y, T_out)) on an HDF5 data set")):
        t = tsub.add_parser(kind, help=help_)
        t.set_defaults(run=_train_operator)
        t.add_argument("--data", required=True, help="training data (krylon HDF5, FNO .mat or PDEBench file)")
        t.add_argument("--val", default=None, help="validation data (default: --val-fraction of --data)")
        t.add_argument("--val-fraction", type=float, default=0.1)
        t.add_argument("--test", action="append", default=[], help="test data evaluated after training (repeatable; "
                       "other resolutions are zero-shot)")
        t.add_argument("--out", default=f"runs/{kind}", help="folder for checkpoints, loss curves and model.pt")
        if kind == "fno":
            t.add_argument("--modes", type=int, nargs="+", default=[16, 16],
                           help="kept Fourier modes per axis in neuraloperator 2.0's convention: the COUNT of "
                                "frequencies, 16 keeps -8..7 (the FNO paper's 'modes 8'; krylon train sfno counts "
                                "the other way)")
            t.add_argument("--hidden", type=int, default=32, help="hidden channels")
        else:
            t.add_argument("--modes", type=int, nargs=3, default=[12, 12, 5],
                           help="modes in x, y, t in the FNO / Spectral-Refiner papers' convention: 12 keeps the "
                                "frequencies -12..11 in space (24 per axis: neuraloperator's --modes 24), 5 keeps rfft "
                                "modes 0..4 in time")
            t.add_argument("--width", type=int, default=20)
        t.add_argument("--layers", type=int, default=4)
        t.add_argument("--loss", default="l2", choices=("l2", "h1"), help="relative L2 or spectral H1 error")
        t.add_argument("--epochs", type=int, default=10)
        t.add_argument("--batch", type=int, default=16 if kind == "fno" else 4)
        t.add_argument("--lr", type=float, default=1e-3 if kind == "fno" else 1e-2, help="(peak) learning rate")
        t.add_argument("--weight-decay", type=float, default=0.0)
        t.add_argument("--optimizer", default="adam", choices=("adam", "adamw"))
        t.add_argument("--schedule", default="onecycle", choices=("onecycle", "cosine", "constant"))
        t.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
        t.add_argument("--no-normalize", action="store_true", help="no per-channel normalisation of x and y")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--threads", type=int, default=None)
        t.add_argument("--device", default="cpu")
        t.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("refine", help="Spectral-Refiner: correct predictions in a negative Sobolev norm of their "
                       "physics residual, each sample on its own (default), or fine-tune the widened last spectral "
                       "layer on a data set (--no-per-sample, or --mode data)")
    r.set_defaults(run=_refine)
    r.add_argument("--model", required=True, help="model.pt written by krylon train fno|sfno")
    r.add_argument("--data", required=True, help="data whose inputs drive the refinement (per sample: each refined and "
                   "evaluated against its targets; on a data set: and, in data mode, its targets)")
    r.add_argument("--mode", default="physics", choices=("physics", "data"),
                   help="physics: residual of one implicit Crank-Nicolson step of the data's Navier-Stokes equations "
                        "(viscosity and time step from the file's attributes); data: the misfit to the targets")
    r.add_argument("--per-sample", action=argparse.BooleanOptionalAction, default=None,
                   help="refine each sample's prediction on its own, the model unchanged (default in physics mode); "
                        "--no-per-sample: fine-tune the model's widened last layer on --data and save it")
    _add_refine_options(r)
    r.add_argument("--batch", type=int, default=None, help="samples per batch (default 8 per sample, 4 on a data set)")
    r.add_argument("--samples", type=int, default=None, help="use the first N samples of --data")
    r.add_argument("--test", action="append", default=[], help="data to evaluate before and after (repeatable; per "
                   "sample: each refined too)")
    r.add_argument("--out", default=None, help="on a data set: refined model file (default <model>-refined.pt); per "
                   "sample: the JSON record (default <model>-refined.json)")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--device", default="cpu")

    e = sub.add_parser("evaluate", help="relative L2 / H1 errors of a trained operator on data sets (any resolution)")
    e.set_defaults(run=_evaluate)
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, action="append", help="data to evaluate (repeatable)")
    e.add_argument("--plot", default=None, help="PNG of truth / prediction / error of the first sample of the first data")
    e.add_argument("--json", default=None, help="write the full results (per sample, per step) to this JSON file")
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--refine", action="store_true", help="evaluate the predictions refined per sample in the physics "
                   "residual of each data set's equations (Spectral-Refiner; no target used)")
    _add_refine_options(e)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--device", default="cpu")


def _add_refine_options(p) -> None:
    """The options of a refinement, shared by ``krylon refine`` and ``krylon evaluate --refine``."""
    p.add_argument("--steps", type=int, default=None, help="iterations (default 300 per sample, 50 on a data set)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-3 per sample, 1e-3 on a "
                   "data set)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"), help="per sample: adam or lbfgs")
    p.add_argument("--grid", type=int, nargs=2, default=None, metavar=("X", "Y"),
                   help="physics mode: evaluate the residual on this finer grid (the prediction spectrally "
                        "interpolated; the paper uses 256 256 for 64^2 data); default the data grid")
    p.add_argument("--s", type=float, default=-1.0, help="Sobolev index of the loss norm (default -1)")
    p.add_argument("--alpha", type=float, default=10 ** -1.5, help="offset of the Sobolev weight (alpha + |k|^2)^s")


def _refine_options(args) -> dict:
    return {"s": args.s, "alpha": args.alpha, "steps": args.steps, "lr": args.lr, "optimizer": args.optimizer,
            "grid": args.grid}


def _data_residual(path):
    """The physics residual of a ``krylon generate ns2d`` file's equations (its attributes)."""
    from ..datasets import read_attrs
    from ..solvers.operator_learning import NavierStokesResidual

    return NavierStokesResidual.from_attrs(read_attrs(path), str(path))


def _open_pairs(path):
    from ..datasets import open_dataset

    ds = open_dataset(path)
    sample = ds[0]
    if not isinstance(sample, dict) or "x" not in sample or "y" not in sample:
        raise ValueError(f"{path}: samples need fields 'x' and 'y' (inputs and targets); found {sorted(sample)}")
    return ds


def _print_errors(name: str, res: dict) -> None:
    print(f"{name:40s} samples {res['samples']:5d}  resolution {'x'.join(map(str, res['resolution']))}  "
          f"rel. L2 {res['l2']:.4e}  rel. H1 {res['h1']:.4e}")


@ranks
def _train_operator(args) -> int:
    import json
    import time

    import torch

    from ..kernels import backend
    from ..operators import learned
    from ..solvers import OperatorLearner

    train = _open_pairs(args.data)
    val = _open_pairs(args.val) if args.val else None
    x0, y0 = train[0]["x"], train[0]["y"]
    device = backend.resolve_device(args.device) or torch.device("cpu")
    torch.manual_seed(args.seed)
    if args.model == "fno":
        if len(args.modes) != x0.dim() - 1:
            raise ValueError(f"--modes has {len(args.modes)} numbers; {args.data} has {x0.dim() - 1}-D fields {tuple(x0.shape)}")
        model = learned.FNO(n_modes=tuple(args.modes), in_channels=x0.shape[0], out_channels=y0.shape[0],
                            hidden_channels=args.hidden, n_layers=args.layers)
        time_axis = None
    else:
        if x0.dim() != 4:
            raise ValueError(f"sfno takes fields (C, X, Y, T); {args.data} has x of shape {tuple(x0.shape)}")
        model = learned.SFNO(modes=tuple(args.modes), width=args.width, n_layers=args.layers, in_steps=x0.shape[-1],
                             out_steps=y0.shape[-1])
        time_axis = -1
    learner = OperatorLearner(model.to(device), loss=args.loss, normalize=not args.no_normalize, time_axis=time_axis)
    t0 = time.perf_counter()
    history = learner.fit(train, val, out_dir=args.out, progress=not args.no_progress, epochs=args.epochs,
                          batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
                          schedule=args.schedule, amp=args.amp, seed=args.seed,
                          val_fraction=0.0 if val is not None else args.val_fraction)
    seconds = time.perf_counter() - t0
    if not main_rank():  # under torchrun: rank 0 evaluates and writes the record
        return 0
    results = {path: learner.evaluate(_open_pairs(path)) for path in args.test}
    for path, res in results.items():
        _print_errors(path, res)
    record = {"command": command_line(), "model": args.model, "config": model.config,
              "parameters": learner.n_parameters, "epochs": args.epochs, "final_train_loss": history["train"][-1],
              "final_val": {k: v[-1] for k, v in history.items() if k.startswith("val") and v},
              "train_seconds": round(seconds, 2), "device": str(device), "ranks": torchrun_world(), "threads": torch.get_num_threads(),
              "test": {p: {k: r[k] for k in ("l2", "h1", "samples", "resolution")} for p, r in results.items()}}
    out = __import__("pathlib").Path(args.out)
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"saved {out / 'model.pt'} ({learner.n_parameters} parameters); record in {out / 'training.json'}")
    return 0


def _refine(args) -> int:
    import json
    from pathlib import Path

    import torch

    from ..kernels import backend
    from ..solvers import OperatorLearner

    device = backend.resolve_device(args.device) or torch.device("cpu")
    learner = OperatorLearner.load(args.model, map_location=device)
    data = _open_pairs(args.data)
    if args.samples is not None:
        data = torch.utils.data.Subset(data, range(min(args.samples, len(data))))
    per_sample = args.mode == "physics" if args.per_sample is None else args.per_sample
    residual = _data_residual(args.data) if args.mode == "physics" else None
    opts = _refine_options(args)
    if per_sample:  # each sample refined on its own, the model unchanged: report errors before and after
        if args.mode != "physics":
            raise ValueError("--per-sample refines without targets: it needs --mode physics")
        sets = {args.data: (data, residual), **{p: (_open_pairs(p), _data_residual(p)) for p in args.test}}
        record = {"command": command_line(), "per_sample": True, "options": opts, "sets": {}}
        for p, (ds, res) in sets.items():
            before = learner.evaluate(ds)
            after = learner.evaluate(ds, refine={"residual": res, "batch_size": args.batch, **opts})
            print(f"{p}: rel. L2 {before['l2']:.4e} -> {after['l2']:.4e} ({before['l2'] / after['l2']:.2f}x lower), "
                  f"refined per sample in {after['refine_seconds']:.1f} s (physics loss x{after['refine_loss']:.3g})")
            record["sets"][p] = {"before": before, "after": after}
        out = Path(args.out) if args.out else Path(args.model).with_name(Path(args.model).stem + "-refined.json")
        out.write_text(json.dumps(record, indent=1))
        print(f"record in {out}")
        return 0
    tests = {p: _open_pairs(p) for p in args.test}
    before = {p: learner.evaluate(ds) for p, ds in tests.items()}
    res = learner.refine(data, mode=args.mode, residual=residual, per_sample=False, batch_size=args.batch,
                         progress=True, **opts)
    after = {p: learner.evaluate(ds) for p, ds in tests.items()}
    for p in tests:
        print(f"{p}: rel. L2 {before[p]['l2']:.4e} -> {after[p]['l2']:.4e} ({before[p]['l2'] / after[p]['l2']:.2f}x lower)")
    out = Path(args.out) if args.out else Path(args.model).with_name(Path(args.model).stem + "-refined.pt")
    learner.save(out)
    print(f"refined {res['parameters']} parameters (modes {res['modes']}) in {res['seconds']:.1f} s; loss "
          f"{res['loss'][0]:.4g} -> {res['loss'][-1]:.4g}; saved {out}")
    out.with_suffix(".json").write_text(json.dumps({"refine": {k: v for k, v in res.items() if k != "loss"},
                                                    "loss": res["loss"],
                                                    "before": {p: r["l2"] for p, r in before.items()},
                                                    "after": {p: r["l2"] for p, r in after.items()}}, indent=1))
    return 0


def _evaluate(args) -> int:
    import json

    import torch

    from ..kernels import backend
    from ..solvers import OperatorLearner

    device = backend.resolve_device(args.device) or torch.device("cpu")
    learner = OperatorLearner.load(args.model, map_location=device)
    results = {}
    for path in args.data:
        refine = {"residual": _data_residual(path), **_refine_options(args)} if args.refine else None
        results[path] = learner.evaluate(_open_pairs(path), batch_size=args.batch, refine=refine)
        _print_errors(path + (" (refined)" if args.refine else ""), results[path])
    if args.plot:
        learner.plot(_open_pairs(args.data[0]), args.plot)
        print(f"plot in {args.plot}")
    if args.json:
        __import__("pathlib").Path(args.json).write_text(json.dumps(results, indent=1))
    return 0

"""MEDIDA: ``krylon generate ks|qg`` (truth windows) and ``krylon discover ks|qg`` (the model error's terms)."""

from __future__ import annotations

import math

from ._common import command_line, sequential_only


def register(cmd) -> None:
    _add_generate_ks(cmd.generate)
    _add_generate_qg(cmd.generate)
    _add_discover_ks(cmd.discover)
    _add_discover_qg(cmd.discover)


#: the KS run settings shared by ``generate ks`` and ``discover ks``; ``discover ks --data`` reads them from the file
KS_DEFAULTS = {"truth": [1.0, 1.0, 1.0], "n": 1024, "length": 100.0, "dt": 1e-3, "transit_dt": 1e-2, "interval": 5e-3,
               "spacing": 10.0, "spinup": 100.0, "samples": 10}


def _add_ks_grid(q, *, defaults: bool = True) -> None:
    """The KS settings; ``defaults=False`` leaves them None so a handler can tell given values from defaults."""
    d = KS_DEFAULTS if defaults else dict.fromkeys(KS_DEFAULTS)
    q.add_argument("--truth", type=float, nargs=3, default=d["truth"], metavar=("L0", "L1", "L2"),
                   help="the truth's -l0 u u_x - l1 u_xx - l2 u_xxxx (default 1 1 1)")
    q.add_argument("--n", type=int, default=d["n"], help="grid points (default 1024)")
    q.add_argument("--length", type=float, default=d["length"], help="period L (default 100)")
    q.add_argument("--dt", type=float, default=d["dt"], help="the truth's ETDRK4 step inside observation windows (default 1e-3)")
    q.add_argument("--transit-dt", type=float, default=d["transit_dt"],
                   help="ETDRK4 step of the spin-up and between windows (default 1e-2; 0 = --dt throughout)")
    q.add_argument("--interval", type=float, default=d["interval"],
                   help="time between snapshots = the model's step (default 5e-3)")
    q.add_argument("--spacing", type=float, default=d["spacing"], help="time between windows (default 10)")
    q.add_argument("--spinup", type=float, default=d["spinup"], help="time before the first window (default 100)")
    q.add_argument("--samples", type=int, default=d["samples"], help="observation windows (default 10; with --data: all)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def _ks_window_options(args) -> dict:
    return {"dt": args.dt, "transit_dt": args.transit_dt or None, "spacing": args.spacing, "spinup": args.spinup}


def _add_generate_ks(gsub) -> None:
    q = gsub.add_parser("ks", help="Kuramoto-Sivashinsky observation windows from one chaotic trajectory (ETDRK4): "
                        "field u (times, n)")
    _add_ks_grid(q)
    q.add_argument("--out", required=True, help="output file (.h5); an unfinished FILE.partial is resumed")
    q.add_argument("--times", type=int, default=2, help="snapshots per window (default 2; 3 for noisy discovery)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(run=_generate_ks)


def _generate_ks(args) -> int:
    from ..datasets.kuramoto_sivashinsky import generate

    sequential_only("krylon generate ks (windows of one long trajectory)")
    path = generate(args.out, n_samples=args.samples, n_times=args.times, interval=args.interval, spacing=args.spacing,
                    spinup=args.spinup, coefficients=tuple(args.truth), length=args.length, n=args.n, dt=args.dt,
                    transit_dt=args.transit_dt or None, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def _qg_settings(q) -> None:
    q.add_argument("--grid", type=int, nargs=2, default=None, metavar=("NY", "NX"), help="grid (default the paper's 192 96)")
    q.add_argument("--nu", type=float, default=None, help="hyperviscosity on k^8 + l^8 (default the paper's 1e-6; "
                   "raise it on coarse grids, e.g. 2e-4 on 96 x 48)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def _qg_model_settings(args) -> dict:
    out = {}
    if args.grid is not None:
        out["shape"] = tuple(args.grid)
    if args.nu is not None:
        out["nu"] = args.nu
    return out


def _add_generate_qg(gsub) -> None:
    q = gsub.add_parser("qg", help="two-layer QG truth windows (leapfrog, the paper's parameters) for MEDIDA")
    _qg_settings(q)
    q.add_argument("--samples", type=int, default=10, help="windows per run (default 10)")
    q.add_argument("--members", type=int, default=1, help="independent runs, stepped as one batch (default 1)")
    q.add_argument("--times", type=int, default=2, help="snapshots per window, one step apart (default 2)")
    q.add_argument("--spinup", type=float, default=100.0, help="time units before the first window (default 100)")
    q.add_argument("--spacing", type=float, default=10.0, help="time units between windows (default 10)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="the krylon HDF5 file (rerun the same command to resume)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(run=_generate_qg)


def _generate_qg(args) -> int:
    from ..datasets.quasi_geostrophic import generate

    sequential_only("krylon generate qg (windows of long forced runs)")
    path = generate(args.out, n_samples=args.samples, members=args.members, n_times=args.times, spacing=args.spacing,
                    spinup=args.spinup, seed=args.seed, settings=_qg_model_settings(args), progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def _report_discovery(args, found, seconds: float) -> int:
    """Print a discovery (truth, model, error, timing) and write ``--json``: every ``krylon discover`` model."""
    import json

    import torch

    print("truth:     " + found.equation("truth"))
    print("model:     " + found.equation("model"))
    print(str(found))
    print(f"{seconds:.1f} s ({'discovery' if args.data else 'truth simulation and discovery'}), {torch.get_num_threads()} threads")
    if args.json:
        record = found.to_json()
        record.update(command=command_line(), seconds=seconds)
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def _extra_terms(items) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--extra-term takes NAME=COEFFICIENT (e.g. u_xxx=0.1), got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--extra-term {item!r}: {value!r} is not a number") from None
    return out


def _add_discover_ks(dsub) -> None:
    q = dsub.add_parser("ks", help="Kuramoto-Sivashinsky: simulate the truth, run the imperfect model one step from the "
                        "observations, regress the model error on 24 terms u^p d^d u (RVM)")
    _add_ks_grid(q, defaults=False)
    q.add_argument("--model", type=float, nargs=3, required=True, metavar=("L0", "L1", "L2"),
                   help="the imperfect model's l0 l1 l2 (e.g. 1 0.5 1: halved u_xx)")
    q.add_argument("--extra-term", action="append", default=None, metavar="NAME=C",
                   help="a term c*NAME added to the model's right-hand side (repeatable), e.g. u_xxx=0.1 or u^2*u_x=0.15")
    q.add_argument("--noise", type=float, default=0.0, help="observation noise, fraction of the truth's std (default 0); "
                   "with noise use many windows (e.g. --samples 60 --spacing 2): with 10 the regression keeps spurious terms")
    q.add_argument("--members", type=int, default=2048, help="EnKF members when --noise > 0 (default 2048)")
    q.add_argument("--sensors", type=float, default=None, help="observed fraction of the grid, random points (default: all)")
    q.add_argument("--interp", default="spectral", choices=("spectral", "cubic", "rff"),
                   help="fill of sparse sensors (default spectral: a least-squares Fourier fit)")
    q.add_argument("--regression", default="rvm", choices=("rvm", "stlsq"))
    q.add_argument("--threshold", type=float, default=None, help="RVM pruning precision (1e2) or STLSQ threshold (0.1)")
    q.add_argument("--data", default=None, help="truth windows from `krylon generate ks` instead of simulating")
    q.add_argument("--seed", type=int, default=0, help="observation noise and ensemble seed (default 0)")
    q.add_argument("--json", default=None, help="write the result here (discovered, spurious, corrected, ...)")
    q.set_defaults(run=_discover_ks)


def _ks_data_settings(args, params: dict) -> None:
    """Take the run settings of a ``krylon generate ks`` file; a conflicting command-line value is an error
    (the model's step is the file's interval, the library's scale its length: a mismatch gives wrong terms)."""
    from_file = {"truth": [float(c) for c in params["coefficients"]], "n": int(params["n"]), "length": float(params["length"]),
                 "interval": float(params["interval"]), "dt": float(params["dt"]), "spacing": float(params["spacing"]),
                 "spinup": float(params["spinup"]), "transit_dt": params.get("transit_dt") or 0.0}
    for key, value in from_file.items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, value)
        elif (list(map(float, given)) != value if key == "truth" else
              not math.isclose(float(given), float(value), rel_tol=1e-9, abs_tol=1e-15)):
            raise ValueError(f"--{key.replace('_', '-')} {given} conflicts with the data file's {key} = {value} "
                             f"({args.data}); drop the option (the file's settings are used)")


def _discover_ks(args) -> int:
    import json
    import time

    import torch

    from ..datasets import open_dataset
    from ..datasets.kuramoto_sivashinsky import discover_case
    from ..operators.pde import KuramotoSivashinsky

    windows, extra_truth = None, {}
    if args.data:
        ds = open_dataset(args.data)
        params = ds.attrs.get("parameters")
        params = json.loads(params) if isinstance(params, str) else params
        if not params or "interval" not in params:
            raise ValueError(f"{args.data} has no Kuramoto-Sivashinsky run parameters: write it with `krylon generate ks`")
        _ks_data_settings(args, params)
        extra_truth = dict(params.get("extra") or {})
        count = len(ds) if args.samples is None else args.samples
        if not 1 <= count <= len(ds):
            raise ValueError(f"--samples {args.samples}: the data file has {len(ds)} windows")
        windows = torch.stack([torch.as_tensor(ds[i]["u"]) for i in range(count)]).to(torch.float64)
    for key, value in KS_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    model = KuramotoSivashinsky(tuple(args.model), extra=_extra_terms(args.extra_term), length=args.length, n=args.n)
    truth = KuramotoSivashinsky(tuple(args.truth), extra=extra_truth, length=args.length, n=args.n)
    t0 = time.perf_counter()
    found, _ = discover_case(model, truth, windows=windows, n_samples=args.samples, noise=args.noise, members=args.members,
                             interval=args.interval, regression=args.regression, threshold=args.threshold, seed=args.seed,
                             sensors=args.sensors, interp=args.interp, window_options=_ks_window_options(args))
    return _report_discovery(args, found, time.perf_counter() - t0)
def _add_discover_qg(dsub) -> None:
    q = dsub.add_parser("qg", help="two-layer QG: simulate the truth (or read `krylon generate qg` windows), run the "
                        "case's imperfect model one step from the (interpolated) observations, regress on 22 terms (RVM)")
    q.add_argument("--case", required=True, help="the paper's model-error case: tau_d, tau_f, tau_d+tau_f, no_relaxation, "
                   "no_jet, no_friction, jacobian, beta (krylon.operators.pde.quasi_geostrophic.CASES)")
    _qg_settings(q)
    q.add_argument("--sensors", type=float, default=None, help="observed fraction of each layer's grid (default: all)")
    q.add_argument("--interp", default="rff", choices=("rff", "cubic", "spectral"), help="fill of sparse sensors")
    q.add_argument("--rff-sigma", type=float, default=2.0)
    q.add_argument("--rff-width", type=int, default=128, help="hidden width and number of Fourier features")
    q.add_argument("--rff-depth", type=int, default=3)
    q.add_argument("--rff-epochs", type=int, default=1500)
    q.add_argument("--samples", type=int, default=5, help="windows per run when simulating (default 5)")
    q.add_argument("--members", type=int, default=2, help="independent runs when simulating (default 2)")
    q.add_argument("--spinup", type=float, default=100.0)
    q.add_argument("--spacing", type=float, default=5.0)
    q.add_argument("--data", default=None, help="truth windows from `krylon generate qg` instead of simulating")
    q.add_argument("--regression", default="rvm", choices=("rvm", "stlsq"))
    q.add_argument("--threshold", type=float, default=10.0, help="RVM pruning precision (default 10 for QG)")
    q.add_argument("--lowpass", type=float, default=0.6, help="regress on wavenumbers |K| <= this only (default 0.6; "
                   "0 = every mode)")
    q.add_argument("--seed", type=int, default=0, help="truth run and sensor seed (default 0)")
    q.add_argument("--json", default=None, help="write the result here (discovered, spurious, corrected, ...)")
    q.set_defaults(run=_discover_qg)


def _discover_qg(args) -> int:
    import json
    import time

    import torch

    from ..datasets import open_dataset
    from ..datasets.quasi_geostrophic import truth_windows
    from ..operators.pde.quasi_geostrophic import CASES, PAPER
    from ..solvers.medida_qg import discover_qg

    if args.case not in CASES:  # before the truth run, not after it
        raise ValueError(f"unknown QG case {args.case!r}; the cases are {', '.join(CASES)}")
    settings = {"shape": PAPER["shape"], "nu": PAPER["nu"], **_qg_model_settings(args)}
    t0 = time.perf_counter()
    if args.data:
        ds = open_dataset(args.data)
        params = ds.attrs["parameters"]
        model = (json.loads(params) if isinstance(params, str) else params)["model"]
        settings = {"shape": tuple(model["shape"]), "nu": model["nu"]}
        windows = torch.stack([torch.as_tensor(ds[i]["psi"]) for i in range(len(ds))]).to(torch.float64)
    else:
        _, windows = truth_windows(**settings, spinup=args.spinup, samples=args.samples, members=args.members,
                                   spacing=args.spacing, seed=args.seed)
    rff = {"sigma": args.rff_sigma, "features": args.rff_width, "width": args.rff_width, "depth": args.rff_depth,
           "epochs": args.rff_epochs, "lr": 3e-3}
    found = discover_qg(args.case, windows, **settings, sensors=args.sensors, interp=args.interp, rff=rff,
                        regression=args.regression, threshold=args.threshold,
                        lowpass=args.lowpass or None, seed=args.seed + 1)
    return _report_discovery(args, found, time.perf_counter() - t0)

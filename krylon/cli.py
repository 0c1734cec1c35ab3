"""The ``krylon`` command (thin: argument parsing, then the library does the work).

    krylon solve poisson --grid 512 512 [--bc dirichlet] [--obstacles N] [--solver cg|pcg-jacobi|pcg-ic0|pcg-dst]
    krylon generate phantoms --n N --size 64 --out FILE.h5 [--complex] [--seed 0]
    krylon generate ns2d|darcy --n N --out FILE.h5 [...]
    krylon train fno|sfno --data TRAIN.h5 [--test TEST.h5 ...] --out DIR
    krylon refine --model DIR/model.pt --data TRAIN.h5 [--mode physics|data] [--test TEST.h5]
    krylon evaluate --model DIR/model.pt --data TEST.h5 [--plot PNG]
    krylon train fno|sfno --data TRAIN.h5 [--test TEST.h5 ...] --out DIR
    krylon refine --model DIR/model.pt --data TRAIN.h5 [--mode physics|data] [--test TEST.h5]
    krylon evaluate --model DIR/model.pt --data TEST.h5 [--plot PNG]
    krylon generate phantoms --n N --size 64 --out FILE.h5 [--complex] [--seed 0]
    krylon generate ns2d|darcy --n N --out FILE.h5 [...]
    krylon generate qg --samples N --out FILE.h5 [--members 2 --spinup 100 --spacing 10 --grid 192 96]
    krylon discover qg --case tau_d [--sensors 0.25 --interp rff|cubic|spectral] [--json out.json]
    krylon bench [krylov|dcdm|all] [--size quick|default|paper] [--threads 1] [--device cpu] [--out bench-out]
    krylon generate ks --out FILE.h5 [--samples 10] [--times 2] [--truth 1 1 1] [--n 1024] [--length 100]
    krylon discover ks --truth 1 1 1 --model 1 0.5 1 [--extra-term u_xxx=0.1] [--noise 0.01 --members 2048] [--json out.json]
    krylon convert IN OUT.h5 [--layout auto|neuralop-pt|fno-mat|pdebench|...] [--input-steps 10] [--output-steps N]

Heavy modules are imported after the arguments are parsed, so ``--threads``
reaches the BLAS/OpenMP thread pools of numpy and torch before they start.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

SOLVER_CHOICES = ("cg", "pcg-jacobi", "pcg-ic0", "pcg-dst", "minres", "gmres", "dcdm", "dcdm-paper", "dcdm+r",
                  "fpcg-dcdm")
# dcdm: DCDM's default (multilevel) iteration; dcdm-paper: the paper's plain iteration; dcdm+r: the old name of the
# multilevel iteration, from before it was the default (still accepted, with a note on stderr)
DCDM_VARIANTS = {"dcdm": "multilevel", "dcdm-paper": "paper", "dcdm+r": "multilevel", "fpcg-dcdm": "multilevel"}


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise SystemExit(f"krylon: --threads must be >= 1, got {threads}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="krylon", description="Solvers for operators and inverse problems.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser("solve", help="solve a model problem and print iterations, time and residual")
    ssub = s.add_subparsers(dest="problem")
    pp = ssub.add_parser("poisson", help="-Laplace u = f on a 2-D/3-D grid (5/7-point stencil)")
    pp.set_defaults(run=_solve_poisson)
    pp.add_argument("--grid", type=int, nargs="+", default=[256, 256], metavar="N", help="grid size per axis (2 or 3 numbers)")
    pp.add_argument("--bc", default="dirichlet", choices=("dirichlet", "neumann", "periodic"))
    pp.add_argument("--obstacles", type=int, default=0, metavar="N", help="number of random solid obstacles")
    pp.add_argument("--solver", default="cg", choices=SOLVER_CHOICES,
                    help="dcdm: learned conjugate directions, multilevel iteration (the default); dcdm-paper: the "
                         "paper's plain iteration; dcdm+r: old name of dcdm; fpcg-dcdm: the network in flexible CG")
    pp.add_argument("--rtol", type=float, default=1e-8)
    pp.add_argument("--atol", type=float, default=0.0)
    pp.add_argument("--maxiter", type=int, default=None)
    pp.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    pp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    pp.add_argument("--progress", action="store_true", help="show a progress bar")
    pp.add_argument("--model", default=None, help="DCDM checkpoint for --solver dcdm (default: the shipped model)")

    from .bench import SUITES

    b = sub.add_parser("bench", help="run every family's quick benchmark suite and print one summary table "
                       "(or one suite): tables, JSON and PNGs under --out")
    b.set_defaults(run=_bench)
    b.add_argument("suite", nargs="?", default="all", choices=(*SUITES, "all"),
                   help="one suite, or all of them (the default) followed by the summary table")
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
    b.add_argument("--model", action="append", default=None,
                   help="DCDM checkpoint(s) for the dcdm suite instead of the shipped models (repeat for 2-D and 3-D)")
    t = sub.add_parser("train", help="generate training data (resumable) and train a learned solver (resumable)")
    tsub = t.add_subparsers(dest="model")
    td = tsub.add_parser("dcdm", help="the DCDM direction network on random obstacle scenes")
    td.set_defaults(run=_train_dcdm)
    td.add_argument("--dim", type=int, default=2, choices=(2, 3))
    td.add_argument("--grid", type=int, default=None, help="training grid size per axis (default 64 in 2-D, 24 in 3-D)")
    td.add_argument("--geometries", type=int, default=64, help="random scenes")
    td.add_argument("--rhs", type=int, default=16, help="right-hand sides per scene")
    td.add_argument("--lanczos", type=int, default=200, help="Lanczos vectors per scene")
    td.add_argument("--white", type=float, default=0.25,
                    help="fraction of right-hand sides that are white noise instead of Ritz combinations "
                         "(default 0.25; 0 with --smooth 0 = the paper's data)")
    td.add_argument("--smooth", type=float, default=0.5,
                    help="fraction of right-hand sides that are random smooth fields (power-law spectra, some "
                         "with a constant offset) instead of Ritz combinations (default 0.5)")
    td.add_argument("--init", default=None,
                    help="start from the weights of this DCDM model (a dcdm.pt of the same network configuration): "
                         "fine-tuning on new data")
    td.add_argument("--levels", default="3", help="U-Net pooling levels (default 3): 1 = the paper's network; "
                    "'auto' = weight-shared levels down to --coarsest cells per axis")
    td.add_argument("--coarsest", type=int, default=8, help="coarsest grid size per axis for --levels auto")
    td.add_argument("--width", type=int, default=16, help="channels (16 in the paper)")
    td.add_argument("--no-odd", dest="odd", action="store_false",
                    help="the paper's network (not antisymmetrised in the residual; see DCDMNet's odd=)")
    td.add_argument("--epochs", type=int, default=10)
    td.add_argument("--batch", type=int, default=16)
    td.add_argument("--lr", type=float, default=1e-3)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--out", default="runs/dcdm", help="folder for data, checkpoints, loss curves and the exported model")
    td.add_argument("--threads", type=int, default=None)
    td.add_argument("--device", default="cpu")
    td.add_argument("--no-progress", action="store_true")
    _convert_parser(sub)
    _add_generate(sub)
    _add_discover(sub)
    _operator_parsers(sub, tsub)
    _dds_parsers(sub, tsub)
    return p


# ----------------------------------------------------------------------------- krylon convert (begin)
def _convert_parser(sub) -> None:
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
    from .datasets import convert, open_dataset

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
# ----------------------------------------------------------------------------- krylon convert (end)



# ---------------------------------------------------------------------------------------------- krylon generate
# One sub-command per data-set kind.  To add a kind: write an _add_generate_<kind>(gsub) that builds its parser
# and sets ``run=`` to its handler, and call it from _add_generate; main() dispatches on ``args.run``.
def _add_generate(sub) -> None:
    g = sub.add_parser("generate", help="write a training data set (krylon HDF5; batched, resumable: rerun the same "
                       "command after an interruption to continue)")
    gsub = g.add_subparsers(dest="kind")
    _add_generate_phantoms(gsub)
    _add_generate_ns2d(gsub)
    _add_generate_darcy(gsub)
    _add_generate_ks(gsub)
    _add_generate_qg(gsub)


# ---- krylon generate phantoms (issue #11: DDS training images)
def _add_generate_phantoms(gsub) -> None:
    q = gsub.add_parser("phantoms", help="random image phantoms for a diffusion prior (ellipses, perturbed Shepp-Logan, "
                        "polygons, blobs; smooth texture; max magnitude 1): field x (1,H,W), or (2,H,W) real/imag with --complex")
    q.add_argument("--n", type=int, required=True, help="number of images")
    q.add_argument("--size", type=int, nargs="+", default=[64], help="image size: N or H W (default 64)")
    q.add_argument("--out", required=True, help="output file (.h5); an unfinished FILE.partial is resumed")
    q.add_argument("--seed", type=int, default=0, help="image i is drawn from (seed, i) (default 0)")
    q.add_argument("--complex", action="store_true", help="complex images with a smooth random phase")
    q.add_argument("--families", nargs="+", default=None, help="phantom families, used in turn (default: all)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(run=_generate_phantoms)


def _generate_phantoms(args) -> int:
    from .datasets.phantoms import FAMILIES, generate_phantoms

    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    path = generate_phantoms(args.out, args.n, size, seed=args.seed, complex=args.complex,
                             families=tuple(args.families or FAMILIES), progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
# ---- end krylon generate phantoms
# ---- krylon generate ns2d|darcy (issue #10: neural-operator training data)
def _generate_common(q, batch: int) -> None:
    q.add_argument("--n", type=int, required=True, help="number of samples")
    q.add_argument("--out", required=True, help="output file (.h5); an unfinished FILE.partial is resumed")
    q.add_argument("--batch", type=int, default=batch, help=f"samples computed together as one tensor (default {batch})")
    q.add_argument("--seed", type=int, default=0, help="sample i is drawn from (seed, i) (default 0)")
    q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto, CUDA when present)")
    q.add_argument("--store-dtype", default="float32", choices=("float32", "float64"), help="precision on disk (default float32)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_generate_ns2d(gsub) -> None:
    from .datasets.presets import NS2D as PRESETS

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


def _generate_ns2d(args) -> int:
    from .datasets.navier_stokes import PRESETS, generate

    preset = PRESETS[args.size]
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else preset[k]) for k in preset}
    path = generate(args.out, args.n, viscosity=args.viscosity, t_in=args.t_in, t_out=args.t_out,
                    batch_size=args.batch, seed=args.seed, device=args.device, store_dtype=args.store_dtype,
                    progress=not args.no_progress, **opts)
    print(f"wrote {path}")
    return 0


def _generate_darcy(args) -> int:
    from .datasets.darcy import generate

    path = generate(args.out, args.n, resolution=args.resolution, batch_size=args.batch, seed=args.seed,
                    device=args.device, rtol=args.rtol, store_dtype=args.store_dtype, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
# ---- end krylon generate ns2d|darcy
# ---- krylon generate ks (issue #12: MEDIDA truth data)
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
    from .datasets.kuramoto_sivashinsky import generate

    path = generate(args.out, n_samples=args.samples, n_times=args.times, interval=args.interval, spacing=args.spacing,
                    spinup=args.spinup, coefficients=tuple(args.truth), length=args.length, n=args.n, dt=args.dt,
                    transit_dt=args.transit_dt or None, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
# ---- end krylon generate ks
# ---- krylon generate qg (issue #12: two-layer quasi-geostrophic truth windows for MEDIDA)
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
    from .datasets.quasi_geostrophic import generate

    path = generate(args.out, n_samples=args.samples, members=args.members, n_times=args.times, spacing=args.spacing,
                    spinup=args.spinup, seed=args.seed, settings=_qg_model_settings(args), progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
# ---- end krylon generate qg
# ------------------------------------------------------------------------------------------ end krylon generate


# ---------------------------------------------------------------------------------------------- krylon discover
# One sub-command per model (issue #12, MEDIDA): each _add_discover_<model>(dsub) sets ``run=`` to its handler.
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
        record.update(command="krylon " + " ".join(sys.argv[1:]), seconds=seconds)
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def _add_discover(sub) -> None:
    d = sub.add_parser("discover", help="discover the missing terms of an imperfect PDE model from observations (MEDIDA)")
    dsub = d.add_subparsers(dest="system")
    _add_discover_ks(dsub)
    _add_discover_qg(dsub)


# ---- krylon discover ks
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

    from .datasets import open_dataset
    from .datasets.kuramoto_sivashinsky import discover_case
    from .operators.pde import KuramotoSivashinsky

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
# ---- end krylon discover ks
# ---- krylon discover qg
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

    from .datasets import open_dataset
    from .datasets.quasi_geostrophic import truth_windows
    from .operators.pde.quasi_geostrophic import CASES, PAPER
    from .solvers.medida_qg import discover_qg

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
# ---- end krylon discover qg
# ------------------------------------------------------------------------------------------ end krylon discover


# ============================================================================ neural operators (train fno|sfno, refine, evaluate)
def _operator_parsers(sub, tsub) -> None:
    """``krylon train fno|sfno``, ``krylon refine``, ``krylon evaluate``: OperatorLearner on HDF5 data sets."""
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

    r = sub.add_parser("refine", help="Spectral-Refiner: fine-tune the widened last spectral layer of a trained "
                       "operator in a negative Sobolev norm (physics residual or data misfit)")
    r.set_defaults(run=_refine)
    r.add_argument("--model", required=True, help="model.pt written by krylon train fno|sfno")
    r.add_argument("--data", required=True, help="data whose inputs (and, in data mode, targets) drive the refinement")
    r.add_argument("--mode", default="physics", choices=("physics", "data"),
                   help="physics: residual of one implicit Crank-Nicolson step of the data's Navier-Stokes equations "
                        "(viscosity and time step from the file's attributes); data: the misfit to the targets")
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--grid", type=int, nargs=2, default=None, metavar=("X", "Y"),
                   help="physics mode: evaluate the residual on this finer grid (the prediction spectrally "
                        "interpolated; the paper uses 256 256 for 64^2 data); default the data grid")
    r.add_argument("--s", type=float, default=-1.0, help="Sobolev index of the loss norm (default -1)")
    r.add_argument("--alpha", type=float, default=10 ** -1.5, help="offset of the Sobolev weight (alpha + |k|^2)^s")
    r.add_argument("--batch", type=int, default=4)
    r.add_argument("--samples", type=int, default=None, help="use the first N samples of --data")
    r.add_argument("--test", action="append", default=[], help="data to evaluate before and after (repeatable)")
    r.add_argument("--out", default=None, help="refined model file (default: <model>-refined.pt)")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--device", default="cpu")

    e = sub.add_parser("evaluate", help="relative L2 / H1 errors of a trained operator on data sets (any resolution)")
    e.set_defaults(run=_evaluate)
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, action="append", help="data to evaluate (repeatable)")
    e.add_argument("--plot", default=None, help="PNG of truth / prediction / error of the first sample of the first data")
    e.add_argument("--json", default=None, help="write the full results (per sample, per step) to this JSON file")
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--device", default="cpu")


def _open_pairs(path):
    from .datasets import open_dataset

    ds = open_dataset(path)
    sample = ds[0]
    if not isinstance(sample, dict) or "x" not in sample or "y" not in sample:
        raise ValueError(f"{path}: samples need fields 'x' and 'y' (inputs and targets); found {sorted(sample)}")
    return ds


def _print_errors(name: str, res: dict) -> None:
    print(f"{name:40s} samples {res['samples']:5d}  resolution {'x'.join(map(str, res['resolution']))}  "
          f"rel. L2 {res['l2']:.4e}  rel. H1 {res['h1']:.4e}")


def _train_operator(args) -> int:
    import json
    import time

    import torch

    from .kernels import backend
    from .operators import learned
    from .solvers import OperatorLearner

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
    results = {path: learner.evaluate(_open_pairs(path)) for path in args.test}
    for path, res in results.items():
        _print_errors(path, res)
    record = {"command": "krylon " + " ".join(sys.argv[1:]), "model": args.model, "config": model.config,
              "parameters": learner.n_parameters, "epochs": args.epochs, "final_train_loss": history["train"][-1],
              "final_val": {k: v[-1] for k, v in history.items() if k.startswith("val") and v},
              "train_seconds": round(seconds, 2), "device": str(device), "threads": torch.get_num_threads(),
              "test": {p: {k: r[k] for k in ("l2", "h1", "samples", "resolution")} for p, r in results.items()}}
    out = __import__("pathlib").Path(args.out)
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"saved {out / 'model.pt'} ({learner.n_parameters} parameters); record in {out / 'training.json'}")
    return 0


def _refine(args) -> int:
    import json
    from pathlib import Path

    import torch

    from .kernels import backend
    from .solvers import OperatorLearner

    device = backend.resolve_device(args.device) or torch.device("cpu")
    learner = OperatorLearner.load(args.model, map_location=device)
    data = _open_pairs(args.data)
    if args.samples is not None:
        data = torch.utils.data.Subset(data, range(min(args.samples, len(data))))
    residual = None
    if args.mode == "physics":  # the equations of the data, from its attributes
        from .datasets import read_attrs
        from .solvers.operator_learning import NavierStokesResidual

        residual = NavierStokesResidual.from_attrs(read_attrs(args.data), str(args.data))
    tests = {p: _open_pairs(p) for p in args.test}
    before = {p: learner.evaluate(ds) for p, ds in tests.items()}
    res = learner.refine(data, mode=args.mode, residual=residual, s=args.s, alpha=args.alpha, steps=args.steps,
                         lr=args.lr, batch_size=args.batch, grid=args.grid, progress=True)
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

    from .kernels import backend
    from .solvers import OperatorLearner

    device = backend.resolve_device(args.device) or torch.device("cpu")
    learner = OperatorLearner.load(args.model, map_location=device)
    results = {}
    for path in args.data:
        results[path] = learner.evaluate(_open_pairs(path), batch_size=args.batch)
        _print_errors(path, results[path])
    if args.plot:
        learner.plot(_open_pairs(args.data[0]), args.plot)
        print(f"plot in {args.plot}")
    if args.json:
        __import__("pathlib").Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
# ============================================================================ end of neural operators


def _train_dcdm(args) -> int:
    import json
    import time

    import torch

    from .datasets import dcdm as dcdm_data
    from .datasets import open_dataset
    from .kernels import backend
    from .operators.learned.dcdm import DCDMNet
    from .solvers.dcdm import DCDM, dcdm_loss
    from .solvers.training import TrainConfig, train

    n = args.grid or (64 if args.dim == 2 else 24)
    if n < 4:
        raise SystemExit(f"krylon: --grid must be >= 4, got {n}")
    shape = (n,) * args.dim
    out = __import__("pathlib").Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.h5"
    t0 = time.perf_counter()
    if not data.exists():
        print(f"generating {args.geometries} scenes x {args.rhs} right-hand sides on a {shape} grid -> {data}")
        dcdm_data.generate(data, shape=shape, n_geometries=args.geometries, rhs_per_geometry=args.rhs,
                           lanczos=args.lanczos, seed=args.seed, white_fraction=args.white,
                           smooth_fraction=args.smooth,
                           progress=not args.no_progress)
    t_data = time.perf_counter() - t0
    ds = open_dataset(data)
    device = backend.resolve_device(args.device) or torch.device("cpu")
    torch.manual_seed(args.seed)
    levels = args.levels if args.levels == "auto" else int(args.levels)
    net = DCDMNet(dim=args.dim, in_channels=3, width=args.width, levels=levels, coarsest=args.coarsest,
                  odd=args.odd).to(device)
    if args.init and not (out / "checkpoint.pt").exists():  # a resumed run continues from its own checkpoint
        init = DCDM.load(args.init).model
        if init.config != net.config:
            raise SystemExit(f"krylon: --init model {args.init} has network {init.config}, this run builds {net.config}")
        net.load_state_dict(init.state_dict())
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed)
    t1 = time.perf_counter()
    history = train(net, dcdm_loss, ds, out, cfg, progress=not args.no_progress, name=f"dcdm{args.dim}d")
    t_train = time.perf_counter() - t1
    net.eval()
    solver = DCDM(net.cpu())
    solver.save(out / "dcdm.pt")
    record = {"command": "krylon " + " ".join(sys.argv[1:]), "grid": list(shape), "geometries": args.geometries,
              "rhs_per_geometry": args.rhs, "lanczos": args.lanczos, "white_fraction": args.white,
              "smooth_fraction": args.smooth, "init": args.init, "network": net.config, "epochs": args.epochs, "batch": args.batch,
              "lr": args.lr, "seed": args.seed, "parameters": net.n_parameters, "final_train_loss": history["train"][-1],
              "final_val_loss": history["val"][-1] if history["val"] else None, "data_seconds": round(t_data, 1),
              "train_seconds": round(t_train, 1), "device": str(device), "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"exported {out / 'dcdm.pt'} ({net.n_parameters} parameters); record in {out / 'training.json'}")
    return 0


def _solve_poisson(args) -> int:
    import time

    import torch

    from .kernels import backend
    from .operators import Laplacian
    from .solvers import CG, GMRES, IC0, MINRES, Jacobi, SpectralPoisson

    if len(args.grid) not in (2, 3):
        raise SystemExit(f"krylon: --grid takes 2 or 3 sizes, got {args.grid}")
    if any(n < 2 for n in args.grid):
        raise SystemExit(f"krylon: grid sizes must be >= 2, got {args.grid}")
    device = backend.resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    shape = tuple(args.grid)
    mask = None
    if args.obstacles:
        from .datasets.geometry import random_obstacles

        mask = random_obstacles(shape, args.obstacles, seed=args.seed).to(device)
    h = tuple(1.0 / (n + 1) for n in shape)
    A = Laplacian(shape, spacing=h, bc=args.bc, obstacles=mask, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(args.seed)
    b = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    if mask is not None:
        b = torch.where(mask, torch.zeros_like(b), b)
    if not A.is_positive_definite:
        # pure Neumann/periodic: the constant is in the null space; make the system consistent
        fluid = torch.ones_like(b, dtype=torch.bool) if mask is None else ~mask
        b = torch.where(fluid, b - b[fluid].mean(), b)
    opts = dict(rtol=args.rtol, atol=args.atol, maxiter=args.maxiter, progress=args.progress)
    setup_t0 = time.perf_counter()
    if args.solver in DCDM_VARIANTS:
        from .solvers import DCDM

        if args.solver == "dcdm+r":
            print("krylon: note: --solver dcdm+r is now --solver dcdm (the multilevel iteration is DCDM's default; "
                  "the paper's iteration is --solver dcdm-paper)", file=sys.stderr)
        dkw = {k: v for k, v in opts.items() if v is not None}
        dkw["variant"] = DCDM_VARIANTS[args.solver]
        solver = DCDM.load(args.model, **dkw) if args.model else DCDM.pretrained(f"poisson{len(shape)}d", **dkw)
        if args.solver == "fpcg-dcdm":  # the network as a preconditioner inside flexible CG
            solver = CG(M=solver.preconditioner(), flexible=True, **opts)
    elif args.solver == "minres":
        solver = MINRES(**opts)
    elif args.solver == "gmres":
        solver = GMRES(**opts)
    else:
        M = {"cg": None, "pcg-jacobi": Jacobi, "pcg-ic0": IC0, "pcg-dst": SpectralPoisson}[args.solver]
        solver = CG(M=M(A) if M is not None else None, **opts)
    setup = time.perf_counter() - setup_t0
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = solver.solve(A, b)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    rel = float(torch.linalg.vector_norm(b - A.matvec(res.x)) / torch.linalg.vector_norm(b))
    unknowns = int(torch.tensor(shape).prod())
    print(f"problem     poisson {'x'.join(map(str, shape))} ({unknowns} unknowns), bc={args.bc}, obstacles={args.obstacles}, "
          f"{args.dtype}, device={device or 'cpu'}, threads={torch.get_num_threads()}")
    print(f"solver      {args.solver}  (setup {setup:.3f} s)")
    print(f"iterations  {int(res.iterations.max())}")
    print(f"time        {elapsed:.3f} s  ({1e3 * elapsed / max(int(res.iterations.max()), 1):.3f} ms/iteration)")
    print(f"residual    ||b - A x|| / ||b|| = {rel:.3e}  (rtol {args.rtol:g})")
    print(f"status      {res.reason}")
    return 0 if res.all_converged else 1


def _bench(args) -> int:
    if args.repeats < 1:
        raise SystemExit("krylon: --repeats must be >= 1")
    from .bench import SUITES
    from .bench.summary import run_suites
    from .kernels import backend

    device = str(backend.resolve_device(args.device))
    every = args.suite == "all"
    size = args.size or ("quick" if every else "default")
    # the options each suite declares reach it (None: the suite's own default)
    options = {"repeats": args.repeats, "rtol": args.rtol, "peers": not args.no_peers, "plot": not args.no_plot,
               "models": args.model, "data_dir": args.data_dir}
    flags = {"--size": size, "--device": args.device, "--threads": args.threads, "--repeats": args.repeats,
             "--rtol": args.rtol, "--out": args.out, "--no-peers": args.no_peers or None, "--no-plot": args.no_plot or None}
    command = " ".join(["krylon bench", args.suite] + [k if v is True else f"{k} {v}" for k, v in flags.items() if v is not None]
                       + [f"--model {m}" for m in args.model or []]
                       + ([f"--data-dir {args.data_dir}"] if args.data_dir else []))
    record = run_suites(list(SUITES) if every else [args.suite], size, device=device, out=args.out, options=options,
                        command=command, isolate=every, write=every, plot=not args.no_plot)
    return 0 if record["ok"] else 1


# ----------------------------------------------------------------------------- DDS (diffusion prior) block
def _dds_parsers(sub, tsub) -> None:
    """``krylon train diffusion`` and ``krylon reconstruct mri|ct``."""
    tf = tsub.add_parser("diffusion", help="the score U-Net of the DDS/DPS diffusion prior, on images in an HDF5 file")
    tf.set_defaults(run=_train_diffusion)
    tf.add_argument("--data", required=True, help="krylon HDF5 data set of (N, H, W) images (square H = W)")
    tf.add_argument("--key", default=None, help="field holding the images (default: 'image', or the only field)")
    tf.add_argument("--complex", action="store_true", help="complex images as two channels (default: real)")
    tf.add_argument("--channels", type=int, default=16, help="U-Net channels at full resolution (default 16, as "
                    "the shipped prior)")
    tf.add_argument("--mults", type=int, nargs="+", default=[1, 2, 2, 4],
                    help="channel multiplier per level (default 1 2 2 4, as the shipped prior)")
    tf.add_argument("--no-attention", dest="attention", action="store_false")
    tf.add_argument("--ema", type=float, default=0.995, help="EMA decay of the exported weights (default 0.995, "
                    "as the shipped prior)")
    tf.add_argument("--epochs", type=int, default=10)
    tf.add_argument("--batch", type=int, default=16)
    tf.add_argument("--lr", type=float, default=1e-3)
    tf.add_argument("--seed", type=int, default=0)
    tf.add_argument("--out", default="runs/diffusion", help="folder for checkpoints, loss curves and prior.pt")
    tf.add_argument("--threads", type=int, default=None)
    tf.add_argument("--device", default="cpu")
    tf.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("reconstruct", help="simulate MRI/CT measurements of an image and reconstruct it with DDS "
                       "(shipped prior) and a classical baseline; saves a comparison PNG")
    rsub = r.add_subparsers(dest="modality")
    for name, what in (("mri", "4-coil Cartesian MRI (CG-SENSE baseline)"), ("ct", "parallel-beam CT (FBP baseline)")):
        q = rsub.add_parser(name, help=what)
        q.set_defaults(run=_reconstruct)
        q.add_argument("--image", required=True, help="a .png, .npy (2-D array) or krylon .h5 file (first image)")
        q.add_argument("--out", required=True, help="PNG to write (truth, baseline, DDS, error)")
        q.add_argument("--nfe", type=int, default=50, help="DDS network calls (default 50)")
        q.add_argument("--noise", type=float, default=0.0, help="measurement noise, relative to the data RMS "
                       "(MRI: on the sampled k-space; CT: on every sinogram bin)")
        q.add_argument("--gamma", type=float, default=None, help="DDS data weight for noisy data (default by modality)")
        q.add_argument("--seed", type=int, default=0, help="seeds the simulation: mask and measurement noise")
        q.add_argument("--sampler-seed", type=int, default=0, help="seeds the DDS sampler (default 0)")
        q.add_argument("--model", default=None, help="a prior.pt from 'krylon train diffusion' (default: shipped)")
        q.add_argument("--threads", type=int, default=None)
        if name == "mri":
            q.add_argument("--acceleration", type=float, default=4.0)
            q.add_argument("--mask", default="uniform1d", choices=("uniform1d", "gaussian1d", "gaussian2d", "equispaced"))
            q.add_argument("--coils", type=int, default=4)
        else:
            q.add_argument("--views", type=int, default=30, help="projection angles")
            q.add_argument("--arc", type=float, default=180.0, help="angular range in degrees (120: limited angle)")


def _train_diffusion(args) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from .datasets import open_dataset
    from .kernels import backend
    from .solvers.diffusion import train_prior
    from .solvers.training import TrainConfig

    ds = open_dataset(args.data)
    device = backend.resolve_device(args.device) or torch.device("cpu")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed, val_fraction=0.05)
    t0 = time.perf_counter()
    net = train_prior(ds, args.out, cfg, key=args.key, complex_images=args.complex, channels=args.channels,
                      mults=args.mults, attention=args.attention, ema_decay=args.ema, device=device,
                      progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    history = json.loads((out / "history.json").read_text())
    n_par = sum(p.numel() for p in net.parameters())
    record = {"command": "krylon " + " ".join(sys.argv[1:]), "data": str(args.data), "samples": len(ds),
              "network": net.config, "parameters": n_par, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
              "ema": args.ema, "seed": args.seed, "final_train_loss": history["train"][-1],
              "final_val_loss": history["val"][-1] if history["val"] else None,
              "train_seconds_this_run": round(seconds, 1), "device": str(device), "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"exported {out / 'prior.pt'} ({n_par} parameters); record in {out / 'training.json'}")
    return 0


def _read_image(path: str, n: int):
    """A 2-D image from .png/.npy/.h5 as float64 in [0, 1] (magnitude), resized to n x n when it is not."""
    from pathlib import Path

    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no image at {p}")
    if p.suffix.lower() == ".npy":
        a = np.load(p, allow_pickle=False)
    elif p.suffix.lower() in (".h5", ".hdf5"):
        from .datasets import open_dataset

        ds = open_dataset(p)
        a = ds[0][ds.keys[0]].numpy()
    elif p.suffix.lower() == ".png":
        import matplotlib.image as mpimg

        a = mpimg.imread(p)
    else:
        raise ValueError(f"--image must be .png, .npy or .h5, got {p.name}")
    a = np.abs(np.asarray(a)).astype(np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 2):  # (1|2, H, W) channels: magnitude
        a = np.sqrt((a ** 2).sum(0))
    elif a.ndim == 3:  # colour PNG: luminance
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    if a.ndim != 2 or min(a.shape) < 2:
        raise ValueError(f"{p.name}: expected a 2-D image, got shape {a.shape}")
    x = torch.from_numpy(a)
    if tuple(x.shape) != (n, n):
        print(f"note: {p.name} is {x.shape[0]}x{x.shape[1]}; resized to the prior's {n}x{n}")
        x = torch.nn.functional.interpolate(x[None, None], size=(n, n), mode="bilinear", antialias=True)[0, 0]
    if not bool(torch.isfinite(x).all()) or float(x.max()) <= 0:
        raise ValueError(f"{p.name}: the image has non-finite values or no positive value")
    return (x.clamp(min=0) / x.max()).float()


def _reconstruct(args) -> int:
    import math

    import torch

    from .operators import MRI, Radon
    from .operators.imaging import add_noise, coil_maps, mri_mask
    from .solvers.diffusion import DDS
    from .solvers.metrics import psnr, ssim
    from .solvers.reconstruction import cg_sense, fbp

    if args.modality is None:
        raise SystemExit("krylon: reconstruct needs a modality: mri or ct")
    dds = DDS.load(args.model) if args.model else DDS.pretrained()
    n = dds.image_size
    x = _read_image(args.image, n)
    if args.modality == "mri":
        A = MRI(mri_mask((n, n), kind=args.mask, acceleration=args.acceleration, seed=args.seed),
                coil_maps((n, n), n_coils=args.coils))
        y = A.matvec(x.to(torch.complex64))
        what = f"MRI x{args.acceleration:g} {args.mask}, {args.coils} coils"
    else:
        if args.views < 1 or not 0 < args.arc <= 180:
            raise ValueError(f"--views must be >= 1 and --arc in (0, 180], got {args.views}, {args.arc}")
        angles = torch.arange(args.views, dtype=torch.float64) * math.radians(args.arc) / args.views
        A = Radon((n, n), angles=angles)
        y = A.matvec(x)
        what = f"CT {args.views} views over {args.arc:g} degrees"
    if args.noise:
        # CT: noise on every sinogram bin (rays missing the object are measured); MRI: on the sampled k-space
        y = add_noise(y, args.noise, generator=torch.Generator().manual_seed(args.seed + 1),
                      support="all" if args.modality == "ct" else None)
    from .bench.dds import DDS_GAMMA

    gamma = args.gamma if args.gamma is not None else (DDS_GAMMA[args.modality] if args.noise else None)
    dds = DDS(dds.model, gamma=gamma)
    real = not dds.model.complex_images  # the baseline gets DDS's constraint: real images for a real prior
    base_name, base = ("CG-SENSE", cg_sense(A, y, lam=1e-2, real=real)) if args.modality == "mri" else \
        ("FBP", fbp(A, y, arc=math.radians(args.arc) if args.arc < 180 else None))
    res = dds.solve(A, y, nfe=args.nfe, seed=args.sampler_seed, progress=True)
    rows = [(base_name, base), (f"DDS {res.nfe} NFE", res.x)]
    print(f"{what}, noise {args.noise:g}, {n}x{n}:")
    for name, r in rows:
        print(f"  {name:14s} PSNR {float(psnr(r, x)):6.2f} dB  SSIM {float(ssim(r, x)):.4f}")
    print(f"  DDS time {res.seconds:.2f} s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(10, 2.8))
    panels = [("truth", x), *[(f"{k}\n{float(psnr(v, x)):.2f} dB", v.abs()) for k, v in rows],
              ("|DDS - truth|", (res.x.abs() - x).abs())]
    for a, (t, im) in zip(ax, panels):
        a.imshow(im.detach().numpy(), cmap="gray", vmin=0, vmax=0.2 if t.startswith("|") else 1)
        a.set_title(t, fontsize=8)
        a.axis("off")
    fig.suptitle(what, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0
# ----------------------------------------------------------------------------- end of the DDS block


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"krylon {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    _set_threads(getattr(args, "threads", None))
    run = getattr(args, "run", None)
    if run is None:  # a command group without its sub-command (krylon train, krylon generate, ...): its help
        parser.parse_args([args.command, "--help"])
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as exc:
        print(f"krylon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

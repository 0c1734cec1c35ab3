"""The ``krylon`` command (thin: argument parsing, then the library does the work).

    krylon solve poisson --grid 512 512 [--bc dirichlet] [--obstacles N] [--solver cg|pcg-jacobi|...|dcdm]
    krylon bench [krylov|dcdm|fno|dds|medida|all] [--size quick|default|paper] [--threads 1] [--out bench-out]
    krylon train dcdm [--dim 2|3] [--grid N] --out DIR
    krylon generate ns2d|darcy --n N --out FILE.h5 [...]
    krylon convert IN OUT.h5 [--layout auto|neuralop-pt|fno-mat|pdebench|...] [--input-steps 10]
    krylon train fno|sfno --data TRAIN.h5 [--test TEST.h5 ...] --out DIR
    krylon refine --model DIR/model.pt --data TRAIN.h5 [--mode physics|data] [--test TEST.h5]
    krylon evaluate --model DIR/model.pt --data TEST.h5 [--plot PNG]
    krylon generate phantoms --n N --size 64 --out FILE.h5 [--complex] [--seed 0]
    krylon train diffusion --data FILE.h5 --out DIR
    krylon reconstruct mri|ct --image FILE.png|.npy|.h5 --out PNG [--nfe 50] [--noise 0.03]
    krylon generate ks|qg --out FILE.h5 [...]
    krylon discover ks --truth 1 1 1 --model 1 0.5 1 [--extra-term u_xxx=0.1] [--noise 0.01] [--json out.json]
    krylon discover qg --case tau_d [--sensors 0.25 --interp rff|cubic|spectral] [--json out.json]

One module per solver family registers its sub-commands (``register(cmd)`` adds parsers to the command groups
below, each with ``run=`` set to its handler); :func:`main` parses and calls ``args.run(args)``.  Heavy modules
are imported inside the handlers, after the arguments are parsed, so ``--threads`` reaches the BLAS/OpenMP
thread pools of numpy and torch before they start.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

from . import bench, dcdm, dds, medida, neural_operators, solve

FAMILIES = (solve, bench, dcdm, neural_operators, dds, medida)


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
    top = p.add_subparsers(dest="command")
    cmd = SimpleNamespace(top=top)
    cmd.solve = top.add_parser("solve", help="solve a model problem and print iterations, time and residual"
                               ).add_subparsers(dest="problem")
    cmd.train = top.add_parser("train", help="train a learned solver or prior (resumable)").add_subparsers(dest="model")
    cmd.generate = top.add_parser("generate", help="write a training data set (krylon HDF5; batched, resumable: rerun "
                                  "the same command after an interruption to continue)").add_subparsers(dest="kind")
    cmd.discover = top.add_parser("discover", help="discover the missing terms of an imperfect PDE model from "
                                  "observations (MEDIDA)").add_subparsers(dest="system")
    for family in FAMILIES:
        family.register(cmd)
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

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

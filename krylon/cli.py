"""The ``krylon`` command (thin: argument parsing, then the library does the work).

    krylon solve poisson --grid 512 512 [--bc dirichlet] [--obstacles N] [--solver cg|pcg-jacobi|pcg-ic0|pcg-dst]
    krylon bench krylov [--size quick|default|paper] [--threads 1] [--device cpu]

Heavy modules are imported after the arguments are parsed, so ``--threads``
reaches the BLAS/OpenMP thread pools of numpy and torch before they start.
"""

from __future__ import annotations

import argparse
import os
import sys

SOLVER_CHOICES = ("cg", "pcg-jacobi", "pcg-ic0", "pcg-dst", "minres", "gmres")


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
    pp.add_argument("--grid", type=int, nargs="+", default=[256, 256], metavar="N", help="grid size per axis (2 or 3 numbers)")
    pp.add_argument("--bc", default="dirichlet", choices=("dirichlet", "neumann", "periodic"))
    pp.add_argument("--obstacles", type=int, default=0, metavar="N", help="number of random solid obstacles")
    pp.add_argument("--solver", default="cg", choices=SOLVER_CHOICES)
    pp.add_argument("--rtol", type=float, default=1e-8)
    pp.add_argument("--atol", type=float, default=0.0)
    pp.add_argument("--maxiter", type=int, default=None)
    pp.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    pp.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    pp.add_argument("--progress", action="store_true", help="show a progress bar")

    b = sub.add_parser("bench", help="run a benchmark suite (prints a table, writes JSON and a PNG)")
    b.add_argument("suite", choices=("krylov", "all"))
    b.add_argument("--size", default="default", choices=("quick", "default", "paper"))
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=1, help="CPU threads for krylon, numpy and scipy (default 1)")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported")
    b.add_argument("--rtol", type=float, default=1e-8)
    b.add_argument("--out", default="bench-out", help="folder for JSON and PNG output")
    b.add_argument("--no-peers", action="store_true", help="skip scipy/pyamg")
    b.add_argument("--no-plot", action="store_true")
    return p


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
    if args.solver == "minres":
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
    from .kernels import backend

    device = str(backend.resolve_device(args.device))
    suites = ["krylov"] if args.suite == "all" else [args.suite]
    for suite in suites:
        if suite == "krylov":
            from .bench import krylov

            krylov.run(args.size, device=device, repeats=args.repeats, rtol=args.rtol, out=args.out,
                       peers=not args.no_peers, plot=not args.no_plot)
    return 0


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
    try:
        if args.command == "solve":
            if args.problem != "poisson":
                parser.parse_args(["solve", "--help"])
            return _solve_poisson(args)
        if args.command == "bench":
            return _bench(args)
    except (ValueError, TypeError) as exc:
        print(f"krylon: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

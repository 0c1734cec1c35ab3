"""``krylon solve poisson``: a model Poisson problem with any Krylov solver or DCDM."""

from __future__ import annotations

import sys

SOLVER_CHOICES = ("cg", "pcg-jacobi", "pcg-ic0", "pcg-dst", "minres", "gmres", "dcdm", "dcdm-paper", "dcdm+r",
                  "fpcg-dcdm")
# dcdm: DCDM's default (multilevel) iteration; dcdm-paper: the paper's plain iteration; dcdm+r: the old name of the
# multilevel iteration, from before it was the default (still accepted, with a note on stderr)
DCDM_VARIANTS = {"dcdm": "multilevel", "dcdm-paper": "paper", "dcdm+r": "multilevel", "fpcg-dcdm": "multilevel"}


def register(cmd) -> None:
    ssub = cmd.solve
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


def _solve_poisson(args) -> int:
    import time

    import torch

    from ..kernels import backend
    from ..operators import Laplacian
    from ..solvers import CG, GMRES, IC0, MINRES, Jacobi, SpectralPoisson

    if len(args.grid) not in (2, 3):
        raise SystemExit(f"krylon: --grid takes 2 or 3 sizes, got {args.grid}")
    if any(n < 2 for n in args.grid):
        raise SystemExit(f"krylon: grid sizes must be >= 2, got {args.grid}")
    device = backend.resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    shape = tuple(args.grid)
    mask = None
    if args.obstacles:
        from ..datasets.geometry import random_obstacles

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
        from ..solvers import DCDM

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

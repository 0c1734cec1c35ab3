"""A 3-D Poisson problem split across processes: each rank holds only its slab of the grid.

Run on 2 CPU processes (gloo) or one process per GPU (NCCL)::

    torchrun --nproc-per-node 2 examples/distributed_poisson.py --grid 128
    python examples/distributed_poisson.py --grid 64          # one process: the same code, the whole grid

It solves ``-Laplace u = f`` on the unit cube with ``u = 0`` on the boundary and
``u = x(1-x) y(1-y) z(1-z)`` (whose second differences are exact, so the discrete solution is ``u`` itself
and the error measures the solve), by CG with a Jacobi preconditioner -- krylon's ordinary solver,
unchanged: the operator's halo exchange and all-reduce hook do the rest.  No rank ever allocates the
global grid: the right-hand side is formed from this rank's planes, and the error against the exact
solution is reduced across ranks.

Memory: CG with Jacobi keeps about 7 to 9 field-sized tensors alive at its peak (x, r, p, A p, z, b, the
diagonal, temporaries), so the "above start-up" figure per rank is that many times the slab's field size.  glibc may keep
freed fields of under 32 MiB in the heap instead of returning them (its dynamic mmap threshold), which inflates
RSS; ``MALLOC_MMAP_THRESHOLD_=1048576`` shows the true figure.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from krylon.kernels import distributed as dd
from krylon.kernels import fused_cpu
from krylon.operators import DistributedLaplacian
from krylon.solvers import CG
from krylon.solvers.preconditioners import Jacobi


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=96, help="grid points per axis (global grid n^3)")
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--timeout", type=float, default=120.0, help="process-group timeout in seconds")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread per rank: the ranks are the parallelism
    dd.init_from_env(timeout=args.timeout)
    me, size, dev = dd.rank(), dd.world_size(), dd.device()

    n = args.grid
    h = 1.0 / (n + 1)  # Dirichlet nodes sit one spacing beyond the first and last grid points
    A = DistributedLaplacian((n, n, n), spacing=h, device=dev)
    planes = A.slabs.planes()
    # this rank's slab of the coordinates: only its planes of the first axis
    x1 = (torch.arange(planes.start, planes.stop, dtype=torch.float64, device=dev) + 1) * h
    x23 = (torch.arange(n, dtype=torch.float64, device=dev) + 1) * h
    q1, q23 = x1 * (1 - x1), x23 * (1 - x23)
    a, b, c = q1[:, None, None], q23[None, :, None], q23[None, None, :]
    exact = a * b * c
    f = 2 * (b * c + a * c + a * b)
    fused_cpu.warm()  # load the fused CPU kernels now, not inside the timed solve
    start_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch, numba, process group

    t0 = time.perf_counter()
    res = CG(rtol=args.rtol, M=Jacobi()).solve(A, f)
    elapsed = time.perf_counter() - t0
    err = dd.all_reduce_sum([((res.x - exact) ** 2).sum()])[0]  # the global sum of squares
    rms = math.sqrt(float(err) / n ** 3)

    field_mib = exact.numel() * exact.element_size() / 2 ** 20
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = (f"rank {me}/{size}: slab {tuple(A.shape_in)} = planes {planes.start}-{planes.stop - 1} of {n}, "
            f"{field_mib:.1f} MiB per field, peak RSS {rss_mib:.0f} MiB ({rss_mib - start_mib:.0f} MiB above start-up)")
    for r in range(size):  # print in rank order
        if r == me:
            print(line, flush=True)
        dd.barrier()
    global_mib = n ** 3 * 8 / 2 ** 20
    if me == 0:
        print(f"global grid {n}^3 = {n ** 3:,} unknowns ({global_mib:.1f} MiB per field), {size} rank(s), "
              f"largest slab {max(A.slabs.counts)} planes")
        print(f"CG + Jacobi: {res.reason}; {int(res.iterations)} iterations in {elapsed:.2f} s "
              f"({1e3 * elapsed / max(int(res.iterations), 1):.2f} ms/iteration)")
        print(f"RMS error against the exact solution: {rms:.3e} (max |u| = 1/64)")
    dd.shutdown()
    return {"iterations": int(res.iterations), "converged": bool(res.converged), "rms_error": rms, "h": h}


if __name__ == "__main__":
    main()

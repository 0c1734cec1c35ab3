"""``krylon bench distributed``: weak scaling of domain-decomposed CG (ranks and grid grow together).

Each rank holds a slab of ``planes x n x n`` cells of a 3-D Dirichlet Poisson problem, so ``W`` ranks solve a
``(W * planes) x n x n`` grid.  For every ``W`` in the size's ``ranks`` the suite launches ``torchrun
--nproc-per-node W`` (one thread per rank; gloo on the CPU, NCCL with one GPU per rank on CUDA), runs a fixed
number of CG iterations with :class:`~krylon.operators.DistributedLaplacian` and reports the time per iteration
(the slowest rank, median of ``repeats``).  The peer, measured in the same launch by rank 0 while the others
wait, is the single-process krylon CG on the same global grid (:class:`~krylon.operators.Laplacian`), so the
ratio is the speed-up of ``W`` ranks over one process; ``efficiency`` is ``t(1 rank) / t(W ranks)``, 1 for
perfect weak scaling.  Ranks beyond the machine's cores (or GPUs) share them: the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from .common import machine_info, print_table, torchrun, write_json

SIZES = {
    "quick": {"planes": 16, "n": 48, "iterations": 50, "ranks": (1, 2, 4)},
    "default": {"planes": 32, "n": 96, "iterations": 100, "ranks": (1, 2, 4)},
    "paper": {"planes": 64, "n": 256, "iterations": 100, "ranks": (1, 2, 4, 8)},
}

LAUNCH_TIMEOUT = 1800  # seconds for one torchrun launch
PEER_TIMEOUT = float(LAUNCH_TIMEOUT)  # seconds the ranks wait while rank 0 times the single-process peer


def _launch(world: int, spec: dict, device: str, repeats: int, peer: bool, path: Path) -> dict:
    torchrun(world, "krylon.bench.distributed", "--worker", "--planes", str(spec["planes"]), "--width", str(spec["n"]),
             "--iterations", str(spec["iterations"]), "--repeats", str(repeats), "--device", device, "--json", str(path),
             *(["--peer"] if peer else []), timeout=LAUNCH_TIMEOUT)
    return json.loads(path.read_text())


def run(size: str = "default", *, device: str = "cpu", repeats: int = 3, out: str | Path = "bench-out",
        peers: bool = True, plot: bool = True) -> dict:
    """Run the suite; print its table; write ``out/distributed.json`` (and ``out/distributed.png``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    if str(device).startswith("cuda"):
        import torch

        cores = torch.cuda.device_count()
    result = {"suite": "distributed", "size": size, "spec": {**spec, "ranks": list(spec["ranks"])},
              "machine": machine_info(device), "threads_per_rank": 1, "rows": []}
    for world in spec["ranks"]:
        if str(device).startswith("cuda") and world > cores:
            print(f"distributed: skipping {world} ranks: {cores} GPU(s), NCCL needs one per rank")
            continue
        rec = _launch(world, spec, str(device), repeats, peers, out / f"distributed_{world}.json")
        rec["oversubscribed"] = world > cores
        result["rows"].append(rec)
    base = next((r["ms_per_iter"] for r in result["rows"] if r["ranks"] == 1), None)
    for r in result["rows"]:
        r["efficiency"] = base / r["ms_per_iter"] if base else None
        r["speedup_vs_1_process"] = r["single_ms_per_iter"] / r["ms_per_iter"] if r.get("single_ms_per_iter") else None
    print_table(result["rows"], ["ranks", "grid", "slab", "ms_per_iter", "single_ms_per_iter", "speedup_vs_1_process",
                                 "efficiency", "oversubscribed"],
                title=f"distributed CG weak scaling ({spec['iterations']} iterations, 1 thread per rank, "
                      f"{cores} {'GPUs' if str(device).startswith('cuda') else 'cores'}, device {device})")
    write_json(out / "distributed.json", result)
    if plot and result["rows"]:
        _plot(result, out / "distributed.png")
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["ranks"] for r in rows], [r["ms_per_iter"] for r in rows], "o-", label="distributed CG")
    ax.plot([r["ranks"] for r in rows], [r["single_ms_per_iter"] for r in rows], "s--", label="1 process, same grid")
    ax.set_xlabel("ranks (grid grows with them)")
    ax.set_ylabel("ms per CG iteration")
    ax.set_xscale("log", base=2)
    ax.legend()
    ax.set_title("weak scaling, slab " + rows[0]["slab"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(result: dict) -> list[dict]:
    """Per rank count: distributed CG against one process on the same global grid, time per iteration."""
    from .summary import compare

    return [compare("distributed", f"poisson3d {r['grid']}, {r['ranks']} ranks"
                    + (" (oversubscribed)" if r.get("oversubscribed") else ""), "CG time per iteration (ms)",
                    [(f"krylon CG, {r['ranks']} ranks", r["ms_per_iter"])],
                    [("krylon CG, 1 process", r.get("single_ms_per_iter"))]) for r in result["rows"]]


# ----------------------------------------------------------------------------- the worker (one per rank)
def _worker(argv=None) -> None:
    p = argparse.ArgumentParser()
    for name in ("--planes", "--width", "--iterations", "--repeats"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", required=True)
    p.add_argument("--peer", action="store_true")
    p.add_argument("--worker", action="store_true")
    args = p.parse_args(argv)

    import torch

    from ..kernels import distributed as dd
    from ..kernels import fused_cpu
    from ..operators import DistributedLaplacian, Laplacian
    from ..solvers import CG

    torch.set_num_threads(1)
    dd.init_from_env(backend="nccl" if args.device.startswith("cuda") else "gloo")
    me, world = dd.rank(), dd.world_size()
    dev = dd.device() if args.device.startswith("cuda") else torch.device("cpu")
    if dev.type == "cpu":
        fused_cpu.warm()
    shape = (world * args.planes, args.width, args.width)
    h = tuple(1.0 / (n + 1) for n in shape)
    A = DistributedLaplacian(shape, spacing=h, device=dev)
    g = torch.Generator().manual_seed(me)
    b = torch.rand(A.shape_in, generator=g, dtype=torch.float64).to(dev)
    # a fixed number of iterations: rtol far below reach, no residual replacement inside the timed window
    solver = CG(rtol=1e-300, maxiter=args.iterations, check_every=10 ** 9)

    def timed(op, rhs, collective: bool) -> float:
        times = []
        for i in range(args.repeats + 1):  # the first solve warms up
            if collective:
                dd.barrier()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = solver.solve(op, rhs)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
            if collective and world > 1:
                t = t.to(dev)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)  # the slowest rank
            if i:
                times.append(float(t) / int(res.iterations))
        return 1e3 * statistics.median(times)

    ms = timed(A, b, True)
    single = None
    dd.barrier()
    if me == 0 and args.peer:
        L = Laplacian(shape, spacing=h, device=dev)
        single = timed(L, torch.rand(shape, generator=g, dtype=torch.float64).to(dev), False)
    # the others wait while rank 0 times the single-process peer: longer than a collective's timeout on big grids
    dd.wait_for_all(PEER_TIMEOUT, "waiting for rank 0's single-process timing")
    if me == 0:
        rec = {"ranks": world, "grid": "x".join(map(str, shape)), "slab": "x".join(map(str, A.shape_in)),
               "iterations": args.iterations, "ms_per_iter": ms, "single_ms_per_iter": single,
               "backend": torch.distributed.get_backend() if world > 1 else "none", "device": str(dev)}
        write_json(Path(args.json), rec)
    dd.shutdown()


if __name__ == "__main__":
    _worker()

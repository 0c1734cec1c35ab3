"""``krylon bench krylov``: matrix-free CG against scipy and pyamg on the identical Poisson systems.

Cases (``--size``):

``default``  2-D 1024^2 and 3-D 128^3, float64, rtol 1e-8 (the issue's figures)
``quick``    2-D 256^2 and 3-D 48^3 (a smoke run in seconds)
``paper``    adds 3-D 256^3 float32 on a GPU (bandwidth figure)

For every case the same right-hand side is solved by krylon CG (matrix-free
stencil), krylon PCG (IC0, spectral DST), scipy's ``cg`` on ``A.to_scipy()``
(exactly the same matrix) and pyamg's smoothed-aggregation CG.  Reported:
iterations, median time to tolerance, time per iteration, the true final
relative residual and ratios to scipy measured in the same run.  A batched
section solves 16 right-hand sides at once and one after another.
"""

from __future__ import annotations

import math
from pathlib import Path

from .common import machine_info, median_time, peak_bandwidth, print_table, write_json

SIZES = {
    "quick": {"cases": [(256, 256), (48, 48, 48)], "batched": [(64, 64)], "gpu_extra": []},
    "default": {"cases": [(1024, 1024), (128, 128, 128)], "batched": [(128, 128), (32, 32, 32)], "gpu_extra": []},
    "paper": {"cases": [(1024, 1024), (128, 128, 128)], "batched": [(128, 128), (256, 256)], "gpu_extra": [(256, 256, 256)]},
}


def _problem(shape, dtype, device, seed=0):
    import torch

    from ..operators import Laplacian

    h = tuple(1.0 / (n + 1) for n in shape)
    A = Laplacian(shape, spacing=h, bc="dirichlet", dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed)
    b = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return A, b


def _true_rel(A, b, x):
    import torch

    return float(torch.linalg.vector_norm(b - A.matvec(x)) / torch.linalg.vector_norm(b))


def run(size: str = "default", *, device: str = "cpu", repeats: int = 3, rtol: float = 1e-8, out: str | Path = "bench-out",
        peers: bool = True, batch: int = 16, plot: bool = True) -> dict:
    """Run the suite; print tables; write ``out/krylov.json`` and ``out/krylov_convergence.png``."""
    import numpy as np
    import torch

    from ..kernels import fused_cpu
    from ..solvers import CG, IC0, SpectralPoisson

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    on_gpu = str(device).startswith("cuda")
    out = Path(out)
    results = {"suite": "krylov", "size": size, "rtol": rtol, "machine": machine_info(device), "cases": [], "batched": []}
    if not str(device).startswith("cuda"):
        # steady state from the first timed solve: load the fused CPU kernels now (once per process)
        results["fused_cpu_load_s"] = fused_cpu.warm()
        if results["fused_cpu_load_s"]:
            print(f"fused CPU kernels loaded in {results['fused_cpu_load_s']:.2f} s (once per process)")
    histories = {}
    cases = [(s, torch.float64) for s in spec["cases"]] + ([(s, torch.float32) for s in spec["gpu_extra"]] if on_gpu else [])
    for shape, dtype in cases:
        A, b = _problem(shape, dtype, device)
        n = math.prod(shape)
        name = f"poisson{len(shape)}d {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"
        rows = []
        maxiter = 20 * max(shape) * (3 if len(shape) == 3 else 2)

        def krylon_row(label, solver, setup=None, reps=None):
            t_setup = 0.0
            if setup is not None:
                t_setup, _, M = median_time(setup, repeats=1, device=device)
                solver = type(solver)(**{**solver.given, "M": M})
            reps = repeats if reps is None else reps
            t, times, res = median_time(lambda: solver.solve(A, b), repeats=reps, device=device, warmup=0)
            if reps != repeats:
                label += f" ({reps} run)"
            it = int(res.iterations.max())
            histories[(name, label)] = res.relative_residuals.cpu().numpy().ravel()
            rows.append({"solver": label, "iterations": it, "time_s": t, "setup_s": t_setup,
                         "time_per_iter_ms": 1e3 * t / max(it, 1), "true_rel_res": _true_rel(A, b, res.x),
                         "converged": bool(res.converged.all())})
            return res, t

        res_cg, t_cg = krylon_row("krylon CG (matrix-free)", CG(rtol=rtol, maxiter=maxiter))
        if not on_gpu and fused_cpu.available():
            with fused_cpu.disabled():  # the same solve on the eager passes: what the fused kernels gain
                krylon_row("krylon CG (eager, KRYLON_NUMBA=0)", CG(rtol=rtol, maxiter=maxiter))
        if not on_gpu or n <= 2_000_000:
            # IC0's triangular solves are sequential (~10 stencil applications each): one timed run
            krylon_row("krylon PCG-IC0", CG(rtol=rtol, maxiter=maxiter), setup=lambda: IC0(A), reps=1)
        krylon_row("krylon PCG-DST (spectral)", CG(rtol=rtol, maxiter=maxiter), setup=lambda: SpectralPoisson(A))
        scipy_row = None
        if peers:
            import scipy.sparse.linalg as spla

            csr = A.to_scipy().astype(np.float64 if dtype == torch.float64 else np.float32)
            bn = b.cpu().numpy().ravel()
            counter = {"it": 0}

            def cb(_):
                counter["it"] += 1

            def scipy_solve():
                counter["it"] = 0
                return spla.cg(csr, bn, rtol=rtol, maxiter=maxiter, callback=cb)

            t, _, (xs, info) = median_time(scipy_solve, repeats=repeats)
            rel = float(np.linalg.norm(bn - csr @ xs) / np.linalg.norm(bn))
            scipy_row = {"solver": "scipy cg (CSR, CPU)", "iterations": counter["it"], "time_s": t, "setup_s": 0.0,
                         "time_per_iter_ms": 1e3 * t / max(counter["it"], 1), "true_rel_res": rel, "converged": info == 0}
            rows.append(scipy_row)
            try:
                import pyamg
            except ImportError:
                pyamg = None
            if pyamg is not None:
                t_setup, _, ml = median_time(lambda: pyamg.smoothed_aggregation_solver(csr), repeats=1)
                res_list = []

                def amg_solve():
                    res_list.clear()
                    return ml.solve(bn, tol=rtol, accel="cg", maxiter=maxiter, residuals=res_list)

                t, _, xa = median_time(amg_solve, repeats=repeats)
                hist = np.asarray(res_list) / max(res_list[0], 1e-300)
                histories[(name, "pyamg SA-PCG")] = hist
                rows.append({"solver": "pyamg SA-PCG (CPU)", "iterations": len(res_list) - 1, "time_s": t, "setup_s": t_setup,
                             "time_per_iter_ms": 1e3 * t / max(len(res_list) - 1, 1),
                             "true_rel_res": float(np.linalg.norm(bn - csr @ xa) / np.linalg.norm(bn)), "converged": hist[-1] <= rtol})
        for r in rows:
            if scipy_row is not None:
                r["speedup_vs_scipy"] = scipy_row["time_s"] / r["time_s"] if r["time_s"] > 0 else float("nan")
                r["per_iter_speedup_vs_scipy"] = scipy_row["time_per_iter_ms"] / r["time_per_iter_ms"]
        if on_gpu:
            w = torch.finfo(dtype).bits // 8
            floor_bytes = 10 * w * n  # a fused two-kernel CG iteration moves about 10 w N bytes
            peak = peak_bandwidth(torch.cuda.get_device_name())
            t_it = rows[0]["time_per_iter_ms"] / 1e3
            rows[0]["achieved_GBps_at_10wN"] = floor_bytes / t_it / 1e9
            if peak:
                rows[0]["x_of_bandwidth_floor"] = t_it / (floor_bytes / peak)
        print_table(rows, ["solver", "iterations", "time_s", "setup_s", "time_per_iter_ms", "speedup_vs_scipy",
                           "per_iter_speedup_vs_scipy", "true_rel_res", "converged"] +
                    (["achieved_GBps_at_10wN", "x_of_bandwidth_floor"] if on_gpu else []),
                    title=f"\n== {name}, rtol {rtol:g}, device {device}, torch threads {torch.get_num_threads()} ==")
        results["cases"].append({"case": name, "shape": list(shape), "dtype": str(dtype), "rows": rows})

    # ------------------------------------------------------------ batched right-hand sides
    for shape in spec["batched"]:
        A, _ = _problem(shape, torch.float64, device)
        g = torch.Generator().manual_seed(1)
        B = torch.rand((batch,) + tuple(shape), generator=g, dtype=torch.float64).to(device)
        solver = CG(rtol=rtol)
        t_b, _, res_b = median_time(lambda: solver.solve(A, B), repeats=repeats, device=device)

        def sequential():
            return [solver.solve(A, B[i]) for i in range(batch)]

        t_s, _, res_s = median_time(sequential, repeats=repeats, device=device)
        row = {"grid": "x".join(map(str, shape)), "rhs": batch, "batched_s": t_b, "sequential_s": t_s,
               "throughput_ratio": t_s / t_b, "iterations_max": int(res_b.iterations.max()),
               "all_converged": bool(res_b.converged.all()) and all(bool(r.converged) for r in res_s)}
        results["batched"].append(row)
    if results["batched"]:
        print_table(results["batched"], ["grid", "rhs", "batched_s", "sequential_s", "throughput_ratio", "iterations_max", "all_converged"],
                    title=f"\n== batched CG: {batch} right-hand sides at once vs one after another (device {device}) ==")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "krylov.json", results)
    if plot:
        _plot(histories, out / "krylov_convergence.png", rtol)
        results["plot"] = str(out / "krylov_convergence.png")
    print(f"\nwrote {out / 'krylov.json'}" + (f" and {out / 'krylov_convergence.png'}" if plot else ""))
    return results


def _plot(histories, path, rtol):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({c for c, _ in histories})
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.2), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for (c, label), h in histories.items():
            if c == case:
                ax.semilogy(h, label=label)
        ax.axhline(rtol, color="k", lw=0.8, ls=":")
        ax.set_title(case)
        ax.set_xlabel("iteration")
        ax.set_ylabel("||r|| / ||r0||")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(result: dict) -> list[dict]:
    """Rows of the ``krylon bench`` summary: per case, krylon CG against scipy's ``cg`` per iteration (the same
    algorithm on the same matrix) and krylon's fastest solver against the fastest peer to tolerance, setup
    included (on these obstacle-free boxes the DST preconditioner is the exact inverse, so PCG-DST, one
    iteration, usually wins that row); per batched grid, all right-hand sides at once against one after another."""
    from .summary import compare

    def entries(rows, key, prefix=""):
        # an entry that did not converge keeps its name with no value: it never wins, and a row whose every
        # krylon entry failed says so instead of disappearing
        return [(r["solver"], key(r) if r["converged"] else None) for r in rows if r["solver"].startswith(prefix)]

    per_iter = lambda r: r["time_per_iter_ms"]  # noqa: E731
    total = lambda r: r["time_s"] + (r.get("setup_s") or 0.0)  # noqa: E731
    out = []
    for case in result["cases"]:
        mine = [r for r in case["rows"] if r["solver"].startswith("krylon")]
        peers = [r for r in case["rows"] if not r["solver"].startswith("krylon")]
        out.append(compare("krylov", case["case"], "CG time per iteration (ms)",
                           entries(mine, per_iter, "krylon CG (matrix-free"), entries(peers, per_iter, "scipy cg")))
        out.append(compare("krylov", case["case"], f"time to rtol {result['rtol']:g} incl. setup (s)",
                           entries(mine, total), entries(peers, total)))
    for b in result.get("batched", []):
        conv = b["all_converged"]
        out.append(compare("krylov", f"poisson{b['grid'].count('x') + 1}d {b['grid']}, {b['rhs']} right-hand sides",
                           "CG wall time (s)", [(f"krylon CG, {b['rhs']} at once", b["batched_s"] if conv else None)],
                           [("krylon CG, one at a time", b["sequential_s"] if conv else None)]))
    return out

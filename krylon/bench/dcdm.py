"""``krylon bench dcdm``: learned conjugate directions against CG, Jacobi-/IC0-/pyamg-PCG on unseen obstacle scenes.

For each grid size a Poisson problem with random obstacles (seeds never used in
training), Dirichlet walls and a random right-hand side is solved to relative
tolerances 1e-4 and 1e-6.  "DCDM" is DCDM's default, krylon's multilevel iteration (``variant="multilevel"``):
besides the network's direction it searches along the network's directions for the residual on coarser grids and
along the residual; "DCDM (paper)" is the paper's iteration (``variant="paper"``, k = 2); "DCDM-FPCG"
uses the same network as the preconditioner of flexible CG; "DST-PCG" is CG preconditioned with the exact fast Poisson solver of the
obstacle-free box.  The learned solvers get the paper's budget of ``maxiter_dcdm`` = 100
iterations; a solver that fails a tolerance is not run at the tighter one, and a learned solver that fails
on one grid is not run on the larger ones (row status "skipped"; each network pass costs seconds there).
Reported: iterations and wall time per solver, and a plot of iterations versus unknowns (size independence is the claim under test).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .common import machine_info, print_table, sync, write_json

SIZES = {
    "quick": {2: [64, 128], 3: []},
    "default": {2: [128, 256, 512, 1024], 3: [32, 64]},
    "paper": {2: [128, 256, 512, 1024], 3: [32, 64, 128]},
}
SCENE_SEED = 90_000  # training scenes use seeds < 1000: these are unseen


def _scene(dim, n, device, dtype):
    import torch

    from ..datasets.geometry import random_obstacles
    from ..operators import Laplacian

    shape = (n,) * dim
    mask = random_obstacles(shape, 6, seed=SCENE_SEED + n, min_size=0.06, max_size=0.2)
    A = Laplacian(shape, spacing=1.0 / (n + 1), bc="dirichlet", obstacles=mask, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(SCENE_SEED + 7 * n)
    b = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return A, b.masked_fill(mask.to(device), 0)


def run(size="default", *, device="cpu", rtols=(1e-4, 1e-6), out="bench-out", peers=True, plot=True,
        maxiter_dcdm=100, models=None) -> dict:
    """Run the suite; ``models``: checkpoint paths to use instead of the shipped ones (their ``dim`` decides)."""
    import torch

    from ..solvers import CG, DCDM, IC0, Jacobi, SpectralPoisson
    from ..solvers.result import Status

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    models_given = models
    out = Path(out)
    results = {"suite": "dcdm", "size": size, "machine": machine_info(device), "rows": []}
    if not str(device).startswith("cuda"):
        from ..kernels import fused_cpu

        results["fused_cpu_load_s"] = fused_cpu.warm()  # the Krylov peers in steady state from the first solve
    models = {}
    for path in models_given or []:
        m = DCDM.load(path)
        models[m.dim] = m
    for dim in (2, 3):
        if dim in models:
            continue
        try:
            models[dim] = DCDM.pretrained(f"poisson{dim}d")
        except FileNotFoundError:
            print(f"(no shipped {dim}-D DCDM model: {dim}-D rows skipped)")
    results["models"] = {str(d): getattr(m.model, "config", {}) for d, m in models.items()}
    for dim in (2, 3):
        failed_smaller = set()  # learned solvers that missed the loosest tolerance on a smaller grid
        for n in SIZES[size][dim]:
            if dim not in models:
                continue
            A, b = _scene(dim, n, device, torch.float64)
            N = math.prod(A.shape_in)
            net = models[dim].model
            solvers = [("DCDM", DCDM(net, maxiter=maxiter_dcdm)),
                       ("DCDM (paper)", DCDM(net, variant="paper", maxiter=maxiter_dcdm)),
                       ("DCDM-FPCG", CG(M=models[dim].preconditioner(), flexible=True, maxiter=maxiter_dcdm)),
                       ("CG", CG(maxiter=50 * n)), ("Jacobi-PCG", CG(M=Jacobi(A), maxiter=50 * n))]
            if N <= 2_100_000:
                solvers.append(("IC0-PCG", CG(M=IC0(A), maxiter=20 * n)))
            # the fast Poisson solver of the obstacle-free box as preconditioner: the obstacles perturb it only
            # near their faces, so this classical peer needs ~10 iterations at every size
            solvers.append(("DST-PCG", CG(M=SpectralPoisson(), maxiter=20 * n)))
            if peers:
                try:
                    import pyamg

                    ml = pyamg.smoothed_aggregation_solver(A.to_scipy())
                    solvers.append(("pyamg-PCG", CG(M=ml.aspreconditioner(), maxiter=10 * n)))
                except ImportError:
                    pass
            grid = "x".join([str(n)] * dim)
            failed = set(failed_smaller)
            for rtol in sorted(rtols, reverse=True):
                for name, solver in solvers:
                    if name in failed:
                        results["rows"].append({"grid": grid, "unknowns": N, "rtol": rtol,
                                                "solver": name, "iterations": None, "matvecs": None,
                                                "net_passes": None, "time_s": None,
                                                "true_rel_res": None, "converged": False, "status": "skipped"})
                        continue
                    sync(device)
                    t0 = time.perf_counter()
                    res = solver.solve(A, b, rtol=rtol)
                    sync(device)
                    t = time.perf_counter() - t0
                    rel = float(torch.linalg.vector_norm(b - A @ res.x) / torch.linalg.vector_norm(b))
                    row = {"grid": grid, "unknowns": N, "rtol": rtol, "solver": name,
                           "iterations": int(res.iterations), "matvecs": int(res.n_matvec),
                           "net_passes": res.extras.get("network_passes"), "time_s": t, "true_rel_res": rel,
                           "converged": bool(res.converged), "status": Status.NAMES[int(res.status)]}
                    results["rows"].append(row)
                    write_json(out / "dcdm.json", results)  # finished rows survive an interrupted run
                    if not row["converged"]:
                        failed.add(name)
                        if name.startswith("DCDM"):
                            failed_smaller.add(name)
                    print(f"  {row['grid']:>14s} rtol {rtol:.0e} {name:12s} {row['iterations']:6d} it  {t:8.2f} s  "
                          f"rel.res {rel:.1e}  {row['status']}", flush=True)
    if results["rows"]:
        print_table(results["rows"], ["grid", "rtol", "solver", "iterations", "matvecs", "net_passes", "time_s", "true_rel_res", "status"],
                    title=f"\n== DCDM vs Krylov on unseen obstacle scenes (device {device}, torch threads {torch.get_num_threads()}) ==")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dcdm.json", results)
    if plot and results["rows"]:
        plot_iterations(results, rtols, out / "dcdm_iterations.png")
    print(f"\nwrote {out / 'dcdm.json'}")
    return results


def plot_iterations(results: dict, rtols, path) -> None:
    """Iterations versus unknowns per solver and tolerance; 2-D grids solid, 3-D dashed (same colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = list(dict.fromkeys(r["solver"] for r in rows))
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, len(rtols), figsize=(6 * len(rtols), 4.2), squeeze=False)
    for ax, rtol in zip(axes[0], rtols):
        for name in names:
            for dim, style in ((2, "-"), (3, "--")):
                pts = sorted((r["unknowns"], r["iterations"]) for r in rows if r["solver"] == name and r["rtol"] == rtol
                             and r["converged"] and r["grid"].count("x") == dim - 1)
                if pts:
                    ax.loglog(*zip(*pts), style, marker="o", color=colours[name], label=f"{name} ({dim}-D)")
        ax.set_xlabel("unknowns")
        ax.set_ylabel("iterations")
        ax.set_title(f"iterations to rtol {rtol:g} (2-D solid, 3-D dashed)")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(result: dict) -> list[dict]:
    """Rows of the ``krylon bench`` summary: per grid at the loosest tolerance, the best learned solver (any row
    whose name says DCDM) against the best classical one, in iterations and in solve wall time (setup such as
    IC0's factorisation or pyamg's hierarchy excluded, as in the suite's own table).  A learned solver that did
    not converge or was skipped never wins; when none converged the row says so."""
    from .summary import compare

    rows = result["rows"]
    if not rows:
        return []
    rtol = max(r["rtol"] for r in rows)
    out = []
    for grid in dict.fromkeys(r["grid"] for r in rows):
        here = [r for r in rows if r["grid"] == grid and r["rtol"] == rtol]
        learned = [r for r in here if "dcdm" in r["solver"].lower()]
        classical = [r for r in here if "dcdm" not in r["solver"].lower()]
        problem = f"poisson{grid.count('x') + 1}d {grid}, obstacles"
        for metric, key in ((f"iterations to {rtol:.0e}", "iterations"), (f"solve time to {rtol:.0e} (s)", "time_s")):
            out.append(compare("dcdm", problem, metric,
                               [(r["solver"], r[key] if r["converged"] else None) for r in learned],
                               [(r["solver"], r[key] if r["converged"] else None) for r in classical]))
    return out

"""Discover what an imperfect Kuramoto–Sivashinsky model is missing (MEDIDA), with and without noise.

The truth is u_t = -u u_x - u_xx - u_xxxx (L = 100, N = 1024).  The imperfect model has half the u_xx
coefficient.  We observe the truth every 5e-3 time units, run the model one step from each observation, regress
the difference on 24 candidate terms u^p d^d u with a relevance vector machine, print the corrected equation
and plot truth, model and corrected model from the same initial state.

    python examples/kuramoto_sivashinsky_discovery.py [--n 1024] [--samples 10] [--members 1024] [--plot ks.png]
"""

from __future__ import annotations

import argparse
import time

import torch

from krylon.datasets.kuramoto_sivashinsky import observation_windows
from krylon.operators.pde import KuramotoSivashinsky
from krylon.solvers import MEDIDA
from krylon.solvers.libraries import PolynomialDerivativeLibrary
from krylon.solvers.medida import observe, simulate


def discover(n=1024, length=100.0, samples=10, members=1024, noise=0.01, spinup=100.0, spacing=10.0, plot=None):
    truth = KuramotoSivashinsky((1, 1, 1), length=length, n=n)
    model = KuramotoSivashinsky((1, 0.5, 1), length=length, n=n)  # the imperfect model: half the u_xx
    t0 = time.perf_counter()
    windows = observation_windows(truth, samples, n_times=3, spinup=spinup, spacing=spacing)  # (samples, 3, n)
    print(f"truth: {samples} windows of 3 snapshots 5e-3 apart ({time.perf_counter() - t0:.1f} s)")
    library = PolynomialDerivativeLibrary(length, n=n)
    results = {}
    for label, obs, kw in (("noise-free", observe(windows[:, 1:], 5e-3), {}),
                           (f"{100 * noise:g}% noise, EnKF {members}", observe(windows, 5e-3, noise=noise, seed=0), {"members": members})):
        if not noise and kw:
            continue
        t0 = time.perf_counter()
        found = MEDIDA(model, library, **kw).discover(obs, truth=truth.terms)
        print(f"\n{label} ({time.perf_counter() - t0:.1f} s)")
        print(found)
        results[label] = found
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        corrected = KuramotoSivashinsky(results["noise-free"].corrected, length=length, n=n)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
        for ax, (name, m) in zip(axes, (("truth", truth), ("model (half u_xx)", model), ("corrected model", corrected))):
            traj = simulate(m, windows[0, 0], 50.0, 1e-2, every=0.25)
            ax.imshow(traj.numpy(), aspect="auto", origin="lower", cmap="RdBu_r", extent=(0, length, 0, 50), vmin=-3, vmax=3)
            ax.set_title(name)
            ax.set_xlabel("x")
        axes[0].set_ylabel("t")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
        print(f"wrote {plot}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--members", type=int, default=1024)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    discover(n=args.n, samples=args.samples, members=args.members, noise=args.noise, plot=args.plot)

"""Two-layer QG truth data: observation windows from forced runs, and HDF5 files (``krylon generate qg``).

:func:`observation_windows` is what MEDIDA's QG runs observe: ``members`` independent runs (one batch) start
from the radiative equilibrium plus small eddies (:meth:`QuasiGeostrophic.initial_state`), spin up for
``spinup`` time units, and then give ``n_samples`` windows each, ``spacing`` time units apart, of ``n_times``
streamfunction snapshots one step ``dt`` apart.  The whole run is one leapfrog integration with the paper's
Robert--Asselin filter (:func:`krylon.solvers.timestepping.simulate`, ``method="leapfrog"``), never restarted, so
consecutive snapshots are the truth's own steps.  :func:`generate` writes such windows to a krylon HDF5 data set, resumably.
"""

from __future__ import annotations

import torch

from ..kernels import validate
from ..operators.pde.quasi_geostrophic import PAPER, QuasiGeostrophic
from ..solvers.timestepping import simulate, whole_steps
from .hdf5 import DatasetWriter

__all__ = ["observation_windows", "generate", "truth_windows"]


def observation_windows(model: QuasiGeostrophic, n_samples: int = 10, *, members: int = 1, n_times: int = 2,
                        spacing: float = 10.0, spinup: float = 100.0, dt: float = PAPER["dt"],
                        filter: float = PAPER["filter"], seed: int = 0, callback=None) -> torch.Tensor:
    """Truth windows ``(n_samples * members, n_times, 2, n_y, n_x)`` of ``model`` (see the module docstring).

    Windows are ordered sample-major: window ``i * members + m`` is run ``m``'s ``i``-th.  ``callback(i, w)``
    gets each sample's ``members`` windows as they are made (progress, streaming to disk).
    """
    if not isinstance(model, QuasiGeostrophic):
        raise TypeError(f"model must be a QuasiGeostrophic, got {type(model).__name__}")
    n_samples = validate.integer(n_samples, "n_samples")
    members = validate.integer(members, "members")
    n_times = validate.integer(n_times, "n_times")
    dt = validate.real_number(dt, "dt", minimum=0.0)
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    gap = whole_steps(spacing, dt, "spacing") - (n_times - 1)
    if gap < 0:
        raise ValueError(f"spacing = {spacing} is shorter than a window of {n_times} snapshots {dt} apart")
    first = whole_steps(spinup, dt, "spinup")
    stride = gap + n_times - 1
    marks = [first + i * stride + j for i in range(n_samples) for j in range(n_times)]
    psi0 = model.initial_state(batch=members, generator=torch.Generator().manual_seed(validate.integer(seed, "seed", minimum=0)))
    out, window = [], []

    def take(snap):  # every snapshot as it is taken; a finished window goes to the callback (streaming to disk)
        window.append(snap)
        if len(window) == n_times:
            w = torch.stack(window, dim=1)                             # (members, n_times, 2, ny, nx)
            window.clear()
            out.append(w)
            if callback is not None:
                callback(len(out) - 1, w)
        return snap[:0]  # kept here, not stacked a second time by the driver

    # one leapfrog run, never restarted: consecutive snapshots are the truth's own steps
    simulate(model, psi0, marks[-1] * dt, dt, method="leapfrog", options={"filter": filter}, times=[m * dt for m in marks],
             transform=take)
    return torch.cat(out)


def generate(path, *, n_samples: int = 10, members: int = 1, n_times: int = 2, spacing: float = 10.0,
             spinup: float = 100.0, dt: float = PAPER["dt"], seed: int = 0, settings: dict | None = None,
             progress: bool = False) -> str:
    """Write QG observation windows to a krylon HDF5 data set: field ``psi`` of shape
    ``(n_samples * members, n_times, 2, n_y, n_x)`` (streamfunctions of both layers); attributes carry the model's
    settings and every parameter.

    Resumable: an interrupted run continues after the last finished sample (the trajectory is recomputed up to
    there, deterministically, and finished windows are not rewritten).
    """
    model = QuasiGeostrophic(**(settings or {}))
    params = {"model": model.config, "members": members, "n_times": n_times, "spacing": spacing, "spinup": spinup,
              "dt": dt, "filter": PAPER["filter"], "integrator": "leapfrog + Robert-Asselin",
              "layout": "(sample*members, time, layer, y, x)", "x": "-L_x/2 + j L_x/n_x", "y": "-L_y/2 + i L_y/n_y"}
    ny, nx = model.shape
    with DatasetWriter(path, n_samples * members, {"psi": ((n_times, 2, ny, nx), "float64")},
                       generator="krylon.datasets.quasi_geostrophic", parameters=params, seed=seed) as w:
        start = w.n_written
        bar = None
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=n_samples * members, initial=start, desc="qg windows")

        def sink(i, windows):
            for m in range(members):
                j = i * members + m
                if j >= start:
                    w.write(j, {"psi": windows[m].cpu().numpy()})
                    if bar is not None:
                        bar.update()

        if start < n_samples * members:
            observation_windows(model, n_samples, members=members, n_times=n_times, spacing=spacing, spinup=spinup,
                                dt=dt, seed=seed, callback=sink)
        if bar is not None:
            bar.close()
    return str(path)


def truth_windows(*, shape, nu, spinup, samples, members, spacing, seed: int = 0, device: str = "cpu") -> tuple:
    """``(truth model, windows (samples * members, 2, 2, n_y, n_x))`` of the paper's truth at this size."""
    truth = QuasiGeostrophic(shape=shape, nu=nu, device=device)
    return truth, observation_windows(truth, samples, members=members, n_times=2, spacing=spacing, spinup=spinup,
                                      seed=seed)

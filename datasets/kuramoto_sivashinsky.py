"""Kuramoto–Sivashinsky truth data: observation windows sampled from one chaotic trajectory, and HDF5 files.

:func:`observation_windows` is what MEDIDA's Kuramoto–Sivashinsky runs observe: after a spin-up from the
papers' initial state, ``n_samples`` windows ``spacing`` time units apart, each ``n_times`` snapshots
``interval`` apart.  The windows are stepped with ETDRK4 at the truth's step ``dt`` (1e-3, the paper's); the
spin-up and the gaps between windows, which only have to land on the attractor, may use a coarser
``transit_dt`` (ETDRK4 at 1e-2 is still accurate to ~1e-8 per time unit, and ten times cheaper).
:func:`generate` (``krylon generate ks``) writes such windows, or whole trajectories, to a krylon HDF5 data set,
resumably, one sample at a time.
"""

from __future__ import annotations

import math

import torch

from ..kernels import validate
from ..operators.pde.kuramoto_sivashinsky import KuramotoSivashinsky, initial_condition
from ..solvers.medida import simulate
from ..solvers.timestepping import whole_steps
from .hdf5 import DatasetWriter

__all__ = ["observation_windows", "generate"]


def _advance(model, u, t: float, coarse: float, fine: float):
    """``t`` time units: whole steps of ``coarse``, the remainder in steps of ``fine``."""
    k = math.floor(t / coarse + 1e-9)
    if k:
        u = simulate(model, u, k * coarse, coarse)
    rest = t - k * coarse
    if rest > 1e-12:
        u = simulate(model, u, fine * whole_steps(rest, fine, "the time between windows"), fine)
    return u


def observation_windows(model: KuramotoSivashinsky, n_samples: int = 10, *, n_times: int = 2, interval: float = 5e-3,
                        spacing: float = 10.0, spinup: float = 100.0, dt: float = 1e-3, transit_dt: float | None = 1e-2,
                        u0: torch.Tensor | None = None, callback=None) -> torch.Tensor:
    """Truth snapshots ``(n_samples, n_times, n)`` of ``model`` (see the module docstring).

    Parameters
    ----------
    transit_dt : float, optional
        ETDRK4 step of the spin-up and of the gaps between windows (None: ``dt`` throughout, the paper's run).
    u0 : tensor (n,), optional
        Initial state (default: the papers' ``-cos(2 pi x/L)(1 + sin(-2 pi x/L))``).
    callback : callable, optional
        ``callback(i, window)`` after each window (progress, streaming to disk).
    """
    n_samples = validate.integer(n_samples, "n_samples")
    n_times = validate.integer(n_times, "n_times")
    for name, value in (("interval", interval), ("spacing", spacing), ("dt", dt)):
        if not validate.real_number(value, name, minimum=0.0) > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    spinup = validate.real_number(spinup, "spinup", minimum=0.0)
    transit = dt if transit_dt is None else validate.real_number(transit_dt, "transit_dt", minimum=0.0)
    whole_steps(interval, dt, "interval")
    window = (n_times - 1) * interval
    if spacing < window:
        raise ValueError(f"spacing = {spacing} is shorter than a window of {n_times} snapshots {interval} apart")
    gap = spacing - window
    u = initial_condition(model.n, model.length, dtype=model.dtype, device=model.device) if u0 is None else u0
    u = _advance(model, u, spinup, transit, dt)
    out = []
    for i in range(n_samples):
        if i:
            u = _advance(model, u, gap, transit, dt)
        w = simulate(model, u, window, dt, every=interval) if n_times > 1 else u[None]
        u = w[-1]
        out.append(w)
        if callback is not None:
            callback(i, w)
    return torch.stack(out)


def generate(path, *, n_samples: int = 10, n_times: int = 2, interval: float = 5e-3, spacing: float = 10.0,
             spinup: float = 100.0, coefficients=(1.0, 1.0, 1.0), extra=None, length: float = 100.0, n: int = 1024,
             dt: float = 1e-3, transit_dt: float | None = 1e-2, progress: bool = False) -> str:
    """Write Kuramoto–Sivashinsky observation windows to a krylon HDF5 data set (field ``u``:
    ``(n_samples, n_times, n)``; attributes carry every parameter).

    Resumable: an interrupted run continues from the last finished window (the trajectory is recomputed up
    to there, deterministically, and the finished windows are not rewritten).
    """
    model = KuramotoSivashinsky(coefficients, extra=extra, length=length, n=n)
    params = {"coefficients": list(coefficients), "extra": dict(extra or {}), "length": length, "n": n, "dt": dt,
              "transit_dt": transit_dt, "n_times": n_times, "interval": interval, "spacing": spacing, "spinup": spinup,
              "terms": model.terms, "x": "j L / n", "initial_condition": "-cos(2 pi x/L)(1 + sin(-2 pi x/L))"}
    with DatasetWriter(path, n_samples, {"u": ((n_times, n), "float64")}, generator="krylon.datasets.kuramoto_sivashinsky",
                       parameters=params) as w:
        start = w.n_written
        bar = None
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=n_samples, initial=start, desc="ks windows")

        def sink(i, window):
            if i >= start:
                w.write(i, {"u": window})
            if bar is not None and i >= start:
                bar.update()

        if start < n_samples:
            observation_windows(model, n_samples, n_times=n_times, interval=interval, spacing=spacing, spinup=spinup, dt=dt,
                                transit_dt=transit_dt, callback=sink)
        if bar is not None:
            bar.close()
    return str(path)


def discover_case(model, truth=None, *, windows: torch.Tensor | None = None, n_samples: int = 10, noise: float = 0.0,
                  members: int = 2048, interval: float = 5e-3, regression: str = "rvm", threshold: float | None = None,
                  seed: int = 0, sensors: float | None = None, interp: str = "spectral", window_options: dict | None = None,
                  medida_options: dict | None = None):
    """One Kuramoto–Sivashinsky MEDIDA case end to end: truth windows (simulated here unless given), then
    :func:`krylon.solvers.medida.discover_ks` on them (observation, assimilation, regression).

    Parameters
    ----------
    model, truth : KuramotoSivashinsky
        The imperfect model and the truth (default: the classical equation on the model's grid).
    windows : tensor (n_samples, n_times, n), optional
        Truth snapshots ``interval`` apart to reuse (several cases share one truth run); simulated otherwise,
        with 2 snapshots per sample noise-free and 3 with noise (the EnKF needs one to start its ensemble).
    window_options : dict
        Passed to :func:`observation_windows`; the other options to :func:`~krylon.solvers.medida.discover_ks`.

    Returns
    -------
    (DiscoveredModelError, windows)
    """
    from ..solvers.medida import discover_ks

    truth = truth if truth is not None else KuramotoSivashinsky((1, 1, 1), length=model.length, n=model.n)
    if windows is None:
        windows = observation_windows(truth, n_samples, n_times=3 if noise else 2, interval=interval, **(window_options or {}))
    found = discover_ks(model, windows, interval, truth=truth, noise=noise, members=members, regression=regression,
                        threshold=threshold, seed=seed, sensors=sensors, interp=interp, medida_options=medida_options)
    return found, windows

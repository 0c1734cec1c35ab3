"""MEDIDA on two-layer quasi-geostrophic turbulence (the 2024 paper's cases): the QG part of ``krylon bench medida``.

One truth run (the paper's parameters; every case shares it: only the imperfect model differs) gives
``samples x members`` windows of two streamfunction snapshots one step apart.  Each case is then discovered from

* full observations (noise-free): the changed parameter should come back within 5%;
* ``sensors`` (25%) of the grid points per layer, filled by cubic interpolation (the paper's baseline), a
  spectral least-squares fit and the random-Fourier-feature MLP (the paper's remedy), side by side.

Reported per run: the true and the discovered model-error coefficients, the worst relative error over the true
error terms, spurious and missed terms, seconds.  :func:`discover_qg` is the one experiment (also behind
``krylon discover qg``); :func:`run_qg` the suite (SIZES, JSON under ``out``, a table); :func:`summary_qg` its
summary rows (krylon's RFF/spectral interpolation against the cubic baseline, lower worst error better).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..datasets.quasi_geostrophic import observation_windows
from ..operators.pde.quasi_geostrophic import CASES, PAPER, QuasiGeostrophic
from ..solvers.interpolation import SensorInterpolator
from ..solvers.libraries import QuasiGeostrophicLibrary
from ..solvers.medida import MEDIDA, Observations
from .common import machine_info, print_table, write_json
from .summary import compare

__all__ = ["SIZES", "LowPassMEDIDA", "discover_qg", "sensor_mask", "truth_windows", "run_qg", "summary_qg"]

#: grid, hyperviscosity (raised on coarse grids so the enstrophy cascade is still absorbed), run lengths, cases
SIZES = {
    "quick": {"shape": (64, 32), "nu": 1e-3, "spinup": 60.0, "samples": 3, "members": 2, "spacing": 5.0,
              "cases": ["tau_d"], "interp": ["cubic", "spectral", "rff"],
              "rff": {"sigma": 2.0, "features": 64, "width": 64, "depth": 3, "epochs": 600, "lr": 3e-3}},
    "default": {"shape": (96, 48), "nu": 2e-4, "spinup": 100.0, "samples": 5, "members": 2, "spacing": 5.0,
                "cases": ["tau_d", "tau_f"], "interp": ["cubic", "spectral", "rff"],
                "rff": {"sigma": 2.0, "features": 128, "width": 128, "depth": 3, "epochs": 1500, "lr": 3e-3}},
    "paper": {"shape": PAPER["shape"], "nu": PAPER["nu"], "spinup": 250.0, "samples": 10, "members": 2, "spacing": 10.0,
              "cases": list(CASES), "interp": ["cubic", "spectral", "rff"],
              "rff": {"sigma": 5.0, "features": 1000, "width": 1000, "depth": 4, "epochs": 10000, "lr": 1e-3}},
}


def truth_windows(*, shape, nu, spinup, samples, members, spacing, seed: int = 0, device: str = "cpu") -> tuple:
    """``(truth model, windows (samples * members, 2, 2, n_y, n_x))`` of the paper's truth at this size."""
    truth = QuasiGeostrophic(shape=shape, nu=nu, device=device)
    return truth, observation_windows(truth, samples, members=members, n_times=2, spacing=spacing, spinup=spinup,
                                      seed=seed)


class LowPassMEDIDA(MEDIDA):
    """MEDIDA regressing on the large scales only: the model error and the library columns of a QG model, both
    passed through the same sharp spectral cut ``|K| <= cutoff`` (a linear filter on both sides of
    ``y = Theta c`` keeps ``c``).  Interpolated sparse observations are wrong mostly at small scales, and a one-step
    model error divides those errors by ``dt``; the cut keeps them out of the regression."""

    def __init__(self, model: QuasiGeostrophic, library, *, cutoff: float, **options):
        super().__init__(model, library, **options)
        self.cutoff = cutoff

    def model_error(self, observations, times=None):
        theta, y, info = super().model_error(observations, times)
        grid = (2, *self.model.shape)
        y = self.model.lowpass(y.reshape(-1, *grid), self.cutoff).flatten()
        m = theta.shape[-1]
        theta = self.model.lowpass(theta.reshape(-1, *grid, m).movedim(-1, 1), self.cutoff).movedim(1, -1).reshape(-1, m)
        info["lowpass"] = self.cutoff
        return theta, y, info


def discover_qg(case: str, windows: torch.Tensor, *, shape, nu, sensors: float | None = None, interp: str = "rff",
                rff: dict | None = None, regression: str = "rvm", threshold: float | None = 10.0,
                lowpass: float | None = 0.6, seed: int = 1, device: str = "cpu"):
    """Discover the model error of ``case`` from truth ``windows``; returns the :class:`DiscoveredModelError`.

    ``threshold``: the RVM's pruning precision; 10 (not the KS default 1e2) because QG's one-step errors carry a
    time-stepping residual (the truth leapfrogs, the forecast is one Euler step) that the relative 1e2 lets a
    spurious Laplacian or two fit (precisions 60-100 measured; the true terms' are < 1).  ``lowpass``: regress
    on the modes ``|K| <= lowpass`` only (:class:`LowPassMEDIDA`; default 0.6, scales longer than ~10
    deformation radii; None: every mode).  Both the interpolation errors of sparse sensors and the
    time-stepping residual live at small scales, so the cut helps full observations too (worst error over the
    eight cases 3.5% -> 1.6% at the default size).

    ``sensors``: observed fraction of the grid points, the same in both layers as in the paper (None: full
    observations); ``interp``: ``"cubic"``, ``"spectral"`` or ``"rff"`` (``rff``: the network's options), or a
    ready :class:`SensorInterpolator` (its cache then serves several cases with the same observations).
    """
    truth, model = QuasiGeostrophic.case(case, shape=shape, nu=nu, device=device)
    fill, mask, values = None, None, windows
    if sensors is not None:
        fill = interp if isinstance(interp, SensorInterpolator) else SensorInterpolator(
            interp, window=windows.shape[1], **((rff or {}) if interp == "rff" else {}))
        mask = sensor_mask(tuple(windows.shape[-2:]), sensors, seed=seed).to(windows.device).expand(windows.shape[-3:])
        values = windows.masked_fill(~mask, float("nan"))
    opts = dict(regression=regression, threshold=threshold, interpolate=fill, seed=seed)
    library = QuasiGeostrophicLibrary(model)
    medida = MEDIDA(model, library, **opts) if lowpass is None else LowPassMEDIDA(model, library, cutoff=lowpass, **opts)
    found = medida.discover(Observations(values, PAPER["dt"], 0.0, mask), truth=truth.terms)
    found.info.update(case=case, interp=(fill.method if fill is not None else None), lowpass=lowpass)
    return found


def sensor_mask(shape, fraction: float, *, seed: int = 0) -> torch.Tensor:
    """A random set of ``round(fraction * n)`` grid points of a 2-D grid (True where a sensor is), seeded."""
    if not 0 < fraction <= 1:
        raise ValueError(f"sensors is the observed fraction of the grid, in (0, 1], got {fraction}")
    n = shape[0] * shape[1]
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max(4, round(fraction * n))]] = True
    return flat.reshape(shape)


def _row(case: str, label: str, found, seconds: float) -> dict:
    errs = found.errors
    return {"case": case, "observations": label, "terms": len(found.coefficients),
            "worst error %": 100 * max(errs.values()) if errs else None,
            "spurious": ",".join(found.spurious) or "-", "missed": ",".join(found.missed) or "-", "seconds": seconds,
            "discovered": {k: round(v, 6) for k, v in found.coefficients.items()},
            "true error": {k: round(v, 6) for k, v in _true_error(found).items()}}


def _true_error(found) -> dict:
    model = found.model or {}
    keys = set(found.truth or {}) | set(model)
    out = {k: (found.truth or {}).get(k, 0.0) - model.get(k, 0.0) for k in keys}
    return {k: v for k, v in sorted(out.items()) if v}


def run_qg(size: str = "default", *, device: str = "cpu", out: str | Path = "bench-out", seed: int = 0) -> dict:
    """Run the QG cases at ``size`` (see :data:`SIZES`), print a table and write ``out/medida_qg.json``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    t0 = time.perf_counter()
    truth, windows = truth_windows(shape=spec["shape"], nu=spec["nu"], spinup=spec["spinup"], samples=spec["samples"],
                                   members=spec["members"], spacing=spec["spacing"], seed=seed, device=device)
    truth_seconds = time.perf_counter() - t0
    rows = []
    # one interpolator per method, shared by the cases: they observe the same truth, so each fill is made once
    fills = {m: SensorInterpolator(m, window=2, cache=True, **(spec["rff"] if m == "rff" else {})) for m in spec["interp"]}
    for case in spec["cases"]:
        for sensors, interp in [(None, None)] + [(0.25, m) for m in spec["interp"]]:
            t = time.perf_counter()
            found = discover_qg(case, windows, shape=spec["shape"], nu=spec["nu"], sensors=sensors,
                                interp=fills[interp] if interp else "rff", device=device)
            rows.append(_row(case, "full" if sensors is None else f"25% {interp}", found, time.perf_counter() - t))
    print_table(rows, ["case", "observations", "terms", "worst error %", "spurious", "missed", "seconds"],
                title=f"MEDIDA two-layer QG ({size}: grid {spec['shape']}, {spec['samples'] * spec['members']} windows, "
                      f"truth run {truth_seconds:.0f} s)")
    result = {"suite": "medida_qg", "size": size, "spec": spec, "truth_seconds": truth_seconds, "rows": rows,
              "machine": machine_info(device), "threads": torch.get_num_threads()}
    write_json(Path(out) / "medida_qg.json", result)
    return result


def summary_qg(result: dict) -> list[dict]:
    """Per case: the worst coefficient error with 25% sensors, krylon's RFF/spectral fill vs the cubic baseline."""
    out = []
    for case in dict.fromkeys(r["case"] for r in result["rows"]):
        rows = {r["observations"]: r for r in result["rows"] if r["case"] == case}
        def ok(label):
            r = rows.get(label)
            return None if r is None or r["missed"] != "-" or r["spurious"] != "-" else r["worst error %"]
        out.append(compare("medida", f"QG {case}, 25% sensors", "worst coefficient error %",
                           [("rff", ok("25% rff")), ("spectral", ok("25% spectral"))], [("cubic", ok("25% cubic"))]))
    return out

"""MEDIDA on two-layer quasi-geostrophic turbulence (the 2024 paper's cases): the QG part of ``krylon bench medida``.

One truth run (the paper's parameters; every case shares it: only the imperfect model differs) gives
``samples x members`` windows of two streamfunction snapshots one step apart.  Each case is then discovered from

* full observations (noise-free): the changed parameter should come back within 5%;
* ``sensors`` (25%) of the grid points per layer, filled by cubic interpolation (the paper's baseline), a
  spectral least-squares fit and the random-Fourier-feature MLP (the paper's remedy), side by side.

Reported per run: the true and the discovered model-error coefficients, the worst relative error over the true
error terms, spurious and missed terms, seconds.  The one experiment, :func:`krylon.solvers.medida_qg.discover_qg`
(also behind ``krylon discover qg``), and the truth run, :func:`krylon.datasets.quasi_geostrophic.truth_windows`,
live in the library; :func:`run_qg` is the suite (SIZES, JSON under ``out``, a table); :func:`summary_qg` its
summary rows (krylon's RFF/spectral interpolation against the cubic baseline, lower worst error better).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..datasets.quasi_geostrophic import truth_windows
from ..operators.pde.quasi_geostrophic import CASES, PAPER
from ..solvers.interpolation import SensorInterpolator
from ..solvers.medida_qg import discover_qg
from .common import machine_info, print_table, write_json
from .summary import compare

__all__ = ["SIZES", "truth_windows", "run_qg", "summary_qg"]

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

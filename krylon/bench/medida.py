"""``krylon bench medida``: MEDIDA's Kuramoto–Sivashinsky cases, krylon's RVM against pysindy on the same data,
then the two-layer QG cases (:mod:`krylon.bench.medida_qg`: full observations and 25% sensors filled by cubic,
spectral and RFF-MLP interpolation).

One truth run (L = 100, N = 1024, ETDRK4; observation windows 5e-3 apart, ``spacing`` time units apart) serves
every case.  For each imperfect model of the paper (missing, halved, doubled and mixed coefficients; extra
``c u_xxx`` and ``c u^2 u_x`` terms) the suite computes the one-step model error (krylon's midpoint estimator) once and fits it three ways:
krylon's RVM (the method), krylon's STLSQ, and pysindy's own ``PDELibrary`` (degree 4, derivatives up to 4,
finite differences) with its ``STLSQ`` — the tool users reach for — on the same model-error data; krylon's RVM
with the paper's estimator (error at the step's start, unfiltered) is reported beside it.  It reports
the discovered terms, relative errors of the model-error coefficients and of the corrected model against the
truth, spurious and missed terms and seconds, and with observation noise runs the EnKF path for the cases the
size lists.  JSON and a PNG (truth / imperfect model / corrected model from one initial state) go to ``out``.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import torch

from .common import machine_info, print_table, write_json

__all__ = ["SIZES", "CASES", "run", "summary"]

# the paper's imperfect models (truth l = (1, 1, 1)): (name, (l0, l1, l2), extra terms on the right-hand side)
CASES = [
    ("missing u*u_x", (0, 1, 1), {}), ("missing u_xx", (1, 0, 1), {}), ("missing u_xxxx", (1, 1, 0), {}),
    ("only u*u_x", (1, 0, 0), {}), ("only u_xx", (0, 1, 0), {}), ("only u_xxxx", (0, 0, 1), {}),
    ("halved u*u_x", (0.5, 1, 1), {}), ("halved u_xx", (1, 0.5, 1), {}), ("halved u_xxxx", (1, 1, 0.5), {}),
    ("doubled all", (2, 2, 2), {}), ("mixed 0, 0.5, 2", (0, 0.5, 2), {}), ("mixed 0.5, 0, 1", (0.5, 0, 1), {}),
    ("extra 0.1 u_xxx", (1, 1, 1), {"u_xxx": 0.1}), ("extra 0.5 u_xxx", (1, 1, 1), {"u_xxx": 0.5}),
    ("extra 1 u_xxx", (1, 1, 1), {"u_xxx": 1.0}), ("extra 1.5 u^2*u_x", (1, 1, 1), {"u^2*u_x": 1.5}),
    ("extra 0.15 u^2*u_x", (1, 1, 1), {"u^2*u_x": 0.15}), ("extra 0.015 u^2*u_x", (1, 1, 1), {"u^2*u_x": 0.015}),
]

SIZES = {
    # noise-free: every paper case on `samples` windows `spacing` apart; noisy (EnKF): the cases named, on
    # `noisy_samples` windows `noisy_spacing` apart (10 windows are too few at 1% noise: the regression keeps
    # spurious terms), with `members` ensemble members
    "quick": {"n": 1024, "samples": 10, "spacing": 10.0, "spinup": 100.0, "transit_dt": 1e-2,
              "noisy": ["halved u_xx"], "noise": 0.01, "members": 1024, "noisy_samples": 60, "noisy_spacing": 2.0,
              "qg": "quick"},
    "default": {"n": 1024, "samples": 10, "spacing": 10.0, "spinup": 100.0, "transit_dt": 1e-2,
                "noisy": ["halved u_xx", "missing u_xx", "missing u_xxxx"], "noise": 0.01, "members": 2048,
                "noisy_samples": 60, "noisy_spacing": 2.0, "qg": "default"},
    "paper": {"n": 1024, "samples": 10, "spacing": 10.0, "spinup": 100.0, "transit_dt": None,
              "noisy": ["halved u_xx", "missing u_xx", "missing u_xxxx"], "noise": 0.01, "members": 10240,
              "noisy_samples": 60, "noisy_spacing": 2.0, "qg": "paper"},
}
# "qg": the size of the two-layer quasi-geostrophic cases (krylon.bench.medida_qg) run after the KS ones (None: none)

_PS_NAME = re.compile(r"^(?:x0(?:\^(\d))?)?(?:x0_(1+))?$")


def _pysindy_name(name: str) -> str | None:
    """pysindy's feature name (``x0^2x0_11``) as a krylon term name (``u^2*u_xx``)."""
    from ..operators.pde.kuramoto_sivashinsky import term_name

    m = _PS_NAME.match(name.replace(" ", ""))
    if m is None or not name:
        return None
    power = 0 if not name.startswith("x0") or name.startswith("x0_") else int(m.group(1) or 1)
    order = len(m.group(2)) if m.group(2) else 0
    return term_name(power, order)


def _pysindy_fit(cur: torch.Tensor, y: torch.Tensor, length: float, threshold: float) -> dict:
    """pysindy's PDE-FIND on the same (state, model error) pairs: its PDELibrary and STLSQ."""
    try:
        import pysindy as ps
    except ImportError:
        return {"available": False}
    n = cur.shape[-1]
    x = torch.arange(n, dtype=torch.float64).numpy() * (length / n)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = ps.PDELibrary(function_library=ps.PolynomialLibrary(degree=4, include_bias=False), derivative_order=4,
                            spatial_grid=x, include_bias=False, periodic=True)
        model = ps.SINDy(feature_library=lib, optimizer=ps.STLSQ(threshold=threshold, alpha=1e-5))
        # each sample is one spatial snapshot; pysindy wants a time axis, so the snapshot is given twice
        # (the time derivative is supplied, so the axis only carries copies: the least squares is unchanged)
        xs = [c.numpy()[:, None, None].repeat(2, axis=1) for c in cur]
        ys = [c.numpy()[:, None, None].repeat(2, axis=1) for c in y]
        model.fit(xs, t=1.0, x_dot=ys)
    seconds = time.perf_counter() - t0
    coefs = {}
    for name, c in zip(model.get_feature_names(), model.coefficients()[0].tolist()):
        if c != 0:
            coefs[_pysindy_name(name) or name] = float(c)
    return {"available": True, "coefficients": coefs, "seconds": seconds}


def _true_error(truth: dict, model: dict) -> dict:
    """The model error's true coefficients: truth minus model, by term name (zeros left out)."""
    diff = {k: truth.get(k, 0.0) - model.get(k, 0.0) for k in (*truth, *(k for k in model if k not in truth))}
    return {k: v for k, v in diff.items() if v}


def _score(coefs: dict, true_error: dict, truth: dict, model: dict) -> dict:
    spurious = [k for k in coefs if k not in true_error]
    missed = [k for k in true_error if k not in coefs]
    errors = {k: abs(coefs.get(k, 0.0) - v) / abs(v) for k, v in true_error.items()}
    corrected = dict(model)
    for k, c in coefs.items():
        corrected[k] = corrected.get(k, 0.0) + c
    corrected_errors = {k: abs(corrected.get(k, 0.0) - v) / abs(v) for k, v in truth.items() if v}
    exact = not spurious and not missed
    return {"coefficients": coefs, "spurious": spurious, "missed": missed, "errors": errors, "corrected_errors": corrected_errors,
            "exact": exact, "worst_error": max(errors.values()) if errors else 0.0,
            "worst_corrected_error": max(corrected_errors.values()) if corrected_errors else 0.0}


def run(size: str = "quick", *, device: str = "cpu", out: str | Path = "bench-out", peers: bool = True, plot: bool = True) -> dict:
    """Run the suite; see the module docstring."""
    from ..datasets.kuramoto_sivashinsky import observation_windows
    from ..operators.pde import KuramotoSivashinsky
    from ..solvers.libraries import PolynomialDerivativeLibrary
    from ..solvers.medida import MEDIDA, observe
    from ..solvers.sparse_regression import stlsq

    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    n, length, interval = cfg["n"], cfg.get("length", 100.0), 5e-3
    truth = KuramotoSivashinsky((1, 1, 1), length=length, n=n, device=dev)
    t0 = time.perf_counter()
    windows = observation_windows(truth, cfg["samples"], n_times=3, interval=interval, spacing=cfg["spacing"],
                                  spinup=cfg["spinup"], transit_dt=cfg["transit_dt"])
    truth_seconds = time.perf_counter() - t0
    print(f"truth: {cfg['samples']} windows of 3 snapshots, N = {n}, L = {length:g}, ETDRK4 dt 1e-3 in the windows "
          f"(spin-up and gaps at {cfg['transit_dt'] or 1e-3:g}): {truth_seconds:.1f} s")
    library = PolynomialDerivativeLibrary(length, n=n)
    cases = []
    for name, lam, extra in CASES:
        model = KuramotoSivashinsky(lam, extra=extra, length=length, n=n, device=dev)
        true_error = _true_error(truth.terms, model.terms)
        row = {"case": name, "model": model.terms, "true_error": true_error}
        obs = observe(windows[:, 1:], interval)
        t1 = time.perf_counter()
        found = MEDIDA(model, library).discover(obs, truth=truth.terms)
        row["krylon_seconds"] = time.perf_counter() - t1
        row["krylon"] = _score(found.coefficients, true_error, truth.terms, model.terms)
        row["krylon"]["stds"] = found.stds
        row["estimator"] = found.info["estimator"]
        paper = MEDIDA(model, library, estimator="start").discover(obs, truth=truth.terms)
        row["krylon_paper_estimator"] = _score(paper.coefficients, true_error, truth.terms, model.terms)
        # the baselines fit the same regression problem (the same model-error data and states)
        theta, y, _ = MEDIDA(model, library).model_error(obs)
        t1 = time.perf_counter()
        fit = stlsq(theta, y, threshold=0.1)
        row["stlsq_seconds"] = time.perf_counter() - t1
        row["stlsq"] = _score({nm: float(c) for nm, c, a in zip(library.names, fit.coef.tolist(), fit.active.tolist()) if a},
                              true_error, truth.terms, model.terms)
        if peers:
            states = 0.5 * (windows[:, 1] + windows[:, 2]) if row["estimator"] == "midpoint" else windows[:, 1]
            ps_fit = _pysindy_fit(states.cpu(), y.reshape(states.shape).cpu(), length, threshold=0.1)
            if ps_fit["available"]:
                row["pysindy"] = _score(ps_fit["coefficients"], true_error, truth.terms, model.terms)
                row["pysindy_seconds"] = ps_fit["seconds"]
        cases.append(row)
    noisy = []
    noisy_windows = None
    if cfg["noisy"]:
        t0 = time.perf_counter()
        noisy_windows = observation_windows(truth, cfg.get("noisy_samples", cfg["samples"]), n_times=3, interval=interval,
                                            spacing=cfg.get("noisy_spacing", cfg["spacing"]), spinup=cfg["spinup"],
                                            transit_dt=cfg["transit_dt"])
        print(f"truth for the noisy cases: {noisy_windows.shape[0]} windows {cfg.get('noisy_spacing', cfg['spacing']):g} apart: "
              f"{time.perf_counter() - t0:.1f} s")
    for name in cfg["noisy"]:
        _, lam, extra = next(c for c in CASES if c[0] == name)
        model = KuramotoSivashinsky(lam, extra=extra, length=length, n=n, device=dev)
        true_error = _true_error(truth.terms, model.terms)
        t1 = time.perf_counter()
        found = MEDIDA(model, library, members=cfg["members"]).discover(observe(noisy_windows, interval, noise=cfg["noise"], seed=0),
                                                                        truth=truth.terms)
        noisy.append({"case": name, "noise": cfg["noise"], "members": cfg["members"], "samples": int(noisy_windows.shape[0]),
                      "seconds": time.perf_counter() - t1,
                      "krylon": _score(found.coefficients, true_error, truth.terms, model.terms)})
    _print(cases, noisy)
    result = {"suite": "medida", "size": size, "config": cfg, "machine": machine_info(device), "threads": torch.get_num_threads(),
              "truth_seconds": truth_seconds, "cases": cases, "noisy": noisy}
    if plot:
        try:
            shown = next((c for c in cases if c["case"] == "halved u_xx"), cases[0])
            result["png"] = str(_plot(truth, shown, windows, out,
                                      cfg.get("plot_time", 40.0)))
        except ImportError:
            pass
    # ---- QG cases (issue #12, the 2024 paper): krylon.bench.medida_qg, its own table and medida_qg.json
    from .medida_qg import run_qg

    qg_size = cfg.get("qg", size)  # SIZES[size]["qg"]: the QG suite's size (None: no QG cases)
    if qg_size:
        result["qg"] = run_qg(qg_size, device=device, out=out)
    # ---- end QG cases
    write_json(out / "medida.json", result)
    return result


def _fmt_terms(score: dict) -> str:
    if score is None:
        return "-"
    return ", ".join(f"{k} {c:+.4f}" for k, c in score["coefficients"].items()) or "(none)"


def _print(cases, noisy) -> None:
    rows = []
    for c in cases:
        k, p = c["krylon"], c.get("pysindy")
        rows.append({"case": c["case"], "true error": ", ".join(f"{k_} {v:+g}" for k_, v in c["true_error"].items()),
                     "krylon RVM": _fmt_terms(k), "worst err %": 100 * k["worst_error"],
                     "corrected err %": 100 * k["worst_corrected_error"], "spurious": len(k["spurious"]) + len(k["missed"]),
                     "s": c["krylon_seconds"],
                     "STLSQ err %": 100 * c["stlsq"]["worst_error"],
                     "STLSQ spurious": len(c["stlsq"]["spurious"]) + len(c["stlsq"]["missed"]),
                     "paper estimator err %": 100 * c["krylon_paper_estimator"]["worst_error"],
                     "paper est. spurious": len(c["krylon_paper_estimator"]["spurious"]) + len(c["krylon_paper_estimator"]["missed"]),
                     "pysindy worst err %": None if p is None else 100 * p["worst_error"],
                     "pysindy spurious": None if p is None else len(p["spurious"]) + len(p["missed"]),
                     "pysindy s": c.get("pysindy_seconds")})
    print_table(rows, list(rows[0]), title="MEDIDA, Kuramoto-Sivashinsky, noise-free (spurious = spurious + missed terms)")
    if noisy:
        rows = [{"case": c["case"], "noise": c["noise"], "samples": c["samples"], "members": c["members"],
                 "krylon RVM": _fmt_terms(c["krylon"]), "worst err %": 100 * c["krylon"]["worst_error"], "spurious": len(c["krylon"]["spurious"]),
                 "missed": len(c["krylon"]["missed"]), "s": c["seconds"]} for c in noisy]
        print_table(rows, list(rows[0]), title="MEDIDA with noisy observations (stochastic EnKF)")


def _plot(truth, case, windows, out: Path, horizon: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..operators.pde import KuramotoSivashinsky
    from ..solvers.medida import simulate

    model = KuramotoSivashinsky(case["model"], length=truth.length, n=truth.n)
    corrected = dict(case["model"])
    for k, c in case["krylon"]["coefficients"].items():
        corrected[k] = corrected.get(k, 0.0) + c
    fixed = KuramotoSivashinsky(corrected, length=truth.length, n=truth.n)
    u0 = windows[0, 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, (label, m) in zip(axes, (("truth", truth), (f"imperfect model ({case['case']})", model), ("corrected model", fixed))):
        try:
            traj = simulate(m, u0, horizon, 1e-2, every=0.2)
        except FloatingPointError:
            ax.set_title(f"{label}: blew up")
            continue
        ax.imshow(traj.cpu().numpy(), aspect="auto", origin="lower", cmap="RdBu_r", extent=(0, truth.length, 0, horizon), vmin=-3, vmax=3)
        ax.set_title(label)
        ax.set_xlabel("x")
    axes[0].set_ylabel("t")
    fig.tight_layout()
    path = out / "medida_ks.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def summary(result: dict) -> list[dict]:
    """Rows of the ``krylon bench`` summary: over the noise-free cases, how many term sets were found exactly and
    the median (over cases) of the worst coefficient error, krylon's RVM against pysindy's PDE-FIND on the same
    data (krylon's own STLSQ is in the table and JSON, not a peer); one row per noisy case (no peer)."""
    from .summary import compare

    cases = result["cases"]

    def median_worst(key):  # per case the worst coefficient error (a missed term counts 100%), median over cases
        scores = sorted(100 * c[key]["worst_error"] for c in cases if key in c)
        return scores[len(scores) // 2] if scores else None

    def exact(key):
        scores = [c[key] for c in cases if key in c]
        return sum(s["exact"] for s in scores) if scores else None

    label = f"KS, {len(cases)} paper cases, noise-free"
    rows = [compare("medida", label, "cases with the exact term set", [("krylon MEDIDA (RVM)", exact("krylon"))],
                    [("pysindy PDE-FIND (STLSQ)", exact("pysindy"))], better="higher"),
            compare("medida", label, "median over cases of the worst coefficient error (%)",
                    [("krylon MEDIDA (RVM)", median_worst("krylon"))],
                    [("pysindy PDE-FIND (STLSQ)", median_worst("pysindy"))])]
    for c in result.get("noisy", []):
        k = c["krylon"]
        row = compare("medida", f"KS {c['case']}, {100 * c['noise']:g}% noise, EnKF {c['members']}",
                      "model-error coefficient error (%)", [("krylon MEDIDA (RVM)", 100 * k["worst_error"] if not k["missed"] else None)], [])
        if k["spurious"] or k["missed"]:
            row["status"] = f"{len(k['spurious'])} spurious, {len(k['missed'])} missed term(s)"
        rows.append(row)
    if "qg" in result:  # the QG cases: krylon's RFF/spectral fill of 25% sensors against cubic interpolation
        from .medida_qg import summary_qg

        rows += summary_qg(result["qg"])
    return rows

"""The one summary of ``krylon bench``: per family and problem, krylon against its best peer.

A summary row compares one measured quantity (``metric``) of krylon's best entry with the best of its peers
measured in the same run, and states the ratio so that ``ratio > 1`` always means krylon is better:
``peer / krylon`` when lower is better (times, iterations), ``krylon / peer`` when higher is better.
Losses stay in the table (ratio < 1); a krylon entry that did not converge, a suite that raised or was
skipped, or a missing peer shows as such in ``status`` with no ratio.
"""

from __future__ import annotations

import inspect
import math
import time
import traceback
from pathlib import Path

from . import load
from .common import machine_info, print_table, write_json

__all__ = ["compare", "unavailable", "print_summary", "plot_summary", "run_suites"]

LOWER, HIGHER = "lower", "higher"


def _value(v):
    """A usable measurement, or None (missing, NaN, infinite)."""
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _best(candidates, better):
    """``(name, value)`` of the best candidate (ties: the first listed); ``(first name, None)`` when none has a
    value; ``(None, None)`` when there are no candidates."""
    candidates = [(name, _value(v)) for name, v in candidates]
    valid = [c for c in candidates if c[1] is not None]
    if not valid:
        return (candidates[0][0] if candidates else None), None
    pick = min if better == LOWER else max
    return pick(valid, key=lambda c: c[1])


def compare(family: str, problem: str, metric: str, krylon, peers, *, better: str = LOWER) -> dict:
    """One summary row: krylon's best candidate against the best peer.

    ``krylon`` and ``peers``: lists of ``(name, value)``; a value of None (not converged, skipped, not run)
    never wins.  ``better``: ``"lower"`` (times, iterations) or ``"higher"`` (throughputs).
    """
    if better not in (LOWER, HIGHER):
        raise ValueError(f"better must be {LOWER!r} or {HIGHER!r}, got {better!r}")
    k_name, k_val = _best(krylon, better)
    p_name, p_val = _best(peers, better)
    ratio, status = None, "ok"
    if k_val is None:
        status = "krylon: no result" if k_name is None else "krylon: not converged"
    elif p_val is None:
        status = "no peer" if p_name is None else "peer: not converged"
    else:
        num, den = (p_val, k_val) if better == LOWER else (k_val, p_val)
        if den > 0:
            ratio = num / den
        else:
            status = "zero measurement"
    return {"family": family, "problem": problem, "metric": metric, "better": better,
            "krylon": k_name, "krylon_value": k_val, "peer": p_name, "peer_value": p_val,
            "ratio": ratio, "ratio_is": "peer/krylon" if better == LOWER else "krylon/peer", "status": status}


def unavailable(family: str, status: str) -> dict:
    """The row of a suite that produced no comparison (raised, skipped, no results)."""
    return {"family": family, "problem": "-", "metric": "-", "better": None, "krylon": None, "krylon_value": None,
            "peer": None, "peer_value": None, "ratio": None, "ratio_is": None, "status": status}


def print_summary(rows: list[dict], title: str | None = "summary", file=None) -> str:
    """Print the summary rows as one table (ratio > 1: krylon better)."""
    shown = [{"family": r["family"], "problem": r["problem"], "metric": r["metric"], "krylon": r["krylon"] or "-",
              "value": r["krylon_value"], "best peer": r["peer"] or "-", "peer value": r["peer_value"],
              "ratio": f"{r['ratio']:.3g}x" if r["ratio"] is not None else "-",
              "status": r["status"]}
             for r in rows]
    if title:
        title = f"\n== {title} (ratio > 1: krylon better; peer/krylon for times and iterations) =="
    return print_table(shown, ["family", "problem", "metric", "krylon", "value", "best peer", "peer value", "ratio",
                               "status"], title=title, file=file)


def plot_summary(rows: list[dict], path) -> None:
    """Horizontal bars of the ratios per problem (log scale, a line at 1); rows without a ratio say why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['family']}: {r['problem']}\n{r['metric']}\n{r['krylon'] or '-'} vs {r['peer'] or '-'}"
              if r["metric"] != "-" else r["family"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    known = [v for v in ratios if v is not None] + [1.0]
    lo, hi = min(known) / 4, max(known) * 4  # room for the numbers at the bars' ends
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.6 * max(len(rows), 1)))
    y = list(range(len(rows)))[::-1]
    for yi, r, v in zip(y, rows, ratios):
        if v is None:
            ax.text(1.0, yi, f"  {r['status']}", va="center", fontsize=8, color="0.4")
            continue
        ax.barh(yi, abs(v - 1.0), left=min(v, 1.0), color="tab:green" if v >= 1 else "tab:red", height=0.6)
        ax.text(v, yi, f" {v:.3g}x " if v >= 1 else f" {v:.2g}x ", va="center", fontsize=8,
                ha="left" if v >= 1 else "right")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=6.5)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("ratio (> 1: krylon better)")
    ax.set_title("krylon vs its best peer, per problem")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accepted(fn, options: dict) -> dict:
    """The options ``fn`` declares (all of them when it takes ``**kwargs``); None means "the suite's default"."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in options.items() if v is not None and (takes_all or k in params)}


OPTIONAL = ("pyamg", "numba", "neuralop", "skimage", "sklearn", "h5py")  # peers and extras a suite may lack


def _missing_dependency(exc: BaseException) -> bool:
    """A missing optional package (a broken krylon, torch or scipy import is an error, not a skip)."""
    return isinstance(exc, ModuleNotFoundError) and str(exc.name or "").split(".")[0] in OPTIONAL


def run_suites(names, size: str, *, device: str = "cpu", out="bench-out", options: dict | None = None,
               command: str = "", isolate: bool = True, write: bool = True, plot: bool = True) -> dict:
    """Run the named suites at ``size``, print their tables and then the summary table.

    ``isolate``: a suite that raises becomes an ``error`` row (a missing optional package: ``skipped``) and the
    others still run; otherwise the exception propagates.  ``write``: write ``out/summary.json`` (and, with
    ``plot``, ``out/summary.png``).  Returns the summary record (``"ok"`` is False when a suite raised).
    """
    out = Path(out)
    options = dict(options or {})
    t_all = time.perf_counter()
    record = {"command": command, "size": size, "device": str(device), "machine": machine_info(device),
              "suites": {}, "rows": []}
    for name in names:
        t0 = time.perf_counter()
        entry = {"status": "ok"}
        try:
            module = load(name)
            result = module.run(size, device=device, out=out, **_accepted(module.run, options))
            rows = module.summary(result) or [unavailable(name, "no results")]
        except Exception as exc:
            if not isolate:
                raise
            if _missing_dependency(exc):
                entry["status"] = "skipped"
                reason = f"skipped: missing {exc.name}"
            else:
                traceback.print_exc()
                entry["status"] = "error"
                reason = f"error: {type(exc).__name__}: {exc}"
            entry["error"] = reason
            print(f"\nkrylon bench {name}: {reason}", flush=True)
            rows = [unavailable(name, reason)]
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["rows"] = rows
        record["suites"][name] = entry
        record["rows"].extend(rows)
    record["seconds"] = round(time.perf_counter() - t_all, 2)
    record["ok"] = all(e["status"] != "error" for e in record["suites"].values())
    print_summary(record["rows"], title=f"summary: {', '.join(names)} at --size {size}, device {device}, "
                                         f"{record['seconds']:.0f} s")
    if write:
        write_json(out / "summary.json", record)
        written = [out / "summary.json"]
        if plot:
            plot_summary(record["rows"], out / "summary.png")
            written.append(out / "summary.png")
        print("wrote " + " and ".join(map(str, written)))
    return record


"""Shared benchmark utilities: timing (medians), machine description, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

__all__ = ["machine_info", "median_time", "sync", "print_table", "write_json", "peak_bandwidth"]

# Peak DRAM bandwidth (bytes/s) of common accelerators, from the vendors' data sheets.
_PEAK_BW = {
    "H100 80GB HBM3": 3.35e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12,
    "H200": 4.8e12, "A100-SXM4-80GB": 2.04e12, "A100-SXM4-40GB": 1.555e12, "A100 80GB PCIe": 1.94e12, "A100": 1.555e12,
    "L40S": 0.864e12, "L4": 0.3e12, "A10G": 0.6e12, "RTX 4090": 1.008e12, "RTX 3090": 0.936e12, "V100": 0.9e12,
}


def peak_bandwidth(device_name: str) -> float | None:
    """Data-sheet peak memory bandwidth for a CUDA device name, or None when unknown."""
    best = None
    for key, bw in _PEAK_BW.items():
        if key in device_name and (best is None or len(key) > len(best[0])):
            best = (key, bw)
    return best[1] if best else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fused_cpu_state() -> str:
    """Whether CG's fused CPU kernels (numba) are on, and which numba compiles them."""
    from krylon.kernels import fused_cpu

    if not fused_cpu.available():
        return "off (numba missing or KRYLON_NUMBA=0)"
    import numba

    return f"numba {numba.__version__}"


def machine_info(device: str = "cpu") -> dict:
    import numpy
    import scipy
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "device": device,
        "fused_cpu_kernels": _fused_cpu_state(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int = 3, device="cpu", warmup: int = 0):
    """Run ``fn`` ``repeats`` times; return ``(median seconds, all times, last result)``."""
    out = None
    for _ in range(warmup):
        out = fn()
        sync(device)
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.2e}"
        return f"{v:.3g}"
    return str(v)


def print_table(rows: list[dict], columns: list[str], title: str | None = None, file=None) -> str:
    """Format ``rows`` as a fixed-width text table (and print it)."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    text = "\n".join(lines)
    print(text, file=file, flush=True)
    return text


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    os.replace(tmp, path)


def run_command(cmd: list[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` with one intra-op thread per process and return the finished process (``.args`` is ``cmd``);
    a failed run raises with its stderr's tail."""
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def torchrun(ranks: int, module: str, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as ``ranks`` torchrun processes on this machine (a free local port) through
    :func:`run_command`.  ``--`` ends torchrun's own options, so the module's (``--n`` ...) are never read as
    abbreviations of them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return run_command([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
                        "127.0.0.1", "--master-port", str(port), "-m", module, "--", *args], timeout=timeout)

"""krylon: solvers for operators and inverse problems on shared PyTorch FFT and linear-algebra kernels.

The top-level names (``__version__`` too) are loaded on first use, so ``import krylon``
(and the ``krylon`` command's start-up) stays fast.

>>> import torch, krylon
>>> A = krylon.Laplacian((16, 16))
>>> res = krylon.CG(rtol=1e-8).solve(A, torch.ones((16, 16), dtype=torch.float64))
>>> bool(res.converged)
True
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("kernels", "operators", "solvers", "datasets", "bench")
_NAMES = {
    "LinearOperator": "operators", "aslinearoperator": "operators", "Laplacian": "operators", "Diffusion": "operators",
    "dottest": "operators",
    "CG": "solvers", "MINRES": "solvers", "CGLS": "solvers", "GMRES": "solvers", "SolveResult": "solvers",
    "cg": "solvers", "minres": "solvers", "gmres": "solvers",
}

__all__ = ["__version__", *_SUBMODULES, *_NAMES]


def _installed_version() -> str:
    """The version pyproject gives krylon (its one source), as installed; ``"0+unknown"`` when not installed."""
    from importlib import metadata  # costs tens of milliseconds: only when asked for

    try:
        return metadata.version("krylon")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def __getattr__(name):
    if name == "__version__":
        globals()["__version__"] = version = _installed_version()  # read once
        return version
    if name in _SUBMODULES:
        return importlib.import_module(f"krylon.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"krylon.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'krylon' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

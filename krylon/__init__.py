"""krylon: solvers for operators and inverse problems on shared PyTorch FFT and linear-algebra kernels.

The top-level names are loaded on first use, so ``import krylon`` (and the
``krylon`` command's start-up) stays fast.

>>> import krylon
>>> A = krylon.Laplacian((16, 16))
>>> res = krylon.CG(rtol=1e-8).solve(A, krylon.torch_ones((16, 16)))
>>> bool(res.converged)
True
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("kernels", "operators", "solvers", "datasets", "bench")
_NAMES = {
    "LinearOperator": "operators", "aslinearoperator": "operators", "Laplacian": "operators", "Diffusion": "operators",
    "dottest": "operators",
    "CG": "solvers", "MINRES": "solvers", "CGLS": "solvers", "GMRES": "solvers", "SolveResult": "solvers",
    "cg": "solvers", "minres": "solvers", "gmres": "solvers",
}

__all__ = ["__version__", *_SUBMODULES, *_NAMES]


def torch_ones(shape, dtype=None):
    """``torch.ones(shape, dtype=float64)``: a convenience for doctests and quick experiments."""
    import torch

    return torch.ones(shape, dtype=dtype or torch.float64)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"krylon.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"krylon.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'krylon' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""The stencil's compiled realisation: ``torch.compile`` of the eager one, for CUDA.

Eager PyTorch applies the 5/7-point stencil as 2d+1 passes over memory, and the
dot ``u . A u`` as one more; on a GPU each pass is a kernel launch and a full
read/write of the field.  Here the eager realisation itself (the slicing passes
of :mod:`krylon.kernels.stencil` on the float-weight description of
:func:`krylon.kernels.stencil.constant_weights`) is handed to ``torch.compile``,
whose inductor backend fuses the passes (on the CPU its output is one C++ kernel
for the stencil and its dot; on CUDA it emits Triton kernels):

* :func:`stencil_apply`  ``A u``
* :func:`stencil_dot`    ``A u`` and ``u . A u``
* :func:`cg_update`      ``x + alpha p``, ``r - alpha Ap`` and ``||r - alpha Ap||^2``

:func:`krylon.kernels.stencil.realisation` picks the stencil ones on CUDA, and
:func:`krylon.kernels.linalg.cg_step` (the masked, general path of CG) the update
(set ``KRYLON_COMPILE=0`` to turn them off); the eager functions stay the
reference, and the tests compare the two on the CPU.  One compiled function is
kept per stencil (spacing, boundary conditions) and per grid dimension of the update.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["enabled", "stencil_apply", "stencil_dot", "cg_update"]


def enabled(t: torch.Tensor) -> bool:
    """Use the compiled path for this tensor? (CUDA, compile available, not disabled by KRYLON_COMPILE=0)."""
    return t.is_cuda and os.environ.get("KRYLON_COMPILE", "1") != "0" and hasattr(torch, "compile") and not t.is_complex()


@functools.lru_cache(maxsize=64)
def _compiled_stencil(spacing: tuple, sides: tuple, with_dot: bool):
    from . import linalg, stencil

    w = stencil.constant_weights(spacing, sides)  # floats: constants of the compiled kernel
    ndim = len(spacing)

    def fn(u):
        out = stencil._eager_apply(u, w)
        if with_dot:
            return out, torch.sum(u * out, dim=linalg._dims(ndim))
        return out

    return torch.compile(fn, dynamic=False, fullgraph=True)


@functools.lru_cache(maxsize=16)
def _compiled_update(ndim: int):
    def fn(x, r, p, Ap, alpha):
        a = alpha.reshape(alpha.shape + (1,) * ndim)
        x_new = x + a * p
        r_new = r - a * Ap
        return x_new, r_new, torch.sum(r_new * r_new, dim=tuple(range(x.dim() - ndim, x.dim())))

    return torch.compile(fn, dynamic=False, fullgraph=True)


def _key(spacing, bc):
    from . import stencil

    w = stencil.constant_weights(spacing, bc)
    return w.spacing, w.sides


def stencil_apply(u: torch.Tensor, spacing, bc) -> torch.Tensor:
    """The constant-coefficient Laplacian ``A u`` in one compiled kernel (a new tensor)."""
    return _compiled_stencil(*_key(spacing, bc), False)(u)


def stencil_dot(u: torch.Tensor, spacing, bc):
    """``(A u, u . A u)`` for the constant-coefficient Laplacian in one compiled kernel (new tensors)."""
    return _compiled_stencil(*_key(spacing, bc), True)(u)


def cg_update(x, r, p, Ap, alpha, ndim: int):
    """``x + alpha p, r - alpha Ap, ||r - alpha Ap||^2`` in one fused kernel (returns new tensors)."""
    return _compiled_update(ndim)(x, r, p, Ap, alpha)

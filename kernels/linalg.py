"""Batched reductions and fused updates over field dimensions.

A field batch has shape ``(*batch, *grid)``; ``ndim`` is the number of trailing
grid dimensions.  Reductions return one value per batch member (shape
``batch``).  Inner products conjugate their *first* argument, so complex
Hermitian systems work unchanged.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "dot",
    "norm",
    "expand",
    "axpy_",
    "cg_step",
    "cg_step_",
    "residual_update_",
    "advance_",
    "xpby_",
    "a_orthogonalize",
]


def _dims(ndim: int) -> tuple[int, ...]:
    if ndim < 1:
        raise ValueError(f"ndim must be >= 1, got {ndim}")
    return tuple(range(-ndim, 0))


def dot(x: torch.Tensor, y: torch.Tensor, ndim: int) -> torch.Tensor:
    """Batched inner product ``sum(conj(x) * y)`` over the last ``ndim`` dimensions.

    Examples
    --------
    >>> import torch
    >>> x = torch.ones(3, 4, 5)
    >>> dot(x, 2 * x, ndim=2)
    tensor([40., 40., 40.])
    """
    _dims(ndim)
    if x.shape != y.shape:
        x, y = torch.broadcast_tensors(x, y)
    # flatten the field dimensions (a view for contiguous fields) so the reduction is one
    # BLAS-like dot per system with no temporary product array; vecdot conjugates x
    if x.dtype != y.dtype:
        dt = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dt), y.to(dt)
    if x.device.type == "cpu" and not x.is_complex() and x.is_contiguous() and y.is_contiguous():
        # BLAS dot per system: vecdot would form the product array first (an allocation and a pass)
        batch = x.shape[: x.dim() - ndim]
        nb = math.prod(batch)
        if nb == 1:
            return torch.dot(x.reshape(-1), y.reshape(-1)).reshape(batch)
        if 0 < nb <= 64:
            xs, ys = x.reshape(nb, -1), y.reshape(nb, -1)
            return torch.stack([torch.dot(xs[i], ys[i]) for i in range(nb)]).reshape(batch)
    return torch.linalg.vecdot(x.flatten(-ndim) if ndim > 1 else x, y.flatten(-ndim) if ndim > 1 else y, dim=-1)


def norm(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Batched Euclidean norm over the last ``ndim`` dimensions (real result)."""
    _dims(ndim)
    return torch.linalg.vector_norm(x.flatten(-ndim) if ndim > 1 else x, dim=-1)


def expand(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append ``ndim`` singleton dimensions so a per-system scalar broadcasts over a field."""
    if not isinstance(c, torch.Tensor) or c.dim() == 0:
        return c  # a 0-dim tensor broadcasts as a scalar (TensorIterator's fast path); (1, 1) would not
    return c.reshape(c.shape + (1,) * ndim)


def axpy_(y: torch.Tensor, alpha, x: torch.Tensor, ndim: int) -> torch.Tensor:
    """In place ``y += alpha * x`` with ``alpha`` a scalar or one value per system."""
    if isinstance(alpha, torch.Tensor):
        _scaled_add_(y, alpha, x, ndim, 1.0)
        return y
    return y.add_(x, alpha=alpha)


def cg_step(x: torch.Tensor, r: torch.Tensor, p: torch.Tensor, Ap: torch.Tensor, alpha: torch.Tensor, ndim: int):
    """The conjugate-gradient update ``x += alpha p; r -= alpha Ap``; returns ``(x, r, ||r||^2)``.

    ``alpha`` holds one value per system (shape ``batch``); systems with
    ``alpha == 0`` are left exactly unchanged, which is how converged members
    of a batch are frozen.  On the CPU ``x`` and ``r`` are updated in place; on
    CUDA one fused kernel (:mod:`krylon.kernels.compiled`) returns new tensors,
    so always use the returned ones.
    """
    from . import compiled

    if compiled.enabled(x) and not alpha.is_complex():
        return compiled.cg_update(x, r, p, Ap, alpha, ndim)
    return x, r, cg_step_(x, r, p, Ap, alpha, ndim)


def _scaled_add_(y: torch.Tensor, alpha: torch.Tensor, x: torch.Tensor, ndim: int, sign: float) -> None:
    """In place ``y += sign * alpha * x`` with ``alpha`` one value per system (or a 0-dim tensor)."""
    if alpha.dim() == 0 and alpha.device.type == "cpu" and not alpha.is_complex():
        # one system on the CPU: a Python scalar takes the plain axpy kernel (no host sync cost here)
        y.add_(x, alpha=sign * float(alpha))
    else:
        y.addcmul_(expand(alpha, ndim), x, value=sign)


def cg_step_(x: torch.Tensor, r: torch.Tensor, p: torch.Tensor, Ap: torch.Tensor, alpha: torch.Tensor, ndim: int) -> torch.Tensor:
    """In-place eager version of :func:`cg_step` (the reference); returns ``||r||^2``."""
    _scaled_add_(x, alpha, p, ndim, 1.0)
    _scaled_add_(r, alpha, Ap, ndim, -1.0)
    return norm(r, ndim) ** 2


def residual_update_(r: torch.Tensor, Ap: torch.Tensor, alpha: torch.Tensor, ndim: int) -> torch.Tensor:
    """In place ``r -= alpha Ap`` (``alpha`` one value per system); returns ``||r||^2`` per system.

    One fused pass on the CPU when numba is present (:mod:`krylon.kernels.fused_cpu`), else two eager passes.
    """
    from . import fused_cpu

    if not alpha.is_complex() and fused_cpu.usable(r, Ap):
        try:
            return fused_cpu.residual_update(r, Ap, alpha, ndim)
        except fused_cpu.Unavailable:
            pass
    _scaled_add_(r, alpha, Ap, ndim, -1.0)
    return norm(r, ndim) ** 2


def advance_(x: torch.Tensor, p: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, ndim: int) -> None:
    """In place ``x += alpha p`` and then ``p = z + beta p``: the CG solution and direction updates.

    Both read the old ``p``, so CG can defer its ``x`` update to here and save a pass over
    ``p``; one fused pass on the CPU when numba is present.  ``z`` may be ``r`` (no preconditioner).
    """
    from . import fused_cpu

    if not (alpha.is_complex() or (isinstance(beta, torch.Tensor) and beta.is_complex())) and fused_cpu.usable(x, p, z):
        try:
            fused_cpu.advance(x, p, z, alpha, beta, ndim)
            return
        except fused_cpu.Unavailable:
            pass
    _scaled_add_(x, alpha, p, ndim, 1.0)
    xpby_(p, z, beta, ndim)


def xpby_(p: torch.Tensor, z: torch.Tensor, beta: torch.Tensor, ndim: int) -> torch.Tensor:
    """In place ``p = z + beta * p`` (the CG direction update), ``beta`` one value per system."""
    return torch.addcmul(z, expand(beta, ndim).to(p.dtype) if isinstance(beta, torch.Tensor) else beta, p, out=p)


def a_orthogonalize(q: torch.Tensor, directions, a_directions, ndim: int, *, a_norms=None, a_q=None, inner=None):
    """A-orthogonalise ``q`` against stored directions ``p_j`` (with ``A p_j`` given).

    Returns ``q - sum_j c_j p_j`` with ``c_j = (A p_j)^H q_{j-1} / (p_j^H A p_j)`` taken one direction at a
    time (modified Gram-Schmidt in the A inner product, which loses less orthogonality than the classical
    form when ``q`` lies nearly in the span); the result satisfies ``p_j^H A q_new = 0`` for every stored
    ``p_j`` when the ``p_j`` are mutually A-orthogonal.  A direction with ``p_j^H A p_j = 0`` (a stored
    placeholder) is skipped.

    Parameters
    ----------
    q : (*batch, *grid) tensor
    directions, a_directions : sequences of tensors shaped like ``q``
    a_norms : optional sequence of ``p_j^H A p_j`` (shape ``batch``) to avoid recomputing them.
    a_q : optional ``A q``; if given, it is updated alongside (no extra matvec) and
        ``(q_new, A q_new, q_new^H A q_new)`` is returned instead of ``q_new``.
    inner : optional ``inner(x, y, ndim)`` for the inner products (default :func:`dot`): a solver passes its
        driver's, which sums over processes when the fields are split across them.
    """
    if len(directions) != len(a_directions):
        raise ValueError(f"got {len(directions)} directions but {len(a_directions)} products A p")
    if a_norms is not None and len(a_norms) != len(directions):
        raise ValueError(f"got {len(directions)} directions but {len(a_norms)} norms p^H A p")
    inner = dot if inner is None else inner
    out = q.clone()
    a_out = a_q.clone() if a_q is not None else None
    for j, (p, ap) in enumerate(zip(directions, a_directions)):
        denom = a_norms[j] if a_norms is not None else inner(p, ap, ndim)
        coef = inner(ap, out, ndim) / torch.where(denom == 0, torch.ones_like(denom), denom)
        coef = expand(torch.where(denom == 0, torch.zeros_like(coef), coef), ndim)
        out.addcmul_(coef, p, value=-1)
        if a_out is not None:
            a_out.addcmul_(coef, ap, value=-1)
    if a_out is None:
        return out
    return out, a_out, inner(out, a_out, ndim).real

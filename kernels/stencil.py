"""Matrix-free finite-difference stencils on structured grids, by slicing.

The operator is the SPD ("negative") Laplacian or the variable-coefficient
diffusion operator ``-div(k grad u)`` on the last ``d`` dimensions of a field
``(*batch, *grid)``:

    (A u)_i = sum_a [ w_{i-1/2} (u_i - u_{i-e_a}) + w_{i+1/2} (u_i - u_{i+e_a}) ]

with face weights ``w = k_face / h_a^2`` (``k = 1`` for the Laplacian).  A
neighbour outside the grid is a ghost value fixed by the boundary condition of
that side of that axis:

``"dirichlet"``  ghost = 0 (grid points are interior nodes; the boundary node sits
                 one spacing beyond the first/last point).  DST-I diagonalises it.
``"neumann"``    ghost = u_i (zero flux through the boundary face).  DCT-II.
``"periodic"``   wrap-around.  DFT.

Obstacles (``solid`` mask, True = solid cell) are removed from the system:
every face touching a solid cell has weight 0 (a Neumann condition on the
obstacle's faces, as in a fluid pressure projection) and a solid cell's row is
``d_s u_i`` with ``d_s`` the diagonal of an interior fluid cell, so the
assembled matrix stays SPD and a right-hand side that is zero on solids gives a
solution that is zero there.

Two code paths share this definition: a constant-coefficient fast path that
works with scalars (no weight tensors) and a general path with precomputed
face weights.  :func:`assemble_coo` builds the identical sparse matrix from the
same weights for scipy peers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = [
    "BOUNDARY_CONDITIONS",
    "parse_bc",
    "parse_spacing",
    "StencilWeights",
    "stencil_weights",
    "apply_constant",
    "apply_constant_dot",
    "apply_weights",
    "apply_weights_dot",
    "lower_face_weights",
    "assemble_coo",
]

BOUNDARY_CONDITIONS = ("dirichlet", "neumann", "periodic")


def parse_bc(bc, ndim: int) -> tuple[tuple[str, str], ...]:
    """Normalise boundary conditions to one ``(low, high)`` pair per axis.

    ``bc`` may be a string (every side), a sequence of ``ndim`` strings (per
    axis) or of ``(low, high)`` pairs (per side).  ``"periodic"`` must be given
    on both sides of an axis.
    """
    if isinstance(bc, str):
        bc = [bc] * ndim
    bc = list(bc)
    if len(bc) != ndim:
        raise ValueError(f"bc has {len(bc)} entries but the grid has {ndim} dimensions")
    out = []
    for axis, side in enumerate(bc):
        pair = (side, side) if isinstance(side, str) else tuple(side)
        if len(pair) != 2:
            raise ValueError(f"bc for axis {axis} must be a string or a (low, high) pair, got {side!r}")
        for s in pair:
            if s not in BOUNDARY_CONDITIONS:
                raise ValueError(f"unknown boundary condition {s!r} on axis {axis}; expected one of {BOUNDARY_CONDITIONS}")
        if ("periodic" in pair) and pair != ("periodic", "periodic"):
            raise ValueError(f"axis {axis}: 'periodic' must be given on both sides, got {pair}")
        out.append(pair)
    return tuple(out)


def parse_spacing(spacing, ndim: int) -> tuple[float, ...]:
    """One positive finite grid spacing per axis."""
    if isinstance(spacing, (int, float)):
        spacing = [float(spacing)] * ndim
    spacing = tuple(float(h) for h in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing has {len(spacing)} entries but the grid has {ndim} dimensions")
    for h in spacing:
        if not (h > 0 and h != float("inf")):
            raise ValueError(f"grid spacing must be positive and finite, got {spacing}")
    return spacing


def _idx(axis: int, ndim: int, s) -> tuple:
    """Index that applies slice ``s`` to grid axis ``axis`` of a ``(*batch, *grid)`` tensor."""
    return (Ellipsis, s) + (slice(None),) * (ndim - 1 - axis)


@dataclass
class StencilWeights:
    """Precomputed weights of a general stencil.

    ``diag``: the diagonal, broadcastable to ``(*batch, *grid)``.
    ``faces[a]``: weights of the interior faces along axis ``a`` (``n_a - 1`` entries on that axis).
    ``wraps[a]``: for a periodic axis, the weight of the face joining the last and first cell
    (1 entry on that axis); ``None`` otherwise.
    """

    diag: torch.Tensor
    faces: list
    wraps: list
    #: operands of the fused CPU kernel and the key of the weights they were built from (see
    #: :func:`apply_weights_dot`); not copied by ``dataclasses.replace``
    fused: object = field(default=None, init=False, repr=False, compare=False)


def _face_coefficients(k: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    lo = k[_idx(axis, ndim, slice(None, -1))]
    hi = k[_idx(axis, ndim, slice(1, None))]
    return 2.0 * lo * hi / (lo + hi)  # harmonic mean: flux continuity across the face


def stencil_weights(shape: Sequence[int], spacing, bc, *, coefficient: torch.Tensor | None = None,
                    solid: torch.Tensor | None = None, dtype=torch.float64, device=None) -> StencilWeights:
    """Face weights and diagonal of ``-div(k grad u)`` with the given boundaries and obstacles.

    Parameters
    ----------
    shape : grid shape ``(n_1, ..., n_d)``
    spacing : float or one float per axis
    bc : boundary conditions (see :func:`parse_bc`)
    coefficient : positive cell-centred ``k`` of shape ``(*cbatch, *shape)`` (None: ``k = 1``)
    solid : boolean obstacle mask of shape ``(*mbatch, *shape)`` (True = solid)
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    h = parse_spacing(spacing, ndim)
    sides = parse_bc(bc, ndim)
    if coefficient is None:
        k = torch.ones(shape, dtype=dtype, device=device)
    else:
        k = coefficient.to(dtype=dtype, device=device)
    fluid = None
    if solid is not None:
        fluid = (~solid.to(device=device, dtype=torch.bool)).to(dtype)
    diag = torch.zeros(torch.broadcast_shapes(k.shape, fluid.shape if fluid is not None else k.shape), dtype=dtype, device=device)
    faces, wraps = [], []
    for a in range(ndim):
        inv_h2 = 1.0 / h[a] ** 2
        w = _face_coefficients(k, a, ndim) * inv_h2
        if fluid is not None:
            w = w * fluid[_idx(a, ndim, slice(None, -1))] * fluid[_idx(a, ndim, slice(1, None))]
        faces.append(w)
        diag[_idx(a, ndim, slice(1, None))] += w
        diag[_idx(a, ndim, slice(None, -1))] += w
        low, high = sides[a]
        first = _idx(a, ndim, slice(0, 1))
        last = _idx(a, ndim, slice(-1, None))
        if low == "periodic":
            ww = 2.0 * k[first] * k[last] / (k[first] + k[last]) * inv_h2
            if fluid is not None:
                ww = ww * fluid[first] * fluid[last]
            wraps.append(ww)
            diag[first] += ww
            diag[last] += ww
        else:
            wraps.append(None)
            for side, sl in ((low, first), (high, last)):
                if side == "dirichlet":
                    wb = k[sl] * inv_h2
                    if fluid is not None:
                        wb = wb * fluid[sl]
                    diag[sl] += wb
    if fluid is not None:
        ref = 2.0 * sum(1.0 / hh ** 2 for hh in h)
        diag = diag + (1.0 - fluid) * k * ref
    return StencilWeights(diag=diag, faces=faces, wraps=wraps)


def apply_weights(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a general stencil (``-div(k grad u)`` with weights from :func:`stencil_weights`)."""
    ndim = len(w.faces)
    out = torch.mul(u, w.diag, out=out) if out is not None else u * w.diag
    for a in range(ndim):
        hi = _idx(a, ndim, slice(1, None))
        lo = _idx(a, ndim, slice(None, -1))
        f = w.faces[a]
        out[hi].addcmul_(f, u[lo], value=-1)
        out[lo].addcmul_(f, u[hi], value=-1)
        if w.wraps[a] is not None:
            first = _idx(a, ndim, slice(0, 1))
            last = _idx(a, ndim, slice(-1, None))
            out[first].addcmul_(w.wraps[a], u[last], value=-1)
            out[last].addcmul_(w.wraps[a], u[first], value=-1)
    return out


def _sides(bc, ndim: int):
    """``bc`` as (low, high) pairs per axis; already-parsed pairs pass through without re-validation (hot path)."""
    if isinstance(bc, tuple) and bc and isinstance(bc[0], tuple):
        return bc
    return parse_bc(bc, ndim)


def lower_face_weights(w: StencilWeights, shape: Sequence[int]) -> torch.Tensor:
    """Every cell's weight of the face to its lower neighbour, per axis: a ``(d, *shape)`` tensor.

    Entry ``[a][..., i, ...]`` (``i`` on axis ``a``) is ``faces[a][..., i - 1, ...]`` for ``i >= 1``; at ``i = 0``
    it is the periodic wrap's weight, or 0 (Dirichlet and Neumann sides live in the diagonal).  The weight
    to the upper neighbour is the next cell's entry, so one array per axis describes the whole stencil.
    Needs unbatched weights (each of grid shape but the face axis).
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    lower = torch.zeros((ndim,) + shape, dtype=w.diag.dtype, device=w.diag.device)
    for a in range(ndim):
        lower[a][_idx(a, ndim, slice(1, None))] = w.faces[a]
        if w.wraps[a] is not None:
            lower[a][_idx(a, ndim, slice(0, 1))] = w.wraps[a]
    return lower


def apply_weights_dot(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None):
    """:func:`apply_weights` and the per-system quadratic form ``u . A u``; returns ``(A u, u . A u)``.

    One fused pass on the CPU with numba (:mod:`krylon.kernels.fused_cpu`) when the weights are one grid's
    (not batched) and carry no autograd graph; otherwise the eager pair, which is the reference.
    """
    from . import fused_cpu, linalg

    ndim = len(w.faces)
    grid = tuple(u.shape[u.dim() - ndim:])
    if (out is not None and ndim in (2, 3) and tuple(w.diag.shape) == grid and w.diag.dtype == u.dtype
            and all(f.dim() == ndim for f in w.faces)
            and not (torch.is_grad_enabled() and w.diag.requires_grad) and fused_cpu.usable(u, out)):
        try:
            # rebuilt when any weight tensor was replaced or changed in place (pointer and version counter)
            key = tuple((t.data_ptr(), t._version) for t in [w.diag, *w.faces, *(x for x in w.wraps if x is not None)])
            if w.fused is None or w.fused[0] != key:
                w.fused = (key, fused_cpu.prepare_weights(w.diag, lower_face_weights(w, grid), [x is not None for x in w.wraps]))
            return out, fused_cpu.weighted_stencil_dot(u, out, w.fused[1])
        except fused_cpu.Unavailable:
            pass
    out = apply_weights(u, w, out=out)
    return out, linalg.dot(u, out, ndim)


def apply_constant(u: torch.Tensor, spacing: Sequence[float], bc, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the constant-coefficient Laplacian (no obstacles) with scalar weights only.

    Cheaper than :func:`apply_weights`: it reads no weight tensors, which matters
    for memory bandwidth in the CG hot loop.
    """
    ndim = len(spacing)
    sides = _sides(bc, ndim)
    from . import compiled

    if compiled.enabled(u):
        return compiled.stencil_apply(u, spacing, sides)  # one fused kernel on CUDA
    inv = [1.0 / h ** 2 for h in spacing]
    center = 2.0 * sum(inv)
    out = torch.mul(u, center, out=out) if out is not None else u * center
    for a in range(ndim):
        hi = _idx(a, ndim, slice(1, None))
        lo = _idx(a, ndim, slice(None, -1))
        out[hi].sub_(u[lo], alpha=inv[a])
        out[lo].sub_(u[hi], alpha=inv[a])
        first = _idx(a, ndim, slice(0, 1))
        last = _idx(a, ndim, slice(-1, None))
        low, high = sides[a]
        if low == "periodic":
            out[first].sub_(u[last], alpha=inv[a])
            out[last].sub_(u[first], alpha=inv[a])
            continue
        if low == "neumann":
            out[first].sub_(u[first], alpha=inv[a])
        if high == "neumann":
            out[last].sub_(u[last], alpha=inv[a])
    return out


def apply_constant_dot(u: torch.Tensor, spacing: Sequence[float], bc, out: torch.Tensor | None = None):
    """:func:`apply_constant` and the per-system quadratic form ``u . A u``; returns ``(A u, u . A u)``.

    On the CPU with numba present this is one fused pass (:mod:`krylon.kernels.fused_cpu`), on CUDA one
    compiled kernel (:mod:`krylon.kernels.compiled`), instead of 2d + 2 eager passes; the eager pair is the
    reference.  Always use the returned tensor.
    """
    from . import compiled, fused_cpu, linalg

    ndim = len(spacing)
    sides = _sides(bc, ndim)
    if compiled.enabled(u):
        return compiled.stencil_dot(u, spacing, sides)  # one Triton kernel on CUDA (a new tensor, not out)
    if out is not None and ndim in (2, 3) and fused_cpu.usable(u, out):
        try:
            return out, fused_cpu.stencil_dot(u, out, spacing, sides)
        except fused_cpu.Unavailable:
            pass
    out = apply_constant(u, spacing, sides, out=out)
    return out, linalg.dot(u, out, ndim)


def assemble_coo(shape: Sequence[int], w: StencilWeights):
    """Assemble the stencil's matrix (C ordering of the grid) as numpy COO triplets.

    Uses exactly the weights the matrix-free path applies, so scipy peers solve
    the identical system.  Returns ``(rows, cols, values, n)``.
    """
    import numpy as np

    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    n = int(np.prod(shape))
    index = np.arange(n).reshape(shape)
    diag = np.broadcast_to(w.diag.detach().cpu().numpy(), shape)
    rows, cols, vals = [index.ravel()], [index.ravel()], [diag.ravel()]
    for a in range(ndim):
        f = np.broadcast_to(w.faces[a].detach().cpu().numpy(), shape[:a] + (shape[a] - 1,) + shape[a + 1:])
        i_lo = index[_idx(a, ndim, slice(None, -1))]
        i_hi = index[_idx(a, ndim, slice(1, None))]
        for r, c in ((i_lo, i_hi), (i_hi, i_lo)):
            rows.append(r.ravel())
            cols.append(c.ravel())
            vals.append(-f.ravel())
        if w.wraps[a] is not None:
            ww = np.broadcast_to(w.wraps[a].detach().cpu().numpy(), shape[:a] + (1,) + shape[a + 1:])
            i_first = index[_idx(a, ndim, slice(0, 1))]
            i_last = index[_idx(a, ndim, slice(-1, None))]
            # duplicates (n_a <= 2: the wrap face joins cells already joined) are summed by the CSR conversion
            for r, c in ((i_first, i_last), (i_last, i_first)):
                rows.append(r.ravel())
                cols.append(c.ravel())
                vals.append(-ww.ravel())
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), n

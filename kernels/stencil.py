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

One description, :class:`StencilWeights`, holds a stencil: the diagonal, one
face weight per axis (the lower neighbour's) and the periodic wraps, as tensors
(:func:`stencil_weights`: obstacles, ``-div(k grad u)``) or as Python floats
(:func:`constant_weights`: the constant-coefficient Laplacian, which then reads
no weight arrays, with its Neumann ghosts as scalar self-terms).  It has three
realisations, chosen per call by :func:`realisation`:

``"eager"``     torch slicing passes (:func:`apply`), the reference; any device, dtype, batch, autograd
``"numba"``     one fused CPU pass computing ``A u`` and ``u . A u`` (:mod:`krylon.kernels.fused_cpu`)
``"compiled"``  ``torch.compile`` of the eager realisation, one fused kernel on CUDA (:mod:`krylon.kernels.compiled`)

The choice depends only on the call (sizes, dtype, device, layout, thread count,
``KRYLON_NUMBA``/``KRYLON_COMPILE`` and :func:`krylon.kernels.fused_cpu.disabled`),
never on what the process did before.  :func:`assemble_coo` builds the identical
sparse matrix from the same tensor weights for scipy peers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence as _SequenceABC
from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = [
    "BOUNDARY_CONDITIONS",
    "parse_bc",
    "StencilWeights",
    "stencil_weights",
    "constant_weights",
    "realisation",
    "apply",
    "apply_dot",
    "apply_constant",
    "apply_constant_dot",
    "apply_weights",
    "apply_weights_dot",
    "lower_face_weights",
    "assemble_coo",
]

BOUNDARY_CONDITIONS = ("dirichlet", "neumann", "periodic")


def parse_bc(bc, ndim: int) -> tuple[tuple[str, str], ...]:
    """Normalise boundary conditions to one ``(low, high)`` pair per axis (the one parser of krylon).

    Parameters
    ----------
    bc : str or sequence
        A string (every side), a sequence of ``ndim`` strings (per axis) or of ``(low, high)`` pairs (per
        side), each one of :data:`BOUNDARY_CONDITIONS`.  ``"periodic"`` must be given on both sides of an axis.
    ndim : int
        Number of grid dimensions.

    Returns
    -------
    tuple of (str, str)
        One pair per axis.

    Examples
    --------
    >>> parse_bc("dirichlet", 2)
    (('dirichlet', 'dirichlet'), ('dirichlet', 'dirichlet'))
    >>> parse_bc([("dirichlet", "neumann"), "periodic"], 2)
    (('dirichlet', 'neumann'), ('periodic', 'periodic'))
    """
    if isinstance(bc, str):
        bc = (bc,) * ndim
    if not isinstance(bc, _SequenceABC):
        raise TypeError(f"bc must be a string or a sequence of {ndim} entries, got {bc!r}")
    bc = tuple(bc)
    if len(bc) != ndim:
        raise ValueError(f"bc has {len(bc)} entries ({bc!r}) but the grid has {ndim} dimensions")
    out = []
    for axis, side in enumerate(bc):
        pair = (side, side) if isinstance(side, str) else tuple(side) if isinstance(side, _SequenceABC) else (side,)
        if len(pair) != 2:
            raise ValueError(f"bc for axis {axis} must be a string or a (low, high) pair, got {side!r}")
        for s in pair:
            if s not in BOUNDARY_CONDITIONS:
                raise ValueError(f"unknown boundary condition {s!r} on axis {axis}; expected one of {BOUNDARY_CONDITIONS}")
        if ("periodic" in pair) and pair != ("periodic", "periodic"):
            raise ValueError(f"axis {axis}: 'periodic' must be given on both sides, got {pair}")
        out.append(pair)
    return tuple(out)


def _idx(axis: int, ndim: int, s) -> tuple:
    """Index that applies slice ``s`` to grid axis ``axis`` of a ``(*batch, *grid)`` tensor."""
    return (Ellipsis, s) + (slice(None),) * (ndim - 1 - axis)


@dataclass
class StencilWeights:
    """One stencil: ``(A u)_i = diag_i u_i - sum_a (face weights x neighbours) - ghost self-terms``.

    ``diag``: the diagonal, broadcastable to ``(*batch, *grid)``, or a float (constant stencil).
    ``faces[a]``: weights of the interior faces along axis ``a`` (``n_a - 1`` entries on that axis), or a float.
    ``wraps[a]``: for a periodic axis, the weight of the face joining the last and first cell (1 entry on that
    axis, or a float); ``None`` otherwise.
    ``ghosts``: ``None`` when boundary terms are folded into ``diag`` (tensor weights); for the constant
    stencil, per axis the ``(low, high)`` weight of a Neumann ghost (the cell's own value), 0.0 elsewhere.
    ``lower``: for one grid's tensor weights, the ``(d, *grid)`` tensor of :func:`lower_face_weights` of which
    ``faces`` and ``wraps`` are views (so in-place edits of either are one edit); else ``None``.
    ``sides``, ``spacing``: the ``(low, high)`` boundary conditions and the grid spacing per axis, when known.
    """

    diag: object
    faces: list
    wraps: list
    ghosts: list | None = None
    lower: torch.Tensor | None = None
    sides: tuple | None = None
    spacing: tuple | None = None
    #: operands of the numba realisation (views of the weights, see :func:`_numba_dot`) and the tensors they
    #: view; not copied by ``dataclasses.replace``
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
    from . import validate

    shape = validate.shape(shape)
    ndim = len(shape)
    h = validate.per_axis(spacing, ndim, "spacing")
    sides = parse_bc(bc, ndim)
    if coefficient is None:
        k = torch.ones(shape, dtype=dtype, device=device)
    else:
        k = coefficient.to(dtype=dtype, device=device)
    fluid = None
    if solid is not None:
        fluid = (~solid.to(device=device, dtype=torch.bool)).to(dtype)
    diag = torch.zeros(torch.broadcast_shapes(k.shape, fluid.shape if fluid is not None else k.shape), dtype=dtype, device=device)
    # one grid's weights live in one (d, *grid) tensor (the numba realisation reads it as it is); faces and
    # wraps are views of it.  A batch of weights (or an autograd graph) keeps separate tensors.
    lower = None
    if tuple(diag.shape) == shape and not (k.requires_grad and torch.is_grad_enabled()):
        lower = torch.zeros((ndim,) + shape, dtype=dtype, device=device)
    faces, wraps = [], []
    for a in range(ndim):
        inv_h2 = 1.0 / h[a] ** 2
        w = _face_coefficients(k, a, ndim) * inv_h2
        if fluid is not None:
            w = w * fluid[_idx(a, ndim, slice(None, -1))] * fluid[_idx(a, ndim, slice(1, None))]
        if lower is not None:
            w = lower[a][_idx(a, ndim, slice(1, None))].copy_(w)
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
            if lower is not None:
                ww = lower[a][first].copy_(ww)
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
    return StencilWeights(diag=diag, faces=faces, wraps=wraps, lower=lower, sides=sides, spacing=h)


@functools.lru_cache(maxsize=64)
def _constant_weights(spacing: tuple, sides: tuple) -> StencilWeights:
    inv = [1.0 / float(h) ** 2 for h in spacing]
    return StencilWeights(
        diag=2.0 * sum(inv), faces=inv,
        wraps=[w if pair[0] == "periodic" else None for w, pair in zip(inv, sides)],
        ghosts=[tuple(w if s == "neumann" else 0.0 for s in pair) for w, pair in zip(inv, sides)],
        sides=sides, spacing=spacing)


def constant_weights(spacing: Sequence[float], bc) -> StencilWeights:
    """The constant-coefficient Laplacian (no obstacles) as a description with float weights.

    Every cell has the diagonal ``2 sum_a 1/h_a^2`` and face weights ``1/h_a^2``; a Dirichlet ghost is 0 (it
    drops out), a Neumann ghost is the cell itself (a self-term ``-1/h_a^2 u_i`` in ``ghosts``), a periodic
    axis wraps.  Cached per (spacing, bc): treat the result as read-only.
    """
    spacing = tuple(float(h) for h in spacing)
    return _constant_weights(spacing, _sides(bc, len(spacing)))


def _sides(bc, ndim: int):
    """``bc`` as (low, high) pairs per axis; already-parsed pairs pass through without re-validation (hot path)."""
    if isinstance(bc, tuple) and bc and isinstance(bc[0], tuple):
        return bc
    return parse_bc(bc, ndim)


# ----------------------------------------------------------------------------- the realisations
def _sub(dst: torch.Tensor, w, src: torch.Tensor) -> None:
    """In place ``dst -= w * src`` with a weight tensor or a float (the float reads no weight array)."""
    if isinstance(w, torch.Tensor):
        dst.addcmul_(w, src, value=-1)
    else:
        dst.sub_(src, alpha=w)


def _eager_apply(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None) -> torch.Tensor:
    """The eager realisation: ``A u`` as 2d + 1 slicing passes (plus the boundary cells), the reference."""
    ndim = len(w.faces)
    out = torch.mul(u, w.diag, out=out) if out is not None else u * w.diag
    for a in range(ndim):
        hi = _idx(a, ndim, slice(1, None))
        lo = _idx(a, ndim, slice(None, -1))
        _sub(out[hi], w.faces[a], u[lo])
        _sub(out[lo], w.faces[a], u[hi])
        first = _idx(a, ndim, slice(0, 1))
        last = _idx(a, ndim, slice(-1, None))
        if w.wraps[a] is not None:
            _sub(out[first], w.wraps[a], u[last])
            _sub(out[last], w.wraps[a], u[first])
        if w.ghosts is not None:
            g_lo, g_hi = w.ghosts[a]
            if g_lo:
                _sub(out[first], g_lo, u[first])
            if g_hi:
                _sub(out[last], g_hi, u[last])
    return out


def _eager_dot(u, w, out=None):
    from . import linalg

    out = _eager_apply(u, w, out=out)
    return out, linalg.dot(u, out, len(w.faces))


def _numba_dot(u, w, out):
    """The numba realisation: one fused CPU pass (see :func:`_numba_ready` for when it applies)."""
    from . import fused_cpu

    if w.ghosts is not None:
        return out, fused_cpu.stencil_dot(u, out, w.spacing, w.sides)
    # the operands are views of the weights, so in-place edits are seen; rebuilt when a weight tensor is replaced
    if w.fused is None or w.fused[0] is not w.diag or w.fused[1] is not w.lower:
        w.fused = (w.diag, w.lower, fused_cpu.prepare_weights(w.diag, w.lower, [x is not None for x in w.wraps]))
    return out, fused_cpu.weighted_stencil_dot(u, out, w.fused[2])


def _compiled_apply(u, w, out=None):
    from . import compiled

    return compiled.stencil_apply(u, w.spacing, w.sides)


def _compiled_dot(u, w, out=None):
    from . import compiled

    return compiled.stencil_dot(u, w.spacing, w.sides)  # new tensors, not out


#: name -> (apply, apply_dot); a realisation without a plain apply (numba) leaves ``A u`` alone to the eager one
REALISATIONS = {
    "eager": (_eager_apply, _eager_dot),
    "numba": (None, _numba_dot),
    "compiled": (_compiled_apply, _compiled_dot),
}


def _numba_ready(u, w, out) -> bool:
    """Does the numba realisation apply to this call?  (Per operation: kept lean.)"""
    from . import fused_cpu

    ndim = len(w.faces)
    if out is None or ndim not in (2, 3) or w.sides is None:
        return False
    if w.ghosts is not None:  # constant weights: no arrays to check
        return fused_cpu.usable(u, out)
    grid = tuple(u.shape[u.dim() - ndim:])
    return (w.lower is not None and tuple(w.diag.shape) == grid and w.diag.is_contiguous()
            and fused_cpu.usable(u, out, w.diag, w.lower))


def realisation(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None, *, dot: bool = True) -> str:
    """The realisation that computes ``A u`` (and ``u . A u`` when ``dot``) for this call.

    The selection policy, a pure function of the call: ``"compiled"`` for constant weights on CUDA (unless
    ``KRYLON_COMPILE=0``); ``"numba"`` for ``dot`` with an ``out`` on a 2-D/3-D grid where
    :func:`krylon.kernels.fused_cpu.usable` says the fused CPU kernels apply (real float32/64 contiguous CPU
    tensors, big enough, no autograd, numba present and not turned off, one grid's weights); else ``"eager"``.
    """
    from . import compiled

    if w.ghosts is not None and compiled.enabled(u):
        return "compiled"
    if dot and _numba_ready(u, w, out):
        return "numba"
    return "eager"


def apply(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None) -> torch.Tensor:
    """``A u`` for the stencil ``w`` by the realisation :func:`realisation` picks.  Always use the returned tensor."""
    name = realisation(u, w, out, dot=False)
    return REALISATIONS[name][0](u, w, out)


def apply_dot(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None):
    """``(A u, u . A u)`` (the dot per system) by the realisation :func:`realisation` picks.

    One fused pass on the CPU with numba, one compiled kernel on CUDA (constant weights), otherwise the eager
    pair, which is the reference.  Always use the returned tensor (the compiled one is new, not ``out``).
    """
    from . import fused_cpu

    name = realisation(u, w, out)
    if name == "numba":
        try:
            return _numba_dot(u, w, out)
        except fused_cpu.Unavailable:  # numba failed to compile here (warned once): eager from now on
            name = "eager"
    return REALISATIONS[name][1](u, w, out)


def apply_weights(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a general stencil (``-div(k grad u)`` with weights from :func:`stencil_weights`), eagerly."""
    return _eager_apply(u, w, out)


def apply_weights_dot(u: torch.Tensor, w: StencilWeights, out: torch.Tensor | None = None):
    """:func:`apply_weights` and the per-system quadratic form ``u . A u``; returns ``(A u, u . A u)``."""
    return apply_dot(u, w, out)


def apply_constant(u: torch.Tensor, spacing: Sequence[float], bc, out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the constant-coefficient Laplacian (no obstacles) with scalar weights only.

    Cheaper than :func:`apply_weights`: it reads no weight tensors, which matters
    for memory bandwidth in the CG hot loop.
    """
    return apply(u, constant_weights(spacing, bc), out)


def apply_constant_dot(u: torch.Tensor, spacing: Sequence[float], bc, out: torch.Tensor | None = None):
    """:func:`apply_constant` and the per-system quadratic form ``u . A u``; returns ``(A u, u . A u)``."""
    return apply_dot(u, constant_weights(spacing, bc), out)


def lower_face_weights(w: StencilWeights, shape: Sequence[int]) -> torch.Tensor:
    """Every cell's weight of the face to its lower neighbour, per axis: a ``(d, *shape)`` tensor.

    Entry ``[a][..., i, ...]`` (``i`` on axis ``a``) is ``faces[a][..., i - 1, ...]`` for ``i >= 1``; at ``i = 0``
    it is the periodic wrap's weight, or 0 (Dirichlet and Neumann sides live in the diagonal).  The weight
    to the upper neighbour is the next cell's entry, so one array per axis describes the whole stencil.
    Needs unbatched tensor weights (each of grid shape but the face axis); returns ``w.lower`` itself when set.
    """
    if w.lower is not None:
        return w.lower
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    lower = torch.zeros((ndim,) + shape, dtype=w.diag.dtype, device=w.diag.device)
    for a in range(ndim):
        lower[a][_idx(a, ndim, slice(1, None))] = w.faces[a]
        if w.wraps[a] is not None:
            lower[a][_idx(a, ndim, slice(0, 1))] = w.wraps[a]
    return lower


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

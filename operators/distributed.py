"""The Laplacian on a grid split into slabs across ``torch.distributed`` ranks.

Each rank holds one slab of the first grid axis (:class:`~krylon.kernels.distributed.Slabs`) and applies the
same 5/7-point stencil as :class:`~krylon.operators.Laplacian` to it: the neighbours' boundary planes arrive by
a halo exchange (one plane each way, started before the local stencil runs and awaited after it), and the
local stencil treats each cut between slabs as a Dirichlet side (ghost 0) whose missing neighbour term is then
added from the halo plane.  Every other rule (spacing, Dirichlet/Neumann/periodic sides, the diagonal) is the
single-process stencil's, so a distributed apply equals the global one to rounding.

Fields keep their ``(*batch, *grid)`` shape: this rank's slab, ``(*batch, counts[rank], n2[, n3])``.  The
operator's :attr:`reduce` is an all-reduce sum, so krylon's solvers compute whole-field inner products from
the slabs' partial sums and run unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..kernels import backend, linalg, validate
from ..kernels import distributed as _dd
from ..kernels import stencil as _st
from .base import LinearOperator

__all__ = ["DistributedLaplacian"]


class DistributedLaplacian(LinearOperator):
    """``-Laplace_h`` on a global grid whose first axis is split into slabs, one per rank.

    Parameters
    ----------
    shape : tuple of int
        The *global* grid shape ``(n1, n2[, n3])`` (1-D works too); ``n1`` planes are split over the ranks.
    spacing, bc : as for :class:`~krylon.operators.Laplacian` (no obstacles).
    counts : sequence of int, optional
        Planes per rank (default: as even as possible, :func:`~krylon.kernels.distributed.split`).
    dtype, device : optional (device default: :func:`~krylon.kernels.distributed.device`).

    Attributes
    ----------
    slabs : :class:`~krylon.kernels.distributed.Slabs`
        The decomposition: ``slabs.planes()`` are this rank's global planes.
    global_shape : tuple of int

    Notes
    -----
    Every rank must construct the operator with the same arguments and call it collectively (the halo
    exchange and the solvers' all-reduces wait for all ranks).  Without a process group it is the ordinary
    Laplacian on the whole grid (one slab).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import DistributedLaplacian
    >>> from krylon.solvers import CG
    >>> A = DistributedLaplacian((16, 16))        # one process: the whole grid is this rank's slab
    >>> b = torch.ones(A.shape_in, dtype=torch.float64)
    >>> bool(CG(rtol=1e-10).solve(A, b).converged)
    True
    """

    _supports_out = True

    def __init__(self, shape: Sequence[int], spacing=1.0, bc="dirichlet", *, counts: Sequence[int] | None = None,
                 dtype=None, device=None):
        shape = validate.shape(shape)
        if len(shape) not in (1, 2, 3):
            raise ValueError(f"stencil operators are defined on 1-D, 2-D and 3-D grids, got a grid of shape {shape}")
        d = len(shape)
        self.spacing = validate.per_axis(spacing, d, "spacing")
        self.bc = _st.parse_bc(bc, d)
        dtype = backend._parse_dtype(dtype) or torch.float64
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"stencil operators have real coefficients; dtype must be a real floating dtype, got {dtype}")
        self.slabs = _dd.Slabs(shape, counts)
        self.global_shape = shape
        me, parts = _dd.rank(), self.slabs.parts
        tags = ["symmetric", "positive_semidefinite"]
        if any("dirichlet" in pair for pair in self.bc):
            tags.append("positive_definite")
        super().__init__(self.slabs.local_shape(me), dtype=dtype, tags=tags)
        self._device0 = backend.resolve_device(device) or _dd.device()
        low, high = self.bc[0]
        self.periodic = low == "periodic" and parts > 1
        # a cut between slabs is a Dirichlet side locally (ghost 0); the halo plane then supplies the neighbour
        cut = "dirichlet"
        local_low = low if me == 0 and not self.periodic else cut
        local_high = high if me == parts - 1 and not self.periodic else cut
        self.local_bc = ((local_low, local_high),) + self.bc[1:]
        self.halo_low = parts > 1 and (me > 0 or self.periodic)
        self.halo_high = parts > 1 and (me < parts - 1 or self.periodic)
        self._w0 = 1.0 / self.spacing[0] ** 2  # the weight of a face across the first axis

    @property
    def device(self):
        return self._device0

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._device0 = fn(torch.zeros(1, device=self._device0)).device
        return out

    @property
    def reduce(self):
        """Sum per-system partial inner products over the ranks (an all-reduce); None with one slab."""
        return _dd.sum_over_ranks if self.slabs.parts > 1 else None

    def stencil(self) -> _st.StencilWeights:
        """The local stencil: the global one with Dirichlet sides at the cuts between slabs."""
        return _st.constant_weights(self.spacing, self.local_bc)

    def _exchange(self, x):
        if not (self.halo_low or self.halo_high):
            return None
        return _dd.start_halo_exchange(x, self.ndim_in, periodic=self.periodic)

    def _halo_terms(self, x, out, pending, dot=None):
        """Subtract the halo neighbours' terms from the boundary planes of ``out`` (and from ``x . out``)."""
        if pending is None:
            return dot
        low, high = pending.wait()
        axis, n, nd = x.dim() - self.ndim_in, x.shape[x.dim() - self.ndim_in], self.ndim_in
        for halo, at in ((low, 0), (high, n - 1)):
            if halo is None:
                continue
            out.narrow(axis, at, 1).sub_(halo, alpha=self._w0)
            if dot is not None:
                dot = dot - self._w0 * linalg.dot(x.narrow(axis, at, 1), halo, nd)
        return dot

    def _matvec(self, x):
        return self._matvec_out(x, None)

    def _matvec_out(self, x, out):
        pending = self._exchange(x)
        out = _st.apply(x, self.stencil(), out=out)
        self._halo_terms(x, out, pending)
        return out

    def matvec_dot(self, x, out=None):
        """``(A x, x . A x)`` where the quadratic form is *this rank's partial sum* (reduce it with :attr:`reduce`)."""
        self._check(x, self.shape_in, "matvec_dot")
        if out is None or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or out is x:
            out = None
        pending = self._exchange(x)
        if out is None:
            y = _st.apply(x, self.stencil())
            dot = linalg.dot(x, y, self.ndim_in)
        else:
            y, dot = _st.apply_dot(x, self.stencil(), out=out)
        return y, self._halo_terms(x, y, pending, dot)

    def diagonal(self) -> torch.Tensor:
        """This rank's slab of the global operator's diagonal (one field: no weight arrays are built)."""
        w = self.stencil()
        d = torch.full(self.shape_in, w.diag, dtype=self.dtype, device=self.device)
        for a, (g_lo, g_hi) in enumerate(w.ghosts):  # a Neumann ghost is the cell itself: a self-term
            for g, at in ((g_lo, 0), (g_hi, self.shape_in[a] - 1)):
                if g:
                    d.narrow(a, at, 1).sub_(g)
        return d

    def project_range(self, v: torch.Tensor) -> torch.Tensor:
        """Remove the global mean of ``v`` when the operator is singular (no Dirichlet side); else ``v``."""
        if self.is_positive_definite:
            return v
        dims = tuple(range(-self.ndim_in, 0))
        total = v.sum(dim=dims)
        if self.reduce is not None:
            total = self.reduce(total)
        n = 1
        for s in self.global_shape:
            n *= s
        return v - linalg.expand(total / n, self.ndim_in)

    def extra_repr(self) -> str:
        return (f"global_shape={self.global_shape}, slab={self.shape_in} (planes {self.slabs.planes().start}-"
                f"{self.slabs.planes().stop - 1} of rank {_dd.rank()}/{self.slabs.parts}), spacing={self.spacing}, "
                f"bc={self.bc}, dtype={self.dtype}")

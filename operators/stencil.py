"""Finite-difference Laplacian and diffusion operators on 2-D and 3-D grids.

Both are the SPD sign convention (``-Laplace``, ``-div(k grad)``); see
:mod:`krylon.kernels.stencil` for the exact stencil, the ghost-value rules of
each boundary condition and how obstacles are removed from the system.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..kernels import backend, validate
from ..kernels import stencil as _st
from .base import LinearOperator, unchanged_scope

__all__ = ["Laplacian", "Diffusion"]


class _StencilOperator(LinearOperator):
    """Shared machinery: boundary conditions, obstacles, weights, assembly."""

    def __init__(self, shape, spacing, bc, obstacles, coefficient, dtype, device):
        shape = tuple(int(n) for n in shape)
        if len(shape) not in (1, 2, 3):
            raise ValueError(f"stencil operators are defined on 1-D, 2-D and 3-D grids, got a grid of shape {shape}")
        if any(n < 1 for n in shape):
            raise ValueError(f"grid sizes must be >= 1, got {shape}")
        d = len(shape)
        self.spacing = validate.per_axis(spacing, d, "spacing")
        self.bc = _st.parse_bc(bc, d)
        own = coefficient is not None and backend.is_floating(coefficient.dtype)
        dtype = backend._parse_dtype(dtype) or (coefficient.dtype if own else torch.float64)
        if dtype.is_complex or dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"stencil operators have real coefficients; dtype must be a real floating dtype, got {dtype}")
        device = backend.resolve_device(device)
        if device is None:
            device = (coefficient.device if coefficient is not None
                      else obstacles.device if isinstance(obstacles, torch.Tensor) else torch.device("cpu"))
        tags = ["symmetric", "positive_semidefinite"]
        if obstacles is not None:
            obstacles = backend.as_tensor(obstacles, device=device, promote=False, name="obstacles")
            if obstacles.dtype != torch.bool:
                raise TypeError(f"obstacles must be a boolean mask (True = solid), got dtype {obstacles.dtype}")
            if tuple(obstacles.shape[-d:]) != shape:
                raise ValueError(f"obstacle mask of shape {tuple(obstacles.shape)} does not end in the grid shape {shape}")
            if obstacles.dim() > d:
                raise ValueError("a batch of obstacle masks is not supported: build one operator per geometry")
        # positive definite unless the system has a null space: no Dirichlet side reaches the fluid
        if self._has_dirichlet(obstacles, shape):
            tags.append("positive_definite")
        super().__init__(shape, dtype=dtype, tags=tags)
        self.register_buffer("obstacles", obstacles)
        self._weights = None
        self._device0 = device

    def _has_dirichlet(self, obstacles, shape) -> bool:
        """Positive definite when every connected fluid region touches a Dirichlet side (a flood fill)."""
        if not any("dirichlet" in pair for pair in self.bc):
            return False
        if obstacles is None:
            return True
        return bool(_fluid_regions_touch_dirichlet(~obstacles.cpu(), self.bc))

    @property
    def device(self):
        if self.obstacles is not None:
            return self.obstacles.device
        return self._device0

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        probe = fn(torch.zeros(1, device=self._device0))
        self._device0 = probe.device
        self._weights = None
        return out

    @property
    def ndim(self) -> int:
        return len(self.shape_in)

    def weights(self) -> _st.StencilWeights:
        """Face weights and diagonal as tensors (computed once, cached)."""
        if self._weights is None:
            self._weights = _st.stencil_weights(self.shape_in, self.spacing, self.bc, coefficient=self._coefficient(),
                                                solid=self.obstacles, dtype=self.dtype, device=self.device)
        return self._weights

    def _coefficient(self):
        return None

    def stencil(self) -> _st.StencilWeights:
        """The stencil description the realisations apply (see :mod:`krylon.kernels.stencil`).

        Tensor weights (:meth:`weights`) by default; the Laplacian without obstacles uses the float-weight
        description, which reads no weight arrays.
        """
        return self.weights()

    _supports_out = True

    def _matvec(self, x):
        return self._matvec_out(x, None)

    def _matvec_out(self, x, out):
        w = self.stencil()
        if out is not None and isinstance(w.diag, torch.Tensor) and w.diag.shape != x.shape \
                and torch.broadcast_shapes(w.diag.shape, x.shape) != x.shape:
            out = None  # a batched coefficient broadcasts the result beyond x's shape
        return _st.apply(x, w, out=out)

    def matvec_dot(self, x, out=None):
        if out is not None and out.shape == x.shape and out.dtype == x.dtype and out.device == x.device \
                and out is not x and not x.is_complex():
            w = self.stencil()
            if not isinstance(w.diag, torch.Tensor) or tuple(w.diag.shape) == self.shape_in:  # not a batch of grids
                self._check(x, self.shape_in, "matvec_dot")
                return _st.apply_dot(x, w, out=out)
        return super().matvec_dot(x, out=out)

    def diagonal(self) -> torch.Tensor:
        return torch.broadcast_to(self.weights().diag, self.shape_in).clone()

    def project_range(self, v: torch.Tensor) -> torch.Tensor:
        """Remove the null-space component of ``v`` (constants on each connected fluid region).

        The identity for a positive definite operator.  Used to make singular (pure Neumann /
        periodic) systems consistent, e.g. in the adjoint solve of a differentiable solve.
        """
        if self.is_positive_definite:
            return v
        labels, count = self._regions()
        nd = self.ndim
        out = v.clone()
        for lab in range(1, count + 1):
            region = labels == lab
            if not bool(region.any()) or self._region_touches_dirichlet(region):
                continue
            mean = (v * region).sum(dim=tuple(range(-nd, 0)), keepdim=True) / region.sum()
            out = out - mean * region
        return out

    def _regions(self):
        if getattr(self, "_region_cache", None) is None:
            fluid = torch.ones(self.shape_in, dtype=torch.bool) if self.obstacles is None else ~self.obstacles.cpu()
            labels, count = _label_fluid(fluid, self.bc)
            self._region_cache = (torch.from_numpy(labels).to(self.device), count)
        return self._region_cache

    def _region_touches_dirichlet(self, region: torch.Tensor) -> bool:
        return _touches_dirichlet(region, self.bc)

    def to_scipy(self, format: str = "csr"):
        """Assemble exactly the matrix this operator applies (C ordering of the grid) as scipy sparse."""
        import scipy.sparse as sp

        rows, cols, vals, n = _st.assemble_coo(self.shape_in, self.weights())
        A = sp.coo_array((vals, (rows, cols)), shape=(n, n)).asformat(format)
        if format == "csr":
            A.sum_duplicates()
            A.eliminate_zeros()
            A.sort_indices()
        return A


    def extra_repr(self):
        obstacles = "yes" if self.obstacles is not None else "no"
        return f"shape={self.shape_in}, spacing={self.spacing}, bc={self.bc}, obstacles={obstacles}, dtype={self.dtype}"


def _label_fluid(fluid: torch.Tensor, bc):
    """Connected fluid regions (scipy.ndimage labels; periodic axes join opposite faces): ``(labels, max_label)``."""
    import numpy as np
    from scipy import ndimage

    labels, _ = ndimage.label(fluid.cpu().numpy())
    for a, pair in enumerate(bc):
        if pair[0] == "periodic":
            first, last = np.take(labels, 0, axis=a), np.take(labels, -1, axis=a)
            both = (first > 0) & (last > 0)
            for l1, l2 in set(zip(first[both].tolist(), last[both].tolist())):
                if l1 != l2:
                    labels[labels == l2] = l1
    return labels, int(labels.max())


def _touches_dirichlet(region, bc) -> bool:
    """Does a boolean region (numpy array or tensor) reach a Dirichlet side of the box?"""
    import numpy as np

    r = region.cpu().numpy() if isinstance(region, torch.Tensor) else region
    return any(side == "dirichlet" and bool(np.take(r, idx, axis=a).any())
               for a, pair in enumerate(bc) for side, idx in ((pair[0], 0), (pair[1], -1)))


def _fluid_regions_touch_dirichlet(fluid: torch.Tensor, bc) -> bool:
    """True when every connected fluid region touches a Dirichlet side (so the system is nonsingular)."""
    labels, count = _label_fluid(fluid, bc)
    return all(_touches_dirichlet(labels == lab, bc) for lab in range(1, count + 1) if (labels == lab).any())


class Laplacian(_StencilOperator):
    """The 5-point (2-D) / 7-point (3-D) negative Laplacian ``-Laplace_h`` as a matrix-free operator.

    Parameters
    ----------
    shape : tuple of int
        Grid shape ``(n1, n2)`` or ``(n1, n2, n3)`` (1-D also works).
    spacing : float or tuple of float
        Grid spacing per axis (default 1.0: the integer stencil ``4, -1, -1, -1, -1``).
    bc : str or per-axis sequence
        ``"dirichlet"``, ``"neumann"`` or ``"periodic"`` per axis, or ``(low, high)`` per side.
    obstacles : bool tensor of the grid's shape, optional
        Solid cells (True).  They are removed from the system; their faces get a Neumann condition.
    dtype, device : optional

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Laplacian
    >>> A = Laplacian((64, 64), bc="dirichlet")
    >>> x = torch.randn(4, 64, 64, dtype=torch.float64)   # a batch of 4 fields
    >>> (A @ x).shape
    torch.Size([4, 64, 64])
    >>> A.to_scipy().shape
    (4096, 4096)
    """

    def __init__(self, shape: Sequence[int], spacing=1.0, bc="dirichlet", obstacles=None, *, dtype=None, device=None):
        super().__init__(shape, spacing, bc, obstacles, None, dtype, device)

    def stencil(self) -> _st.StencilWeights:
        if self.obstacles is None:
            return _st.constant_weights(self.spacing, self.bc)
        return self.weights()


class Diffusion(_StencilOperator):
    """The variable-coefficient operator ``-div(k grad u)`` (cell-centred ``k > 0``, harmonic face means).

    Differentiable in ``coefficient``: pass a tensor with ``requires_grad=True``
    and a krylon solve propagates gradients to it by the adjoint method.
    ``A.coefficient`` may be edited in place or replaced: the next application uses
    the new values (see :meth:`weights`).  Replaced by a tensor ``(B, *grid)``, it gives ``B`` systems in
    one operator: field ``b`` of a batch ``(B, *grid)`` is multiplied with coefficient ``b`` (the stencil
    weights broadcast over the leading axis; this is how the Darcy generator solves a batch of
    permeabilities with one CG call).

    Parameters
    ----------
    coefficient : tensor of the grid's shape, positive
    spacing, bc, obstacles, dtype, device : as for :class:`Laplacian`

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Diffusion
    >>> k = torch.rand(32, 32, dtype=torch.float64) + 0.5
    >>> A = Diffusion(k, bc="dirichlet")
    >>> A.diagonal().shape
    torch.Size([32, 32])
    """

    def __init__(self, coefficient, spacing=1.0, bc="dirichlet", obstacles=None, *, dtype=None, device=None):
        coefficient = backend.as_tensor(coefficient, name="coefficient")
        if coefficient.is_complex():
            raise ValueError("the diffusion coefficient must be real")
        validate.finite(coefficient, "coefficient")
        if not bool((coefficient > 0).all()):
            raise ValueError(f"the diffusion coefficient must be positive everywhere (min {float(coefficient.min()):.3g})")
        if coefficient.dim() not in (1, 2, 3):
            raise ValueError(f"the coefficient must have the grid's shape (1-3 dimensions), got {tuple(coefficient.shape)}")
        super().__init__(tuple(coefficient.shape), spacing, bc, obstacles, coefficient, dtype, device)
        if coefficient.requires_grad:
            self.coefficient = coefficient.to(dtype=self.dtype, device=self.device)  # keeps the autograd graph
        else:
            self.register_buffer("coefficient", coefficient.to(dtype=self.dtype, device=self.device))

    def _extra_tensors(self):
        return (self.coefficient,)

    @property
    def device(self):
        return self.coefficient.device if hasattr(self, "coefficient") else super().device

    def _coefficient(self):
        return self.coefficient

    def weights(self):
        """Face weights and diagonal for the coefficient as it is now.

        The cached weights are rebuilt when the coefficient was replaced or edited in place: they remember a
        private copy of the coefficient they were built from and compare it with the current one (one read
        of both).  Inside an :func:`~krylon.operators.base.unchanged` block (every solve runs in one) the
        comparison is made once per block, so a solve pays it once; elsewhere every application makes it.
        """
        k = self.coefficient
        if k.requires_grad and torch.is_grad_enabled():
            # a fresh graph for each solve (a cached graph would be freed after the first backward)
            return _st.stencil_weights(self.shape_in, self.spacing, self.bc, coefficient=k,
                                       solid=self.obstacles, dtype=self.dtype, device=self.device)
        scope, seen = unchanged_scope(), self._built_from
        fresh = seen is not None and seen[0] is k and self._weights is not None  # not replaced
        if fresh and not (scope is not None and self._checked_in is scope):
            fresh = torch.equal(seen[1], k.detach())  # not edited in place
        if not fresh:
            with torch.no_grad():
                self._weights = _st.stencil_weights(self.shape_in, self.spacing, self.bc, coefficient=k,
                                                    solid=self.obstacles, dtype=self.dtype, device=self.device)
            self._built_from = (k, k.detach().clone())
        self._checked_in = scope
        return self._weights

    _built_from = None  # (the coefficient tensor, a private copy of its values) the cached weights come from
    _checked_in = None  # the unchanged() block in which they were last compared with the coefficient

    def _apply(self, fn, recurse=True):
        self._built_from = self._checked_in = None
        return super()._apply(fn, recurse)

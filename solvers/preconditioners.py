"""Preconditioners for krylon's Krylov solvers.

A preconditioner approximates ``A^{-1}``: the solver applies ``z = M(r)``.
Every class here can be built with its operator (``Jacobi(A)``) or without
(``Jacobi()``), in which case the solver binds it to the operator it solves.

* :class:`Jacobi`           ``z = r / diag(A)``
* :class:`SpectralPoisson`  exact inverse of the constant-coefficient stencil by DST/DCT/FFT
                            (masked for obstacles, scaled by the mean coefficient for ``Diffusion``)
* :class:`IC0`              incomplete Cholesky with no fill-in for the 5/7-point stencils
* :func:`as_preconditioner` adapts any callable, LinearOperator, scipy LinearOperator or sparse
                            matrix, or a pyamg hierarchy (``ml.aspreconditioner()``)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..kernels import backend, distributed
from ..operators import LinearOperator, aslinearoperator
from ..operators.stencil import Diffusion, _StencilOperator

__all__ = ["Preconditioner", "Jacobi", "SpectralPoisson", "IC0", "as_preconditioner", "check_preconditioner",
           "adjoint_preconditioner"]


class Preconditioner:
    """Base class: ``M(r)`` applies the approximate inverse to fields ``(*batch, *grid)``."""

    def __init__(self, A: LinearOperator | None = None):
        self.A = None
        self._user_bound = A is not None  # built for one operator by the user
        self._last = None  # (operator, bound copy): the solver's binding, reused for the same operator
        if A is not None:
            self.setup(A)

    def setup(self, A: LinearOperator) -> "Preconditioner":
        self.A = A
        return self

    def bind(self, A: LinearOperator) -> "Preconditioner":
        """Return a preconditioner set up for ``A``.

        One built with an operator (``Jacobi(A)``) is used as it is (the user chose it; only the
        field shape is checked).  One built without (``CG(M=Jacobi())``) is set up for each new
        operator the solver meets, on a copy, so reusing a solver on another system never applies
        the previous system's preconditioner; the last binding is cached for repeated solves.
        """
        if self.A is A:
            return self
        if getattr(self, "_user_bound", self.A is not None):
            if self.A.shape_in != A.shape_in:
                raise ValueError(f"{type(self).__name__} was built for fields of shape {self.A.shape_in}, "
                                 f"but the operator acts on {A.shape_in}")
            return self
        last = getattr(self, "_last", None)
        if last is not None and last[0] is A:
            return last[1]
        import copy

        bound = copy.copy(self)
        bound._last = None
        bound.setup(A)
        self._last = (A, bound)
        return bound

    def __call__(self, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def as_operator(self) -> LinearOperator:
        """The preconditioner as a (symmetric positive definite) LinearOperator."""
        if self.A is None:
            raise ValueError("bind the preconditioner to an operator first")
        return _FunctionOperator(self.__call__, self.A.shape_in, tags=("symmetric", "positive_definite"),
                                 name=type(self).__name__)


class Jacobi(Preconditioner):
    """Diagonal (Jacobi) preconditioner ``z = r / diag(A)``.

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Diffusion
    >>> from krylon.solvers import CG
    >>> k = torch.exp(torch.randn(32, 32, dtype=torch.float64))
    >>> A = Diffusion(k)
    >>> res = CG(rtol=1e-8, M=Jacobi()).solve(A, torch.ones(32, 32, dtype=torch.float64))
    >>> bool(res.converged)
    True
    """

    def setup(self, A):
        super().setup(A)
        with distributed.raise_together("Jacobi's diagonal", getattr(A, "reduce", None) is not None):  # each rank checks its slab
            return self._setup_diagonal(A.diagonal())

    def _setup_diagonal(self, d):
        if not bool(torch.isfinite(d).all()):
            raise ValueError("Jacobi: the operator's diagonal has non-finite entries")
        if bool((d == 0).any()):
            raise ValueError(f"Jacobi: the operator's diagonal has {int((d == 0).sum())} zero entries")
        if not d.is_complex() and bool((d < 0).any()):
            raise ValueError("Jacobi: the diagonal has negative entries, so diag(A)^{-1} is not positive definite; CG would break down")
        self.inv_diag = 1.0 / d
        return self

    def __call__(self, r):
        return r * self.inv_diag.to(device=r.device)


class SpectralPoisson(Preconditioner):
    """Fast Poisson solver as a preconditioner for stencil operators.

    For a :class:`~krylon.operators.Laplacian` without obstacles and with the
    same condition on both sides of every axis it is the *exact* inverse (CG
    converges in one iteration).  With obstacles it applies the obstacle-free
    inverse to the fluid cells (and ``1/d`` to solid cells); for
    :class:`~krylon.operators.Diffusion` it divides by the geometric mean of
    the coefficient.  Uses DST-I (Dirichlet), DCT-II (Neumann) or the FFT
    (periodic) along each axis.
    """

    def setup(self, A):
        if not isinstance(A, _StencilOperator):
            raise TypeError(f"SpectralPoisson works with Laplacian/Diffusion operators, got {type(A).__name__}")
        super().setup(A)
        self.per_axis = []
        for axis, (lo, hi) in enumerate(A.bc):
            if lo != hi:
                raise ValueError(f"SpectralPoisson needs the same boundary condition on both sides of an axis; axis {axis} has {(lo, hi)}")
            self.per_axis.append(lo)
        self.scale = 1.0
        if isinstance(A, Diffusion):
            k = A.coefficient.detach()
            if A.obstacles is not None:
                k = k[~A.obstacles]
            self.scale = float(torch.exp(torch.log(k).mean()))
        self.fluid = None
        if A.obstacles is not None:
            self.fluid = ~A.obstacles
            self.solid_inv = 1.0 / A.diagonal()
        return self

    def __call__(self, r):
        from ..kernels import fft

        A = self.A
        if self.fluid is None:
            return fft.solve_stencil(r, A.spacing, self.per_axis) / self.scale
        rf = torch.where(self.fluid, r, torch.zeros_like(r))
        z = fft.solve_stencil(rf, A.spacing, self.per_axis) / self.scale
        return torch.where(self.fluid, z, r * self.solid_inv)


def _tri_solve(mat: torch.Tensor, rhs: torch.Tensor, upper: bool) -> torch.Tensor:
    """Solve a sparse CSR triangular system for the columns of ``rhs`` (n, k)."""
    return torch.triangular_solve(rhs, mat, upper=upper).solution


class IC0(Preconditioner):
    """Incomplete Cholesky factorisation with zero fill-in for the 5/7-point stencil operators.

    For these stencils (whose grid graph has no triangles) IC(0) is
    ``M = (D + L) D^{-1} (D + L^T)`` with ``L`` the strictly lower part of ``A``
    and ``d_i = a_ii - sum_{j<i} a_ij^2 / d_j``; the diagonal is computed by a
    wavefront over the anti-diagonals of the grid, and the two triangular
    solves use sparse triangular kernels (MKL on the CPU, cuSPARSE on CUDA).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Laplacian
    >>> from krylon.solvers import CG
    >>> A = Laplacian((64, 64))
    >>> b = torch.ones(64, 64, dtype=torch.float64)
    >>> CG(rtol=1e-8, M=IC0()).solve(A, b).iterations < CG(rtol=1e-8).solve(A, b).iterations
    tensor(True)
    """

    def setup(self, A):
        import scipy.sparse as sp

        if not isinstance(A, _StencilOperator):
            raise TypeError(f"IC0 is implemented for Laplacian/Diffusion stencil operators, got {type(A).__name__}; "
                            "for a general sparse matrix use a pyamg hierarchy (M=ml.aspreconditioner()) or Jacobi")
        super().setup(A)
        csr = A.to_scipy("csr")
        n = csr.shape[0]
        diag = csr.diagonal().astype(np.float64)
        low = sp.tril(csr, k=-1, format="coo")
        shape = A.shape_in
        level = np.indices(shape).reshape(len(shape), -1).sum(axis=0)  # anti-diagonal index of each cell
        # process strictly-lower entries grouped by the level of their row
        order = np.argsort(level[low.row], kind="stable")
        rows, cols, vals = low.row[order], low.col[order], low.data[order].astype(np.float64)
        row_levels = level[rows]
        bounds = np.searchsorted(row_levels, np.arange(level.max() + 2))
        d = diag.copy()
        for lev in range(level.max() + 1):
            s, e = bounds[lev], bounds[lev + 1]
            if s == e:
                continue
            contrib = vals[s:e] ** 2 / d[cols[s:e]]
            np.subtract.at(d, rows[s:e], contrib)
            # rows at this level are final now (all their lower neighbours are at lower levels)
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            raise ValueError("IC0 broke down (non-positive pivot): the operator is not an M-matrix / not positive definite")
        lower = (sp.diags(d) + sp.tril(csr, k=-1)).tocsr()
        upper = (sp.diags(d) + sp.triu(csr, k=1)).tocsr()
        dt, dev = A.dtype, A.device
        self._L = backend.scipy_sparse_to_torch(lower, dtype=dt, device=dev)
        self._U = backend.scipy_sparse_to_torch(upper, dtype=dt, device=dev)
        self._d = torch.from_numpy(d).to(dtype=dt, device=dev)
        self.n = n
        return self

    def __call__(self, r):
        shape = r.shape
        flat = r.reshape(-1, self.n).transpose(0, 1).contiguous()
        dt = self._L.dtype
        y = _tri_solve(self._L, flat.to(dt), upper=False)
        z = _tri_solve(self._U, y * self._d.unsqueeze(1), upper=True)
        return z.transpose(0, 1).reshape(shape).to(r.dtype).contiguous()


class _FunctionOperator(LinearOperator):
    """A preconditioner given as a function, as a LinearOperator on the solver's fields.

    ``fn`` (and ``adjoint``, when known) act on fields of shape ``fn_shape`` (a scipy operator's vectors,
    say), reshaped from and to ``shape``; the output is checked to be a tensor of the residual's shape.
    """

    def __init__(self, fn, shape, fn_shape=None, *, adjoint=None, tags=(), name="M"):
        super().__init__(shape, tags=tags)
        self.fn, self.fn_adjoint, self.name = fn, adjoint, name
        self.fn_shape = tuple(shape) if fn_shape is None else tuple(fn_shape)

    def _call(self, fn, r):  # not _apply: that is nn.Module's hook for .to() and friends
        if self.fn_shape == self.shape_in:
            z = fn(r)
        else:
            batch = r.shape[: r.dim() - self.ndim_in]
            z = fn(r.reshape(batch + self.fn_shape))
            z = z.reshape(r.shape) if isinstance(z, torch.Tensor) and z.numel() == r.numel() else z
        if not isinstance(z, torch.Tensor):
            z = backend.as_tensor(z, device=r.device)
        if z.shape != r.shape:
            raise ValueError(f"{self.name} returned shape {tuple(z.shape)} for a residual of shape {tuple(r.shape)}")
        return z

    def _matvec(self, r):
        return self._call(self.fn, r)

    def _rmatvec(self, r):
        if self.fn_adjoint is None:
            return super()._rmatvec(r)
        return self._call(self.fn_adjoint, r)


def as_preconditioner(M: Any, A: LinearOperator | None = None):
    """Turn ``M`` into ``z = M(r)`` on fields shaped like ``A``'s domain.

    Accepts a :class:`Preconditioner` (returned bound to ``A``), a krylon LinearOperator, a scipy
    ``LinearOperator`` or sparse matrix or dense array, a pyamg multilevel solver (its ``aspreconditioner()``
    is used), or a plain callable on fields; all but the first come back as a LinearOperator on ``A``'s
    fields (keeping the wrapped operator's tags and adjoint), so ``M(r)`` is ``M.matvec(r)``.
    """
    if M is None:
        return None
    if isinstance(M, Preconditioner):
        return M.bind(A) if A is not None else M
    if hasattr(M, "aspreconditioner") and callable(M.aspreconditioner):
        M = M.aspreconditioner()  # pyamg MultilevelSolver
    if isinstance(M, LinearOperator) or is_scipy_operand(M):
        op = M if isinstance(M, LinearOperator) else aslinearoperator(M)
    elif callable(M):
        return M if A is None else _FunctionOperator(M, A.shape_in)
    else:
        raise TypeError(f"cannot use an object of type {type(M).__name__} as a preconditioner")
    if A is None:
        return op
    if math.prod(op.shape_in) != math.prod(A.shape_in):
        raise ValueError(f"preconditioner of shape {op.shape} does not match the operator of shape {A.shape}")

    def converted(apply):
        def f(r):  # on the preconditioner's device and dtype, then back to the residual's
            dev = op.device if op.device is not None else r.device
            dt = op.dtype if op.dtype is not None and backend.real_dtype(op.dtype) != backend.real_dtype(r.dtype) else r.dtype
            return apply(r.to(device=dev, dtype=dt)).to(device=r.device, dtype=r.dtype)
        return f

    adjoint = _known_adjoint(op)
    return _FunctionOperator(converted(op.matvec), A.shape_in, op.shape_in, tags=op.tags,
                             adjoint=None if adjoint is None else converted(adjoint.matvec))


def is_scipy_operand(M: Any) -> bool:
    """A scipy sparse matrix, scipy ``LinearOperator`` or numpy array (the operands scipy's solvers take)."""
    try:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(M) or isinstance(M, (spla.LinearOperator, np.ndarray))


def check_preconditioner(M: Any, name: str = "M"):
    """The ``M=`` option: None or something :func:`as_preconditioner` accepts (``TypeError`` otherwise).

    Checked when the option is given, so a wrong object fails at once rather than at the first iteration.
    """
    if isinstance(M, type):  # CG(M=Jacobi): a class is callable, and would fail at the first iteration
        raise TypeError(f"{name} must be a preconditioner object, got the class {M.__name__}; "
                        f"did you mean {name}={M.__name__}()?")
    if M is None or isinstance(M, (Preconditioner, LinearOperator)) or callable(M) or is_scipy_operand(M) \
            or callable(getattr(M, "aspreconditioner", None)):
        return M
    raise TypeError(f"{name} must be a preconditioner (a Preconditioner, a LinearOperator, a scipy LinearOperator, "
                    f"sparse matrix or array, a pyamg hierarchy or a callable on fields), got {type(M).__name__}")


def adjoint_preconditioner(M: Any):
    """``M^H`` for the adjoint solve of a right-preconditioned method, as far as it is known.

    A :class:`Preconditioner` is rebound to the adjoint operator by the solver (Jacobi of ``A^H`` is
    ``diag(A)^{-H}``); a krylon LinearOperator gives its adjoint.  A plain callable has no known adjoint and is
    used as it is: any nonsingular right preconditioner still yields the exact adjoint solution, only the
    number of iterations depends on how well it approximates ``A^{-H}``.
    """
    if is_scipy_operand(M):  # a scipy matrix or LinearOperator: as a krylon operator it knows its adjoint
        M = aslinearoperator(M)
    adjoint = _known_adjoint(M) if isinstance(M, LinearOperator) else None
    return M if adjoint is None else adjoint


def _known_adjoint(op: LinearOperator):
    """``op``'s adjoint, or None where it has none (a function given without its adjoint)."""
    if op.is_symmetric:
        return op
    if getattr(op, "fn_adjoint", 0) is None or type(op)._rmatvec is LinearOperator._rmatvec:
        return None
    return op.adjoint()

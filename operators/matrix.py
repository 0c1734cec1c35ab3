"""Matrices and callables as linear operators.

Matrix operators act on vectors: fields of shape ``(*batch, n)``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..kernels import backend
from .base import LinearOperator, _as_shape

__all__ = ["DenseMatrix", "SparseMatrix", "ScipyOperator", "CallableOperator", "wrap"]


class DenseMatrix(LinearOperator):
    """A dense ``(m, n)`` torch matrix acting on vectors ``(*batch, n)``."""

    def __init__(self, matrix: torch.Tensor, *, tags: Sequence[str] = ()):
        if matrix.dim() != 2:
            raise ValueError(f"a dense matrix operator needs a 2-D tensor, got shape {tuple(matrix.shape)}")
        super().__init__((matrix.shape[1],), (matrix.shape[0],), tags=tags)
        self.register_buffer("matrix", matrix)

    def _extra_tensors(self):
        return (self.matrix,)

    def _matvec(self, x):
        dt = torch.promote_types(x.dtype, self.matrix.dtype)
        return torch.matmul(x.to(dt), self.matrix.transpose(0, 1).to(dt))

    def _rmatvec(self, y):
        m = self.matrix.conj() if self.matrix.is_complex() else self.matrix
        dt = torch.promote_types(y.dtype, m.dtype)
        return torch.matmul(y.to(dt), m.to(dt))

    def diagonal(self):
        return torch.diagonal(self.matrix).clone()

    def to_dense(self):
        return self.matrix


class SparseMatrix(LinearOperator):
    """A torch sparse CSR or COO matrix acting on vectors ``(*batch, n)``."""

    def __init__(self, matrix: torch.Tensor, *, tags: Sequence[str] = ()):
        if matrix.layout not in (torch.sparse_csr, torch.sparse_coo):
            raise TypeError(f"SparseMatrix needs a sparse CSR or COO tensor, got layout {matrix.layout}")
        if matrix.dim() != 2:
            raise ValueError(f"a sparse matrix operator needs a 2-D tensor, got shape {tuple(matrix.shape)}")
        super().__init__((matrix.shape[1],), (matrix.shape[0],), tags=tags)
        if matrix.layout == torch.sparse_coo:
            matrix = matrix.coalesce().to_sparse_csr()
        self.register_buffer("matrix", matrix)
        self._transpose = None

    def _extra_tensors(self):
        return (self.matrix,)

    def _apply(self, fn, recurse=True):  # keep the cached transpose consistent after .to()
        self._transpose = None
        return super()._apply(fn, recurse)

    @staticmethod
    def _mm(mat, x):
        dt = torch.promote_types(x.dtype, mat.dtype)
        if dt != mat.dtype:
            mat = mat.to(dt)
        batch = x.shape[:-1]
        cols = x.reshape(-1, x.shape[-1]).transpose(0, 1).to(dt)
        out = torch.sparse.mm(mat, cols.contiguous()) if mat.layout != torch.strided else mat @ cols
        return out.transpose(0, 1).reshape(batch + (mat.shape[0],))

    def _matvec(self, x):
        return self._mm(self.matrix, x)

    def _rmatvec(self, y):
        if self._transpose is None:
            t = self.matrix.to_sparse_coo().transpose(0, 1).coalesce()
            if t.is_complex():
                t = torch.sparse_coo_tensor(t.indices(), t.values().conj(), t.shape).coalesce()
            self._transpose = t.to_sparse_csr()
        return self._mm(self._transpose, y)

    def diagonal(self):
        coo = self.matrix.to_sparse_coo().coalesce()
        idx, vals = coo.indices(), coo.values()
        d = torch.zeros(min(self.matrix.shape), dtype=vals.dtype, device=vals.device)
        on = idx[0] == idx[1]
        d.index_add_(0, idx[0][on], vals[on])
        return d

    def to_dense(self):
        return self.matrix.to_dense()


class ScipyOperator(LinearOperator):
    """A ``scipy.sparse.linalg.LinearOperator`` (numpy in, numpy out) acting on CPU vectors."""

    def __init__(self, op: Any, *, tags: Sequence[str] = ()):
        m, n = op.shape
        super().__init__((n,), (m,), tags=tags)
        self.op = op
        self._np_dtype = np.dtype(op.dtype) if op.dtype is not None else np.dtype(np.float64)

    @property
    def dtype(self):
        return None  # adapts: scipy operators take any float input; the result is promoted below

    @property
    def device(self):
        return torch.device("cpu")

    def _call(self, fn, x, n_out):
        batch = x.shape[:-1]
        xs = backend.to_numpy(x.reshape(-1, x.shape[-1]))
        cols = fn(np.ascontiguousarray(xs.T))
        cols = np.asarray(cols).reshape(n_out, -1)
        out = torch.from_numpy(np.ascontiguousarray(cols.T)).reshape(batch + (n_out,))
        return out.to(device=x.device, dtype=torch.promote_types(out.dtype, x.dtype))

    def _matvec(self, x):
        return self._call(self.op.matmat, x, self.shape[0])

    def _rmatvec(self, y):
        return self._call(self.op.rmatmat, y, self.shape[1])


class CallableOperator(LinearOperator):
    """An operator defined by a function ``f(x)`` on fields (and optionally its adjoint ``f_adjoint``)."""

    def __init__(self, fn: Callable, shape_in, shape_out=None, *, adjoint: Callable | None = None,
                 dtype: torch.dtype | None = None, tags: Sequence[str] = ()):
        if not callable(fn):
            raise TypeError(f"expected a callable, got {type(fn).__name__}")
        super().__init__(shape_in, shape_out, dtype=dtype, tags=tags)
        self.fn = fn
        self.fn_adjoint = adjoint

    def _matvec(self, x):
        y = self.fn(x)
        if not isinstance(y, torch.Tensor):
            y = backend.as_tensor(y, device=x.device)
        if tuple(y.shape[y.dim() - self.ndim_out:]) != self.shape_out:
            raise ValueError(f"the operator's function returned shape {tuple(y.shape)}, expected (*batch, {self.shape_out})")
        return y

    def _rmatvec(self, y):
        if self.fn_adjoint is not None:
            return self.fn_adjoint(y)
        return super()._rmatvec(y)


def _parse_callable_shape(shape):
    if shape is None:
        raise ValueError("a callable needs shape=(m, n) or shape=(shape_out, shape_in) to become an operator")
    shape = tuple(shape)
    if len(shape) == 2 and all(isinstance(s, (int, np.integer)) for s in shape):
        return (int(shape[1]),), (int(shape[0]),)
    if len(shape) == 2:
        return _as_shape(shape[1]), _as_shape(shape[0])
    raise ValueError(f"shape must be (m, n) or (shape_out, shape_in), got {shape}")


def wrap(obj: Any, *, shape=None, tags=(), dtype=None, device=None) -> LinearOperator:
    """Implementation of :func:`krylon.operators.aslinearoperator` for non-krylon objects."""
    if isinstance(obj, torch.Tensor):
        if obj.layout in (torch.sparse_csr, torch.sparse_coo):
            m = obj
            if dtype is not None or device is not None:
                m = m.to(device=backend.resolve_device(device) or m.device, dtype=backend._parse_dtype(dtype) or m.dtype)
            return SparseMatrix(m, tags=tags)
        if obj.layout != torch.strided:
            raise TypeError(f"unsupported tensor layout {obj.layout}")
        return DenseMatrix(backend.as_tensor(obj, dtype=dtype, device=device, name="matrix"), tags=tags)
    try:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla
    except ImportError:  # pragma: no cover
        sp = spla = None
    if sp is not None and sp.issparse(obj):
        if obj.ndim != 2:
            raise ValueError(f"expected a 2-D sparse matrix, got {obj.ndim}-D")
        return SparseMatrix(backend.scipy_sparse_to_torch(obj, dtype=dtype, device=device), tags=tags)
    if spla is not None and isinstance(obj, spla.LinearOperator):
        if device is not None and backend.resolve_device(device).type != "cpu":
            raise ValueError("a scipy LinearOperator runs on the CPU; it cannot be placed on another device")
        return ScipyOperator(obj, tags=tags)
    if isinstance(obj, np.ndarray) or (isinstance(obj, (list, tuple)) and shape is None):
        arr = np.asarray(obj)  # also an np.matrix (an ndarray subclass), as a plain array
        if arr.ndim != 2:
            raise ValueError(f"a matrix must be 2-D, got an array of shape {arr.shape}")
        return DenseMatrix(backend.as_tensor(arr, dtype=dtype, device=device, name="matrix"), tags=tags)
    if callable(obj):
        shape_in, shape_out = _parse_callable_shape(shape)
        return CallableOperator(obj, shape_in, shape_out, dtype=backend._parse_dtype(dtype), tags=tags)
    raise TypeError(f"cannot make a linear operator from an object of type {type(obj).__name__}")

"""Linear operators on field-shaped tensors.

A :class:`LinearOperator` maps fields of shape ``(*batch, *shape_in)`` to fields
of shape ``(*batch, *shape_out)``; leading dimensions are independent systems.
Subclasses implement ``_matvec`` (and ``_rmatvec`` for the adjoint unless the
operator is self-adjoint); the base class checks shapes, dtypes and devices,
builds lazy compositions and propagates structural tags.

Tags
----
``"symmetric"``            self-adjoint (Hermitian for complex data): ``A.H is A``.
``"positive_definite"``     ``x^H A x > 0`` for ``x != 0``.
``"positive_semidefinite"`` ``x^H A x >= 0``.
``"negative_definite"``     ``x^H A x < 0`` for ``x != 0`` (e.g. ``-A`` for a positive definite ``A``).
``"indefinite"``            eigenvalues of both signs (declared by the user, e.g. a shifted Laplacian).

Solvers read these tags up front: CG refuses an operator tagged ``negative_definite``
or ``indefinite`` and, with ``strict=True``, one not tagged ``symmetric`` (an untagged
operator is otherwise accepted, as scipy does).  Tags are set at construction, or added
by :func:`aslinearoperator` / :meth:`LinearOperator.with_tags`, which return a new
operator; contradictory tags raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import numbers
from typing import Any, Sequence

import torch
from torch import nn

from ..kernels import backend, linalg

__all__ = ["LinearOperator", "IdentityOperator", "aslinearoperator", "dottest", "TAGS", "unchanged", "unchanged_scope"]

_UNCHANGED: contextvars.ContextVar = contextvars.ContextVar("krylon_unchanged", default=None)


@contextlib.contextmanager
def unchanged():
    """Promise that no operator's tensors change inside the block (a solver runs its iteration in one).

    Operators that derive data from their tensors (``Diffusion``'s face weights) then check that data once per
    block instead of at every application.  Outside such a block every application checks, so an in-place
    edit of a coefficient always takes effect; inside it, an edit (e.g. from a solver's callback) takes effect
    at the next solve.  The scope is per thread and per task (a context variable), never process state.
    """
    token = _UNCHANGED.set(object())
    try:
        yield
    finally:
        _UNCHANGED.reset(token)


def unchanged_scope():
    """The innermost :func:`unchanged` block's identity (None outside any)."""
    return _UNCHANGED.get()

TAGS = ("symmetric", "positive_definite", "positive_semidefinite", "negative_definite", "indefinite")


def _checked_tags(tags, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> frozenset:
    """``tags`` as a frozenset with implied tags added; unknown, contradictory or misplaced tags raise."""
    if isinstance(tags, str):  # a bare string would otherwise become a set of characters
        raise TypeError(f"tags must be a collection of tag names, got the string {tags!r}; write tags=({tags!r},)")
    tags = frozenset(tags)
    unknown = tags - set(TAGS)
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)}; known tags are {TAGS}")
    if "positive_definite" in tags:
        tags = tags | {"positive_semidefinite"}
    # the sign tags exclude one another: x^H A x >= 0, < 0, or of both signs
    signs = [t for t in ("positive_semidefinite", "negative_definite", "indefinite") if t in tags]
    if len(signs) > 1:
        raise ValueError(f"contradictory tags {sorted(tags)}: {' and '.join(signs)} cannot both hold")
    if tags and shape_in != shape_out:
        raise ValueError(f"tags {sorted(tags)} need a square operator, got shape_in={shape_in}, shape_out={shape_out}")
    return tags


def _as_shape(s) -> tuple[int, ...]:
    if isinstance(s, numbers.Integral):
        s = (int(s),)
    s = tuple(int(n) for n in s)
    if any(n < 0 for n in s):
        raise ValueError(f"shape entries must be non-negative, got {s}")
    return s


class LinearOperator(nn.Module):
    """Base class of krylon's linear operators.

    Parameters
    ----------
    shape_in : tuple of int
        Field shape of the domain (the trailing dimensions of ``x``).
    shape_out : tuple of int, optional
        Field shape of the range (default: ``shape_in``).
    dtype : torch.dtype, optional
        The operator's scalar type, or None when it adapts to its input.
    tags : iterable of str
        Structural tags (see module docstring).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import aslinearoperator
    >>> A = aslinearoperator(torch.tensor([[2.0, 1.0], [1.0, 3.0]]), tags=("symmetric",))
    >>> (A @ A.H).shape
    (2, 2)
    """

    def __init__(self, shape_in, shape_out=None, *, dtype: torch.dtype | None = None, tags: Sequence[str] = ()):
        super().__init__()
        self.shape_in = _as_shape(shape_in)
        self.shape_out = self.shape_in if shape_out is None else _as_shape(shape_out)
        self._dtype = dtype
        self.tags = _checked_tags(tags, self.shape_in, self.shape_out)

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape ``(prod(shape_out), prod(shape_in))``, as in scipy."""
        return (math.prod(self.shape_out), math.prod(self.shape_in))

    @property
    def ndim_in(self) -> int:
        return len(self.shape_in)

    @property
    def ndim_out(self) -> int:
        return len(self.shape_out)

    @property
    def is_square(self) -> bool:
        return self.shape_in == self.shape_out

    @property
    def dtype(self) -> torch.dtype | None:
        if self._dtype is not None:
            return self._dtype
        for t in self._tensors():
            if t.is_floating_point() or t.is_complex():
                return t.dtype
        return None

    @property
    def device(self) -> torch.device | None:
        for t in self._tensors():
            return t.device
        return None

    @property
    def is_symmetric(self) -> bool:
        return "symmetric" in self.tags

    @property
    def is_positive_definite(self) -> bool:
        return "positive_definite" in self.tags

    @property
    def is_positive_semidefinite(self) -> bool:
        return "positive_semidefinite" in self.tags

    @property
    def reduce(self):
        """How partial inner products over this operator's fields become whole ones.

        None (the default) for fields each process holds whole.  An operator whose fields are split across
        processes (:class:`~krylon.operators.distributed.DistributedLaplacian`) returns a function summing
        per-system partial sums over them (an all-reduce); a composition inherits it from its operands.
        Solvers pass every inner product and norm through it (:meth:`krylon.solvers.driver.Driver.dot`).
        """
        for op in getattr(self, "args", ()):
            r = op.reduce
            if r is not None:
                return r
        return None

    def _tensors(self):
        yield from self.parameters()
        yield from self.buffers()

    def differentiable_tensors(self) -> list[torch.Tensor]:
        """Tensors the operator depends on that require grad (parameters of a differentiable solve)."""
        seen, out = set(), []
        for t in list(self.parameters()) + list(self.buffers()) + list(self._extra_tensors()):
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    def _extra_tensors(self):
        """Tensors held outside ``parameters``/``buffers`` that may carry gradients."""
        return ()

    # ------------------------------------------------------------------ application
    def _check(self, x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}.{what} expects a torch.Tensor, got {type(x).__name__}")
        nd = len(shape)
        if x.dim() < nd or tuple(x.shape[x.dim() - nd:]) != shape:
            raise ValueError(f"{type(self).__name__}.{what}: input of shape {tuple(x.shape)} does not end in the operator's field shape {shape}")
        if not backend.is_floating(x.dtype):
            raise TypeError(f"{type(self).__name__}.{what}: input dtype {x.dtype} is not a floating or complex dtype")
        dt = self.dtype
        # compared by precision only: a complex operator takes a real field (and returns a complex one)
        if dt is not None and backend.real_dtype(x.dtype) != backend.real_dtype(dt):
            raise ValueError(f"{type(self).__name__}.{what}: input dtype {x.dtype} does not match the operator's dtype {dt}")
        dev = self.device
        if dev is not None and x.device != dev:
            raise ValueError(f"{type(self).__name__}.{what}: input is on {x.device} but the operator is on {dev}; move one of them with .to()")

    def matvec(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the operator to ``x`` of shape ``(*batch, *shape_in)``.

        ``out`` is an optional preallocated result buffer: operators that can
        write into it (the stencils) do, which keeps solver hot loops free of
        allocations; others ignore it.  Always use the returned tensor.
        """
        self._check(x, self.shape_in, "matvec")
        if out is not None and self._supports_out and out.shape == x.shape[: x.dim() - self.ndim_in] + self.shape_out \
                and out.dtype == x.dtype and out.device == x.device and out is not x:
            return self._matvec_out(x, out)
        return self._matvec(x)

    def matvec_dot(self, x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A x, x^H A x)``: the product and, per system, the real part of the quadratic form.

        What CG needs each iteration.  Operators that can do both in one pass over ``x``
        (the constant-coefficient stencils on the CPU, with numba) override this.  For an operator with a
        :attr:`reduce` (fields split across processes) the quadratic form is this process's partial sum.
        """
        if self.shape_in != self.shape_out:
            raise ValueError(f"{type(self).__name__}.matvec_dot needs a square operator, got {self.shape_in} -> {self.shape_out}")
        y = self.matvec(x, out=out)
        return y, linalg.dot(x, y, len(self.shape_in)).real

    _supports_out = False

    def _matvec_out(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._matvec(x)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint to ``y`` of shape ``(*batch, *shape_out)``."""
        self._check(y, self.shape_out, "rmatvec")
        return self._rmatvec(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement _matvec")

    def _rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        if self.is_symmetric:
            return self._matvec(y)
        raise NotImplementedError(f"{type(self).__name__} does not implement its adjoint (_rmatvec)")

    def diagonal(self) -> torch.Tensor:
        """The diagonal of a square operator as a field of shape ``shape_in``."""
        raise NotImplementedError(f"{type(self).__name__} does not provide its diagonal")

    def to_dense(self) -> torch.Tensor:
        """The operator as a dense ``(prod(shape_out), prod(shape_in))`` matrix (small operators only)."""
        n = math.prod(self.shape_in)
        dt = self.dtype or torch.float64
        eye = torch.eye(n, dtype=dt, device=self.device).reshape((n,) + self.shape_in)
        cols = self.matvec(eye).reshape(n, -1)
        return cols.transpose(0, 1).contiguous()

    def with_tags(self, tags: Sequence[str]) -> "LinearOperator":
        """This operator with ``tags`` added, as a new object; ``self`` is left as it is.

        The result is of the same class and shares the tensors, submodules and settings of
        ``self`` (no data is copied); its own containers are copies, so ``.to()`` or a new
        buffer on one does not reach the other.  Contradictory tags raise ``ValueError``.

        Examples
        --------
        >>> import torch
        >>> from krylon.operators import aslinearoperator
        >>> A = aslinearoperator(torch.tensor([[-2.0, 1.0], [1.0, -3.0]]))
        >>> B = A.with_tags(("symmetric", "negative_definite"))
        >>> sorted(B.tags), sorted(A.tags), B.matrix is A.matrix
        (['negative_definite', 'symmetric'], [], True)
        """
        new = _checked_tags(self.tags | _checked_tags(tags, self.shape_in, self.shape_out), self.shape_in, self.shape_out)
        view = object.__new__(type(self))
        # nn.Module keeps parameters, buffers, submodules and hooks in dicts (and sets): copy those
        # containers, not what they hold, so the two operators share data but not registrations
        view.__dict__.update({k: copy.copy(v) if isinstance(v, (dict, set)) else v for k, v in self.__dict__.items()})
        view.tags = new
        return view

    # ------------------------------------------------------------------ algebra
    def adjoint(self) -> "LinearOperator":
        """The adjoint operator (``A.H``); lazy, and ``A`` itself when tagged symmetric."""
        if self.is_symmetric:
            return self
        return _Adjoint(self)

    @property
    def H(self) -> "LinearOperator":
        return self.adjoint()

    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return _Product(self, other)
        if isinstance(other, torch.Tensor):
            return self.matvec(other)
        return NotImplemented

    def __add__(self, other):
        if isinstance(other, LinearOperator):
            return _Sum(self, other)
        return NotImplemented

    def __sub__(self, other):
        if isinstance(other, LinearOperator):
            return _Sum(self, _Scaled(other, -1.0))
        return NotImplemented

    def __neg__(self):
        return _Scaled(self, -1.0)

    def __mul__(self, c):
        if isinstance(c, (numbers.Number, torch.Tensor)) and (not isinstance(c, torch.Tensor) or c.dim() == 0):
            return _Scaled(self, c)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, c):
        if isinstance(c, numbers.Number):
            return _Scaled(self, 1.0 / c)
        return NotImplemented

    def extra_repr(self) -> str:
        s = f"shape_in={self.shape_in}"
        if self.shape_out != self.shape_in:
            s += f", shape_out={self.shape_out}"
        if self.tags:
            s += f", tags={sorted(self.tags)}"
        return s


class IdentityOperator(LinearOperator):
    """The identity on fields of a given shape."""

    def __init__(self, shape):
        super().__init__(shape, tags=("symmetric", "positive_definite"))

    def _matvec(self, x):
        return x.clone()

    def diagonal(self):
        return torch.ones(self.shape_in, dtype=torch.float64)


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator):
        super().__init__(op.shape_out, op.shape_in, dtype=op._dtype, tags=op.tags)
        self.op = op

    @property
    def args(self):
        return (self.op,)

    def _matvec(self, x):
        return self.op._rmatvec(x)

    def _rmatvec(self, y):
        return self.op._matvec(y)

    def adjoint(self):
        return self.op

    def diagonal(self):
        return torch.conj(self.op.diagonal())


def _is_adjoint_pair(a: LinearOperator, b: LinearOperator) -> bool:
    return (isinstance(a, _Adjoint) and a.op is b) or (isinstance(b, _Adjoint) and b.op is a) or (a is b and a.is_symmetric)


class _Binary(LinearOperator):
    """An operator built from two others, ``a`` and ``b`` (kept in ``.args``); its dtype is their promotion."""

    a: LinearOperator
    b: LinearOperator

    @property
    def args(self):
        return (self.a, self.b)

    @property
    def dtype(self):
        da, db = self.a.dtype, self.b.dtype
        if da is None or db is None:
            return da or db
        return torch.promote_types(da, db)


class _Product(_Binary):
    def __init__(self, a: LinearOperator, b: LinearOperator):
        if a.shape_in != b.shape_out:
            raise ValueError(f"cannot compose: left operator takes fields of shape {a.shape_in}, right one returns {b.shape_out}")
        tags = ()
        if _is_adjoint_pair(a, b) and (isinstance(a, _Adjoint) or a is b):
            tags = ("symmetric", "positive_semidefinite")  # B^H B or S S with S self-adjoint
            if a is b and a.is_positive_definite:
                tags = ("symmetric", "positive_definite")
        super().__init__(b.shape_in, a.shape_out, tags=tags)
        self.a, self.b = a, b

    def _matvec(self, x):
        return self.a._matvec(self.b._matvec(x))

    def _rmatvec(self, y):
        return self.b._rmatvec(self.a._rmatvec(y))

    def adjoint(self):
        if self.is_symmetric:
            return self
        return _Product(self.b.adjoint(), self.a.adjoint())


class _Sum(_Binary):
    def __init__(self, a: LinearOperator, b: LinearOperator):
        if a.shape_in != b.shape_in or a.shape_out != b.shape_out:
            raise ValueError(f"cannot add operators of shapes {a.shape_in}->{a.shape_out} and {b.shape_in}->{b.shape_out}")
        tags = set()
        if a.is_symmetric and b.is_symmetric:
            tags.add("symmetric")
        if a.is_positive_semidefinite and b.is_positive_semidefinite:
            tags.add("positive_semidefinite")
            if a.is_positive_definite or b.is_positive_definite:
                tags.add("positive_definite")
        super().__init__(a.shape_in, a.shape_out, tags=tags)
        self.a, self.b = a, b

    def _matvec(self, x):
        return self.a._matvec(x) + self.b._matvec(x)

    def _rmatvec(self, y):
        return self.a._rmatvec(y) + self.b._rmatvec(y)

    def adjoint(self):
        if self.is_symmetric:
            return self
        return _Sum(self.a.adjoint(), self.b.adjoint())

    def diagonal(self):
        return self.a.diagonal() + self.b.diagonal()


class _Scaled(LinearOperator):
    def __init__(self, op: LinearOperator, c):
        cval = complex(c) if not isinstance(c, torch.Tensor) else complex(c.item())
        tags = set()
        if cval.imag == 0:
            if op.is_symmetric:
                tags.add("symmetric")
            if cval.real > 0:
                tags |= op.tags & {"positive_definite", "positive_semidefinite", "negative_definite", "indefinite"}
            elif cval.real < 0:
                if op.is_positive_definite:
                    tags.add("negative_definite")
                if "negative_definite" in op.tags:
                    tags |= {"positive_definite", "positive_semidefinite"}
                if "indefinite" in op.tags:
                    tags.add("indefinite")
            elif cval.real == 0 and op.is_symmetric:
                tags.add("positive_semidefinite")
        super().__init__(op.shape_in, op.shape_out, dtype=op._dtype, tags=tags)
        self.op = op
        self.c = c

    @property
    def args(self):
        return (self.op,)

    @property
    def dtype(self):
        return self.op.dtype

    def _matvec(self, x):
        return self.c * self.op._matvec(x)

    def _rmatvec(self, y):
        c = self.c.conj() if isinstance(self.c, (complex, torch.Tensor)) else self.c
        return c * self.op._rmatvec(y)

    def adjoint(self):
        if self.is_symmetric:
            return self
        c = self.c.conjugate() if isinstance(self.c, complex) else (self.c.conj() if isinstance(self.c, torch.Tensor) else self.c)
        return _Scaled(self.op.adjoint(), c)

    def diagonal(self):
        return self.c * self.op.diagonal()


def aslinearoperator(obj: Any, *, shape=None, tags: Sequence[str] = (), dtype=None, device=None) -> LinearOperator:
    """Wrap ``obj`` as a :class:`LinearOperator`.

    Accepts a krylon operator (returned as is, or as a tagged view when ``tags`` adds any:
    :meth:`LinearOperator.with_tags`; the argument is never changed), a dense torch tensor or numpy
    array (2-D matrix), a torch sparse CSR/COO tensor, a scipy sparse matrix or
    array, a ``scipy.sparse.linalg.LinearOperator``, or a callable with
    ``shape=(m, n)`` (vectors) or ``shape=(shape_out, shape_in)`` (fields).

    Parameters
    ----------
    tags : structural tags to attach (e.g. ``("symmetric", "positive_definite")``).
        Matrices are not inspected for symmetry: say what you know.  Tags that contradict
        each other or the operator's own (``negative_definite`` on a positive definite
        Laplacian) raise ``ValueError``.
    dtype, device : optional conversion of a matrix's values.

    Examples
    --------
    >>> import numpy as np, torch
    >>> A = aslinearoperator(np.diag([1.0, 2.0]))
    >>> A @ torch.ones(2, dtype=torch.float64)
    tensor([1., 2.], dtype=torch.float64)
    """
    from . import matrix

    if isinstance(obj, LinearOperator):
        added = _checked_tags(tags, obj.shape_in, obj.shape_out)
        return obj if added <= obj.tags else obj.with_tags(added)
    return matrix.wrap(obj, shape=shape, tags=tags, dtype=dtype, device=device)


def dottest(A: LinearOperator, *, batch: Sequence[int] = (), dtype=None, device=None, rtol: float | None = None,
            generator: torch.Generator | None = None, raise_on_fail: bool = True) -> float:
    """Dot-product (adjoint) test: ``<A x, y> == <x, A^H y>`` for random ``x, y``.

    Returns the relative mismatch, the largest over the ``batch`` of independent pairs,

    ``|<Ax, y> - <x, A^H y>| / (||Ax|| ||y|| + ||x|| ||A^H y||)``

    (each term of the denominator bounds the rounding error of one of the two inner products).
    With ``raise_on_fail`` it raises ``AssertionError`` when the mismatch exceeds ``rtol``
    (default ``1e3 * eps`` of the dtype).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Laplacian
    >>> dottest(Laplacian((8, 8))) < 1e-12
    True
    """
    dtype = dtype or A.dtype or torch.float64
    device = device if device is not None else A.device
    gen = generator
    x = torch.randn(tuple(batch) + A.shape_in, dtype=dtype, device=device, generator=gen)
    y = torch.randn(tuple(batch) + A.shape_out, dtype=dtype, device=device, generator=gen)
    Ax = A.matvec(x)
    AHy = A.adjoint().matvec(y)
    total = A.reduce  # a distributed operator's inner products are sums over the ranks
    lhs, rhs = linalg.dot(Ax, y, A.ndim_out), linalg.dot(x, AHy, A.ndim_in)
    if total is not None:
        lhs, rhs = total(lhs), total(rhs)

    def nrm(v, nd):
        n = linalg.norm(v, nd)
        return n if total is None else torch.sqrt(total(n ** 2))

    scale = nrm(Ax, A.ndim_out) * nrm(y, A.ndim_out) + nrm(x, A.ndim_in) * nrm(AHy, A.ndim_in)
    err = float(((lhs - rhs).abs() / torch.clamp(scale, min=torch.finfo(backend.real_dtype(dtype)).tiny)).max())
    tol = rtol if rtol is not None else 1e3 * backend.eps(dtype)
    if raise_on_fail and not err <= tol:
        raise AssertionError(f"dot-product test failed for {type(A).__name__}: relative mismatch {err:.3e} > {tol:.1e}")
    return err

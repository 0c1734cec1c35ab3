"""scipy drop-ins: :func:`cg`, :func:`gmres`, :func:`minres` with ``scipy.sparse.linalg``'s signatures.

A simulation code written for scipy swaps ``scipy.sparse.linalg.cg`` for
``krylon.solvers.cg`` and changes nothing else: the same positional and
keyword arguments, the same ``(x, info)`` return, numpy in and numpy out.
The inputs are converted to torch once; krylon's solver classes
(:class:`~krylon.solvers.CG`, :class:`~krylon.solvers.MINRES`,
:class:`~krylon.solvers.GMRES`) do the iterations.

What is the same as scipy
-------------------------
* ``A``: scipy sparse matrix/array, dense ndarray, ``scipy.sparse.linalg.LinearOperator``
  or any object with ``.shape`` and ``.matvec``; a non-square ``A`` raises ``ValueError``.
  ``A.psolve`` is used as the preconditioner when ``M`` is not given (scipy's ``make_system``).
* ``b`` of shape ``(N,)`` or ``(N, 1)`` (anything else: ``ValueError``); integer data is
  promoted to float64; the working dtype is scipy's coercion of ``A``'s and ``b``'s dtypes
  (float32 stays float32, complex stays complex, anything else becomes float64).
* ``x0``: ``None`` (zeros), an array of shape ``(N,)``/``(N, 1)``, or ``'Mb'`` (``x0 = M @ b``);
  ``x0`` is never modified.  The returned ``x`` has shape ``(N,)`` and the working dtype.
* Convergence: ``||b - A x|| <= max(atol, rtol * ||b||)``; ``b == 0`` returns zeros with
  ``info = 0`` at once; a negative or NaN ``rtol``/``atol`` raises ``ValueError``
  (an infinite one is allowed and returns ``x0`` at once).
* ``callback(xk)`` gets a copy of the iterate after every iteration (never for ``x0``).
* ``maxiter`` defaults: ``10 N`` (cg), ``5 N`` (minres), ``10 N`` restart cycles (gmres).

``info``
--------
``0`` converged; ``> 0`` not converged: the iteration limit, as scipy reports it
(``maxiter``; also when krylon stopped early because the residual stagnated at the
rounding floor of the dtype); ``< 0`` breakdown, one code per krylon status:
``-2`` operator not positive definite (CG), ``-3`` NaN/Inf appeared, ``-5`` Krylov
breakdown, ``-6`` preconditioner not positive definite.

Differences (krylon extensions)
-------------------------------
* The convergence test is always checked on the *true* residual before ``info = 0`` is
  returned (scipy's minres stops on its own estimate ``||r|| / (||A|| ||x||)``).
* ``minres`` takes ``atol`` and complex Hermitian systems; ``gmres`` preconditions on the
  right (the residual it minimises is the true one), so with ``M`` its iterates differ from scipy's
  left-preconditioned ones; its ``'pr_norm'``/``'legacy'`` callback value is scipy's quantity,
  ``||M (b - A x_k)|| / ||b||``, for krylon's iterate ``x_k``.
* ``A`` (or ``M``) may also be a torch tensor, a krylon
  :class:`~krylon.operators.LinearOperator` or :class:`~krylon.solvers.Preconditioner`, and
  ``M`` a pyamg multilevel solver.  When ``b`` is a torch tensor, ``x`` (and the iterates given
  to ``callback``) are torch tensors on ``b``'s device, and gradients flow through the solve.
* A krylon operator that has a dtype is not copied: it sets the working precision (``b`` is
  converted to it), and ``b`` may also be given in the operator's field shape (``x`` comes back
  in that shape).
* Non-finite ``b``/``x0`` and ``maxiter < 1`` raise ``ValueError``; a complex ``x0`` for a real
  system raises ``TypeError`` (scipy drops the imaginary part with a warning).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..kernels import backend, validate
from ..operators import LinearOperator, aslinearoperator
from .cg import CG
from .gmres import GMRES
from .minres import MINRES
from .preconditioners import Preconditioner, as_preconditioner, is_scipy_operand
from .result import Status

__all__ = ["cg", "gmres", "minres"]

# krylon status codes that scipy would call a breakdown (reported as info = -code)
_BREAKDOWN = frozenset({Status.INDEFINITE, Status.NAN, Status.BREAKDOWN, Status.PRECONDITIONER})
_TORCH_OF = {"f": torch.float32, "d": torch.float64, "F": torch.complex64, "D": torch.complex128}
_CHAR_OF_TORCH = {torch.float32: "f", torch.float64: "d", torch.complex64: "F", torch.complex128: "D"}


# ----------------------------------------------------------------------------- dtypes
def _char(dt) -> str:
    """scipy's ``coerce`` alphabet: ``'f' 'd' 'F' 'D'``; every other dtype counts as ``'d'``
    (an extended-precision complex one as ``'D'`` so that the imaginary part survives)."""
    if isinstance(dt, torch.dtype):
        return _CHAR_OF_TORCH.get(dt, "D" if dt.is_complex else "d")
    dt = np.dtype(dt)
    if dt.char in "fdFD":
        return dt.char
    return "D" if dt.kind == "c" else "d"


def _coerce(a: str, b: str) -> str:
    """Promotion of two ``'fdFD'`` characters (scipy's ``_coerce_rules``)."""
    complex_ = a in "FD" or b in "FD"
    double = a in "dD" or b in "dD"
    return ("D" if double else "F") if complex_ else ("d" if double else "f")


# ----------------------------------------------------------------------------- argument checks
def _check_tol(name: str, value) -> float:
    # scipy's contract: a tolerance that is not a number >= 0 is a ValueError (inf is allowed)
    try:
        return validate.real_number(value, name, minimum=0.0, finite=False)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _scipy():
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    return sp, spla


# ----------------------------------------------------------------------------- the converted system
class _System:
    """``A x = b`` converted once to a krylon operator and torch tensors (scipy's ``make_system``)."""

    def __init__(self, A, b, x0, M, rtol, atol):
        self.rtol = _check_tol("rtol", rtol)
        self.atol = _check_tol("atol", atol)
        sp, spla = _scipy()
        A_in = A
        # ---- what A is, and its dtype character (None: take b's)
        if isinstance(A, LinearOperator):
            kind = "krylon"
            a_char = None if A.dtype is None else _char(A.dtype)
        elif isinstance(A, torch.Tensor):
            kind = "torch"
            if A.dim() != 2:
                raise ValueError(f"A must be a 2-D matrix, got a tensor of shape {tuple(A.shape)}")
            a_char = _char(A.dtype)
        elif sp.issparse(A):
            kind = "sparse"
            a_char = _char(A.dtype)
        elif isinstance(A, np.ndarray):
            kind = "dense"
            A = np.asarray(A)
            if A.ndim != 2:
                raise ValueError(f"A must be a 2-D matrix, got an array of shape {A.shape}")
            if A.dtype.kind not in "biufc":
                raise TypeError(f"A has unsupported dtype {A.dtype}")
            a_char = _char(A.dtype)
        elif isinstance(A, spla.LinearOperator) or (hasattr(A, "shape") and hasattr(A, "matvec")):
            kind = "scipy"
            A = spla.aslinearoperator(A)
            a_char = None if A.dtype is None else _char(A.dtype)
        else:
            raise TypeError(f"A must be a sparse matrix, an ndarray, a LinearOperator or a tensor; "
                            f"got an object of type {type(A).__name__}")
        shape = tuple(int(s) for s in A.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"expected square matrix, but got shape={shape}")
        if kind == "krylon" and A.shape_in != A.shape_out:
            raise ValueError(f"expected a square operator, but got shape_in={A.shape_in}, shape_out={A.shape_out}")
        N = shape[0]
        self.N = N

        # ---- b: (N,) or (N, 1); a krylon operator also takes its own field shape
        self.torch_out = isinstance(b, torch.Tensor)
        if self.torch_out:
            bt = b
            if not (backend.is_floating(bt.dtype)):
                bt = bt.to(torch.float64)
            b_char = _char(bt.dtype)
            self.out_device = b.device
        else:
            arr = np.asanyarray(b)
            if arr.dtype.kind not in "biufc":
                raise TypeError(f"b must hold numbers, got an array of dtype {arr.dtype}")
            if arr.dtype.char not in "fdFD":
                arr = arr.astype(np.float64)  # scipy: upcast non-FP types to double
            b_char = _char(arr.dtype)
            self.out_device = None
            bt = None
        b_shape = tuple(b.shape) if self.torch_out else arr.shape
        field = kind == "krylon" and b_shape == tuple(A.shape_out) and b_shape not in ((N,), (N, 1))
        if not (b_shape == (N,) or b_shape == (N, 1) or field):
            raise ValueError(f"shapes of A {shape} and b {b_shape} are incompatible")
        self.out_shape = tuple(A.shape_in) if field else (N,)

        # ---- working dtype: scipy's coercion of A's and b's
        if a_char is None and kind == "scipy":
            a_char = _char(np.asarray(A.matvec(np.zeros(N, dtype=np.dtype(b_char)))).dtype)
        r_char = b_char if a_char is None else _coerce(a_char, b_char)
        if kind == "krylon" and A.dtype is not None:
            # a krylon operator is not copied to another precision: it sets the working precision
            op_char = _char(A.dtype)
            r_char = op_char.upper() if (r_char in "FD" or op_char in "FD") else op_char.lower()
        self.tdt = _TORCH_OF[r_char]
        self.rdt = np.dtype(r_char)

        # ---- the operator, on the device of the computation
        if kind == "krylon":
            op = A
        elif kind == "torch":
            op = aslinearoperator(A.to(self.tdt) if A.layout == torch.strided else A, dtype=self.tdt)
        elif kind in ("sparse", "dense"):
            op = aslinearoperator(A, dtype=self.tdt, device=b.device if self.torch_out else None)
        else:
            op = aslinearoperator(A)  # ScipyOperator: CPU, adapts to the input dtype
        self.op = op
        dev = op.device if op.device is not None else (b.device if self.torch_out else torch.device("cpu"))
        self.device = dev
        if self.torch_out:
            bt = bt.to(device=dev, dtype=self.tdt)
        else:
            bt = torch.from_numpy(np.array(arr, dtype=self.rdt, copy=True)).to(dev)
        self.b = bt.reshape(op.shape_out)
        validate.finite(self.b.detach(), "b")
        self.bnorm = float(torch.linalg.vector_norm(self.b.detach()))

        # ---- preconditioner (A.psolve when M is not given, as scipy)
        if M is None and getattr(A_in, "psolve", None) is not None:
            psolve = A_in.psolve
            M = spla.LinearOperator((N, N), matvec=psolve, rmatvec=getattr(A_in, "rpsolve", psolve), dtype=self.rdt)
        self.M = self._preconditioner(M)

        # ---- initial guess
        self.x0 = self._initial_guess(x0, shape)

    # ------------------------------------------------------------------ pieces
    def _preconditioner(self, M):
        """scipy's ``M=``: a matrix, array, LinearOperator (scipy's or krylon's), pyamg hierarchy or Preconditioner.

        Checked against ``A``'s shape here (with scipy's message), then adapted by the one adapter every solver
        uses (:func:`as_preconditioner`); unlike the solver classes, a bare function is refused, as scipy does.
        """
        if M is None:
            return None
        if isinstance(M, Preconditioner):
            return M.bind(self.op)
        if hasattr(M, "aspreconditioner") and callable(M.aspreconditioner):
            M = M.aspreconditioner()  # a pyamg MultilevelSolver
        if not hasattr(M, "shape") or not (isinstance(M, (LinearOperator, torch.Tensor, np.ndarray)) or is_scipy_operand(M)
                                           or hasattr(M, "matvec")):
            raise TypeError(f"M must be a sparse matrix, an ndarray, a LinearOperator, a pyamg preconditioner or a "
                            f"krylon Preconditioner; got an object of type {type(M).__name__}")
        self._check_M_shape(M.shape)
        sp, spla = _scipy()
        if isinstance(M, (torch.Tensor, np.ndarray)) or sp.issparse(M):  # matrices: on the solve's device, once
            M = aslinearoperator(M, dtype=self.tdt, device=self.device)
        elif not isinstance(M, LinearOperator):
            M = spla.aslinearoperator(M)  # scipy's or duck-typed (shape, matvec) objects, as scipy accepts them
        return as_preconditioner(M, self.op)

    def _check_M_shape(self, M_shape):
        if tuple(M_shape) != (self.N, self.N):
            raise ValueError(f"matrix and preconditioner have different shapes: A is {(self.N, self.N)}, "
                             f"M is {tuple(M_shape)}")

    def _initial_guess(self, x0, shape):
        N = self.N
        if x0 is None:
            return None
        if isinstance(x0, str):
            if x0 != "Mb":
                raise ValueError(f"x0 must be an array, None or the string 'Mb', got {x0!r}")
            b = self.b.detach()
            return self.M(b.clone()) if self.M is not None else b.clone()
        if isinstance(x0, torch.Tensor):
            x = x0.detach().to(device=self.device).clone()
            xs = tuple(x.shape)
        else:
            arr = np.asanyarray(x0)
            if arr.dtype.kind not in "biufc":
                raise TypeError(f"x0 must hold numbers, got an array of dtype {arr.dtype}")
            xs = arr.shape
            if arr.dtype.kind == "c" and self.rdt.kind != "c":
                raise TypeError(f"x0 is complex ({arr.dtype}) but the system is real ({self.rdt})")
            x = torch.from_numpy(np.array(arr, dtype=self.rdt, copy=True)).to(self.device)
        if not (xs == (N,) or xs == (N, 1) or xs == tuple(self.op.shape_in)):
            raise ValueError(f"shapes of A {shape} and x0 {xs} are incompatible")
        if x.is_complex() and not self.tdt.is_complex:
            raise TypeError(f"x0 is complex ({x.dtype}) but the system is real ({self.tdt})")
        x = x.to(self.tdt).reshape(self.op.shape_in)
        validate.finite(x, "x0")
        if not bool(x.any()):
            return None  # a zero guess costs no matvec (scipy: ``x.any()``)
        return x

    # ------------------------------------------------------------------ results
    def export(self, x: torch.Tensor, copy: bool = False):
        """krylon's x -> what the caller gets: ndarray ``(N,)`` or a tensor on ``b``'s device."""
        x = x.reshape(self.out_shape)
        if self.torch_out:
            x = x.to(self.out_device)
            return x.clone() if copy else x
        out = backend.to_numpy(x)
        if out.dtype != self.rdt:
            return out.astype(self.rdt)
        return out.copy() if copy else out

    def trivial(self):
        """scipy's early exits: ``b == 0`` gives zeros; an infinite tolerance gives ``x0``."""
        if self.bnorm == 0:
            return self.export(torch.zeros(self.op.shape_in, dtype=self.tdt, device=self.device)), 0
        if math.isinf(max(self.atol, self.rtol * self.bnorm)):
            x = self.x0 if self.x0 is not None else torch.zeros(self.op.shape_in, dtype=self.tdt, device=self.device)
            return self.export(x.clone()), 0
        return None

    def iterate_callback(self, callback):
        """Adapt ``callback(xk)`` to krylon's ``callback(state)``."""
        if callback is None:
            return None
        return lambda state: callback(self.export(state.x.detach(), copy=True))

    @property
    def differentiable(self) -> bool:
        return self.torch_out

    @property
    def needs_grad(self) -> bool:
        return self.torch_out and torch.is_grad_enabled() and (
            self.b.requires_grad or any(t.requires_grad for t in self.op.differentiable_tensors()))


def _info(res, maxiter: int) -> int:
    st = int(res.status.reshape(-1)[0])
    if st == Status.CONVERGED:
        return 0
    if st in _BREAKDOWN:
        return -st
    return int(maxiter)  # maxiter reached, or stopped early at the rounding floor: "not converged"


def _default_maxiter(maxiter, factor: int, N: int) -> int:
    return factor * max(N, 1) if maxiter is None else validate.integer(maxiter, "maxiter")


# ============================================================================= cg
def cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    """Solve ``A x = b`` by conjugate gradients: a drop-in for ``scipy.sparse.linalg.cg``.

    Parameters
    ----------
    A : sparse matrix/array, ndarray, LinearOperator, torch tensor or krylon LinearOperator
        The Hermitian positive definite ``(N, N)`` matrix.
    b : ndarray or tensor, shape ``(N,)`` or ``(N, 1)``
        Right-hand side.  A torch tensor gives a torch tensor back.
    x0 : ndarray, tensor, None or ``'Mb'``, optional
        Starting guess (zeros when None; ``M @ b`` for ``'Mb'``).  Never modified.
    rtol, atol : float, optional
        Converged when ``||b - A x|| <= max(rtol * ||b||, atol)`` (checked on the true residual).
    maxiter : int, optional
        Iteration limit, default ``10 * N``.
    M : sparse matrix/array, ndarray, LinearOperator or pyamg preconditioner, optional
        Hermitian positive definite approximation of ``A^{-1}``.
    callback : callable, optional
        ``callback(xk)`` after every iteration with a copy of the current iterate.

    Returns
    -------
    x : ndarray of shape ``(N,)`` (a tensor when ``b`` is a tensor)
        The solution, in the dtype that scipy would use (float32 stays float32).
    info : int
        ``0`` converged; ``maxiter`` (> 0) not converged; ``< 0`` breakdown: ``-2`` ``A`` is not
        positive definite (``p^H A p <= 0``), ``-3`` NaN/Inf appeared, ``-6`` ``M`` is not
        positive definite.

    Raises
    ------
    ValueError
        Non-square ``A``, incompatible ``b``/``x0``/``M`` shapes, negative ``rtol``/``atol``,
        ``maxiter < 1``, non-finite ``b`` or ``x0``.
    TypeError
        ``A``/``M`` of an unsupported type, a non-integer ``maxiter``, a non-callable ``callback``.

    See Also
    --------
    krylon.solvers.CG : the solver class, with batching, devices and gradients.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from krylon.solvers import cg
    >>> A = sp.diags([-np.ones(9), 2 * np.ones(10), -np.ones(9)], [-1, 0, 1], format="csr")
    >>> b = np.ones(10)
    >>> x, info = cg(A, b, rtol=1e-10)
    >>> info, x.shape, bool(np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b))
    (0, (10,), True)
    >>> cg(A, b, maxiter=2)[1]          # not converged: info is the iteration limit
    2
    """
    validate.callable_or_none(callback, "callback")
    sys_ = _System(A, b, x0, M, rtol, atol)
    maxiter = _default_maxiter(maxiter, 10, sys_.N)
    done = sys_.trivial()
    if done is not None:
        return done
    solver = CG(rtol=sys_.rtol, atol=sys_.atol, maxiter=maxiter, M=sys_.M,
                callback=sys_.iterate_callback(callback), differentiable=sys_.differentiable)
    res = solver.solve(sys_.op, sys_.b, sys_.x0)
    return sys_.export(res.x), _info(res, maxiter)


# ============================================================================= minres
def minres(A, b, x0=None, *, rtol=1e-5, shift=0.0, maxiter=None, M=None, callback=None, show=False, check=False,
           atol=0.0):
    """Solve ``(A - shift I) x = b`` by MINRES: a drop-in for ``scipy.sparse.linalg.minres``.

    ``A`` must be symmetric (Hermitian), possibly indefinite; ``M`` symmetric positive definite.

    Parameters
    ----------
    A : sparse matrix/array, ndarray, LinearOperator, torch tensor or krylon LinearOperator
        The symmetric (Hermitian) ``(N, N)`` matrix.
    b : ndarray or tensor, shape ``(N,)`` or ``(N, 1)``
        Right-hand side.  A torch tensor gives a torch tensor back.
    x0 : ndarray, tensor, None or ``'Mb'``, optional
        Starting guess; never modified.
    rtol : float, optional
        Relative tolerance: converged when ``||b - (A - shift I) x|| <= max(rtol ||b||, atol)``
        (the true residual; scipy's minres stops on ``||r|| / (||A|| ||x||) <= rtol`` instead).
    shift : float, optional
        Solve with ``A - shift I``.
    maxiter : int, optional
        Iteration limit, default ``5 * N`` (scipy's).
    M : sparse matrix/array, ndarray, LinearOperator or pyamg preconditioner, optional
        Symmetric positive definite approximation of ``A^{-1}``.
    callback : callable, optional
        ``callback(xk)`` after every iteration with a copy of the current iterate.
    show : bool, optional
        Print a summary of the solve.
    check : bool, optional
        Check that ``A`` and ``M`` are symmetric (on random vectors) and raise ``ValueError`` if not.
    atol : float, optional
        Absolute tolerance (a krylon extension; scipy's minres has none).

    Returns
    -------
    x : ndarray of shape ``(N,)`` (a tensor when ``b`` is a tensor)
    info : int
        ``0`` converged; ``maxiter`` (> 0) not converged; ``< 0`` breakdown: ``-3`` NaN/Inf,
        ``-6`` ``M`` is not positive definite (scipy raises ``ValueError`` there).

    Examples
    --------
    >>> import numpy as np
    >>> from krylon.solvers import minres
    >>> A = np.array([[2.0, 1.0, 0.0], [1.0, -3.0, 1.0], [0.0, 1.0, 1.0]])   # indefinite
    >>> b = np.array([1.0, 0.0, 2.0])
    >>> x, info = minres(A, b, rtol=1e-12)
    >>> info, bool(np.allclose(A @ x, b))
    (0, True)
    >>> x, info = minres(A, b, shift=0.5, rtol=1e-12)
    >>> bool(np.allclose(A @ x - 0.5 * x, b))
    True
    """
    validate.callable_or_none(callback, "callback")
    shift = validate.real_number(shift, "shift")
    sys_ = _System(A, b, x0, M, rtol, atol)
    maxiter = _default_maxiter(maxiter, 5, sys_.N)
    if show:
        print("Enter minres.   Solution of symmetric Ax = b")
        print(f"Enter minres.   n      =  {sys_.N:3g}     shift  =  {float(shift):23.14e}")
        print(f"Enter minres.   itnlim =  {maxiter:3g}     rtol   =  {sys_.rtol:11.2e}")
    if check:
        _check_symmetric(sys_, float(shift))
    done = sys_.trivial()
    if done is not None:
        if show:
            print("Exit  minres.   the exact solution is x0 (b = 0 or an infinite tolerance)")
        return done
    solver = MINRES(rtol=sys_.rtol, atol=sys_.atol, maxiter=maxiter, M=sys_.M, shift=float(shift),
                    callback=sys_.iterate_callback(callback), differentiable=sys_.differentiable)
    res = solver.solve(sys_.op, sys_.b, sys_.x0)
    if show:
        rnorm = float(res.residual_norms[-1].max())
        print(f"Exit  minres.   itn = {int(res.iterations.max()):5d}   rnorm = {rnorm:12.4e}")
        print(f"Exit  minres.   {res.reason}")
    return sys_.export(res.x), _info(res, maxiter)


def _check_symmetric(sys_: _System, shift: float) -> None:
    """``minres(check=True)``: ``<w, A v> == <A w, v>`` (and the same for M) on random vectors."""
    g = torch.Generator().manual_seed(1234)
    shape = sys_.op.shape_in
    dt, dev = sys_.tdt, sys_.device
    real = backend.real_dtype(dt)

    def rnd():
        v = torch.randn(shape, generator=g, dtype=real)
        if dt.is_complex:
            v = torch.complex(v, torch.randn(shape, generator=g, dtype=real))
        return v.to(device=dev, dtype=dt)

    v, w = rnd(), rnd()
    tol = backend.eps(dt) ** (1.0 / 3.0)
    for name, f in (("A", sys_.op.matvec), ("M", sys_.M)):
        if f is None:
            continue
        fv, fw = f(v), f(w)
        lhs, rhs = torch.vdot(w.reshape(-1), fv.reshape(-1)), torch.vdot(fw.reshape(-1), v.reshape(-1))
        scale = float(torch.linalg.vector_norm(fv) * torch.linalg.vector_norm(w)
                      + torch.linalg.vector_norm(fw) * torch.linalg.vector_norm(v))
        if abs(complex(lhs - rhs)) > tol * max(scale, torch.finfo(real).tiny):
            raise ValueError(f"minres(check=True): {name} is not symmetric (|<w, {name} v> - <{name} w, v>| = "
                             f"{abs(complex(lhs - rhs)):.3g} for random v, w)")
        if name == "M" and not float(torch.vdot(v.reshape(-1), fv.reshape(-1)).real) > 0:
            raise ValueError("minres(check=True): M is not positive definite (<v, M v> <= 0 for a random v)")


# ============================================================================= gmres
def gmres(A, b, x0=None, *, rtol=1e-5, atol=0.0, restart=None, maxiter=None, M=None, callback=None,
          callback_type=None):
    """Solve ``A x = b`` by restarted GMRES: a drop-in for ``scipy.sparse.linalg.gmres``.

    Parameters
    ----------
    A : sparse matrix/array, ndarray, LinearOperator, torch tensor or krylon LinearOperator
        Any nonsingular ``(N, N)`` matrix.
    b : ndarray or tensor, shape ``(N,)`` or ``(N, 1)``
        Right-hand side.  A torch tensor gives a torch tensor back.
    x0 : ndarray, tensor, None or ``'Mb'``, optional
        Starting guess; never modified.
    rtol, atol : float, optional
        Converged when ``||b - A x|| <= max(rtol * ||b||, atol)`` (the true residual).
    restart : int, optional
        Krylov dimension between restarts, default 20 (and at most ``N``).
    maxiter : int, optional
        Number of restart *cycles* (default ``10 * N``), so up to ``restart * maxiter`` inner
        iterations -- except with ``callback_type='legacy'``, where it counts inner iterations.
    M : sparse matrix/array, ndarray, LinearOperator or pyamg preconditioner, optional
        Approximation of ``A^{-1}``, applied on the right (the residual minimised is the true one).
    callback : callable, optional
        Called as selected by ``callback_type``.
    callback_type : {'x', 'pr_norm', 'legacy'}, optional
        ``'x'``: ``callback(xk)`` once per restart cycle with the iterate at its end;
        ``'pr_norm'``: ``callback(||M r|| / ||b||)`` after every inner iteration, an ``np.float64``
        (as scipy, at every precision);
        ``'legacy'`` (the default when a callback is given): like ``'pr_norm'``, but ``maxiter``
        counts inner iterations.  Leaving it unset with a callback warns (``DeprecationWarning``,
        scipy's).  Unknown values raise ``ValueError``.

    Returns
    -------
    x : ndarray of shape ``(N,)`` (a tensor when ``b`` is a tensor)
    info : int
        ``0`` converged; ``maxiter`` (> 0) not converged (also after a Krylov breakdown or a
        cycle that made no progress, as scipy); ``-3`` NaN/Inf appeared.

    Notes
    -----
    The value given to a ``'pr_norm'``/``'legacy'`` callback is scipy's: the preconditioned residual
    norm ``||M (b - A x_k)||`` relative to the unpreconditioned ``||b||``.  Without ``M`` it is GMRES's
    own estimate of ``||b - A x_k||``, at no cost; krylon preconditions on the right, so with ``M``
    it is formed from the iterate (one more product with ``A`` and ``M`` per step, only then).

    Examples
    --------
    >>> import numpy as np
    >>> from krylon.solvers import gmres
    >>> A = np.array([[3.0, 2.0, 0.0], [-1.0, 4.0, 1.0], [0.0, 1.0, 5.0]])
    >>> b = np.array([1.0, 1.0, 1.0])
    >>> x, info = gmres(A, b, rtol=1e-12)
    >>> info, bool(np.allclose(A @ x, b))
    (0, True)
    >>> norms = []
    >>> x, info = gmres(A, b, rtol=1e-12, callback=norms.append, callback_type="pr_norm")
    >>> len(norms), bool(norms[-1] < 1e-12)
    (3, True)
    """
    if callback is not None and callback_type is None:
        # scipy's warning (same category and text), so filters written for scipy behave the same;
        # stacklevel 2 names the caller's line, the one to change
        warnings.warn("krylon.solvers.gmres called without specifying `callback_type`. The default value will be "
                      "changed in a future release. For compatibility, specify a value for `callback_type` "
                      "explicitly, e.g., ``gmres(..., callback_type='pr_norm')``, or to retain the old behavior "
                      "``gmres(..., callback_type='legacy')``", DeprecationWarning, stacklevel=2)
    if callback_type is None:
        callback_type = "legacy"
    if callback_type not in ("x", "pr_norm", "legacy"):
        raise ValueError(f"Unknown callback_type: {callback_type!r} (expected 'x', 'pr_norm' or 'legacy')")
    validate.callable_or_none(callback, "callback")
    if callback is None:
        callback_type = None
    sys_ = _System(A, b, x0, M, rtol, atol)
    N = sys_.N
    maxiter = _default_maxiter(maxiter, 10, N)
    restart = 20 if restart is None else validate.integer(restart, "restart")
    restart = max(1, min(restart, N))
    done = sys_.trivial()
    if done is not None:
        return done
    opts = dict(rtol=sys_.rtol, atol=sys_.atol, restart=restart, M=sys_.M, differentiable=sys_.differentiable)

    if callback_type == "x":
        # one krylon call per restart cycle: the iterate at the end of each cycle goes to the callback
        solver = GMRES(maxiter=restart, **opts)
        x = sys_.x0
        for cycle in range(maxiter):
            res = solver.solve(sys_.op, sys_.b, x)
            if cycle == 0 and int(res.iterations.max()) == 0:
                return sys_.export(res.x), _info(res, maxiter)  # x0 already solves it: no cycle ran
            x = res.x
            callback(sys_.export(x.detach(), copy=True))
            st = int(res.status.reshape(-1)[0])
            if st == Status.CONVERGED and sys_.needs_grad:
                # attach the implicit gradient with a full-budget adjoint solve (no iteration: x converged)
                x = GMRES(maxiter=maxiter * restart, **opts).solve(sys_.op, sys_.b, x.detach()).x
            if st == Status.CONVERGED or st in _BREAKDOWN or st == Status.STAGNATION:
                return sys_.export(x), _info(res, maxiter)  # stagnation: a cycle made no progress
            x = x.detach()
        return sys_.export(x), int(maxiter)

    inner = maxiter if callback_type == "legacy" else maxiter * restart
    cb = None
    if callback_type is not None:
        bnorm = sys_.bnorm

        def cb(state):
            if sys_.M is None:
                rnorm = float(state.residual_norms.reshape(-1)[0])
            else:  # scipy's value is the left-preconditioned residual: form it from the iterate
                with torch.no_grad():
                    r = sys_.b.detach() - sys_.op.matvec(state.x.detach())
                    rnorm = float(torch.linalg.vector_norm(sys_.M(r)))
            callback(np.float64(rnorm / bnorm))  # scipy passes a numpy float64 at every precision

    res = GMRES(maxiter=inner, callback=cb, **opts).solve(sys_.op, sys_.b, sys_.x0)
    return sys_.export(res.x), _info(res, maxiter)

"""scipy drop-ins: ``cg``, ``gmres``, ``minres`` with ``scipy.sparse.linalg``'s signatures and semantics.

A simulation code written for scipy swaps ``scipy.sparse.linalg.cg`` for
``krylon.solvers.cg`` and changes nothing else: numpy in, numpy out, the same
keywords, the same ``(x, info)`` return.  Internally the inputs are converted
once and krylon's solver classes do the work.

``info``: 0 success; ``> 0`` not converged (the iteration limit, as scipy);
``< 0`` breakdown: -2 indefinite operator, -3 NaN/Inf, -4 stagnation at the
rounding floor, -5 Krylov breakdown, -6 preconditioner not positive definite
(scipy reports breakdown as a negative ``info`` too, without the detail).

When ``b`` is a torch tensor the solution comes back as a torch tensor on its
device; otherwise as a numpy array of shape ``(N,)``.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ..kernels import backend
from ..operators import LinearOperator, aslinearoperator
from .krylov import CG, GMRES, MINRES
from .preconditioners import as_preconditioner
from .result import Status

__all__ = ["cg", "gmres", "minres"]


def _np_dtype_of(A):
    if isinstance(A, LinearOperator):
        dt = A.dtype
        return None if dt is None else torch.empty(0, dtype=dt).numpy().dtype
    if isinstance(A, torch.Tensor):
        return torch.empty(0, dtype=A.dtype).numpy().dtype
    dt = getattr(A, "dtype", None)
    return None if dt is None else np.dtype(dt)


def _prepare(A, b, x0, M, tol_args):
    """Convert to torch once; validate like scipy's make_system."""
    rtol, atol = tol_args
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, numbers.Real) or not v >= 0:
            raise ValueError(f"{name} must be a real number >= 0, got {v!r}")
    torch_out = isinstance(b, torch.Tensor)
    if not isinstance(A, LinearOperator) and not isinstance(A, torch.Tensor):
        if hasattr(A, "shape") and hasattr(A, "matvec") and not hasattr(A, "nnz"):
            import scipy.sparse.linalg as spla

            A = spla.aslinearoperator(A)
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"A must be a 2-D matrix or operator, got shape {shape}")
    if shape[0] != shape[1]:
        raise ValueError(f"expected square matrix, but got shape={tuple(shape)}")
    N = int(shape[0])
    bt = b.detach() if torch_out else torch.from_numpy(np.array(b, copy=True))
    if not (tuple(bt.shape) == (N,) or tuple(bt.shape) == (N, 1)):
        raise ValueError(f"shapes of A {tuple(shape)} and b {tuple(bt.shape)} are incompatible")
    bt = bt.reshape(N)
    # result dtype: promotion of A's and b's, integers -> float64 (scipy's coerce)
    adt = _np_dtype_of(A)
    bdt = bt.numpy().dtype if bt.device.type == "cpu" else torch.empty(0, dtype=bt.dtype).numpy().dtype
    if adt is None:
        adt = bdt
    rdt = np.result_type(adt, bdt)
    if rdt.kind not in "fc":
        rdt = np.dtype(np.float64)
    if rdt == np.float16:
        rdt = np.dtype(np.float32)
    tdt = torch.from_numpy(np.zeros(0, dtype=rdt)).dtype
    if isinstance(A, LinearOperator):
        op = A
    else:
        op = aslinearoperator(A, dtype=None if _is_scipy_operator(A) else tdt)
    dev = op.device or bt.device
    bt = bt.to(dtype=tdt, device=dev)
    if isinstance(x0, str):
        if x0 != "Mb":
            raise ValueError(f"x0 may be an array, None or the string 'Mb', got {x0!r}")
        x0t = None if M is None else "Mb"
    elif x0 is None:
        x0t = None
    else:
        x0t = (x0.detach().clone() if isinstance(x0, torch.Tensor) else torch.from_numpy(np.array(x0, copy=True)))
        if not (tuple(x0t.shape) == (N,) or tuple(x0t.shape) == (N, 1)):
            raise ValueError(f"shapes of A {tuple(shape)} and x0 {tuple(x0t.shape)} are incompatible")
        x0t = x0t.reshape(N).to(dtype=tdt, device=dev)
    return op, bt, x0t, torch_out, N, rdt


def _is_scipy_operator(A) -> bool:
    try:
        import scipy.sparse.linalg as spla
    except ImportError:  # pragma: no cover
        return False
    return isinstance(A, spla.LinearOperator)


def _finish(res, torch_out, rdt, maxiter_reported):
    x = res.x
    st = int(res.status.reshape(-1)[0]) if res.status.numel() else 0
    if st == Status.CONVERGED:
        info = 0
    elif st in (Status.MAXITER, Status.RUNNING):
        info = int(maxiter_reported)
    else:
        info = -int(st)
    if torch_out:
        return x, info
    return backend.to_numpy(x).astype(rdt, copy=False), info


def _x0_and_M(op, bt, x0t, M):
    Mfn = as_preconditioner(M, op) if M is not None else None
    if isinstance(x0t, str):  # 'Mb'
        x0t = Mfn(bt.clone())
    return x0t, Mfn


def _np_callback(callback, torch_out):
    if callback is None:
        return None

    def cb(state):
        x = state.x
        callback(x.clone() if torch_out else backend.to_numpy(x).copy())

    return cb


def cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    """Conjugate gradients with ``scipy.sparse.linalg.cg``'s signature and semantics.

    Parameters
    ----------
    A : scipy sparse matrix/array, ndarray, scipy LinearOperator, torch tensor or krylon operator
        Hermitian positive definite, ``(N, N)``.
    b : array ``(N,)`` or ``(N, 1)``
    x0 : array, None or ``'Mb'``
    rtol, atol : float
        Converged when ``||b - A x|| <= max(rtol ||b||, atol)`` (checked on the true residual).
    maxiter : int, default ``10 N``
    M : preconditioner approximating ``A^{-1}`` (matrix, LinearOperator, pyamg ``aspreconditioner()``)
    callback : ``callback(xk)`` after each iteration

    Returns
    -------
    x : ndarray ``(N,)`` (a tensor when ``b`` is one)
    info : int (0 success, > 0 iterations without convergence, < 0 breakdown)

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> A = sp.csr_array(np.array([[4.0, 1.0], [1.0, 3.0]]))
    >>> x, info = cg(A, np.array([1.0, 2.0]), rtol=1e-10)
    >>> info, np.allclose(A @ x, [1.0, 2.0])
    (0, True)
    """
    op, bt, x0t, torch_out, N, rdt = _prepare(A, b, x0, M, (rtol, atol))
    if maxiter is None:
        maxiter = 10 * N
    x0t, Mfn = _x0_and_M(op, bt, x0t, M)
    res = CG(rtol=rtol, atol=atol, maxiter=int(maxiter), M=Mfn, callback=_np_callback(callback, torch_out),
             differentiable=False).solve(op, bt, x0t)
    return _finish(res, torch_out, rdt, maxiter)


def minres(A, b, x0=None, *, rtol=1e-5, shift=0.0, maxiter=None, M=None, callback=None, show=False, check=False, atol=0.0):
    """MINRES with ``scipy.sparse.linalg.minres``'s signature (``atol`` added as a krylon extension).

    Solves ``(A - shift I) x = b`` for symmetric (Hermitian) ``A``; ``M`` must be positive
    definite.  ``maxiter`` defaults to ``5 N`` as in scipy; ``show`` prints the outcome;
    ``check`` verifies that ``A`` (and ``M``) are symmetric on a random vector and raises
    ``ValueError`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[2.0, 1.0], [1.0, -3.0]])
    >>> x, info = minres(A, np.array([1.0, 0.0]), rtol=1e-12)
    >>> info, np.allclose(A @ x, [1.0, 0.0])
    (0, True)
    """
    op, bt, x0t, torch_out, N, rdt = _prepare(A, b, x0, M, (rtol, atol))
    if maxiter is None:
        maxiter = 5 * N
    x0t, Mfn = _x0_and_M(op, bt, x0t, M)
    if check:
        g = torch.Generator().manual_seed(0)
        v = torch.randn(N, generator=g, dtype=torch.float64).to(dtype=bt.dtype, device=bt.device)
        w = torch.randn(N, generator=g, dtype=torch.float64).to(dtype=bt.dtype, device=bt.device)
        for name, f in (("A", op.matvec), ("M", Mfn)):
            if f is None:
                continue
            lhs, rhs = torch.vdot(w, f(v)), torch.vdot(f(w), v)
            if abs(complex(lhs - rhs)) > 1e-8 * (abs(complex(lhs)) + abs(complex(rhs)) + 1e-300):
                raise ValueError(f"minres(check=True): {name} does not appear to be symmetric")
    res = MINRES(rtol=rtol, atol=atol, maxiter=int(maxiter), M=Mfn, shift=float(shift),
                 callback=_np_callback(callback, torch_out), differentiable=False).solve(op, bt, x0t)
    if show:
        print(f"krylon minres: {res.reason}")
    return _finish(res, torch_out, rdt, maxiter)


def gmres(A, b, x0=None, *, rtol=1e-5, atol=0.0, restart=None, maxiter=None, M=None, callback=None, callback_type=None):
    """Restarted GMRES with ``scipy.sparse.linalg.gmres``'s signature and semantics.

    ``maxiter`` counts restart cycles (default ``10 N``), ``restart`` defaults to 20.
    ``callback_type``: ``'x'`` calls ``callback(xk)`` once per restart cycle; ``'pr_norm'`` calls
    ``callback(||r|| / ||b||)`` after every inner iteration; ``'legacy'`` (the default when a
    callback is given) is ``'pr_norm'`` with scipy's legacy rule that ``maxiter`` then counts
    inner iterations.  krylon preconditions on the right, so the reported norm is the
    true residual's, not a preconditioned one.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[3.0, 2.0], [-1.0, 4.0]])
    >>> x, info = gmres(A, np.array([1.0, 1.0]), rtol=1e-12)
    >>> info, np.allclose(A @ x, [1.0, 1.0])
    (0, True)
    """
    if callback_type not in (None, "x", "pr_norm", "legacy"):
        raise ValueError(f"Unknown callback_type: {callback_type!r}")
    if callback is None:
        callback_type = None
    elif callback_type is None:
        callback_type = "legacy"
    op, bt, x0t, torch_out, N, rdt = _prepare(A, b, x0, M, (rtol, atol))
    if maxiter is None:
        maxiter = 10 * N
    if restart is None:
        restart = 20
    restart = max(1, min(int(restart), N))
    inner_max = int(maxiter) if callback_type == "legacy" else int(maxiter) * restart
    x0t, Mfn = _x0_and_M(op, bt, x0t, M)
    bnorm = float(torch.linalg.vector_norm(bt))
    cb = None
    if callback_type in ("pr_norm", "legacy"):
        def cb(state):
            callback(float(state.residual_norms.reshape(-1)[0]) / (bnorm if bnorm > 0 else 1.0))
    elif callback_type == "x":
        def cb(state):
            if state.iteration % restart == 0:
                x = state.x
                callback(x.clone() if torch_out else backend.to_numpy(x).copy())
    res = GMRES(rtol=rtol, atol=atol, maxiter=inner_max, restart=restart, M=Mfn, callback=cb,
                differentiable=False).solve(op, bt, x0t)
    return _finish(res, torch_out, rdt, maxiter)

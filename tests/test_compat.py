"""``krylon.solvers.cg / minres / gmres`` as drop-ins for ``scipy.sparse.linalg``'s, checked against scipy.

The problem families and generic checks follow the ones scipy runs on its own iterative
solvers (``sparse/linalg/_isolve/tests/test_iterative.py`` and ``test_minres.py``), written
afresh here: 1-D/2-D Poisson, negative definite, random symmetric / symmetric positive
definite / nonsymmetric, complex, Hermitian, a saddle-point (symmetric, not definite) matrix,
each in double and single precision; then maxiter=1 gives one callback, x0 is never
modified, zero right-hand sides, the convergence criterion on return, x0='Mb', (N, 1)
shapes, atol/rtol grids with badly scaled preconditioners, and gmres's restart/callback rules.

Every convergent solve is checked against two independent references: a dense direct solve
(through the bound ``||x - x*|| / ||x*|| <= cond(A) ||b - A x|| / ||b||``) and scipy's own
solver on the same input (same ``info``, solutions agreeing within the same bound).
"""

from __future__ import annotations

import contextlib
import doctest
import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import krylon.solvers as ks
import krylon.solvers.compat as compat
from krylon.operators import Laplacian

OURS = {"cg": ks.cg, "minres": ks.minres, "gmres": ks.gmres}
SCIPY = {"cg": spla.cg, "minres": spla.minres, "gmres": spla.gmres}
SINGLE = (np.float32, np.complex64)
# full GMRES for the grid checks that are not about restarting (krylon's GMRES(20) needs ~400 steps on poisson1d)
FULL = {"cg": {}, "minres": {}, "gmres": {"restart": 64}}
# scipy's (and krylon's) gmres warns when a callback comes without callback_type
LEGACY_CALLBACK_WARNING = "ignore:.*called without specifying `callback_type`:DeprecationWarning"


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny problems: threads only add overhead


# ----------------------------------------------------------------------------- problem families
def tridiag(n, lower, diag, upper, dtype=np.float64):
    return sp.diags([np.full(n - 1, lower), np.full(n, diag), np.full(n - 1, upper)], [-1, 0, 1],
                    format="csr", dtype=dtype)


def poisson1d(n=40):
    return tridiag(n, -1.0, 2.0, -1.0)


def poisson2d(n=12):
    return sp.kronsum(poisson1d(n), poisson1d(n), format="csr")


def poisson2d_cond(n):
    """cond(poisson2d(n)) from its known eigenvalues 4 - 2 cos(j pi h) - 2 cos(k pi h)."""
    lam = 2 - 2 * np.cos(np.arange(1, n + 1) * np.pi / (n + 1))
    return (2 * lam.max()) / (2 * lam.min())


def saddle_point():
    """Symmetric, nonsingular, neither positive nor negative definite: [[0, w e^T..], [..], [-I]] blocks."""
    w = np.array([1.0, 2.0, 2.0, 2.0, 1.0])
    A = np.zeros((11, 11))
    A[:5, 5] = w
    A[5, :5] = w
    A[:5, 6:] = -np.eye(5)
    A[6:, :5] = -np.eye(5)
    A[6:, 6:] = -np.eye(5)
    return A


def _rng(seed):
    return np.random.default_rng(seed)


def random_matrix(kind, n, seed=7):
    rng = _rng(seed)
    G = rng.uniform(size=(n, n))
    if kind in ("cmplx", "cmplx-herm", "cmplx-hpd"):
        G = G + 1j * rng.uniform(size=(n, n))
    if kind in ("sym", "cmplx-herm"):
        return G + G.conj().T
    if kind in ("spd", "cmplx-hpd"):
        return G.conj() @ G.T
    return G


# name -> (builder, solvers that apply).  b is arange(N) unless the builder returns (A, b).
_SYM = ("minres", "gmres")
_ALL = ("cg", "minres", "gmres")
FAMILIES = {
    "poisson1d": (poisson1d, _ALL),
    "neg-poisson1d": (lambda: -poisson1d(), _SYM),
    "poisson2d": (poisson2d, _ALL),
    "rand-diag": (lambda: sp.diags(np.array([6.0, -5, 2, 7, -1, 10, 4, -3, -8, 9])).tocsr(), _SYM),
    "rand": (lambda: random_matrix("general", 4), ("gmres",)),
    "rand-sym": (lambda: random_matrix("sym", 4), _SYM),
    "rand-spd": (lambda: random_matrix("spd", 9), _ALL),
    "rand-cmplx": (lambda: random_matrix("cmplx", 4), ("gmres",)),
    "rand-cmplx-herm": (lambda: random_matrix("cmplx-herm", 4), _SYM),
    "rand-cmplx-hpd": (lambda: random_matrix("cmplx-hpd", 9), _ALL),
    "nonsym-posdef": (lambda: sp.diags([np.full(9, -1.0), np.full(10, 2.0)], [-1, 0], format="csr"), ("gmres",)),
    "saddle-point": (lambda: (saddle_point(), np.eye(11)[5]), _SYM),
}


def _single(A):
    return A.astype(np.complex64 if np.iscomplexobj(A) else np.float32)


def make_case(name):
    """(A, b) of a family; a trailing '-F' asks for single precision."""
    single = name.endswith("-F")
    built = FAMILIES[name[:-2] if single else name][0]()
    A, b = built if isinstance(built, tuple) else (built, None)
    if single:
        A = _single(A)
    if b is None:
        b = np.arange(A.shape[0], dtype=np.float64)
    return A, b


def _case_params(solvers=_ALL, precisions=("", "-F")):
    out = []
    for fam, (_, applies) in FAMILIES.items():
        for suffix in precisions:
            for s in solvers:
                if s in applies:
                    out.append(pytest.param(fam + suffix, s, id=f"{fam}{suffix}-{s}"))
    return out


CASES = _case_params()


# ----------------------------------------------------------------------------- helpers
def dense(A):
    if sp.issparse(A):
        A = A.toarray()
    elif isinstance(A, spla.LinearOperator):
        A = A.matmat(np.eye(A.shape[0], dtype=A.dtype))
    A = np.asarray(A)
    return A.astype(np.complex128 if np.iscomplexobj(A) else np.float64)


def rel_residual(A, x, b):
    """||b - A x|| / ||b|| in double precision, whatever the solve's precision."""
    b = np.asarray(b).ravel().astype(np.result_type(b, np.float64))
    x = np.asarray(x).astype(np.result_type(x, np.float64))
    if sp.issparse(A):
        Ax = A.astype(np.result_type(A.dtype, np.float64)) @ x
    else:
        Ax = dense(A) @ x
    return np.linalg.norm(b - Ax) / np.linalg.norm(b)


def rounding_slack(A, x, b):
    """What recomputing a single-precision residual in double can add (a few eps32 ||A|| ||x|| / ||b||)."""
    if np.asarray(x).dtype not in (np.float32, np.complex64):
        return 0.0
    Ad = dense(A)
    return 20 * np.finfo(np.float32).eps * np.linalg.norm(Ad, 2) * np.linalg.norm(x) / np.linalg.norm(b)


def expected_dtype(A, b):
    """scipy's coercion: float32 and complex64 survive only among themselves; the rest is double."""
    chars = []
    for dt in (np.dtype(A.dtype), np.asarray(b).dtype):
        chars.append(dt.char if dt.char in "fdFD" else "d")
    cplx = any(c in "FD" for c in chars)
    double = any(c in "dD" for c in chars)
    return np.dtype(("D" if double else "F") if cplx else ("d" if double else "f"))


def scipy_call(solver, A, b, **kw):
    """scipy's solver, silencing gmres's callback_type deprecation and minres's prints."""
    if solver == "gmres" and kw.get("callback") is not None and "callback_type" not in kw:
        kw["callback_type"] = "legacy"
    return SCIPY[solver](A, b, **kw)


def scipy_applies(solver, A):
    """scipy's minres is for real systems and (scipy's own note) fails in single precision."""
    return not (solver == "minres" and (np.iscomplexobj(A) or A.dtype in SINGLE))


# ============================================================================= the case grid
@pytest.mark.parametrize("name, solver", CASES)
def test_converges_like_scipy(name, solver):
    A, b = make_case(name)
    single = A.dtype in SINGLE
    rtol = 1e-4 if single else 1e-8
    x0 = 0 * b
    x0_before = x0.copy()
    x, info = OURS[solver](A, b, x0=x0, rtol=rtol)
    np.testing.assert_array_equal(x0, x0_before)
    assert info == 0
    assert x.shape == b.shape and x.dtype == expected_dtype(A, b)
    res = rel_residual(A, x, b)
    assert res <= rtol * (1 + 1e-6) + rounding_slack(A, x, b)
    # independent reference 1: a dense direct solve, through the forward-error bound
    Ad = dense(A)
    xs = np.linalg.solve(Ad, b.astype(Ad.dtype))
    cond = np.linalg.cond(Ad)
    assert np.linalg.norm(x - xs) <= 1.01 * cond * res * np.linalg.norm(xs) + 1e-12 * np.linalg.norm(xs)
    # independent reference 2: scipy's own solver, same info and an answer within the same bound
    if scipy_applies(solver, A):
        xr, info_r = scipy_call(solver, A, b, x0=x0, rtol=rtol)
        assert info_r == info
        assert xr.dtype == x.dtype
        res_r = rel_residual(A, xr, b)
        assert np.linalg.norm(x - xr) <= 1.01 * cond * (res + res_r) * np.linalg.norm(xs) + 1e-12 * np.linalg.norm(xs)


@pytest.mark.filterwarnings(LEGACY_CALLBACK_WARNING)  # gmres's default callback_type, as scipy's test
@pytest.mark.parametrize("name, solver", CASES)
def test_maxiter_one_gives_one_callback(name, solver):
    A, b = make_case(name)
    seen = []
    x, info = OURS[solver](A, b, x0=0 * b, rtol=1e-12, maxiter=1, callback=seen.append)
    assert len(seen) == 1 and info == 1
    if solver == "gmres":  # legacy callback type: a relative residual norm per inner iteration
        assert isinstance(seen[0], float) and 0 < seen[0] <= 1 + 1e-6
    else:
        assert isinstance(seen[0], np.ndarray) and seen[0].shape == b.shape
        np.testing.assert_array_equal(seen[0], x)  # the one iterate is the answer
    if scipy_applies(solver, A):
        seen_r = []
        _, info_r = scipy_call(solver, A, b, x0=0 * b, rtol=1e-12, maxiter=1, callback=seen_r.append)
        assert (info_r, len(seen_r)) == (info, len(seen))


@pytest.mark.parametrize("name, solver", CASES)
def test_identity_preconditioner_and_psolve(name, solver):
    A, b = make_case(name)
    rtol = 1e-4 if A.dtype in SINGLE else 1e-8
    ident = spla.LinearOperator(A.shape, matvec=lambda v: v, rmatvec=lambda v: v, dtype=A.dtype)
    x, info = OURS[solver](A, b, M=ident, x0=0 * b, rtol=rtol, **FULL[solver])
    assert info == 0 and rel_residual(A, x, b) <= rtol * (1 + 1e-6) + rounding_slack(A, x, b)
    # scipy's make_system takes A.psolve as the preconditioner when M is not given
    Aop = spla.aslinearoperator(A)
    calls = []
    Aop.psolve = lambda v: calls.append(1) or v
    x, info = OURS[solver](Aop, b, x0=0 * b, rtol=rtol, **FULL[solver])
    assert info == 0 and rel_residual(A, x, b) <= rtol * (1 + 1e-6) + rounding_slack(A, x, b)
    assert calls


@pytest.mark.parametrize("name, solver", CASES)
def test_x0_Mb(name, solver):
    A, b = make_case(name)
    rtol = 1e-4 if A.dtype in SINGLE else 1e-8
    x0 = "Mb"
    x, info = OURS[solver](A, b, x0=x0, rtol=rtol, **FULL[solver])
    assert x0 == "Mb"
    assert info == 0 and rel_residual(A, x, b) <= rtol * (1 + 1e-6) + rounding_slack(A, x, b)
    d = dense(A).diagonal()
    if np.all(d != 0):  # with a (positive definite) Jacobi-like M: x0 = M b
        M = sp.diags(1.0 / np.abs(d)).astype(A.dtype)
        x, info = OURS[solver](A, b, x0="Mb", M=M, rtol=rtol, **FULL[solver])
        assert info == 0 and rel_residual(A, x, b) <= rtol * (1 + 1e-6) + rounding_slack(A, x, b)


@pytest.mark.parametrize("fam", ["poisson1d", "poisson2d"])
@pytest.mark.parametrize("solver", _ALL)
def test_exact_inverse_preconditioner_is_nearly_instant(fam, solver):
    A0, b = make_case(fam)
    Ad = dense(A0)
    count = [0]

    def matvec(v):
        count[0] += 1
        return A0 @ v

    A = spla.LinearOperator(A0.shape, matvec=matvec, rmatvec=matvec, dtype=np.float64)
    Minv = spla.LinearOperator(A0.shape, matvec=lambda v: np.linalg.solve(Ad, v), dtype=np.float64)
    x, info = OURS[solver](A, b, M=Minv, x0=0 * b, rtol=1e-8)
    assert info == 0 and rel_residual(A0, x, b) <= 1e-8
    assert count[0] <= 3


# ============================================================================= generic checks
@pytest.mark.parametrize("solver", _ALL)
def test_atol_rtol_grid_with_badly_scaled_preconditioners(solver):
    rng = _rng(11)
    A = rng.uniform(size=(10, 10))
    A = A @ A.T + 10 * np.eye(10)
    b = 1e3 * rng.uniform(size=10)
    bnorm = np.linalg.norm(b)
    G = rng.standard_normal((10, 10))
    M0 = G @ G.T
    tols = [0.0, 1e-9, 1e-5, 1e-1, 1e2, np.inf]
    for M, rtol, atol in itertools.product([None, 1e-6 * M0, 1e6 * M0], tols, tols):
        if rtol == 0 and atol == 0:
            continue
        x, info = OURS[solver](A, b, M=M, rtol=rtol, atol=atol)
        assert info == 0, (rtol, atol)
        assert np.linalg.norm(A @ x - b) <= 1.00025 * max(atol, rtol * bnorm)


@pytest.mark.filterwarnings(LEGACY_CALLBACK_WARNING)  # gmres's default callback_type, as scipy's test
@pytest.mark.parametrize("solver", _ALL)
def test_zero_rhs_returns_zeros(solver):
    rng = _rng(12)
    A = rng.uniform(size=(10, 10))
    A = A @ A.T + 10 * np.eye(10)
    b = np.zeros(10)
    seen = []
    for rtol in np.logspace(-10, 2, 7):
        for x0 in (None, np.ones(10)):
            for atol in (0.0, rtol):
                x, info = OURS[solver](A, b, x0=x0, rtol=rtol, atol=atol, callback=seen.append)
                assert info == 0
                np.testing.assert_array_equal(x, 0.0)
                assert x.shape == (10,)
    assert not seen  # nothing iterated


@pytest.mark.parametrize("solver", _ALL)
def test_x0_speeds_up_and_is_respected(solver):
    rng = _rng(13)
    G = rng.uniform(size=(10, 10))
    A = G @ G.T
    b = rng.uniform(size=10)
    x, info = OURS[solver](A, b, rtol=1e-6)
    assert info == 0 and np.linalg.norm(A @ x - b) <= 1e-6 * np.linalg.norm(b)
    x0 = rng.uniform(size=10)
    x, info = OURS[solver](A, b, x0=x0, rtol=1e-6)
    assert info == 0 and np.linalg.norm(A @ x - b) <= 1e-6 * np.linalg.norm(b)
    # a different start gives a different first iterate (x0 is really used)
    first = {}
    for key, start in (("zero", None), ("x0", x0)):
        seen = []
        kw = {"callback_type": "x", "restart": 2} if solver == "gmres" else {}
        OURS[solver](A, b, x0=start, rtol=1e-6, callback=seen.append, **kw)
        first[key] = seen[0]
    assert not np.allclose(first["zero"], first["x0"])


@pytest.mark.filterwarnings(LEGACY_CALLBACK_WARNING)  # gmres's default callback_type, as scipy's test
@pytest.mark.parametrize("solver", _ALL)
def test_x0_that_already_solves_the_system(solver):
    A = np.eye(2)
    rhs = np.array([-1.0, -1.0])
    for kw in ({}, {"callback_type": "x"} if solver == "gmres" else {}):
        seen = []
        x, info = OURS[solver](A, rhs, x0=rhs, callback=seen.append, **kw)
        np.testing.assert_allclose(x, rhs)
        assert info == 0 and not seen
    x[:] = 5.0  # the result does not alias x0
    np.testing.assert_array_equal(rhs, [-1.0, -1.0])


@pytest.mark.parametrize("solver", _ALL)
@pytest.mark.parametrize("layout", ["flat", "column"])
def test_column_shapes_and_x0_untouched(solver, layout):
    A = poisson1d(30)
    b = np.linspace(1.0, 2.0, 30)
    x0 = np.full(30, 0.5)
    if layout == "column":
        b, x0 = b[:, None], x0[:, None]
    x0_before = x0.copy()
    x, info = OURS[solver](A, b, x0=x0, rtol=1e-10, **FULL[solver])
    assert info == 0 and x.shape == (30,)
    np.testing.assert_array_equal(x0, x0_before)
    xr, info_r = SCIPY[solver](A, b, x0=x0, rtol=1e-10, **FULL[solver])
    assert info_r == 0 and xr.shape == (30,)
    cond = np.linalg.cond(A.toarray())
    assert np.linalg.norm(x - xr) <= 1.01 * cond * (rel_residual(A, x, b) + rel_residual(A, xr, b)) * np.linalg.norm(xr)


@pytest.mark.parametrize("solver", _ALL)
def test_not_converged_reports_maxiter_like_scipy(solver):
    A = poisson2d(14)
    b = np.arange(A.shape[0], dtype=np.float64)
    x, info = OURS[solver](A, b, rtol=1e-12, maxiter=4)
    xr, info_r = SCIPY[solver](A, b, rtol=1e-12, maxiter=4)
    assert info == info_r == 4
    if solver == "cg":  # the same 4 CG steps: the same iterate
        np.testing.assert_allclose(x, xr, rtol=1e-10, atol=1e-10 * np.abs(xr).max())


def test_cg_takes_as_many_iterations_as_scipy():
    A = poisson2d(20)
    b = np.sin(np.arange(A.shape[0]))
    ours, theirs = [], []
    x, info = ks.cg(A, b, rtol=1e-10, callback=ours.append)
    xr, info_r = spla.cg(A, b, rtol=1e-10, callback=lambda xk: theirs.append(xk.copy()))  # scipy reuses xk
    assert info == info_r == 0
    assert abs(len(ours) - len(theirs)) <= 2
    for k in (0, 7, 14):  # the iterates themselves agree early on (later, rounding makes them drift apart)
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-8, atol=1e-10 * np.abs(theirs[k]).max())


@pytest.mark.parametrize("A_dtype", [np.int64, np.float16, np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("b_dtype", [np.int64, np.float32, np.float64, np.complex64])
def test_result_dtype_is_scipys(A_dtype, b_dtype):
    A = np.array([[4, 1, 0], [1, 3, 1], [0, 1, 5]]).astype(A_dtype)
    b = np.array([1, 2, 3]).astype(b_dtype)
    for solver in ("cg", "gmres"):
        x, info = OURS[solver](A, b, rtol=1e-5)
        xr, info_r = SCIPY[solver](A, b, rtol=1e-5)
        assert info == info_r == 0
        assert x.dtype == xr.dtype == expected_dtype(A, b)
        np.testing.assert_allclose(x, xr, rtol=1e-3)


@pytest.mark.parametrize("solver", _ALL)
def test_single_precision_is_honest(solver):
    """float32 stays float32; an unreachable rtol is reported as not converged, never as info=0."""
    A = _single(poisson2d(12))
    b = np.arange(A.shape[0], dtype=np.float32)
    x, info = OURS[solver](A, b, rtol=1e-4)
    assert info == 0 and x.dtype == np.float32
    assert rel_residual(A, x, b) <= 1e-4 + rounding_slack(A, x, b)
    x, info = OURS[solver](A, b, rtol=1e-12, maxiter=400)
    assert x.dtype == np.float32
    if info == 0:  # only when float32 arithmetic itself verified it
        r32 = np.linalg.norm(b - A @ x)
        assert r32 <= 1e-12 * np.linalg.norm(b)
    else:
        assert info > 0


# ============================================================================= input checking
@pytest.mark.parametrize("solver", _ALL)
def test_tolerances_are_keyword_only(solver):
    A, b = np.eye(3), np.ones(3)
    with pytest.raises(TypeError):
        OURS[solver](A, b, None, 1e-5)


@pytest.mark.parametrize("solver", _ALL)
@pytest.mark.parametrize("name, value", [
    pytest.param("atol", "legacy", id="atol-legacy"),
    pytest.param("atol", None, id="atol-None"),
    pytest.param("atol", -1.0, id="atol-negative"),
    pytest.param("rtol", -1e-5, id="rtol-negative"),
    pytest.param("rtol", float("nan"), id="rtol-nan"),
])
def test_invalid_tolerance(solver, name, value):
    with pytest.raises(ValueError, match=name):
        OURS[solver](np.eye(3), np.ones(3), **{name: value})


@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: ks.cg(np.ones((3, 4)), np.ones(3)), ValueError, "square", id="non-square"),
    pytest.param(lambda: ks.gmres(spla.aslinearoperator(np.ones((4, 3))), np.ones(4)), ValueError, "square",
                 id="non-square-operator"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(4)), ValueError, "incompatible", id="b-length"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones((3, 2))), ValueError, "incompatible", id="b-matrix"),
    pytest.param(lambda: ks.minres(np.eye(3), np.ones(3), x0=np.ones(2)), ValueError, "incompatible", id="x0-length"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), x0="zeros"), ValueError, "Mb", id="x0-string"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), M=np.eye(4)), ValueError, "preconditioner", id="M-shape"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), M="jacobi"), TypeError, "str", id="M-type"),
    pytest.param(lambda: ks.cg(np.eye(3), np.array([1.0, np.nan, 0.0])), ValueError, "non-finite", id="nan-b"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), maxiter=0), ValueError, "maxiter", id="maxiter-0"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), maxiter=2.5), TypeError, "maxiter", id="maxiter-float"),
    pytest.param(lambda: ks.gmres(np.eye(3), np.ones(3), restart=0), ValueError, "restart", id="restart-0"),
    pytest.param(lambda: ks.cg([[1.0, 0.0], [0.0, 1.0]], np.ones(2)), TypeError, "list", id="A-list"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), callback=3), TypeError, "callback", id="callback-type"),
    pytest.param(lambda: ks.gmres(np.eye(3), np.ones(3), callback=print, callback_type="nope"), ValueError,
                 "callback_type", id="callback_type"),
    pytest.param(lambda: ks.gmres(np.eye(3), np.ones(3), callback_type="nope"), ValueError, "callback_type",
                 id="callback_type-without-callback"),
    pytest.param(lambda: ks.minres(np.eye(3), np.ones(3), shift="1"), TypeError, "shift", id="shift-type"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_breakdowns_are_negative_info():
    A = poisson1d(20)
    b = np.ones(20)
    # CG on a negative definite matrix: p^H A p < 0 (scipy's cg would not notice)
    x, info = ks.cg(-A, b)
    assert info == -2
    # a preconditioner that is not positive definite
    assert ks.cg(A, b, M=-sp.identity(20))[1] == -6
    assert ks.minres(A, b, M=-sp.identity(20))[1] == -6
    # NaN coming out of the operator
    nan_op = spla.LinearOperator((20, 20), matvec=lambda v: v * np.nan, dtype=np.float64)
    for solver in _ALL:
        assert OURS[solver](nan_op, b)[1] == -3


# ============================================================================= gmres specifics
def test_gmres_one_short_cycle_matches_scipy():
    A = np.vander(np.arange(10) + 1)[:, ::-1]
    b = np.zeros(10)
    b[0] = 1
    x, info = ks.gmres(A, b, restart=5, maxiter=1)
    xr, info_r = spla.gmres(A, b, restart=5, maxiter=1)
    assert info == info_r == 1
    np.testing.assert_allclose(x[0], 0.359, rtol=1e-2)
    np.testing.assert_allclose(x[0], xr[0], rtol=1e-4)


def test_gmres_legacy_callback_residual():
    A = sp.csr_array(tridiag(6, 1.0, -2.0, 1.0))
    b = np.ones(6)
    seen = []
    with pytest.warns(DeprecationWarning, match="called without specifying `callback_type`"):
        x, info = ks.gmres(A, b, x0=np.zeros(6), rtol=1e-16, maxiter=1, callback=seen.append)
    np.testing.assert_allclose(seen, [0.81649658092772603], rtol=1e-10)
    assert info == 1
    # scipy's legacy value is the left-preconditioned residual relative to ||b||: scaled with M
    # (1e-3 * 0.8165 here), although krylon preconditions on the right
    seen = []
    ks.gmres(A, b, M=1e-3 * np.eye(6), rtol=1e-16, maxiter=1, callback=seen.append, callback_type="legacy")
    np.testing.assert_allclose(seen, [1e-3 * 0.81649658092772603], rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("callback_type", ["legacy", "pr_norm"])
def test_gmres_residual_callback_is_scipys_numpy_float64(dtype, callback_type):
    """scipy passes an ``np.float64`` at every precision (the legacy callback used to get a Python float)."""
    A = (np.diag(np.arange(1.0, 11.0)) + 0.1 * np.ones((10, 10))).astype(dtype)
    b = np.arange(10.0).astype(dtype)
    for M in (None, np.diag(1.0 / np.arange(1.0, 11.0)).astype(dtype)):
        ours, theirs = [], []
        ks.gmres(A, b, maxiter=3, M=M, callback=ours.append, callback_type=callback_type)
        spla.gmres(A, b, maxiter=3, M=M, callback=theirs.append, callback_type=callback_type)
        assert len(ours) == len(theirs) > 0
        assert {type(v) for v in ours} == {type(v) for v in theirs} == {np.float64}
        assert all(np.ndim(v) == 0 for v in ours)


def test_gmres_preconditioned_callback_value_is_left_preconditioned_residual():
    """With a general M the value is ||M (b - A x_k)|| / ||b|| of krylon's own iterate x_k."""
    rng = _rng(23)
    A = rng.uniform(size=(12, 12)) + 4 * np.eye(12)
    b = rng.uniform(size=12)
    M = np.diag(1.0 / np.diag(A)) + 0.01 * rng.uniform(size=(12, 12))
    values, iterates = [], []
    ks.gmres(A, b, M=M, rtol=1e-12, restart=4, maxiter=2, callback=values.append, callback_type="pr_norm")
    for k in range(1, len(values) + 1):  # the iterate after k inner steps: the same solve, stopped there
        if k <= 4:
            x, _ = ks.gmres(A, b, M=M, rtol=1e-12, restart=4, maxiter=k, callback=lambda r: None,
                            callback_type="legacy")
            iterates.append(x)
    expected = [np.linalg.norm(M @ (b - A @ x)) / np.linalg.norm(b) for x in iterates]
    np.testing.assert_allclose(values[:4], expected, rtol=1e-8)


def test_gmres_warns_like_scipy_without_callback_type():
    """scipy's DeprecationWarning when a callback comes without callback_type; none otherwise."""
    A, b = np.eye(3) * 2.0, np.ones(3)
    with pytest.warns(DeprecationWarning, match="called without specifying `callback_type`") as rec:
        ks.gmres(A, b, callback=lambda r: None)
    assert rec[0].filename == __file__  # attributed to the caller's line
    with pytest.warns(DeprecationWarning, match="called without specifying `callback_type`"):
        spla.gmres(A, b, callback=lambda r: None)
    import warnings

    for kw in ({}, {"callback": lambda r: None, "callback_type": "legacy"}, {"callback_type": "x"}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ks.gmres(A, b, **kw)


def test_gmres_pr_norm_sequence_matches_scipy():
    A = tridiag(40, -1.3, 2.5, -0.7)
    b = np.cos(np.arange(40.0))
    ours, theirs = [], []
    x, info = ks.gmres(A, b, rtol=1e-14, restart=8, maxiter=3, callback=ours.append, callback_type="pr_norm")
    xr, info_r = spla.gmres(A, b, rtol=1e-14, restart=8, maxiter=3, callback=theirs.append, callback_type="pr_norm")
    assert info == info_r == 3
    assert len(ours) == len(theirs) == 24
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(x, xr, rtol=1e-6, atol=1e-8 * np.abs(xr).max())


@pytest.mark.parametrize("callback_type", ["x", "pr_norm", "legacy"])
@pytest.mark.parametrize("restart, maxiter", [(5, 3), (5, 50), (10, 3), (40, 3), (40, 50)])
def test_gmres_restart_maxiter_callback_grid_matches_scipy(callback_type, restart, maxiter):
    """Same info, same number of callbacks, same answer as scipy for every restart/maxiter/callback rule."""
    A = tridiag(40, -1.3, 2.5, -0.7)
    b = np.cos(np.arange(40.0))
    ours, theirs = [], []
    x, info = ks.gmres(A, b, rtol=1e-8, restart=restart, maxiter=maxiter, callback=ours.append,
                       callback_type=callback_type)
    xr, info_r = spla.gmres(A, b, rtol=1e-8, restart=restart, maxiter=maxiter, callback=theirs.append,
                            callback_type=callback_type)
    assert (info, len(ours)) == (info_r, len(theirs))
    np.testing.assert_allclose(x, xr, rtol=1e-5, atol=1e-7 * np.abs(xr).max())


def test_gmres_maxiter_counts_restart_cycles():
    A = poisson1d(60)
    b = np.arange(60.0)
    x, info = ks.gmres(A, b, rtol=1e-12, restart=5, maxiter=2)
    xr, info_r = spla.gmres(A, b, rtol=1e-12, restart=5, maxiter=2)
    assert info == info_r == 2
    # the same two cycles of five minimal-residual steps: the same iterate
    np.testing.assert_allclose(x, xr, rtol=1e-7, atol=1e-9 * np.abs(xr).max())


def test_gmres_callback_types():
    rng = _rng(21)
    A = rng.uniform(size=(20, 20))
    b = rng.uniform(size=20)
    count = [0]

    def pr_norm_cb(r):
        count[0] += 1
        assert isinstance(r, float)

    def x_cb(x):
        count[0] += 1
        assert isinstance(x, np.ndarray) and x.shape == (20,)

    # legacy (the default, with scipy's DeprecationWarning): maxiter counts inner iterations; 2 are not enough
    for kw in ({}, {"callback_type": "legacy"}):
        count[0] = 0
        with pytest.warns(DeprecationWarning) if not kw else contextlib.nullcontext():
            x, info = ks.gmres(A, b, rtol=1e-6, atol=0, callback=pr_norm_cb, maxiter=2, restart=50, **kw)
        assert info == 2 and count[0] == 2
    # pr_norm: maxiter counts cycles; one cycle of 20 solves it
    count[0] = 0
    x, info = ks.gmres(A, b, rtol=1e-6, atol=0, callback=pr_norm_cb, maxiter=2, restart=50, callback_type="pr_norm")
    assert info == 0 and count[0] > 2
    # x: one call per cycle
    count[0] = 0
    x, info = ks.gmres(A, b, rtol=1e-6, atol=0, callback=x_cb, maxiter=2, restart=50, callback_type="x")
    assert info == 0 and count[0] == 1
    xr, info_r = spla.gmres(A, b, rtol=1e-6, atol=0, maxiter=2, restart=50)
    assert info_r == 0


def test_gmres_x_callback_once_per_cycle_with_decreasing_residual():
    rng = _rng(22)
    A = rng.uniform(size=(20, 20)) + np.eye(20)
    b = rng.uniform(size=20)
    norms = []
    x, info = ks.gmres(A, b, rtol=1e-12, atol=0, callback=lambda xk: norms.append(np.linalg.norm(A @ xk - b)),
                       maxiter=6, restart=3, callback_type="x")
    norms_r = []
    xr, info_r = spla.gmres(A, b, rtol=1e-12, atol=0, callback=lambda xk: norms_r.append(np.linalg.norm(A @ xk - b)),
                            maxiter=6, restart=3, callback_type="x")
    assert info == info_r == 6
    assert len(norms) == len(norms_r) == 6
    assert all(n1 <= n0 * (1 + 1e-12) for n0, n1 in zip(norms, norms[1:]))
    np.testing.assert_allclose(norms, norms_r, rtol=1e-6)


def test_gmres_complex_matches_real():
    A = np.eye(2)
    b = np.ones(2)
    x_real, info_real = ks.gmres(A, b)
    x, info = ks.gmres(A.astype(complex), b.astype(complex))
    assert np.iscomplexobj(x) and info == info_real == 0
    np.testing.assert_allclose(x, x_real.astype(complex))


def test_gmres_tiny_rhs_is_relative():
    x, info = ks.gmres(np.eye(2), np.ones(2), rtol=1e-5)
    np.testing.assert_allclose(x, np.ones(2), rtol=1e-8)
    b = 1e-10 * np.ones(2)
    x, info = ks.gmres(np.eye(2), b, rtol=1e-8, atol=0)
    assert info == 0 and np.linalg.norm(x - b) <= 1e-8 * np.linalg.norm(b)


def _defective_preconditioner_problem():
    M = np.diag([1.0, 1.0, 0.0])  # cannot correct the third component
    A = np.diag([2.0, 3.0, 4.0])
    b = np.array([0.0, 1.0, 1.0])
    return A, M, b, np.array([1.0, 0.0, 0.0])


def test_gmres_singular_preconditioner_does_not_fake_success():
    A, M, b, x0 = _defective_preconditioner_problem()
    x, info = ks.gmres(A, b, x0=x0, M=M, rtol=1e-15, atol=0)
    assert not np.isnan(x).any()
    assert info > 0
    assert spla.gmres(A, b, x0=x0, M=M, rtol=1e-15, atol=0)[1] > 0


def test_gmres_singular_preconditioner_solves_the_reachable_part():
    A, M, b, x0 = _defective_preconditioner_problem()
    x, info = ks.gmres(A, b, x0=x0, M=M, rtol=1e-15, atol=0)
    xr, _ = spla.gmres(A, b, x0=x0, M=M, rtol=1e-15, atol=0)
    np.testing.assert_allclose(M @ (A @ xr), M @ b, atol=1e-12)  # scipy reaches it
    # the minimum of ||b - A (x0 + M z)|| is 1 (the third component), reached with M A x = M b
    np.testing.assert_allclose(M @ (A @ x), M @ b, atol=1e-12)


def test_gmres_singular_matrix_does_not_fake_success():
    A = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = np.array([1.0, 0.0, 1.0])
    x, info = ks.gmres(A, b, rtol=1e-8, atol=0)
    _, info_r = spla.gmres(A, b, rtol=1e-8, atol=0)
    assert not np.isnan(x).any()
    assert info > 0 and info_r > 0
    np.testing.assert_allclose(A @ (A @ x), A @ b, atol=1e-12)


# ============================================================================= minres specifics
def _sym_problem():
    rng = _rng(31)
    G = rng.uniform(size=(10, 10))
    return G + G.T, rng.uniform(size=10)


def test_minres_consistent_singular_system():
    A, b = _sym_problem()
    A[0, :] = 0
    A[:, 0] = 0
    b[0] = 0
    x, info = ks.minres(A, b)
    assert info == 0 and np.linalg.norm(A @ x - b) <= 1e-5 * np.linalg.norm(b)


def test_minres_shift_equals_shifted_matrix():
    A, b = _sym_problem()
    x1, info1 = ks.minres(A, b, shift=0.5, rtol=1e-10)
    x2, info2 = ks.minres(A - 0.5 * np.eye(10), b, rtol=1e-10)
    x3, info3 = spla.minres(A, b, shift=0.5, rtol=1e-10)
    assert info1 == info2 == info3 == 0
    np.testing.assert_allclose(x1, x2, rtol=1e-6)
    np.testing.assert_allclose(x1, x3, rtol=1e-5)


def test_minres_check_rejects_nonsymmetric():
    A, b = _sym_problem()
    A[1, 2], A[2, 1] = 1.0, 2.0
    with pytest.raises(ValueError, match="symmetric"):
        ks.minres(A, b, check=True)
    A, b = _sym_problem()
    ks.minres(A, b, check=True)  # a symmetric one passes
    with pytest.raises(ValueError, match="M"):
        ks.minres(A, b, check=True, M=np.triu(np.ones((10, 10))))


@pytest.mark.parametrize("exact_start", [False, True], ids=["random-x0", "exact-x0"])
@pytest.mark.parametrize("precondition", [False, True], ids=["no-M", "spd-M"])
def test_minres_with_x0_and_preconditioner(exact_start, precondition):
    rng = _rng(32)
    if exact_start:
        A, b = np.eye(10), np.ones(10)
        x0 = np.ones(10)
    else:
        G = rng.standard_normal((10, 10))
        A, b, x0 = G @ G.T + 0.1 * np.eye(10), rng.standard_normal(10), rng.standard_normal(10)
    H = rng.standard_normal((10, 10))
    M = H @ H.T + np.eye(10) if precondition else None
    x, info = ks.minres(A, b, M=M, x0=x0, rtol=1e-6)
    assert info == 0 and np.linalg.norm(A @ x - b) <= 1e-6 * np.linalg.norm(b)


def test_minres_complex_hermitian_and_atol():
    A = random_matrix("cmplx-herm", 12, seed=3) + 0.1 * np.eye(12)
    b = np.arange(12) + 1j
    x, info = ks.minres(A, b, rtol=0, atol=1e-9)
    assert info == 0 and np.linalg.norm(A @ x - b) <= 1e-9
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-6)


def test_minres_show_prints(capsys):
    A, b = _sym_problem()
    ks.minres(A, b, show=True)
    out = capsys.readouterr().out
    assert out.startswith("Enter minres.") and "Exit  minres." in out


# ============================================================================= what a simulation code hands over
def _p1_stiffness_plus_mass(n_nodes=301, seed=5):
    """P1 finite elements on a graded, jittered 1-D mesh, assembled element by element into COO -> CSR."""
    rng = _rng(seed)
    nodes = np.linspace(0.0, 1.0, n_nodes) ** 1.5
    nodes[1:-1] += rng.uniform(-0.2, 0.2, n_nodes - 2) * np.diff(nodes)[:-1]
    rows, cols, vals = [], [], []
    for e in range(n_nodes - 1):
        h = nodes[e + 1] - nodes[e]
        ke = np.array([[1.0, -1.0], [-1.0, 1.0]]) / h + h / 6.0 * np.array([[2.0, 1.0], [1.0, 2.0]])
        for i, j in itertools.product(range(2), range(2)):
            rows.append(e + i)
            cols.append(e + j)
            vals.append(ke[i, j])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_nodes, n_nodes)), nodes


def test_finite_element_assembly_same_answer_as_scipy():
    K, nodes = _p1_stiffness_plus_mass()
    f = np.sin(3 * nodes)
    x, info = ks.cg(K, f, rtol=1e-10)
    xr, info_r = spla.cg(K, f, rtol=1e-10)
    assert info == info_r == 0
    cond = np.linalg.cond(K.toarray())
    xs = np.linalg.solve(K.toarray(), f)
    assert np.linalg.norm(x - xr) <= 1.01 * cond * (rel_residual(K, x, f) + rel_residual(K, xr, f)) * np.linalg.norm(xs)
    np.testing.assert_allclose(x, xr, rtol=1e-5, atol=1e-7 * np.abs(xr).max())


@pytest.mark.parametrize("solver", _ALL)
def test_pyamg_preconditioner(solver):
    pyamg = pytest.importorskip("pyamg")
    A = poisson2d(30)
    b = np.sin(np.arange(A.shape[0], dtype=np.float64))
    ml = pyamg.smoothed_aggregation_solver(A)
    its = []
    x, info = OURS[solver](A, b, rtol=1e-10, M=ml.aspreconditioner(),
                           callback=(lambda xk: its.append(1)), **({"callback_type": "x"} if solver == "gmres" else {}))
    assert info == 0 and rel_residual(A, x, b) <= 1e-10
    assert len(its) < 30  # far fewer than the unpreconditioned solve
    xr, info_r = SCIPY[solver](A, b, rtol=1e-10, M=ml.aspreconditioner())
    assert info_r == 0
    cond = poisson2d_cond(30)
    assert np.linalg.norm(x - xr) <= 1.01 * cond * (rel_residual(A, x, b) + rel_residual(A, xr, b)) * np.linalg.norm(xr)
    # the hierarchy itself is accepted too (a krylon extension)
    x2, info2 = OURS[solver](A, b, rtol=1e-10, M=ml)
    assert info2 == 0


def test_duck_typed_operator_and_krylon_operator():
    P = poisson2d(10)

    class Stencil:  # anything with .shape and .matvec, as scipy accepts
        shape = P.shape
        dtype = np.dtype(np.float64)

        def matvec(self, v):
            return P @ np.ravel(v)

    b = np.ones(100)
    x, info = ks.cg(Stencil(), b, rtol=1e-10)
    assert info == 0 and rel_residual(P, x, b) <= 1e-10
    L = Laplacian((10, 10))
    x, info = ks.cg(L, b, rtol=1e-10)
    assert info == 0 and isinstance(x, np.ndarray) and x.shape == (100,)
    xr, info_r = spla.cg(L.to_scipy(), b, rtol=1e-10)
    np.testing.assert_allclose(x, xr, rtol=1e-6)
    # a krylon preconditioner object, and b in the operator's own field shape (returned in that shape)
    x2, info2 = ks.cg(L, b.reshape(10, 10), M=ks.Jacobi(), rtol=1e-10)
    assert info2 == 0 and x2.shape == (10, 10)
    np.testing.assert_allclose(x2.ravel(), xr, rtol=1e-6)
    x3, info3 = ks.minres(L, b, M=ks.IC0(), rtol=1e-10)
    assert info3 == 0
    np.testing.assert_allclose(x3, xr, rtol=1e-6)


# ============================================================================= torch in, torch out
def test_torch_tensors_in_tensors_out():
    A = torch.tensor(random_matrix("spd", 9) + np.eye(9), dtype=torch.float64)
    b = torch.arange(9, dtype=torch.float64)
    for solver in _ALL:
        seen = []
        x, info = OURS[solver](A, b, rtol=1e-10, callback=seen.append,
                               **({"callback_type": "x"} if solver == "gmres" else {}))
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float64 and info == 0
        assert all(isinstance(s, torch.Tensor) for s in seen) and seen
        torch.testing.assert_close(A @ x, b, rtol=0, atol=1e-9 * float(b.norm()))
    # float32 stays float32; a numpy A with a tensor b also gives a tensor
    x, info = ks.cg(A.float(), b.float(), rtol=1e-5)
    assert x.dtype == torch.float32 and info == 0
    x, info = ks.cg(poisson1d(9), b, rtol=1e-10)
    assert isinstance(x, torch.Tensor) and x.shape == (9,) and info == 0
    # numpy b with a torch A: numpy out
    x, info = ks.cg(A, b.numpy(), rtol=1e-10)
    assert isinstance(x, np.ndarray)


def test_torch_gradient_flows_through_the_solve():
    A = torch.tensor(random_matrix("spd", 6) + np.eye(6), dtype=torch.float64)
    b = torch.linspace(1, 2, 6, dtype=torch.float64, requires_grad=True)
    x, info = ks.cg(A, b, rtol=1e-12)
    x.sum().backward()
    expected = torch.linalg.solve(A.T, torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(b.grad, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_right_hand_side():
    A = poisson2d(8)
    b = torch.arange(64, dtype=torch.float64, device="cuda")
    xr, _ = spla.cg(A, b.cpu().numpy(), rtol=1e-10)
    for A_in in (A, spla.aslinearoperator(A)):  # a matrix moves to the GPU; a scipy operator stays on the CPU
        for solver in _ALL:
            x, info = OURS[solver](A_in, b, rtol=1e-10, **FULL[solver])
            assert info == 0 and x.device == b.device
            np.testing.assert_allclose(x.cpu().numpy(), xr, rtol=1e-6)


def test_docstring_examples_run():
    result = doctest.testmod(compat, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("solver", _ALL)
@pytest.mark.parametrize("rtol", [pytest.param(np.float32(1e-8), id="np-float32"), pytest.param(np.array(1e-8), id="0d-array"),
                                  pytest.param(np.inf, id="inf")])
def test_tolerance_spellings_scipy_accepts(solver, rtol):
    # the checks moved to kernels.validate: every spelling scipy takes through float() still works
    A, b = poisson1d(20), np.ones(20)
    x, info = OURS[solver](A, b, rtol=rtol)
    assert info == 0
    if np.isfinite(float(rtol)):
        assert np.linalg.norm(b - A @ x) <= 1.01e-8 * np.linalg.norm(b)

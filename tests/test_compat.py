"""krylon.solvers.cg / minres / gmres as scipy drop-ins, checked case by case against scipy itself.

The problem cases and generic checks follow scipy's own ``_isolve/tests/test_iterative.py``
(rewritten here): Poisson 1-D/2-D, random SPD, float32, complex Hermitian, symmetric
indefinite (MINRES), nonsymmetric (GMRES); maxiter=1 gives one callback, x0 untouched,
zero right-hand side, the convergence criterion on return, x0='Mb', (N, 1) shapes.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import krylon.solvers as ks


def poisson1d(n=40):
    return sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")


def poisson2d(n=12):
    P = poisson1d(n)
    return (sp.kron(P, sp.identity(n)) + sp.kron(sp.identity(n), P)).tocsr()


def rand_spd(n=30, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    return (B @ B.T + n * np.eye(n)).astype(dtype)


def complex_hpd(n=25, seed=1):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    return B @ B.conj().T + n * np.eye(n)


def sym_indefinite(n=40):
    return (poisson1d(n) - 0.5 * sp.identity(n)).tocsr()


def nonsym(n=40):
    return sp.diags([-1.3 * np.ones(n - 1), 2.5 * np.ones(n), -0.7 * np.ones(n - 1)], [-1, 0, 1], format="csr")


SPD_CASES = [
    pytest.param(poisson1d, id="poisson1d"),
    pytest.param(poisson2d, id="poisson2d"),
    pytest.param(rand_spd, id="rand-spd"),
    pytest.param(lambda: rand_spd(dtype=np.float32), id="rand-spd-f32"),
    pytest.param(complex_hpd, id="complex-hpd"),
    pytest.param(lambda: sp.csr_array(rand_spd()), id="spd-csr-array"),
    pytest.param(lambda: spla.aslinearoperator(poisson1d()), id="scipy-linearoperator"),
]
SOLVERS = [pytest.param(ks.cg, spla.cg, id="cg"), pytest.param(ks.minres, spla.minres, id="minres"),
           pytest.param(ks.gmres, spla.gmres, id="gmres")]


def _b(A, seed=2):
    rng = np.random.default_rng(seed)
    n = A.shape[0]
    dt = np.result_type(getattr(A, "dtype", np.float64), np.float32)
    b = rng.standard_normal(n)
    if np.issubdtype(dt, np.complexfloating):
        b = b + 1j * rng.standard_normal(n)
    return b.astype(dt)


def _matvec(A, x):
    return A.matvec(x) if isinstance(A, spla.LinearOperator) else A @ x


def _tol(dtype):
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-8


@pytest.mark.parametrize("ours, theirs", SOLVERS)
@pytest.mark.parametrize("make", SPD_CASES)
def test_spd_cases_match_scipy(ours, theirs, make):
    A = make()
    b = _b(A)
    rtol = _tol(b.dtype)
    x, info = ours(A, b, rtol=rtol)
    assert info == 0
    assert x.shape == (A.shape[0],)
    assert x.dtype == np.result_type(getattr(A, "dtype", b.dtype), b.dtype)
    assert np.linalg.norm(b - _matvec(A, x)) <= rtol * np.linalg.norm(b) * (1 + 1e-6)
    dense = A.matmat(np.eye(A.shape[0])) if isinstance(A, spla.LinearOperator) else (A.toarray() if sp.issparse(A) else A)
    xs = np.linalg.solve(dense.astype(np.result_type(dense.dtype, np.float64)), b)
    cond = np.linalg.cond(dense)
    np.testing.assert_allclose(x, xs, rtol=0, atol=10 * cond * rtol * np.abs(xs).max())
    if not np.iscomplexobj(b) or theirs is not spla.minres:  # scipy's minres rejects complex Hermitian input
        xs2, infos = theirs(A, b, rtol=rtol)
        assert infos == 0


def test_minres_symmetric_indefinite():
    A = sym_indefinite()
    b = _b(A)
    x, info = ks.minres(A, b, rtol=1e-10)
    assert info == 0
    np.testing.assert_allclose(x, spla.spsolve(A.tocsc(), b), atol=1e-7)
    # CG on the same matrix stops with a breakdown (negative info), never a silent wrong answer
    x, info = ks.cg(A, b, rtol=1e-10)
    assert info < 0 or np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b)


@pytest.mark.parametrize("restart", [None, 5, 40])
def test_gmres_nonsymmetric(restart):
    A = nonsym()
    b = _b(A)
    x, info = ks.gmres(A, b, rtol=1e-10, restart=restart, maxiter=200)
    assert info == 0
    np.testing.assert_allclose(x, spla.spsolve(A.tocsc(), b), atol=1e-8)


def test_gmres_maxiter_counts_restart_cycles():
    A = poisson1d(60)
    b = _b(A)
    x1, info1 = ks.gmres(A, b, rtol=1e-12, restart=5, maxiter=2)
    x2, info2 = spla.gmres(A, b, rtol=1e-12, restart=5, maxiter=2)
    assert info1 == info2 == 2
    # after 2 cycles of 5 both have a residual of the same size
    r1, r2 = np.linalg.norm(b - A @ x1), np.linalg.norm(b - A @ x2)
    assert 0.5 < r1 / r2 < 2.0


@pytest.mark.parametrize("ours", [pytest.param(ks.cg, id="cg"), pytest.param(ks.minres, id="minres")])
def test_maxiter_one_gives_one_callback(ours):
    A = poisson1d()
    calls = []
    ours(A, _b(A), maxiter=1, callback=lambda xk: calls.append(np.array(xk)))
    assert len(calls) == 1 and calls[0].shape == (A.shape[0],)


@pytest.mark.parametrize("callback_type, expected", [("x", 2), ("pr_norm", 10), ("legacy", 10)])
def test_gmres_callback_types(callback_type, expected):
    A = poisson1d(60)
    calls = []
    ks.gmres(A, _b(A), rtol=1e-14, restart=5, maxiter=2 if callback_type != "legacy" else 10,
             callback=calls.append, callback_type=callback_type)
    assert len(calls) == expected
    if callback_type == "x":
        assert all(np.asarray(c).shape == (60,) for c in calls)
    else:
        assert all(isinstance(c, float) for c in calls)
    with pytest.raises(ValueError, match="callback_type"):
        ks.gmres(A, _b(A), callback=calls.append, callback_type="nope")


@pytest.mark.parametrize("ours, theirs", SOLVERS)
def test_x0_untouched_and_zero_rhs(ours, theirs):
    A = poisson1d()
    b = _b(A)
    x0 = np.random.default_rng(3).standard_normal(A.shape[0])
    x0c = x0.copy()
    x, info = ours(A, b, x0=x0, rtol=1e-8)
    assert info == 0 and np.array_equal(x0, x0c)
    x, info = ours(A, np.zeros(A.shape[0]), x0=x0)
    assert info == 0 and np.array_equal(x, np.zeros(A.shape[0]))


@pytest.mark.parametrize("ours", [pytest.param(ks.cg, id="cg"), pytest.param(ks.gmres, id="gmres")])
def test_preconditioners_and_x0_mb(ours):
    A = poisson2d(14)
    b = _b(A)
    Minv = sp.diags(1.0 / A.diagonal())
    for M in (Minv, spla.aslinearoperator(Minv), Minv.toarray()):
        x, info = ours(A, b, x0="Mb", M=M, rtol=1e-9)
        assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-9 * np.linalg.norm(b) * (1 + 1e-6)


def test_pyamg_preconditioner():
    pyamg = pytest.importorskip("pyamg")
    A = poisson2d(30)
    b = _b(A)
    ml = pyamg.smoothed_aggregation_solver(A)
    x, info = ks.cg(A, b, rtol=1e-10, M=ml.aspreconditioner())
    xp, infop = spla.cg(A, b, rtol=1e-10, M=ml.aspreconditioner())
    assert info == infop == 0
    np.testing.assert_allclose(x, xp, atol=1e-8)


def test_column_vector_and_integer_input():
    A = poisson1d(20)
    b = np.arange(20).reshape(20, 1)
    x, info = ks.cg(A, b, rtol=1e-10)
    assert info == 0 and x.shape == (20,) and x.dtype == np.float64
    np.testing.assert_allclose(A @ x, b.ravel(), atol=1e-7)


def test_not_converged_reports_maxiter_like_scipy():
    A = poisson2d(20)
    b = _b(A)
    _, info = ks.cg(A, b, rtol=1e-12, maxiter=5)
    _, infos = spla.cg(A, b, rtol=1e-12, maxiter=5)
    assert info == infos == 5


def test_torch_in_torch_out():
    A = torch.tensor(rand_spd(), dtype=torch.float64)
    b = torch.ones(30, dtype=torch.float64)
    x, info = ks.cg(A, b, rtol=1e-10)
    assert isinstance(x, torch.Tensor) and info == 0
    torch.testing.assert_close(A @ x, b)


def test_finite_element_like_assembly_same_answer_as_scipy():
    # a P1 finite-element stiffness + mass assembly on a non-uniform 1-D mesh, as a simulation code hands it over
    rng = np.random.default_rng(5)
    nodes = np.linspace(0, 1, 301) ** 1.5
    nodes[1:-1] += rng.uniform(-0.2, 0.2, 299) * np.diff(nodes)[:-1]
    n = len(nodes)
    rows, cols, vals = [], [], []
    for e in range(n - 1):
        h = nodes[e + 1] - nodes[e]
        ke = np.array([[1, -1], [-1, 1]]) / h + h / 6 * np.array([[2, 1], [1, 2]])
        for i in range(2):
            for j in range(2):
                rows.append(e + i)
                cols.append(e + j)
                vals.append(ke[i, j])
    K = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    f = np.sin(3 * nodes)
    x, info = ks.cg(K, f, rtol=1e-9)
    xs, infos = spla.cg(K, f, rtol=1e-11)
    assert info == infos == 0
    np.testing.assert_allclose(x, xs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: ks.cg(np.ones((3, 4)), np.ones(3)), ValueError, "square", id="non-square"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(4)), ValueError, "incompatible", id="b-shape"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), x0=np.ones(2)), ValueError, "incompatible", id="x0-shape"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), rtol=-1.0), ValueError, "rtol", id="neg-rtol"),
    pytest.param(lambda: ks.cg(np.eye(3), np.array([1.0, np.nan, 0.0])), ValueError, "non-finite", id="nan-b"),
    pytest.param(lambda: ks.cg(np.eye(3), np.ones(3), maxiter=0), ValueError, "maxiter", id="maxiter-0"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

"""Krylov solver classes against direct solves (numpy/scipy), plus semantics, breakdown, gradients."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from krylon.operators import Diffusion, Laplacian, aslinearoperator
from krylon.solvers import CG, CGLS, GMRES, IC0, MINRES, Jacobi, SpectralPoisson, Status


def _direct(A, b):
    """Solve with scipy on the assembled matrix (batched b: one column per system)."""
    M = A.to_scipy().tocsc()
    flat = b.reshape(-1, M.shape[0]).numpy().T
    return torch.from_numpy(spla.splu(M).solve(flat).T.copy()).reshape(b.shape)


def _mask(shape):
    m = torch.zeros(shape, dtype=torch.bool)
    m[tuple(slice(n // 3, n // 2 + 1) for n in shape)] = True
    return m


PROBLEMS = [
    pytest.param(lambda: Laplacian((24, 20), spacing=1 / 25), id="poisson2d-dirichlet"),
    pytest.param(lambda: Laplacian((10, 9, 8), bc=["dirichlet", "neumann", "periodic"], obstacles=_mask((10, 9, 8))), id="poisson3d-mixed-obstacles"),
    pytest.param(lambda: Diffusion(torch.exp(2 * torch.randn(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))), id="diffusion2d-lognormal"),
]


@pytest.mark.parametrize("make", PROBLEMS)
@pytest.mark.parametrize("solver", [pytest.param(CG, id="cg"), pytest.param(MINRES, id="minres"), pytest.param(lambda **k: GMRES(restart=30, **k), id="gmres")])
def test_solvers_match_direct_solve_batched(make, solver):
    A = make()
    g = torch.Generator().manual_seed(1)
    b = torch.rand((2, 3) + A.shape_in, generator=g, dtype=torch.float64)
    if A.obstacles is not None:
        b = b.masked_fill(A.obstacles, 0)
    res = solver(rtol=1e-10).solve(A, b)
    assert res.converged.shape == (2, 3) and bool(res.converged.all()), res.reason
    r = (b - A @ res.x).reshape(6, -1).norm(dim=1)
    assert bool((r <= 1e-10 * b.reshape(6, -1).norm(dim=1) * (1 + 1e-9)).all())
    ref = _direct(A, b)
    cond = np.linalg.cond(A.to_scipy().toarray())
    torch.testing.assert_close(res.x, ref, rtol=0, atol=float(10 * cond * 1e-10 * ref.abs().max()))
    assert res.residual_norms.shape[1:] == (2, 3)
    assert res.residual_norms.shape[0] == int(res.iterations.max()) + 1
    # one by one gives the same per-system answers
    one = solver(rtol=1e-10).solve(A, b[1, 2])
    torch.testing.assert_close(one.x, res.x[1, 2], rtol=0, atol=float(cond * 1e-9 * ref.abs().max()))


def test_batched_systems_converge_independently_and_freeze():
    A = Laplacian((16, 16))
    i = torch.arange(1, 17, dtype=torch.float64)
    eig = torch.outer(torch.sin(torch.pi * i / 17), torch.sin(torch.pi * 2 * i / 17))  # an eigenvector of A
    b = torch.stack([eig, torch.rand(16, 16, dtype=torch.float64)])
    snaps = []
    res = CG(rtol=1e-10, callback=lambda s: snaps.append(s.x.clone())).solve(A, b)
    assert int(res.iterations[0]) == 1 and int(res.iterations[1]) > 10
    assert all(torch.equal(s[0], snaps[-1][0]) for s in snaps[1:])  # the converged system stopped changing


def test_float32_is_honest():
    A = Laplacian((32, 32), dtype=torch.float32)
    b = torch.rand(32, 32)
    res = CG(rtol=1e-4).solve(A, b)  # float32's rounding floor here is ~5e-5 (eps * cond)
    assert bool(res.converged)
    assert float((b.double() - Laplacian((32, 32)) @ res.x.double()).norm()) <= 1e-4 * float(b.norm()) * 1.01
    res = CG(rtol=1e-12, maxiter=5000).solve(A, b)
    assert not bool(res.converged) and int(res.status) in (Status.STAGNATION, Status.MAXITER)
    assert "stagnation" in res.reason or "maxiter" in res.reason


def test_semantics_zero_rhs_x0_maxiter_override():
    A = Laplacian((12, 12))
    b = torch.rand(12, 12, dtype=torch.float64)
    res = CG().solve(A, torch.zeros_like(b))
    assert bool(res.converged) and int(res.iterations) == 0 and torch.count_nonzero(res.x) == 0
    x0 = torch.rand_like(b)
    x0c = x0.clone()
    CG(rtol=1e-8).solve(A, b, x0)
    assert torch.equal(x0, x0c)
    exact = _direct(A, b)
    res = CG(rtol=1e-8).solve(A, b, exact)
    assert int(res.iterations) == 0 and float(res.residual_norms[0]) <= 1e-8 * float(b.norm())
    calls = []
    res = CG(callback=calls.append).solve(A, b, maxiter=1)
    assert len(calls) == 1 and calls[0].iteration == 1 and calls[0].x.shape == b.shape
    assert res.info == 1 and "maxiter" in res.reason
    s = CG(rtol=1e-2)
    r1 = s.solve(A, b, rtol=1e-10)
    assert float((b - A @ r1.x).norm()) <= 1e-10 * float(b.norm()) * 1.01 and s.options["rtol"] == 1e-2
    assert res.n_matvec >= 1 and r1.info == 0


def test_indefinite_and_nan_breakdowns():
    S = torch.diag(torch.tensor([3.0, -1.0, 2.0, 1.0], dtype=torch.float64))
    A = aslinearoperator(S, tags=("symmetric",))
    res = CG().solve(A, torch.ones(4, dtype=torch.float64))
    assert int(res.status) == Status.INDEFINITE and res.info < 0 and "indefinite" in res.reason
    with pytest.raises(ValueError, match="indefinite"):
        CG().solve(aslinearoperator(S, tags=("symmetric", "indefinite")), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="negative_definite"):
        CG().solve(-Laplacian((3, 3)), torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        CG(strict=True).solve(aslinearoperator(torch.eye(3, dtype=torch.float64)), torch.ones(3, dtype=torch.float64))
    calls = {"n": 0}

    def bad(x):
        calls["n"] += 1
        d = torch.arange(1, 6, dtype=torch.float64)
        return x * float("nan") if calls["n"] > 2 else d * x

    res = CG(rtol=1e-12).solve(aslinearoperator(bad, shape=(5, 5), tags=("symmetric",)), torch.ones(5, dtype=torch.float64))
    assert int(res.status) == Status.NAN and "nan" in res.reason
    x = MINRES(rtol=1e-12).solve(A, torch.ones(4, dtype=torch.float64)).x
    torch.testing.assert_close(x, torch.linalg.solve(S, torch.ones(4, dtype=torch.float64)))


@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: CG(rtol=-1.0), ValueError, "rtol", id="neg-rtol"),
    pytest.param(lambda: CG(atol=float("nan")), ValueError, "atol", id="nan-atol"),
    pytest.param(lambda: CG(maxiter=0), ValueError, "maxiter", id="maxiter-0"),
    pytest.param(lambda: CG(maxiter=2.5), TypeError, "maxiter", id="maxiter-float"),
    pytest.param(lambda: GMRES(restart=0), ValueError, "restart", id="restart-0"),
    pytest.param(lambda: CGLS(damp=-1.0), ValueError, "damp", id="neg-damp"),
    pytest.param(lambda: CG().solve(Laplacian((4, 4)), torch.ones(4, 5, dtype=torch.float64)), ValueError, "shape", id="b-shape"),
    pytest.param(lambda: CG().solve(Laplacian((4, 4)), torch.ones(4, 4)), ValueError, "dtype", id="b-f32"),
    pytest.param(lambda: CG().solve(Laplacian((4, 4)), torch.full((4, 4), float("inf"), dtype=torch.float64)), ValueError, "non-finite", id="inf-b"),
    pytest.param(lambda: CG().solve(Laplacian((4, 4)), torch.ones(4, 4, dtype=torch.float64), torch.full((4, 4), float("nan"), dtype=torch.float64)), ValueError, "x0", id="nan-x0"),
    pytest.param(lambda: CG().solve(aslinearoperator(torch.ones(3, 4, dtype=torch.float64)), torch.ones(3, dtype=torch.float64)), ValueError, "square", id="non-square"),
    pytest.param(lambda: CG().solve(Laplacian((4, 4)), torch.ones(4, 4, dtype=torch.float64), tol=1e-3), TypeError, "unknown option", id="unknown-option"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_gmres_nonsymmetric_and_complex():
    n = 30
    T = sp.diags([-1.4 * np.ones(n - 1), 2.6 * np.ones(n), -0.6 * np.ones(n - 1)], [-1, 0, 1]).toarray()
    b = torch.rand(2, n, dtype=torch.float64)
    for restart in (5, 40):
        res = GMRES(rtol=1e-11, restart=restart, maxiter=2000).solve(aslinearoperator(torch.from_numpy(T)), b)
        torch.testing.assert_close(res.x, torch.linalg.solve(torch.from_numpy(T), b.T).T, atol=1e-8, rtol=0)
    C = torch.from_numpy(T + 0.5j * np.eye(n, k=2))
    bc = torch.rand(n, dtype=torch.complex128)
    res = GMRES(rtol=1e-11, M=Jacobi()).solve(aslinearoperator(C), bc)
    torch.testing.assert_close(res.x, torch.linalg.solve(C, bc), atol=1e-8, rtol=0)


def test_cgls_least_squares_min_norm_and_damped():
    g = torch.Generator().manual_seed(3)
    tall = torch.randn(20, 6, dtype=torch.float64, generator=g)
    wide = torch.randn(5, 12, dtype=torch.float64, generator=g)
    b = torch.randn(20, dtype=torch.float64, generator=g)
    torch.testing.assert_close(CGLS(rtol=1e-12).solve(aslinearoperator(tall), b).x, torch.linalg.lstsq(tall, b).solution)
    bw = torch.randn(5, dtype=torch.float64, generator=g)
    torch.testing.assert_close(CGLS(rtol=1e-12).solve(aslinearoperator(wide), bw).x, torch.linalg.pinv(wide) @ bw)
    d = 0.7
    ref = torch.linalg.solve(tall.T @ tall + d * d * torch.eye(6, dtype=torch.float64), tall.T @ b)
    res = CGLS(rtol=1e-12, damp=d).solve(aslinearoperator(tall), b)
    torch.testing.assert_close(res.x, ref)
    assert "data_residual_norms" in res.extras


def test_cg_complex_hermitian():
    g = torch.Generator().manual_seed(4)
    B = torch.randn(12, 12, dtype=torch.complex128, generator=g)
    H = B @ B.conj().T + 12 * torch.eye(12, dtype=torch.complex128)
    b = torch.randn(3, 12, dtype=torch.complex128, generator=g)
    res = CG(rtol=1e-12).solve(aslinearoperator(H, tags=("symmetric", "positive_definite")), b)
    torch.testing.assert_close(res.x, torch.linalg.solve(H, b.T).T)


def test_differentiable_solves():
    A = Laplacian((4, 5))
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: CG(rtol=1e-13).solve(A, b).x, (b,))
    k = (torch.rand(4, 4, dtype=torch.float64) + 0.5).requires_grad_()
    f = torch.randn(4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda k: CG(rtol=1e-13).solve(Diffusion(k), f).x, (k,))
    M = (torch.randn(5, 5, dtype=torch.float64) + 5 * torch.eye(5, dtype=torch.float64)).requires_grad_()
    v = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda M, v: GMRES(rtol=1e-13).solve(aslinearoperator(M), v).x, (M, v))
    S = torch.randn(5, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda S, v: MINRES(rtol=1e-13).solve(aslinearoperator(S + S.T, tags=("symmetric",)), v).x, (S, v))
    R = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda R, w: CGLS(rtol=1e-13, damp=0.2).solve(aslinearoperator(R), w).x, (R, w))
    x = CG(rtol=1e-10).solve(A, b).x
    assert "ImplicitSolve" in type(x.grad_fn).__name__  # one node: the backward solves, it does not unroll


# ------------------------------------------------------------------------ preconditioners
def test_jacobi_helps_variable_coefficient():
    k = torch.exp(3 * torch.randn(24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    A = Diffusion(k)
    b = torch.rand(24, 24, dtype=torch.float64)
    plain = CG(rtol=1e-8).solve(A, b)
    jac = CG(rtol=1e-8, M=Jacobi()).solve(A, b)
    assert bool(jac.converged) and int(jac.iterations) < int(plain.iterations)


@pytest.mark.parametrize("bc", ["dirichlet", "neumann", "periodic", ["dirichlet", "periodic"]])
def test_spectral_poisson_is_exact_without_obstacles(bc):
    A = Laplacian((16, 12), spacing=(0.5, 1.0), bc=bc)
    b = torch.rand(16, 12, dtype=torch.float64)
    if not A.is_positive_definite:
        b = b - b.mean()
    res = CG(rtol=1e-10, M=SpectralPoisson()).solve(A, b)
    assert bool(res.converged) and int(res.iterations) <= 2


def test_spectral_poisson_with_obstacles_reduces_iterations():
    A = Laplacian((32, 32), obstacles=_mask((32, 32)))
    b = torch.rand(32, 32, dtype=torch.float64).masked_fill(A.obstacles, 0)
    res = CG(rtol=1e-8, M=SpectralPoisson()).solve(A, b)
    assert bool(res.converged) and int(res.iterations) < int(CG(rtol=1e-8).solve(A, b).iterations) / 2


@pytest.mark.parametrize("make", [pytest.param(lambda: Laplacian((9, 7), obstacles=_mask((9, 7))), id="obstacles"),
                                  pytest.param(lambda: Diffusion(torch.rand(5, 4, 6, dtype=torch.float64) + 0.2, bc=["neumann", "dirichlet", "periodic"]), id="diffusion3d-mixed")])
def test_ic0_matches_its_definition(make):
    A = make()
    M = A.to_scipy().tocsr()
    n = M.shape[0]
    shape = A.shape_in
    # IC(0) for a triangle-free stencil, computed here by a plain loop in lexicographic order
    d = M.diagonal().copy()
    low = sp.tril(M, -1).tocsr()
    for i in range(n):
        lo, hi = low.indptr[i], low.indptr[i + 1]
        d[i] -= sum(v * v / d[j] for j, v in zip(low.indices[lo:hi], low.data[lo:hi]))
    L = sp.diags(d) + low
    P = (L @ sp.diags(1 / d) @ L.T).tocsc()
    r = torch.rand((2,) + shape, dtype=torch.float64)
    z = IC0(A)(r)
    ref = spla.spsolve(P, r.reshape(2, -1).numpy().T).T.reshape(r.shape)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-10, atol=1e-12)
    res = CG(rtol=1e-8, M=IC0()).solve(A, torch.rand(shape, dtype=torch.float64))
    assert bool(res.converged)


def test_ic0_needs_fewer_iterations_and_rejects_non_stencils():
    A = Laplacian((40, 40))
    b = torch.rand(40, 40, dtype=torch.float64)
    assert int(CG(rtol=1e-8, M=IC0()).solve(A, b).iterations) < 0.6 * int(CG(rtol=1e-8).solve(A, b).iterations)
    with pytest.raises(TypeError, match="stencil"):
        IC0(aslinearoperator(torch.eye(3, dtype=torch.float64)))


def test_pyamg_callable_and_scipy_preconditioners_on_fields():
    pyamg = pytest.importorskip("pyamg")
    A = Laplacian((30, 30), obstacles=_mask((30, 30)))
    b = torch.rand(30, 30, dtype=torch.float64).masked_fill(A.obstacles, 0)
    ml = pyamg.smoothed_aggregation_solver(A.to_scipy())
    for M in (ml, ml.aspreconditioner(), sp.diags(1 / A.to_scipy().diagonal()), lambda r: r / A.diagonal()):
        res = CG(rtol=1e-9, M=M).solve(A, b)
        assert bool(res.converged), res.reason
        assert float((b - A @ res.x).norm()) <= 1e-9 * float(b.norm()) * 1.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    b = torch.rand(3, 48, 48, dtype=torch.float64)
    cpu = CG(rtol=1e-10).solve(Laplacian((48, 48)), b)
    gpu = CG(rtol=1e-10).solve(Laplacian((48, 48), device="cuda"), b.cuda())
    assert bool(gpu.converged.all())
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, atol=1e-8, rtol=0)
    g = GMRES(rtol=1e-10).solve(Laplacian((48, 48), device="cuda"), b.cuda())
    torch.testing.assert_close(g.x.cpu(), cpu.x, atol=1e-8, rtol=0)

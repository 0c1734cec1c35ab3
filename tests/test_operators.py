"""Operators against independent references: hand-assembled stencil matrices, dense algebra, dot tests."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from krylon.operators import Diffusion, Laplacian, aslinearoperator, dottest


def assemble_reference(shape, spacing, bc, k=None, solid=None):
    """Loop over cells and faces; independent of krylon's slicing code."""
    shape = tuple(shape)
    d = len(shape)
    h = [spacing] * d if np.isscalar(spacing) else list(spacing)
    sides = [(b, b) if isinstance(b, str) else tuple(b) for b in ([bc] * d if isinstance(bc, str) else bc)]
    k = np.ones(shape) if k is None else k
    solid = np.zeros(shape, bool) if solid is None else solid
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    A = np.zeros((n, n))
    hm = lambda a, b: 2 * a * b / (a + b)  # noqa: E731
    for cell in itertools.product(*[range(m) for m in shape]):
        i = idx[cell]
        if solid[cell]:
            A[i, i] += 2 * sum(1 / hh ** 2 for hh in h) * k[cell]
            continue
        for a in range(d):
            for step, side in ((-1, sides[a][0]), (1, sides[a][1])):
                nb = list(cell)
                nb[a] += step
                inside = 0 <= nb[a] < shape[a]
                if not inside and side == "periodic":
                    nb[a] %= shape[a]
                    inside = True
                if inside:
                    nb = tuple(nb)
                    if solid[nb]:
                        continue
                    w = hm(k[cell], k[nb]) / h[a] ** 2
                    A[i, i] += w
                    A[i, idx[nb]] -= w
                elif side == "dirichlet":
                    A[i, i] += k[cell] / h[a] ** 2
                # neumann: zero flux, nothing
    return A


CASES = [
    pytest.param((6,), 1.0, "dirichlet", False, False, id="1d-dirichlet"),
    pytest.param((5, 7), (0.5, 2.0), "dirichlet", False, False, id="2d-dirichlet-aniso"),
    pytest.param((5, 6), 1.0, "neumann", False, False, id="2d-neumann"),
    pytest.param((4, 5), 1.0, "periodic", False, False, id="2d-periodic"),
    pytest.param((2, 3), 1.0, "periodic", False, False, id="2d-periodic-n2"),
    pytest.param((1, 4), 1.0, ("dirichlet", "neumann"), False, False, id="2d-size1-axis"),
    pytest.param((5, 6), 0.3, [("dirichlet", "neumann"), "periodic"], False, False, id="2d-per-side"),
    pytest.param((6, 7), 1.0, "dirichlet", True, False, id="2d-obstacles"),
    pytest.param((6, 5), 1.0, [("neumann", "dirichlet"), "neumann"], True, True, id="2d-diffusion-obstacles"),
    pytest.param((4, 3, 5), (1.0, 0.5, 2.0), "dirichlet", False, True, id="3d-diffusion"),
    pytest.param((4, 4, 3), 1.0, ["periodic", "neumann", "dirichlet"], True, False, id="3d-mixed-obstacles"),
]


@pytest.mark.parametrize("shape, spacing, bc, obstacles, variable", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_stencil_matches_hand_assembly(shape, spacing, bc, obstacles, variable, dtype):
    rng = np.random.default_rng(0)
    solid = None
    if obstacles:
        solid = np.zeros(shape, bool)
        solid[tuple(slice(1, 3) for _ in shape)] = True
    k = np.exp(rng.standard_normal(shape)) if variable else None
    ref = assemble_reference(shape, spacing, bc, k, solid)
    mask = None if solid is None else torch.from_numpy(solid)
    A = (Diffusion(torch.from_numpy(k), spacing, bc, mask, dtype=dtype) if variable
         else Laplacian(shape, spacing, bc, mask, dtype=dtype))
    mtol = 1e-6 if dtype == torch.float32 else 1e-12  # the assembled matrix keeps the operator's precision
    np.testing.assert_allclose(A.to_scipy().toarray(), ref, rtol=mtol, atol=mtol * np.abs(ref).max())
    np.testing.assert_allclose(A.diagonal().double().numpy().ravel(), np.diag(ref), rtol=1e-6)
    x = torch.randn((3,) + tuple(shape), dtype=dtype)
    y = A @ x
    yref = x.double().reshape(3, -1).numpy() @ ref.T
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(y.double().reshape(3, -1).numpy(), yref, rtol=tol, atol=tol * np.abs(yref).max())
    assert y.dtype == dtype and y.shape == x.shape


def test_definiteness_tags():
    assert Laplacian((5, 5), bc="dirichlet").is_positive_definite
    assert not Laplacian((5, 5), bc="neumann").is_positive_definite
    assert Laplacian((5, 5), bc="periodic").is_positive_semidefinite
    assert Laplacian((5, 5), bc=[("dirichlet", "neumann"), "neumann"]).is_positive_definite
    ring = torch.zeros(9, 9, dtype=torch.bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False  # a sealed fluid pocket: its own pure-Neumann block, singular
    A = Laplacian((9, 9), obstacles=ring)
    assert A.is_symmetric and not A.is_positive_definite
    assert np.linalg.eigvalsh(A.to_scipy().toarray()).min() < 1e-10
    open_ = torch.zeros(9, 9, dtype=torch.bool)
    open_[2:7, 2:7] = True
    B = Laplacian((9, 9), obstacles=open_)
    assert B.is_positive_definite and np.linalg.eigvalsh(B.to_scipy().toarray()).min() > 1e-3


def test_tag_propagation():
    L = Laplacian((4, 4))
    M = aslinearoperator(torch.randn(5, 16, dtype=torch.float64))
    assert (L + L).is_positive_definite and (2.0 * L).is_positive_definite
    assert (-L).is_symmetric and not (-L).is_positive_semidefinite
    assert not (L - L).is_positive_semidefinite and (L - L).is_symmetric
    N = M.H @ M
    assert N.is_symmetric and N.is_positive_semidefinite and not N.is_positive_definite
    assert (L @ L).is_positive_definite
    assert not (M.H @ aslinearoperator(torch.randn(5, 16, dtype=torch.float64))).is_symmetric
    assert L.H is L


def _registry():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(6, 4, dtype=torch.float64, generator=g)
    cplx = torch.randn(5, 5, dtype=torch.complex128, generator=g)
    csr = sp.random(7, 5, density=0.5, random_state=1, format="csr")
    return [
        pytest.param(lambda: Laplacian((5, 6), bc=[("dirichlet", "neumann"), "periodic"]), id="laplacian"),
        pytest.param(lambda: Diffusion(torch.rand(4, 3, 5, dtype=torch.float64) + 0.5, bc="neumann"), id="diffusion3d"),
        pytest.param(lambda: aslinearoperator(dense), id="dense-rect"),
        pytest.param(lambda: aslinearoperator(cplx), id="dense-complex"),
        pytest.param(lambda: aslinearoperator(dense.to_sparse_csr()), id="torch-csr"),
        pytest.param(lambda: aslinearoperator(dense.to_sparse()), id="torch-coo"),
        pytest.param(lambda: aslinearoperator(csr), id="scipy-csr"),
        pytest.param(lambda: aslinearoperator(csr.tocsc()), id="scipy-csc"),
        pytest.param(lambda: aslinearoperator(spla.aslinearoperator(csr)), id="scipy-linop"),
        pytest.param(lambda: aslinearoperator(dense.numpy()), id="numpy"),
        pytest.param(lambda: aslinearoperator(dense) @ aslinearoperator(torch.randn(4, 3, dtype=torch.float64)), id="product"),
        pytest.param(lambda: 3.0 * Laplacian((4, 4)) - Laplacian((4, 4), bc="neumann"), id="sum-scaled"),
        pytest.param(lambda: aslinearoperator(cplx).H @ aslinearoperator(cplx) + (2 + 1j) * aslinearoperator(cplx), id="complex-composite"),
    ]


@pytest.mark.parametrize("make", _registry())
def test_adjoint_dot_test_and_dense_adjoint(make):
    A = make()
    dt = A.dtype or torch.float64
    assert dottest(A, batch=(2,), dtype=dt) < 1e-10
    D = A.to_dense()
    DH = A.H.to_dense()
    torch.testing.assert_close(DH, D.conj().T)


def test_callable_operators():
    f = aslinearoperator(lambda x: 2 * x, shape=(5, 5))
    torch.testing.assert_close(f @ torch.ones(5, dtype=torch.float64), 2 * torch.ones(5, dtype=torch.float64))
    g = aslinearoperator(lambda x: x.sum(-1), shape=((3,), (3, 4)))
    assert (g @ torch.ones(2, 3, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="shape"):
        aslinearoperator(lambda x: x)


def test_to_and_state_dict():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[2, 2] = True
    A = Laplacian((6, 6), obstacles=mask).to("cpu")
    assert "obstacles" in A.state_dict()
    D = Diffusion(torch.rand(6, 6, dtype=torch.float64) + 1)
    assert "coefficient" in D.state_dict()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip():
    A = Laplacian((8, 8)).to("cuda")
    x = torch.randn(8, 8, dtype=torch.float64)
    torch.testing.assert_close((A @ x.cuda()).cpu(), Laplacian((8, 8)) @ x)
    with pytest.raises(ValueError, match="cuda|cpu"):
        A @ x


def test_diffusion_differentiable_in_coefficient():
    k = (torch.rand(4, 5, dtype=torch.float64) + 0.5).requires_grad_()
    u = torch.randn(4, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda k: Diffusion(k, bc="dirichlet") @ u, (k,))


@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: Laplacian((4, 4)) @ torch.ones(4, 5, dtype=torch.float64), ValueError, "field shape", id="shape"),
    pytest.param(lambda: Laplacian((4, 4)) @ torch.ones(4, 4, dtype=torch.int64), TypeError, "dtype", id="int"),
    pytest.param(lambda: Laplacian((4, 4)) @ torch.ones(4, 4, dtype=torch.float32), ValueError, "dtype", id="f32-into-f64"),
    pytest.param(lambda: Laplacian((4, 4), obstacles=torch.zeros(4, 4)), TypeError, "boolean", id="mask-dtype"),
    pytest.param(lambda: Laplacian((4, 4), obstacles=torch.zeros(4, 5, dtype=torch.bool)), ValueError, "grid shape", id="mask-shape"),
    pytest.param(lambda: Diffusion(-torch.ones(3, 3)), ValueError, "positive", id="neg-coefficient"),
    pytest.param(lambda: Diffusion(torch.tensor([[1.0, float("nan")], [1.0, 1.0]])), ValueError, "non-finite", id="nan-coefficient"),
    pytest.param(lambda: Laplacian((4, 4), bc="robin"), ValueError, "unknown boundary", id="bad-bc"),
    pytest.param(lambda: Laplacian((4, 4), bc=[("periodic", "dirichlet"), "neumann"]), ValueError, "both sides", id="half-periodic"),
    pytest.param(lambda: Laplacian((4, 4), spacing=0.0), ValueError, "spacing", id="zero-spacing"),
    pytest.param(lambda: Laplacian((4, 4)) @ Laplacian((3, 3)), ValueError, "compose", id="compose"),
    pytest.param(lambda: aslinearoperator(torch.eye(3), tags=("spd",)), ValueError, "unknown tags", id="bad-tag"),
    pytest.param(lambda: Laplacian((4, 4, 4, 4)), ValueError, "1-D, 2-D and 3-D", id="4d"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_diffusion_follows_its_coefficient_edited_in_place_or_replaced():
    # the cached face weights once ignored A.coefficient.mul_(2): A @ x and CG silently used the old coefficient
    from krylon.solvers import CG

    shape, bc = (48, 48), (("dirichlet", "neumann"), "periodic")
    g = torch.Generator().manual_seed(21)
    A = Diffusion(0.5 + torch.rand(shape, generator=g, dtype=torch.float64), bc=bc)
    x = torch.randn((2,) + shape, generator=g, dtype=torch.float64)  # 4608 values: the fused CPU path
    b = torch.rand(shape, generator=g, dtype=torch.float64)

    def check():
        K = sp.csr_array(assemble_reference(shape, 1.0, bc, k=A.coefficient.numpy()))
        ref = torch.from_numpy((K @ x.reshape(2, -1).numpy().T).T.reshape(x.shape))
        torch.testing.assert_close(A @ x, ref, rtol=1e-12, atol=1e-10)
        y, d = A.matvec_dot(x, out=torch.empty_like(x))
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(d, (x * ref).sum((1, 2)), rtol=1e-12, atol=1e-9)
        res = CG(rtol=1e-10).solve(A, b)
        sol = spla.spsolve(K.tocsc(), b.reshape(-1).numpy())
        assert bool(res.converged)
        np.testing.assert_allclose(res.x.reshape(-1).numpy(), sol, rtol=0, atol=1e-7 * np.abs(sol).max())

    check()
    A.coefficient.mul_(2)                        # in place, everywhere
    check()
    A.coefficient[10:20, 5:30] = 7.0             # in place, a block
    check()
    A.coefficient = 0.3 + torch.rand(shape, generator=g, dtype=torch.float64)   # replaced
    check()
    with torch.no_grad():                        # an optimiser's step on a coefficient that requires grad
        k = (0.5 + torch.rand(shape, generator=g, dtype=torch.float64)).requires_grad_()
        A = Diffusion(k, bc=bc)
        check()
        k.mul_(3)
        check()


def test_diffusion_sees_an_edit_between_two_matvec_dot_calls_into_the_same_tensors():
    """No call history decides whether the coefficient is re-checked: only an explicit ``unchanged()`` block
    (which every solve runs in) lets the operator skip the check after its first one."""
    from krylon.operators import unchanged

    shape = (64, 64)
    g = torch.Generator().manual_seed(5)
    A = Diffusion(0.5 + torch.rand(shape, generator=g, dtype=torch.float64))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.empty_like(x)
    y1 = A.matvec_dot(x, out=y)[0].clone()
    A.coefficient.mul_(2)
    torch.testing.assert_close(A.matvec_dot(x, out=y)[0], 2 * y1)   # same x and out as before: still seen
    with unchanged():
        y2 = A.matvec_dot(x, out=y)[0].clone()
        A.coefficient.mul_(2)                                         # breaks the block's promise ...
        torch.testing.assert_close(A.matvec_dot(x, out=y)[0], y2)    # ... so the block's weights stay
    torch.testing.assert_close(A.matvec_dot(x, out=y)[0], 2 * y2)   # seen once the block ends


def test_diffusion_with_a_batch_of_coefficients_is_one_operator_per_system():
    """A coefficient (B, *grid) put into A.coefficient gives B systems: system b equals its own operator, and one
    batched CG solve matches B separate solves (the Darcy generator relies on this)."""
    from krylon.operators import Diffusion
    from krylon.solvers import CG

    g = torch.Generator().manual_seed(3)
    k = torch.rand(3, 9, 11, generator=g, dtype=torch.float64) + 0.2
    x = torch.randn(3, 9, 11, generator=g, dtype=torch.float64)
    A = Diffusion(k[0], spacing=0.1)
    A.coefficient = k
    for i in range(3):
        dense = Diffusion(k[i], spacing=0.1).to_dense()
        torch.testing.assert_close(A.matvec(x)[i], (dense @ x[i].reshape(-1)).reshape(9, 11), rtol=1e-12, atol=1e-12)
    res = CG(rtol=1e-12).solve(A, x)
    for i in range(3):
        sol = torch.linalg.solve(Diffusion(k[i], spacing=0.1).to_dense(), x[i].reshape(-1)).reshape(9, 11)
        torch.testing.assert_close(res.x[i], sol, rtol=1e-8, atol=1e-8)

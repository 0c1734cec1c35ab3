"""kernels.fft against independent references: numpy/scipy FFTs, assembled matrices, analytic values."""

import math

import numpy as np
import pytest
import scipy.fft as sfft
import scipy.sparse as sp
import torch

from krylon.kernels import fft


def _second_difference(n, h, bc):
    """1-D stencil matrix (2u_i - u_{i-1} - u_{i+1})/h^2 with ghost rules, assembled by hand."""
    A = sp.lil_matrix((n, n))
    for i in range(n):
        A[i, i] = 2.0
        for j in (i - 1, i + 1):
            if 0 <= j < n:
                A[i, j] -= 1.0
            elif bc == "neumann":
                A[i, i] -= 1.0  # ghost = u_i
            elif bc == "periodic":
                A[i, j % n] -= 1.0
    return (A / h ** 2).tocsr()


def _assemble(shape, spacing, bcs):
    mats = [_second_difference(n, h, b) for n, h, b in zip(shape, spacing, bcs)]
    total = None
    for a, M in enumerate(mats):
        term = sp.identity(1)
        for b in range(len(shape)):
            term = sp.kron(term, M if b == a else sp.identity(shape[b]))
        total = term if total is None else total + term
    return total.tocsr()


def test_wavenumbers_match_numpy():
    for n, L in [(8, 2 * math.pi), (9, 3.0)]:
        np.testing.assert_allclose(fft.wavenumbers(n, L).numpy(), np.fft.fftfreq(n, L / n) * 2 * np.pi)
        np.testing.assert_allclose(fft.wavenumbers(n, L, real=True).numpy(), np.fft.rfftfreq(n, L / n) * 2 * np.pi)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128], ids=str)
def test_derivatives_of_trigonometric_functions(dtype):
    Lx, Ly, n = 3.0, 2.0, 32
    x = torch.arange(n, dtype=torch.float64) * Lx / n
    y = torch.arange(n, dtype=torch.float64) * Ly / n
    X, Y = torch.meshgrid(x, y, indexing="ij")
    a, b = 2 * math.pi * 3 / Lx, 2 * math.pi * 2 / Ly
    u = (torch.sin(a * X) * torch.cos(b * Y)).to(dtype).expand(2, n, n)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    dx = fft.derivative(u, 1, (Lx, Ly), axes=(0,))
    torch.testing.assert_close(dx.real if dx.is_complex() else dx, (a * torch.cos(a * X) * torch.cos(b * Y)).to(dx.real.dtype).expand(2, n, n), atol=tol * 10, rtol=tol)
    mixed = fft.derivative(u, (1, 2), (Lx, Ly), axes=(0, 1))
    ref = (-a * b * b * torch.cos(a * X) * torch.cos(b * Y))
    torch.testing.assert_close(mixed.real if mixed.is_complex() else mixed, ref.to(mixed.real.dtype).expand(2, n, n), atol=tol * 100, rtol=tol)
    lap = fft.laplacian_spectral(u, (Lx, Ly))
    torch.testing.assert_close(lap.real if lap.is_complex() else lap, (-(a * a + b * b) * u.real if u.is_complex() else -(a * a + b * b) * u), atol=tol * 100, rtol=tol)


def test_dealias_matches_independent_mask():
    n = 12
    u = torch.randn(3, n, n, dtype=torch.float64)
    out = fft.dealias(u, ndim=2)
    k = np.fft.fftfreq(n, 1 / n)
    keep = (np.abs(k)[:, None] <= n / 3) & (np.abs(k)[None, :] <= n / 3)
    ref = np.fft.ifft2(np.fft.fft2(u.numpy()) * keep).real
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_trig_transforms_match_scipy(norm):
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    for ax in (-1, 1):
        np.testing.assert_allclose(fft.dst1(x, ax, norm=norm).numpy(), sfft.dst(x.numpy(), type=1, axis=ax, norm=norm), atol=1e-12)
        np.testing.assert_allclose(fft.idst1(x, ax, norm=norm).numpy(), sfft.idst(x.numpy(), type=1, axis=ax, norm=norm), atol=1e-12)
        np.testing.assert_allclose(fft.dct2(x, ax, norm=norm).numpy(), sfft.dct(x.numpy(), type=2, axis=ax, norm=norm), atol=1e-12)
        np.testing.assert_allclose(fft.idct2(x, ax, norm=norm).numpy(), sfft.idct(x.numpy(), type=2, axis=ax, norm=norm), atol=1e-12)


@pytest.mark.parametrize("shape, spacing, bc, shift", [
    pytest.param((9, 7), (0.5, 1.5), ("dirichlet", "dirichlet"), 0.0, id="2d-dirichlet"),
    pytest.param((8, 6), (1.0, 1.0), ("neumann", "neumann"), 0.0, id="2d-neumann-singular"),
    pytest.param((8, 6), (1.0, 0.3), ("periodic", "periodic"), 0.0, id="2d-periodic-singular"),
    pytest.param((8, 6), (1.0, 0.3), ("periodic", "neumann"), 0.7, id="2d-mixed-helmholtz"),
    pytest.param((5, 6, 4), (1.0, 2.0, 0.5), ("dirichlet", "periodic", "neumann"), 0.0, id="3d-mixed"),
])
def test_solve_stencil_inverts_assembled_matrix(shape, spacing, bc, shift):
    A = _assemble(shape, spacing, bc) + shift * sp.identity(math.prod(shape))
    f = torch.randn((2,) + shape, dtype=torch.float64)
    u = fft.solve_stencil(f, spacing, bc, shift=shift)
    singular = shift == 0 and "dirichlet" not in bc
    for i in range(2):
        fi = f[i].numpy().ravel()
        if singular:
            fi = fi - fi.mean()
            assert abs(float(u[i].mean())) < 1e-12
        np.testing.assert_allclose(A @ u[i].numpy().ravel(), fi, atol=1e-10 * np.abs(fi).max())


def test_solve_periodic_spectral_analytic():
    L, n = 2.0, 32
    x = torch.arange(n, dtype=torch.float64) * L / n
    X, Y = torch.meshgrid(x, x, indexing="ij")
    a, b, shift = 2 * math.pi / L * 2, 2 * math.pi / L * 3, 0.5
    u = torch.sin(a * X) * torch.sin(b * Y)
    f = (a * a + b * b + shift) * u
    torch.testing.assert_close(fft.solve_periodic(f, (L, L), shift=shift), u, atol=1e-12, rtol=1e-10)


def test_sobolev_norms():
    L = 3.0
    n = 64
    x = torch.arange(n, dtype=torch.float64) * L / n
    u = torch.sin(2 * math.pi * 4 * x / L)
    k = 2 * math.pi * 4 / L
    # s = 0: quadrature L2 norm
    torch.testing.assert_close(fft.sobolev_norm(u, 0.0, (L,), squared=True), (u ** 2).sum() * L / n)
    for s, alpha in [(1.0, 1.0), (-1.0, 0.1), (0.5, 2.0)]:
        ref = L / 2 * (alpha + k * k) ** s
        torch.testing.assert_close(fft.sobolev_norm(u, s, (L,), alpha=alpha, squared=True), torch.tensor(ref, dtype=torch.float64))
    # s = -1 equals <u, (alpha - Laplace)^{-1} u>
    v = torch.randn(2, 16, 16, dtype=torch.float64)
    w = fft.solve_periodic(v, (1.0, 2.0), shift=0.3)
    ref = (v * w).sum((-1, -2)) * 2.0 / 256
    torch.testing.assert_close(fft.sobolev_norm(v, -1.0, (1.0, 2.0), alpha=0.3, squared=True), ref)
    z = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fft.sobolev_norm(t, -0.5, (1.0, 1.0)), (z,))


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda: fft.solve_stencil(torch.zeros(4, 4), (1.0, 1.0), "robin"), "unknown boundary", id="bad-bc"),
    pytest.param(lambda: fft.solve_stencil(torch.zeros(4, 4), (1.0, 1.0), "dirichlet", shift=-1.0), "shift", id="neg-shift"),
    pytest.param(lambda: fft.sobolev_norm(torch.zeros(4, 4), -1.0, (1.0, 1.0), alpha=0.0), "alpha", id="alpha-0"),
    pytest.param(lambda: fft.solve_stencil(torch.zeros(4), (1.0, 1.0), "dirichlet"), "dimensions", id="too-few-dims"),
    pytest.param(lambda: fft.derivative(torch.zeros(4, 4), 1, (1.0, 0.0)), "positive", id="zero-length"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()

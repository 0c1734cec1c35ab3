"""krylon.kernels.fft against independent references.

References: numpy/scipy FFTs and trigonometric transforms, stencil matrices
assembled here by hand from the ghost-value rules, the matrix-free stencil of
krylon.kernels.stencil, analytic derivatives and norms of trigonometric
functions.  Nothing is checked against the module's own output.
"""

from __future__ import annotations

import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.fft as sfft
import scipy.sparse as sp
import torch

from krylon.kernels import fft
from krylon.kernels import stencil as kstencil
from krylon.kernels.fft import solves as fft_solves

F64 = torch.float64
TWO_PI = 2 * math.pi


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny problems: threads only add overhead


# ============================================================================== helpers (independent references)
def _grid(n, L, dtype=F64):
    return torch.arange(n, dtype=dtype) * (L / n)


def _second_difference(n, h, bc):
    """Dense 1-D matrix of (2u_i - u_{i-1} - u_{i+1}) / h^2 with the ghost rules written out."""
    A = np.zeros((n, n))
    for i in range(n):
        A[i, i] += 2.0
        for j in (i - 1, i + 1):
            if 0 <= j < n:
                A[i, j] -= 1.0
            elif bc == "periodic":
                A[i, j % n] -= 1.0
            elif bc == "neumann":
                A[i, i] -= 1.0  # ghost = u_i
            elif bc != "dirichlet":  # dirichlet: ghost = 0
                raise AssertionError(bc)
    return sp.csr_array(A / h ** 2)


def _assemble(shape, spacing, bcs, shift=0.0):
    """Kronecker sum of the 1-D matrices in C (row-major) ordering, plus shift * I."""
    N = math.prod(shape)
    total = shift * sp.identity(N, format="csr")
    for a, (n, h, b) in enumerate(zip(shape, spacing, bcs)):
        left = sp.identity(math.prod(shape[:a]), format="csr")
        right = sp.identity(math.prod(shape[a + 1:]), format="csr")
        total = total + sp.kron(sp.kron(left, _second_difference(n, h, b)), right)
    return sp.csr_array(total)


def _numpy_keep(n, rule, real_axis):
    """1-D keep-vector of the dealiasing rule |m| <= rule * n / 2, with exact rational arithmetic."""
    m = np.fft.rfftfreq(n, 1.0 / n) if real_axis else np.fft.fftfreq(n, 1.0 / n)
    m = np.rint(m).astype(int)
    return np.array([Fraction(abs(int(v))) <= Fraction(rule).limit_denominator(1000) * n / 2 for v in m])


# ============================================================================== wavenumbers
@pytest.mark.parametrize("n, L", [pytest.param(8, TWO_PI, id="n8-2pi"), pytest.param(9, 3.0, id="n9-L3"),
                                  pytest.param(1, 1.0, id="n1"), pytest.param(16, 0.25, id="n16-L0.25")])
def test_wavenumbers_match_numpy(n, L):
    np.testing.assert_allclose(fft.wavenumbers(n, L).numpy(), np.fft.fftfreq(n, L / n) * 2 * np.pi, rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(fft.wavenumbers(n, L, real=True).numpy(), np.fft.rfftfreq(n, L / n) * 2 * np.pi,
                               rtol=1e-14, atol=1e-12)
    k32 = fft.wavenumbers(n, L, dtype=torch.float32)
    assert k32.dtype == torch.float32
    np.testing.assert_allclose(k32.numpy(), np.fft.fftfreq(n, L / n) * 2 * np.pi, rtol=1e-6)


def test_wavenumber_grid_shapes_and_values():
    shape, lengths = (4, 5, 6), (1.0, 2.0, 3.0)
    ks = fft.wavenumber_grid(shape, lengths)
    assert [tuple(k.shape) for k in ks] == [(4, 1, 1), (1, 5, 1), (1, 1, 4)]
    np.testing.assert_allclose(ks[0].flatten().numpy(), np.fft.fftfreq(4, 1.0 / 4) * 2 * np.pi)
    np.testing.assert_allclose(ks[2].flatten().numpy(), np.fft.rfftfreq(6, 3.0 / 6) * 2 * np.pi)
    ks = fft.wavenumber_grid(shape, lengths, real=False)
    assert tuple(ks[2].shape) == (1, 1, 6)
    k2 = sum(k ** 2 for k in ks)
    KX, KY, KZ = np.meshgrid(*[np.fft.fftfreq(n, L / n) * 2 * np.pi for n, L in zip(shape, lengths)], indexing="ij")
    np.testing.assert_allclose(k2.numpy(), KX ** 2 + KY ** 2 + KZ ** 2, rtol=1e-14)


# ============================================================================== derivatives
def _trig_field():
    """A 24 x 20 grid on the non-2pi box [0, 3) x [0, 2) and two resolved angular wavenumbers a, b."""
    Lx, Ly, nx, ny = 3.0, 2.0, 24, 20
    x, y = _grid(nx, Lx), _grid(ny, Ly)
    X, Y = torch.meshgrid(x, y, indexing="ij")
    a, b = TWO_PI * 3 / Lx, TWO_PI * 2 / Ly
    return Lx, Ly, X, Y, a, b


@pytest.mark.parametrize("dtype, tol", [
    pytest.param(torch.float64, 1e-10, id="float64"),
    pytest.param(torch.float32, 2e-4, id="float32"),
])
def test_derivative_real_trig(dtype, tol):
    Lx, Ly, X, Y, a, b = _trig_field()
    sa, ca, sb, cb = torch.sin(a * X), torch.cos(a * X), torch.sin(b * Y), torch.cos(b * Y)
    u = (sa * cb).expand(2, 3, *X.shape).to(dtype)  # batch (2, 3)
    cases = [
        ((1, (0,)), a * ca * cb),
        ((1, (1,)), -b * sa * sb),
        ((2, (0,)), -a * a * sa * cb),
        ((3, (-1,)), b ** 3 * sa * sb),
        (((1, 2), (0, 1)), -a * b * b * ca * cb),
        (((2, 1), (0, 1)), a * a * b * sa * sb),
        ((2, None), a * a * b * b * sa * cb),  # an int order applies to every axis: d^2/dx^2 d^2/dy^2
    ]
    for (order, axes), ref in cases:
        du = fft.derivative(u, order, (Lx, Ly), axes=axes)
        assert du.dtype == dtype and du.shape == u.shape
        scale = float(ref.abs().max())
        torch.testing.assert_close(du, ref.to(dtype).expand_as(u), atol=tol * scale, rtol=0)
    gx, gy = fft.gradient(u, (Lx, Ly))
    torch.testing.assert_close(gx, (a * ca * cb).to(dtype).expand_as(u), atol=tol * a, rtol=0)
    torch.testing.assert_close(gy, (-b * sa * sb).to(dtype).expand_as(u), atol=tol * b, rtol=0)
    lap = fft.laplacian_spectral(u, (Lx, Ly))
    torch.testing.assert_close(lap, (-(a * a + b * b) * sa * cb).to(dtype).expand_as(u), atol=tol * (a * a + b * b), rtol=0)


@pytest.mark.parametrize("dtype, tol", [
    pytest.param(torch.complex128, 1e-10, id="complex128"),
    pytest.param(torch.complex64, 2e-4, id="complex64"),
])
def test_derivative_complex_input(dtype, tol):
    Lx, Ly, X, Y, a, b = _trig_field()
    c = 1 + 2j
    u = (c * torch.exp(1j * (a * X - b * Y))).to(dtype)
    u = torch.stack([u, 2 * u])  # batch of 2
    d = fft.derivative(u, (2, 1), (Lx, Ly))
    ref = (1j * a) ** 2 * (-1j * b) * u.to(torch.complex128)
    assert d.dtype == dtype
    torch.testing.assert_close(d, ref.to(dtype), atol=tol * float(ref.abs().max()), rtol=0)
    lap = fft.laplacian_spectral(u, (Lx, Ly))
    torch.testing.assert_close(lap, (-(a * a + b * b) * u.to(torch.complex128)).to(dtype),
                               atol=tol * (a * a + b * b) * 4, rtol=0)


def test_derivative_3d_and_1d():
    L = (1.0, 2.0, 1.5)
    n = (8, 10, 6)
    X, Y, Z = torch.meshgrid(*[_grid(m, Lm) for m, Lm in zip(n, L)], indexing="ij")
    a, b, c = TWO_PI * 2 / L[0], TWO_PI / L[1], TWO_PI * 2 / L[2]
    u = torch.cos(a * X) * torch.sin(b * Y) * torch.cos(c * Z)
    ref = a * b * c * torch.sin(a * X) * torch.cos(b * Y) * torch.sin(c * Z)
    torch.testing.assert_close(fft.derivative(u, 1, L), ref, atol=1e-10 * float(ref.abs().max()), rtol=0)
    # 1-D with a scalar length and ndim=1
    x = _grid(32, 5.0)
    k = TWO_PI * 4 / 5.0
    torch.testing.assert_close(fft.derivative(torch.sin(k * x), 1, 5.0, ndim=1), k * torch.cos(k * x), atol=1e-10 * k, rtol=0)
    # order 0 is the identity
    torch.testing.assert_close(fft.derivative(u, 0, L), u)


@pytest.mark.parametrize("complex_input", [pytest.param(False, id="real"), pytest.param(True, id="complex")])
def test_derivative_zeroes_nyquist_for_odd_orders(complex_input):
    n, L = 8, TWO_PI
    x = _grid(n, L)
    nyq = torch.cos(n / 2 * x)  # (-1)^j: the Nyquist mode
    u = nyq + torch.sin(x)
    if complex_input:
        u = u.to(torch.complex128)
    d1 = fft.derivative(u, 1, (L,))
    torch.testing.assert_close(d1.real if complex_input else d1, torch.cos(x), atol=1e-12, rtol=0)
    d2 = fft.derivative(u, 2, (L,))  # even order keeps it: -(n/2)^2 cos(n x / 2) - sin(x)
    torch.testing.assert_close(d2.real if complex_input else d2, -(n / 2) ** 2 * nyq - torch.sin(x), atol=1e-11, rtol=0)


# ============================================================================== dealiasing
@pytest.mark.parametrize("shape, rule", [
    pytest.param((12, 12), 2 / 3, id="12x12-2/3"),
    pytest.param((9, 16), 2 / 3, id="9x16-2/3"),
    pytest.param((6, 5, 8), 0.5, id="3d-1/2"),
    pytest.param((10, 10), 1.0, id="rule1"),
])
def test_dealias_matches_numpy_mask(shape, rule):
    d = len(shape)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn((3,) + shape, dtype=F64, generator=gen)
    keep_full = np.ones(shape, dtype=bool)
    keep_half = np.ones(shape[:-1] + (shape[-1] // 2 + 1,), dtype=bool)
    for a, n in enumerate(shape):
        sl = [None] * d
        sl[a] = slice(None)
        keep_full = keep_full & _numpy_keep(n, rule, False)[tuple(sl)]
        keep_half = keep_half & _numpy_keep(n, rule, a == d - 1)[tuple(sl)]
    np.testing.assert_array_equal(fft.dealias_mask(shape, rule, real=False).numpy(), keep_full)
    np.testing.assert_array_equal(fft.dealias_mask(shape, rule).numpy(), keep_half)
    axes = tuple(range(-d, 0))
    ref = np.fft.ifftn(np.fft.fftn(u.numpy(), axes=axes) * keep_full, axes=axes)
    out = fft.dealias(u, rule, ndim=d)
    assert out.dtype == F64
    np.testing.assert_allclose(out.numpy(), ref.real, atol=1e-12)
    uc = torch.complex(u, torch.flip(u, dims=(0,)))
    refc = np.fft.ifftn(np.fft.fftn(uc.numpy(), axes=axes) * keep_full, axes=axes)
    np.testing.assert_allclose(fft.dealias(uc, rule, lengths=(1.0,) * d).numpy(), refc, atol=1e-12)


# ============================================================================== DST-I / DCT-II
@pytest.mark.parametrize("norm", [pytest.param(None, id="default"), pytest.param("ortho", id="ortho"),
                                  pytest.param("forward", id="forward"), pytest.param("backward", id="backward")])
@pytest.mark.parametrize("axes", [pytest.param(-1, id="last"), pytest.param(0, id="first"),
                                  pytest.param((0, 2), id="0-2"), pytest.param((-2, -1), id="two-last")])
def test_trig_transforms_match_scipy(norm, axes):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 7, dtype=F64, generator=gen)
    xn = x.numpy()
    kw = dict(axes=axes, norm=norm)
    np.testing.assert_allclose(fft.dst1(x, axes, norm=norm).numpy(), sfft.dstn(xn, type=1, **kw), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(fft.idst1(x, axes, norm=norm).numpy(), sfft.idstn(xn, type=1, **kw), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(fft.dct2(x, axes, norm=norm).numpy(), sfft.dctn(xn, type=2, **kw), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(fft.idct2(x, axes, norm=norm).numpy(), sfft.idctn(xn, type=2, **kw), atol=1e-12, rtol=1e-12)
    # complex input transforms real and imaginary parts
    z = torch.complex(x, torch.roll(x, 1, 0))
    zn = z.numpy()
    np.testing.assert_allclose(fft.dst1(z, axes, norm=norm).numpy(), sfft.dstn(zn, type=1, **kw), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(fft.dct2(z, axes, norm=norm).numpy(), sfft.dctn(zn, type=2, **kw), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(fft.idct2(z, axes, norm=norm).numpy(), sfft.idctn(zn, type=2, **kw), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (1, 2, 3, 8)])
def test_trig_transforms_small_lengths_and_float32(n):
    x = torch.linspace(-1, 2, 3 * n, dtype=F64).reshape(3, n) ** 2
    for ours, ref in [(fft.dst1, sfft.dst), (fft.idst1, sfft.idst), (fft.dct2, sfft.dct), (fft.idct2, sfft.idct)]:
        t = 1 if ours in (fft.dst1, fft.idst1) else 2
        np.testing.assert_allclose(ours(x).numpy(), ref(x.numpy(), type=t), atol=1e-12, rtol=1e-12)
        y32 = ours(x.float(), norm="ortho")
        assert y32.dtype == torch.float32
        np.testing.assert_allclose(y32.numpy(), ref(x.numpy(), type=t, norm="ortho"), atol=1e-5, rtol=1e-5)


# ============================================================================== stencil solves
STENCIL_CASES = [
    pytest.param((9, 7), (0.5, 1.5), ("dirichlet", "dirichlet"), 0.0, id="2d-dirichlet"),
    pytest.param((9, 7), (0.5, 1.5), ("dirichlet", "dirichlet"), 3.0, id="2d-dirichlet-shift"),
    pytest.param((8, 7), (1.0, 1.0), ("neumann", "neumann"), 0.0, id="2d-neumann-singular"),
    pytest.param((8, 7), (1.0, 0.7), ("neumann", "neumann"), 0.5, id="2d-neumann-shift"),
    pytest.param((8, 6), (1.0, 0.3), ("periodic", "periodic"), 0.0, id="2d-periodic-singular"),
    pytest.param((7, 6), (1.0, 0.3), ("periodic", "periodic"), 1.5, id="2d-periodic-shift"),
    pytest.param((8, 6), (1.0, 0.3), ("periodic", "neumann"), 0.0, id="2d-periodic-neumann-singular"),
    pytest.param((6, 9), (0.2, 0.3), ("neumann", "periodic"), 0.7, id="2d-neumann-periodic-shift"),
    pytest.param((6, 5), (0.4, 0.3), ("dirichlet", "neumann"), 0.0, id="2d-dirichlet-neumann"),
    pytest.param((5, 6, 4), (1.0, 2.0, 0.5), ("dirichlet", "periodic", "neumann"), 0.0, id="3d-mixed"),
    pytest.param((4, 5, 6), (0.5, 0.5, 0.5), ("periodic", "neumann", "periodic"), 0.0, id="3d-pnp-singular"),
    pytest.param((4, 5, 3), (1.0, 0.5, 0.25), ("neumann", "neumann", "neumann"), 2.0, id="3d-neumann-shift"),
    pytest.param((4, 3, 5), (1.0, 0.5, 0.25), ("dirichlet", "dirichlet", "dirichlet"), 0.0, id="3d-dirichlet"),
    pytest.param((1, 2, 3), (1.0, 1.0, 1.0), ("periodic", "periodic", "dirichlet"), 0.0, id="3d-tiny-axes"),
]


def _check_solution(A, f, u, singular):
    f = f.reshape(f.shape[0], -1).numpy()
    u = u.reshape(u.shape[0], -1).numpy()
    for fi, ui in zip(f, u):
        if singular:
            fi = fi - fi.mean()
            assert abs(ui.mean()) < 1e-12 * max(1.0, np.abs(ui).max())
        r = A @ ui - fi
        assert np.linalg.norm(r) <= 1e-10 * np.linalg.norm(fi), np.linalg.norm(r) / np.linalg.norm(fi)


@pytest.mark.parametrize("shape, spacing, bc, shift", STENCIL_CASES)
def test_solve_stencil_inverts_assembled_matrix(shape, spacing, bc, shift):
    A = _assemble(shape, spacing, bc, shift)
    gen = torch.Generator().manual_seed(2)
    f = torch.randn((3,) + shape, dtype=F64, generator=gen)
    u = fft.solve_stencil(f, spacing, bc, shift=shift)
    assert u.dtype == F64 and u.shape == f.shape
    singular = shift == 0 and "dirichlet" not in bc
    _check_solution(A, f, u, singular)
    # complex right-hand side (a batch of one)
    fc = torch.complex(f[0], f[1]).unsqueeze(0)
    uc = fft.solve_stencil(fc, spacing, bc, shift=shift)
    assert uc.dtype == torch.complex128
    for part_f, part_u in ((fc.real, uc.real), (fc.imag, uc.imag)):
        _check_solution(A, part_f, part_u, singular)


@pytest.mark.parametrize("shape, spacing, bc, shift", STENCIL_CASES[:10])
def test_stencil_eigenvalues_match_assembled_spectrum(shape, spacing, bc, shift):
    A = _assemble(shape, spacing, bc).toarray()
    lam = fft.stencil_eigenvalues(shape, spacing, bc)
    assert tuple(lam.shape) == tuple(shape) and lam.dtype == F64
    np.testing.assert_allclose(np.sort(lam.numpy().ravel()), np.linalg.eigvalsh(A), atol=1e-10 * np.abs(A).max())


def test_solve_stencil_matches_matrix_free_stencil():
    """The operator CG applies (kernels.stencil.apply_constant) is inverted exactly, batched."""
    gen = torch.Generator().manual_seed(3)
    for shape, h, bc in [((16, 12), (0.1, 0.2), ("neumann", "dirichlet")),
                         ((6, 8, 10), (1.0, 1.0, 0.5), ("periodic", "dirichlet", "neumann"))]:
        f = torch.randn((2, 2) + shape, dtype=F64, generator=gen)
        u = fft.solve_stencil(f, h, bc, shift=0.0)
        torch.testing.assert_close(kstencil.apply_constant(u, h, bc), f, atol=1e-10 * float(f.abs().max()), rtol=0)


def test_solve_stencil_argument_forms_and_float32():
    gen = torch.Generator().manual_seed(4)
    f = torch.randn(2, 10, 12, dtype=F64, generator=gen)
    A = _assemble((10, 12), (0.5, 0.5), ("dirichlet", "neumann"))
    # scalar spacing with a per-axis bc; (low, high) pairs; ndim=
    for u in (fft.solve_stencil(f, 0.5, ("dirichlet", "neumann")),
              fft.solve_stencil(f, (0.5, 0.5), [("dirichlet", "dirichlet"), ("neumann", "neumann")])):
        _check_solution(A, f, u, False)
    Ad = _assemble((10, 12), (0.5, 0.5), ("dirichlet", "dirichlet"), 1.0)
    _check_solution(Ad, f, fft.solve_stencil(f, 0.5, "dirichlet", ndim=2, shift=1.0), False)
    _check_solution(Ad, f, fft.solve_dirichlet(f, 0.5, ndim=2, shift=1.0), False)
    _check_solution(Ad, f, fft.solve_dirichlet(f, (0.5, 0.5), shift=1.0), False)
    # float32 stays float32 and is accurate to single precision
    u32 = fft.solve_stencil(f.float(), (0.5, 0.5), ("dirichlet", "neumann"))
    assert u32.dtype == torch.float32
    r = A @ u32[0].double().numpy().ravel() - f[0].numpy().ravel()
    assert np.linalg.norm(r) <= 1e-5 * np.linalg.norm(f[0].numpy())


def test_solve_stencil_under_inference_mode_then_autograd():
    """Cached tensors built under inference_mode must still work in a later autograd graph."""
    fft_solves._stencil_multiplier.cache_clear()
    with torch.inference_mode():
        fft.solve_stencil(torch.ones(1, 6, 5, dtype=F64), (1.0, 1.0), ("periodic", "dirichlet"))
    f = torch.randn(6, 5, dtype=F64, requires_grad=True)
    fft.solve_stencil(f, (1.0, 1.0), ("periodic", "dirichlet")).square().sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()


@pytest.mark.parametrize("shift", [pytest.param(0.0, id="poisson"), pytest.param(2.5, id="helmholtz")])
def test_solve_periodic_stencil_symbol_inverts_assembled_matrix(shift):
    shape, lengths = (8, 6, 5), (1.0, 2.0, 1.5)
    spacing = tuple(L / n for L, n in zip(lengths, shape))
    A = _assemble(shape, spacing, ("periodic",) * 3, shift)
    gen = torch.Generator().manual_seed(5)
    f = torch.randn((2,) + shape, dtype=F64, generator=gen)
    _check_solution(A, f, fft.solve_periodic(f, lengths, shift=shift, symbol="stencil"), shift == 0)


@pytest.mark.parametrize("shift", [pytest.param(0.0, id="poisson"), pytest.param(0.5, id="helmholtz")])
@pytest.mark.parametrize("dtype", [pytest.param(F64, id="float64"), pytest.param(torch.complex128, id="complex128")])
def test_solve_periodic_spectral_analytic(shift, dtype):
    Lx, Ly, nx, ny = 2.0, 3.0, 32, 24
    X, Y = torch.meshgrid(_grid(nx, Lx), _grid(ny, Ly), indexing="ij")
    a, b = TWO_PI / Lx * 2, TWO_PI / Ly * 3
    u = torch.sin(a * X) * torch.sin(b * Y)
    f = (a * a + b * b + shift) * u
    if shift == 0:
        f = f + 7.0  # the mean is ignored; the solution has zero mean
    f = torch.stack([f, -f]).to(dtype)
    ref = torch.stack([u, -u]).to(dtype)
    out = fft.solve_periodic(f, (Lx, Ly), shift=shift)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


# ============================================================================== Sobolev norms
def test_sobolev_s0_is_quadrature_l2():
    gen = torch.Generator().manual_seed(6)
    u = torch.randn(4, 10, 12, dtype=F64, generator=gen)
    L = (2.0, 3.0)
    ref = (u ** 2).sum((-2, -1)) * (6.0 / 120)
    out = fft.sobolev_norm(u, 0.0, L, squared=True)
    assert out.shape == (4,)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(fft.sobolev_norm(u, 0, L), ref.sqrt(), rtol=1e-12, atol=0)
    uc = torch.complex(u, u.flip(0))
    refc = (uc.abs() ** 2).sum((-2, -1)) * (6.0 / 120)
    torch.testing.assert_close(fft.sobolev_norm(uc, 0.0, L, squared=True), refc, rtol=1e-12, atol=0)


@pytest.mark.parametrize("s, alpha", [pytest.param(1.0, 1.0, id="H1"), pytest.param(-1.0, 0.1, id="H-1"),
                                      pytest.param(0.5, 2.0, id="H0.5"), pytest.param(2.0, 0.0, id="H2-alpha0"),
                                      pytest.param(-0.75, 3.0, id="H-0.75")])
def test_sobolev_of_sine_is_analytic(s, alpha):
    L, n, m = 3.0, 64, 4
    x = _grid(n, L)
    k = TWO_PI * m / L
    u = torch.sin(k * x)
    ref = torch.tensor(L / 2 * (alpha + k * k) ** s, dtype=F64)
    torch.testing.assert_close(fft.sobolev_norm(u, s, (L,), alpha=alpha, squared=True), ref, rtol=1e-12, atol=0)
    # 2-D, complex exponential: V |c|^2 (alpha + |k|^2)^s with |c| = 1
    Lx, Ly = 2.0, 1.0
    X, Y = torch.meshgrid(_grid(8, Lx), _grid(6, Ly), indexing="ij")
    kx, ky = TWO_PI * 2 / Lx, -TWO_PI * 1 / Ly
    w = torch.exp(1j * (kx * X + ky * Y))
    ref2 = torch.tensor(Lx * Ly * (alpha + kx * kx + ky * ky) ** s, dtype=F64)
    torch.testing.assert_close(fft.sobolev_norm(w, s, (Lx, Ly), alpha=alpha, squared=True), ref2, rtol=1e-12, atol=0)


def test_sobolev_minus_one_is_dual_norm():
    gen = torch.Generator().manual_seed(7)
    L, alpha = (1.0, 2.0), 0.3
    v = torch.randn(2, 16, 15, dtype=F64, generator=gen)
    w = fft.solve_periodic(v, L, shift=alpha)  # (alpha - Laplace)^{-1} v
    ref = (v * w).sum((-1, -2)) * (2.0 / 240)  # quadrature of <v, (alpha - Laplace)^{-1} v>
    torch.testing.assert_close(fft.sobolev_norm(v, -1.0, L, alpha=alpha, squared=True), ref, rtol=1e-12, atol=0)


def test_sobolev_inner_matches_numpy_definition():
    gen = torch.Generator().manual_seed(8)
    L, s, alpha = (1.5, 2.5), 0.7, 0.4
    u = torch.randn(3, 6, 7, dtype=F64, generator=gen)
    v = torch.randn(3, 6, 7, dtype=F64, generator=gen)
    N, V = 42, 1.5 * 2.5
    KX, KY = np.meshgrid(np.fft.fftfreq(6, 1.5 / 6) * 2 * np.pi, np.fft.fftfreq(7, 2.5 / 7) * 2 * np.pi, indexing="ij")
    wts = (alpha + KX ** 2 + KY ** 2) ** s
    cu, cv = np.fft.fft2(u.numpy()) / N, np.fft.fft2(v.numpy()) / N
    ref = V * (wts * np.conj(cu) * cv).sum((-2, -1))
    out = fft.sobolev_inner(u, v, s, L, alpha=alpha)
    assert out.dtype == F64
    np.testing.assert_allclose(out.numpy(), ref.real, rtol=1e-12)
    uc, vc = torch.complex(u, v), torch.complex(v, -u)
    cu, cv = np.fft.fft2(uc.numpy()) / N, np.fft.fft2(vc.numpy()) / N
    ref = V * (wts * np.conj(cu) * cv).sum((-2, -1))
    np.testing.assert_allclose(fft.sobolev_inner(uc, vc, s, L, alpha=alpha).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("s", [pytest.param(-0.5, id="s-0.5"), pytest.param(1.0, id="s1")])
def test_sobolev_gradcheck(s):
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(2, 4, 5, dtype=F64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fft.sobolev_norm(t, s, (1.0, 2.0), alpha=0.5), (z,))
    assert torch.autograd.gradcheck(lambda t: fft.sobolev_norm(t, s, (1.0, 2.0), squared=True), (z,))
    zc = torch.randn(3, 4, dtype=torch.complex128, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fft.sobolev_norm(t, s, (1.0, 2.0), squared=True), (zc,))


# ============================================================================== bad input
_Z2 = torch.zeros(4, 4, dtype=F64)


@pytest.mark.parametrize("call, exc, match", [
    pytest.param(lambda: fft.solve_stencil(_Z2, (1.0, 1.0), "robin"), ValueError, "robin", id="bad-bc"),
    pytest.param(lambda: fft.solve_stencil(_Z2, (1.0, 1.0), ("dirichlet", "periodc")), ValueError, "periodc",
                 id="bad-bc-per-axis"),
    pytest.param(lambda: fft.solve_stencil(_Z2, (1.0, 1.0), ("dirichlet",)), ValueError, "bc has 1", id="bc-count"),
    pytest.param(lambda: fft.solve_stencil(_Z2, (1.0, 1.0), [("dirichlet", "neumann"), "periodic"]), ValueError,
                 "both sides", id="mixed-sides"),
    pytest.param(lambda: fft.solve_stencil(_Z2, (1.0, 1.0), "dirichlet", shift=-1.0), ValueError, "shift",
                 id="neg-shift-stencil"),
    pytest.param(lambda: fft.solve_dirichlet(_Z2, (1.0, 1.0), shift=-0.1), ValueError, "indefinite",
                 id="neg-shift-dirichlet"),
    pytest.param(lambda: fft.solve_periodic(_Z2, (1.0, 1.0), shift=-2.0), ValueError, "shift",
                 id="neg-shift-periodic"),
    pytest.param(lambda: fft.solve_periodic(_Z2, (1.0, 1.0), symbol="fd"), ValueError, "symbol", id="bad-symbol"),
    pytest.param(lambda: fft.sobolev_norm(_Z2, -1.0, (1.0, 1.0), alpha=0.0), ValueError, "alpha", id="alpha0-neg-s"),
    pytest.param(lambda: fft.sobolev_norm(_Z2, 1.0, (1.0, 1.0), alpha=-1.0), ValueError, "alpha", id="alpha-negative"),
    pytest.param(lambda: fft.sobolev_inner(_Z2, torch.zeros(4, 5), 0.0, (1.0, 1.0)), ValueError, "grids",
                 id="inner-grids"),
    pytest.param(lambda: fft.solve_stencil(torch.zeros(4), (1.0, 1.0), "dirichlet"), ValueError, "dimensions",
                 id="too-few-dims-stencil"),
    pytest.param(lambda: fft.sobolev_norm(torch.zeros(4), 0.0, (1.0, 1.0, 1.0)), ValueError, "dimensions",
                 id="too-few-dims-sobolev"),
    pytest.param(lambda: fft.derivative(torch.zeros(5), 1, (1.0, 1.0)), ValueError, "dimensions",
                 id="too-few-dims-derivative"),
    pytest.param(lambda: fft.solve_stencil(_Z2, 1.0, "dirichlet"), ValueError, "ndim", id="scalar-spacing-no-ndim"),
    pytest.param(lambda: fft.derivative(_Z2, 1, TWO_PI), ValueError, "ndim", id="scalar-length-no-ndim"),
    pytest.param(lambda: fft.derivative(_Z2, 1, (1.0, 0.0)), ValueError, "positive", id="zero-length"),
    pytest.param(lambda: fft.derivative(_Z2, 1, (1.0, 1.0), ndim=3), ValueError, "ndim", id="lengths-vs-ndim"),
    pytest.param(lambda: fft.derivative(_Z2, -1, (1.0, 1.0)), ValueError, "order", id="negative-order"),
    pytest.param(lambda: fft.derivative(_Z2, (1, 2, 3), (1.0, 1.0)), ValueError, "order", id="order-count"),
    pytest.param(lambda: fft.derivative(_Z2, 1.5, (1.0, 1.0)), TypeError, "order", id="float-order"),
    pytest.param(lambda: fft.derivative(_Z2, 1, (1.0, 1.0), axes=(2,)), ValueError, "axis", id="bad-axis"),
    pytest.param(lambda: fft.dealias(_Z2, 0.0, ndim=2), ValueError, "rule", id="rule-0"),
    pytest.param(lambda: fft.dealias(_Z2, 1.5, ndim=2), ValueError, "rule", id="rule-big"),
    pytest.param(lambda: fft.dealias(_Z2), ValueError, "ndim", id="dealias-no-ndim"),
    pytest.param(lambda: fft.dst1(_Z2, norm="unitary"), ValueError, "unitary", id="bad-norm"),
    pytest.param(lambda: fft.dct2(_Z2, axes=2), ValueError, "out of range", id="bad-transform-axis"),
    pytest.param(lambda: fft.wavenumbers(0), ValueError, "n must", id="n0"),
    pytest.param(lambda: fft.wavenumbers(8, -1.0), ValueError, "length", id="negative-length"),
    pytest.param(lambda: fft.wavenumbers(8, dtype=torch.complex64), TypeError, "dtype", id="complex-dtype"),
    pytest.param(lambda: fft.derivative(_Z2, 1, ("a", "b")), TypeError, "lengths", id="string-lengths"),
    pytest.param(lambda: fft.solve_periodic(_Z2.half(), (1.0, 1.0)), TypeError, "float16", id="half"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_integer_input_is_promoted():
    u = torch.arange(8).reshape(2, 4)
    out = fft.solve_periodic(u, (1.0,))
    assert out.dtype == F64


# ============================================================================== docs and devices
def test_docstring_examples_run():
    result = doctest.testmod(fft, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(10)
    f = torch.randn(2, 16, 12, 10, dtype=F64, generator=gen)
    bc = ("dirichlet", "periodic", "neumann")
    ref = fft.solve_stencil(f, (0.1, 0.2, 0.3), bc, shift=0.5)
    out = fft.solve_stencil(f.cuda(), (0.1, 0.2, 0.3), bc, shift=0.5)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, atol=1e-12, rtol=1e-10)
    L = (1.0, 2.0, 3.0)
    torch.testing.assert_close(fft.derivative(f.cuda(), (1, 0, 2), L).cpu(), fft.derivative(f, (1, 0, 2), L))
    torch.testing.assert_close(fft.sobolev_norm(f.cuda(), -1.0, L).cpu(), fft.sobolev_norm(f, -1.0, L))
    torch.testing.assert_close(fft.dealias(f.float().cuda(), ndim=3).cpu(), fft.dealias(f.float(), ndim=3))
    torch.testing.assert_close(fft.dct2(f.cuda(), (-1, -2), norm="ortho").cpu(), fft.dct2(f, (-1, -2), norm="ortho"))


def test_one_boundary_condition_parser_for_stencils_and_fast_solves():
    # the fast solves read bc with kernels.stencil.parse_bc (the operators' parser), then require equal sides
    import scipy.sparse.linalg as spla

    from krylon.operators import Laplacian

    f = torch.randn(6, 5, dtype=F64, generator=torch.Generator().manual_seed(12))
    h = (1.0, 0.5)
    ref = spla.spsolve(_assemble((6, 5), h, ("neumann", "dirichlet")).tocsc(), f.reshape(-1).numpy()).reshape(6, 5)
    for bc in (("neumann", "dirichlet"), [("neumann", "neumann"), ("dirichlet", "dirichlet")]):
        np.testing.assert_allclose(fft.solve_stencil(f, h, bc).numpy(), ref, rtol=1e-10, atol=1e-12)
    for bad, exc in (("robin", ValueError), (5, TypeError), (("dirichlet",), ValueError)):
        with pytest.raises(exc) as from_fft:
            fft.solve_stencil(f, h, bad)
        with pytest.raises(exc) as from_operator:
            Laplacian((6, 5), spacing=h, bc=bad)
        assert str(from_fft.value) == str(from_operator.value)


def test_the_package_reexports_every_public_name_of_its_modules():
    from krylon.kernels.fft import sobolev, solves, transforms

    assert sorted(fft.__all__) == sorted(transforms.__all__ + solves.__all__ + sobolev.__all__)
    assert all(callable(getattr(fft, name)) for name in fft.__all__)

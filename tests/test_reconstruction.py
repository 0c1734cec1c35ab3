"""Classical reconstructions and metrics: PSNR vs a numpy formula, SSIM vs skimage, baselines vs direct solves."""

import math

import numpy as np
import pytest
import torch

from krylon.datasets.phantoms import random_phantoms, shepp_logan
from krylon.operators import MRI, Radon, aslinearoperator, dottest
from krylon.operators.imaging import ImageGradient, add_noise, coil_maps, mri_mask
from krylon.solvers.metrics import psnr, ssim
from krylon.solvers.reconstruction import cg_sense, fbp, normal_norm, tv_reconstruction, zero_filled

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images():
    return torch.cat([shepp_logan(32)[None], random_phantoms(2, 32, seed=7)])


@pytest.fixture(scope="module")
def mri_problem(images):
    A = MRI(mri_mask((32, 32), kind="uniform1d", acceleration=4, center_fraction=0.08, seed=0, dtype=torch.float64),
            coil_maps((32, 32), 4, dtype=torch.complex128))
    x = images.to(torch.complex128)
    return A, x, A.matvec(x)


# ------------------------------------------------------------------------------------------- metrics
def test_psnr_matches_numpy_formula(images):
    ref = images.numpy() * 3.0  # any scale: both images are divided by the reference's maximum
    noisy = ref + 0.05 * np.random.default_rng(0).standard_normal(ref.shape)
    got = psnr(torch.from_numpy(noisy), torch.from_numpy(ref)).numpy()
    for k in range(len(ref)):
        s = np.abs(ref[k]).max()
        mse = np.mean((np.abs(noisy[k]) / s - np.abs(ref[k]) / s) ** 2)
        assert got[k] == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-12)
    assert psnr(torch.from_numpy(ref), torch.from_numpy(ref)).isinf().all()


def test_metrics_use_magnitude_of_complex_images(images):
    ref = images[0]
    x = (ref + 0.03 * torch.randn(ref.shape, generator=gen(), dtype=torch.float64)).abs()
    phase = torch.exp(1j * torch.linspace(0, 3, 32, dtype=torch.float64))[None, :]
    assert float(psnr(x * phase, ref * phase)) == pytest.approx(float(psnr(x, ref)), rel=1e-12)
    assert float(ssim(x * phase, ref)) == pytest.approx(float(ssim(x, ref)), rel=1e-12)


def test_ssim_matches_skimage(images):
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    ref = images.numpy()
    for k, noise in enumerate((0.02, 0.1, 0.3)):
        x = np.clip(ref[k] + noise * rng.standard_normal(ref[k].shape), 0, None)
        s = np.abs(ref[k]).max()
        expect = skm.structural_similarity(x / s, ref[k] / s, data_range=1.0)
        assert float(ssim(torch.from_numpy(x), torch.from_numpy(ref[k]))) == pytest.approx(expect, abs=1e-10)
    # batched: one value per image, each as skimage computes it
    xs = torch.from_numpy(ref + 0.05 * rng.standard_normal(ref.shape))
    got = ssim(xs, torch.from_numpy(ref))
    assert got.shape == (3,)
    for k in range(3):
        s = np.abs(ref[k]).max()
        assert float(got[k]) == pytest.approx(skm.structural_similarity(np.abs(xs[k].numpy()) / s, ref[k] / s, data_range=1.0), abs=1e-10)


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="blank"):
        psnr(torch.ones(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="sizes"):
        ssim(torch.ones(8, 8), torch.ones(8, 9))
    with pytest.raises(ValueError, match="window"):
        ssim(torch.ones(5, 5), torch.ones(5, 5))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.ones(9, 9), torch.ones(9, 9), win_size=4)
    with pytest.raises(ValueError, match="non-finite"):
        psnr(torch.full((8, 8), float("nan")), torch.ones(8, 8))
    with pytest.raises(ValueError, match="broadcast"):
        psnr(torch.ones(2, 8, 8), torch.ones(3, 8, 8))


# ------------------------------------------------------------------------------------------- operators for TV
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
def test_image_gradient_dottest_and_values(dtype):
    D = ImageGradient((6, 7))
    assert dottest(D, batch=(2,), dtype=dtype, generator=gen()) < 1e-13
    x = torch.randn(6, 7, dtype=torch.float64, generator=gen(1))
    g = D.matvec(x).numpy()
    np.testing.assert_allclose(g[0, :-1], np.diff(x.numpy(), axis=0))
    np.testing.assert_allclose(g[1, :, :-1], np.diff(x.numpy(), axis=1))
    assert (g[0, -1] == 0).all() and (g[1, :, -1] == 0).all()


def test_normal_norm_against_dense_svd():
    M = torch.randn(12, 9, dtype=torch.float64, generator=gen(2))
    A = aslinearoperator(M)
    assert normal_norm(A, iters=200) == pytest.approx(float(torch.linalg.matrix_norm(M, ord=2)) ** 2, rel=1e-6)
    R = Radon((16, 16), angles=torch.linspace(0, math.pi, 5)[:-1], dtype=torch.float64)
    assert normal_norm(R, iters=300) == pytest.approx(float(torch.linalg.matrix_norm(R.to_dense(), ord=2)) ** 2, rel=1e-4)


# ------------------------------------------------------------------------------------------- baselines
def test_zero_filled_is_adjoint(mri_problem):
    A, x, y = mri_problem
    torch.testing.assert_close(zero_filled(A, y), A.rmatvec(y))


def test_cg_sense_matches_direct_tikhonov_solve():
    A = MRI(mri_mask((12, 12), acceleration=2, seed=1, dtype=torch.float64), coil_maps((12, 12), 3, dtype=torch.complex128))
    x = torch.randn(2, 12, 12, dtype=torch.complex128, generator=gen(3))
    y = add_noise(A.matvec(x), 0.1, generator=gen(4))
    lam = 0.05
    Ad = A.to_dense().numpy()
    L = np.linalg.norm(Ad, 2) ** 2
    got = cg_sense(A, y, lam=lam, maxiter=500, rtol=1e-12, L=L)
    for k in range(2):
        ref = np.linalg.solve(Ad.conj().T @ Ad + lam * L * np.eye(144), Ad.conj().T @ y[k].numpy().ravel())
        np.testing.assert_allclose(got[k].numpy().ravel(), ref, atol=1e-6)


def test_real_constraint_matches_direct_real_solves():
    """real=True: the least-squares problem over real images, (Re(A^H A) + lam L I) x = Re(A^H y), against a dense
    numpy solve; zero-filled takes Re(A^H y); TV over real images decreases its real-restricted objective."""
    A = MRI(mri_mask((12, 12), acceleration=2, seed=1, dtype=torch.float64), coil_maps((12, 12), 3, dtype=torch.complex128))
    x = torch.rand(2, 12, 12, dtype=torch.float64, generator=gen(3))
    y = add_noise(A.matvec(x.to(torch.complex128)), 0.1, generator=gen(4))
    lam = 0.05
    Ad = A.to_dense().numpy()
    L = np.linalg.norm(Ad, 2) ** 2
    N, b = (Ad.conj().T @ Ad).real, (y.reshape(2, -1).numpy() @ Ad.conj()).real
    got = cg_sense(A, y, lam=lam, maxiter=500, rtol=1e-12, L=L, real=True)
    assert not got.is_complex()
    ref = np.linalg.solve(N + lam * L * np.eye(144), b.T).T
    np.testing.assert_allclose(got.reshape(2, -1).numpy(), ref, atol=1e-6)
    complex_sol = cg_sense(A, y, lam=lam, maxiter=500, rtol=1e-12, L=L)
    assert float((complex_sol.imag ** 2).sum()) > 1e-6  # the constraint is not a no-op
    zf = zero_filled(A, y, real=True)
    assert not zf.is_complex()
    np.testing.assert_allclose(zf.reshape(2, -1).numpy(), b, atol=1e-12)
    tv = tv_reconstruction(A, y, lam=1e-3, iters=30, L=L, real=True)
    assert not tv.is_complex() and tv.shape == (2, 12, 12)
    r = tv.reshape(2, -1).numpy() @ Ad.T - y.reshape(2, -1).numpy()
    r0 = cg_sense(A, y, lam=1e-3, maxiter=20, L=L, real=True).reshape(2, -1).numpy() @ Ad.T - y.reshape(2, -1).numpy()
    assert np.linalg.norm(r) < 2 * np.linalg.norm(r0) + 1e-9


def test_cg_sense_reports_convergence(mri_problem):
    A, x, y = mri_problem
    short = cg_sense(A, y, lam=0.0, maxiter=2, rtol=1e-10, return_result=True)
    assert not bool(short.converged.any()) and bool((short.iterations == 2).all()) and short.x.shape == x.shape
    full = cg_sense(A, y, lam=1e-2, maxiter=200, rtol=1e-5, return_result=True)
    assert bool(full.converged.all())
    torch.testing.assert_close(full.x, cg_sense(A, y, lam=1e-2, maxiter=200, rtol=1e-5))
    with pytest.raises(TypeError, match="return_result"):
        cg_sense(A, y, return_result=1)


def test_cg_sense_beats_zero_filling(mri_problem, images):
    A, x, y = mri_problem
    zf = psnr(zero_filled(A, y), images)
    cs = psnr(cg_sense(A, y), images)
    assert bool((cs > zf + 1.0).all()), (zf, cs)
    yn = add_noise(y, 0.05, generator=gen(5), ndim=3)
    assert bool((psnr(cg_sense(A, yn), images) > psnr(zero_filled(A, yn), images)).all())


def test_tv_beats_cg_sense_on_piecewise_constant_phantoms(mri_problem, images):
    A, x, y = mri_problem
    tv = tv_reconstruction(A, y, lam=1e-3, iters=60)
    assert tv.shape == x.shape
    assert bool((psnr(tv, images) > psnr(cg_sense(A, y), images) + 1.5).all())
    assert bool((ssim(tv, images) > 0.8).all())


def test_tv_solves_its_problem_small():
    # ADMM's limit is the TV-regularised minimiser: compare with scipy's L-BFGS on the same objective with the
    # isotropic TV smoothed by eps (dense matrices, independent of the ADMM code)
    from scipy.optimize import minimize

    R = Radon((12, 12), angles=torch.linspace(0, math.pi, 7)[:-1], dtype=torch.float64)
    x = shepp_logan(12)
    s = R.matvec(x)
    lam, L, eps = 1e-3, normal_norm(R), 1e-4
    Rd, Dd, sd = R.to_dense().numpy(), ImageGradient((12, 12)).to_dense().numpy(), s.numpy().ravel()
    w = lam * L

    def f(v):
        r, g = Rd @ v - sd, (Dd @ v).reshape(2, -1)
        m = np.sqrt((g ** 2).sum(0) + eps ** 2)
        return 0.5 * r @ r + w * m.sum(), Rd.T @ r + w * Dd.T @ (g / m).ravel()

    ref = minimize(f, np.zeros(144), jac=True, method="L-BFGS-B", options=dict(maxiter=20000, ftol=1e-15, gtol=1e-10)).x
    xt = tv_reconstruction(R, s, lam=lam, iters=150, cg_iters=8).numpy().ravel()
    assert f(xt)[0] <= f(ref)[0] * (1 + 1e-4)
    assert np.linalg.norm(xt - ref) < 0.02 * np.linalg.norm(ref)


def test_ct_baselines(images):
    x = images.to(torch.float32)
    for n_views, span in ((30, math.pi), (8, math.pi), (30, 2 * math.pi / 3)):
        R = Radon((32, 32), angles=torch.linspace(0, span, n_views + 1)[:-1])
        s = R.matvec(x)
        f = fbp(R, s, arc=span if span < math.pi else None)
        c = cg_sense(R, s)
        assert f.shape == c.shape == x.shape
        assert bool((psnr(c, images) > psnr(f, images) - 0.5).all()), n_views
    R = Radon((32, 32), angles=torch.linspace(0, math.pi, 31)[:-1])
    assert bool((psnr(fbp(R, R.matvec(x)), images) > 20).all())


def test_baselines_bad_input(mri_problem):
    A, x, y = mri_problem
    with pytest.raises(TypeError, match="Radon"):
        fbp(A, y)
    with pytest.raises(ValueError, match="non-finite"):
        cg_sense(A, torch.full_like(y, float("nan")))
    with pytest.raises(ValueError, match="lam"):
        tv_reconstruction(A, y, lam=-1.0)
    with pytest.raises(TypeError):
        zero_filled(A.matvec, y)
    with pytest.raises(ValueError, match="field shape"):
        cg_sense(A, y[..., :-1])


def test_docstring_examples_run():
    import doctest

    from krylon.solvers import metrics, reconstruction

    for mod in (metrics, reconstruction):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0


def test_save_comparison_one_panel_per_image_complex_accepted(tmp_path):
    """save_comparison: truth + each reconstruction (+ the error panel) side by side; complex images are shown
    as magnitudes."""
    import matplotlib.image as mpimg

    from krylon.solvers.metrics import save_comparison

    truth = torch.rand(16, 16, dtype=torch.float64)
    recs = {"a": truth.to(torch.complex128) * 1j, "b": truth + 0.01}
    save_comparison(tmp_path / "c.png", truth, recs, error="|b - truth|", title="t")
    assert mpimg.imread(tmp_path / "c.png").shape[:2] == (280, 1040)  # 4 panels of 2.6 x 2.8 in at 100 dpi
    save_comparison(tmp_path / "d.png", truth, {"b": recs["b"]}, magnitude=False, panel_width=3.0)
    assert mpimg.imread(tmp_path / "d.png").shape[:2] == (280, 600)  # 2 panels of 3.0 in

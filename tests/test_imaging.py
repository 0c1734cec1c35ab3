"""MRI and Radon operators against independent references: numpy FFTs, skimage's radon/iradon, dot tests."""

import math
import warnings

import numpy as np
import pytest
import torch

from krylon.operators import MRI, IdentityOperator, Radon, dottest
from krylon.operators.imaging import add_noise, coil_maps, mri_mask
from krylon.solvers import CG

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def crandn(*shape, seed=0, dtype=torch.complex128):
    return torch.randn(shape, dtype=dtype, generator=gen(seed))


# ------------------------------------------------------------------------------------------- masks, coils
def test_mask_and_coil_map_bad_input():
    with pytest.raises(ValueError, match=r"2-D: shape must be \(H, W\)"):
        mri_mask((4, 4, 4))
    with pytest.raises(ValueError, match=r"2-D: shape must be \(H, W\)"):
        coil_maps((4, 4, 4))
    with pytest.raises(TypeError, match="complex"):
        coil_maps((4, 4), dtype="float32")
    torch.testing.assert_close(coil_maps((6, 4), 3, dtype="complex128"), coil_maps((6, 4), 3, dtype=torch.complex128))


def _reference_mri(mask, maps, x):
    """``M F (S x)`` with numpy's FFT and explicit centring shifts."""
    xs = x.numpy() if maps is None else x.numpy()[..., None, :, :] * maps.numpy()
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(xs, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return torch.from_numpy(k * mask.numpy())


@pytest.mark.parametrize("coils", [None, 3])
def test_mri_follows_its_buffers_after_load_and_in_place_edits(coils):
    m1, m2 = mri_mask((16, 16), seed=1).double(), mri_mask((16, 16), seed=2).double()
    S1 = None if coils is None else coil_maps((16, 16), coils, dtype=torch.complex128)
    S2 = None if coils is None else torch.flip(S1, (0,))
    A1, A2 = MRI(m1, S1), MRI(m2, S2)
    x = crandn(2, 16, 16)
    A2.matvec(x)  # applied once before the load: nothing derived from the old buffers may survive it
    A2.load_state_dict(A1.state_dict())
    torch.testing.assert_close(A2.matvec(x), _reference_mri(m1, S1, x), rtol=1e-12, atol=1e-12)
    y = crandn(2, *A2.shape_out, seed=1)
    torch.testing.assert_close(A2.rmatvec(y), A1.rmatvec(y), rtol=1e-12, atol=1e-12)
    A2.mask.zero_()
    assert float(A2.matvec(x).abs().max()) == 0 and float(A2.rmatvec(y).abs().max()) == 0
    A2.mask.copy_(m2)
    if coils is not None:
        A2._maps.mul_(2)  # in place on the stored maps
        torch.testing.assert_close(A2.matvec(x), _reference_mri(m2, 2 * S1, x), rtol=1e-12, atol=1e-12)
    A2.to(torch.float32)  # the real-stored mask and maps: complex64 working precision
    ref = _reference_mri(m2, None if coils is None else 2 * S1, x).to(torch.complex64)
    torch.testing.assert_close(A2.matvec(x.to(torch.complex64)), ref, rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize("kind", ["uniform1d", "gaussian1d", "gaussian2d", "equispaced"])
@pytest.mark.parametrize("R", [4, 8])
def test_mask_acceleration_and_centre(kind, R):
    H, W, cf = 64, 48, 0.08
    m = mri_mask((H, W), kind=kind, acceleration=R, center_fraction=cf, seed=3).numpy()
    assert m.shape == (H, W) and set(np.unique(m)) <= {0.0, 1.0}
    nc = int(round(W * cf))
    centre = slice(W // 2 - nc // 2, W // 2 - nc // 2 + nc)
    if kind == "gaussian2d":
        assert m.sum() == round(H * W / R)
        rows = slice(H // 2 - round(H * cf) // 2, H // 2 - round(H * cf) // 2 + round(H * cf))
        assert m[rows, centre].all()
        assert not (m == m[:1]).all()  # a genuinely 2-D pattern
    else:
        assert (m == m[:1]).all()  # whole columns: one phase-encode line each
        assert m[0].sum() == round(W / R)
        assert m[:, centre].all()
    m2 = mri_mask((H, W), kind=kind, acceleration=R, center_fraction=cf, seed=3).numpy()
    np.testing.assert_array_equal(m, m2)


def test_mask_seed_changes_random_lines():
    a = mri_mask((64, 64), kind="uniform1d", seed=0)
    b = mri_mask((64, 64), kind="uniform1d", seed=1)
    assert not torch.equal(a, b)


def test_gaussian_masks_favour_low_frequencies():
    m = sum(mri_mask((64, 128), kind="gaussian1d", acceleration=4, center_fraction=0.04, seed=s)[0] for s in range(40))
    inner = m[64 - 16:64 + 16].mean()
    outer = torch.cat([m[:16], m[-16:]]).mean()
    assert inner > 3 * outer


@pytest.mark.parametrize("kwargs, err", [
    pytest.param(dict(kind="radial"), ValueError, id="kind"),
    pytest.param(dict(acceleration=0.5), ValueError, id="R<1"),
    pytest.param(dict(center_fraction=0.5), ValueError, id="centre>1/R"),
    pytest.param(dict(seed=-1), ValueError, id="seed"),
])
def test_mask_bad_input(kwargs, err):
    with pytest.raises(err):
        mri_mask((32, 32), **kwargs)


@pytest.mark.parametrize("nc", [1, 4, 8])
def test_coil_maps_normalised_and_smooth(nc):
    S = coil_maps((40, 36), n_coils=nc, dtype=torch.complex128)
    assert S.shape == (nc, 40, 36) and S.dtype == torch.complex128
    np.testing.assert_allclose((S.abs() ** 2).sum(0).numpy(), 1.0, rtol=1e-12)
    # smooth: neighbouring pixels differ by a few percent of the map's scale at most
    assert float((S[:, 1:] - S[:, :-1]).abs().max()) < 0.1
    if nc > 1:
        assert not torch.allclose(S[0], S[1])


# ------------------------------------------------------------------------------------------- MRI
def numpy_mri(x, mask, maps):
    """A = M F S with numpy: centred orthonormal FFT."""
    xs = x[..., None, :, :] * maps if maps is not None else x
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(xs, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return k * mask


@pytest.mark.parametrize("nc", [None, 1, 4])
@pytest.mark.parametrize("shape", [(16, 16), (15, 12)])
def test_mri_matches_numpy_fft(nc, shape):
    mask = mri_mask(shape, kind="uniform1d", acceleration=2, center_fraction=0.1, seed=0, dtype=torch.float64)
    S = None if nc is None else coil_maps(shape, n_coils=nc, dtype=torch.complex128)
    A = MRI(mask, S)
    x = crandn(3, *shape)
    y = A.matvec(x)
    ref = numpy_mri(x.numpy(), mask.numpy(), None if S is None else S.numpy())
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)
    # adjoint against numpy: sum_c conj(S_c) F^-1 (M y_c)
    xa = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(ref * mask.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    if S is not None:
        xa = (xa * S.numpy().conj()).sum(-3)
    np.testing.assert_allclose(A.rmatvec(y).numpy(), xa, atol=1e-12)


def test_mri_fully_sampled_single_coil_is_unitary():
    A = MRI(torch.ones(12, 10, dtype=torch.float64))
    x = crandn(2, 12, 10)
    np.testing.assert_allclose(A.rmatvec(A.matvec(x)).numpy(), x.numpy(), atol=1e-12)
    # with normalised coil maps and a full mask, A^H A = sum |S|^2 = I too
    B = MRI(torch.ones(12, 10, dtype=torch.float64), coil_maps((12, 10), 5, dtype=torch.complex128))
    np.testing.assert_allclose(B.rmatvec(B.matvec(x)).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("nc", [None, 4], ids=["single", "multi"])
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)], ids=["nobatch", "b3", "b2x2"])
@pytest.mark.parametrize("kind", ["uniform1d", "gaussian2d"])
def test_mri_dottest(nc, batch, kind):
    mask = mri_mask((16, 20), kind=kind, acceleration=4, seed=1, dtype=torch.float64)
    A = MRI(mask, None if nc is None else coil_maps((16, 20), nc, dtype=torch.complex128))
    assert dottest(A, batch=batch, generator=gen(2)) < 1e-13
    A32 = MRI(mask.float(), None if nc is None else coil_maps((16, 20), nc))
    assert A32.dtype == torch.complex64
    assert dottest(A32, batch=batch, generator=gen(2)) < 1e-5


def test_mri_real_image_accepted_as_complex():
    A = MRI(mri_mask((16, 16), seed=0, dtype=torch.float64), coil_maps((16, 16), 2, dtype=torch.complex128))
    x = torch.randn(16, 16, dtype=torch.float64, generator=gen())
    np.testing.assert_allclose(A.matvec(x).numpy(), A.matvec(x.to(torch.complex128)).numpy())


def test_mri_normal_operator_is_cg_ready():
    A = MRI(mri_mask((16, 16), acceleration=2, seed=0, dtype=torch.float64), coil_maps((16, 16), 4, dtype=torch.complex128))
    N = A.H @ A
    assert N.is_symmetric and N.is_positive_semidefinite
    # Tikhonov-damped normal equations (smooth maps on 16x16 leave A^H A near-singular): CG with strict tag
    # checking accepts the operator and matches a dense solve
    lam = 1e-2
    K = N + lam * IdentityOperator((16, 16))
    assert K.is_positive_definite
    xt = crandn(16, 16, seed=4)
    y = A.matvec(xt)
    res = CG(rtol=1e-12, maxiter=300, strict=True).solve(K, A.rmatvec(y))
    assert bool(res.converged)
    Ad = A.to_dense().numpy()
    ref = np.linalg.solve(Ad.conj().T @ Ad + lam * np.eye(256), Ad.conj().T @ y.numpy().ravel())
    np.testing.assert_allclose(res.x.numpy().ravel(), ref, atol=1e-9)


def test_mri_to_device_and_precision():
    A = MRI(mri_mask((8, 8), seed=0), coil_maps((8, 8), 2)).to(torch.float64)
    assert A.dtype == torch.complex128 and A.coil_maps.dtype == torch.complex128
    np.testing.assert_allclose((A.coil_maps.abs() ** 2).sum(0).numpy(), 1.0, rtol=1e-6)
    assert A.matvec(crandn(8, 8)).dtype == torch.complex128
    with warnings.catch_warnings():  # torch's note that complex modules are new
        warnings.simplefilter("ignore", UserWarning)
        B = MRI(mri_mask((8, 8), seed=0), coil_maps((8, 8), 2)).to(torch.complex128)  # a complex dtype names the precision
    assert B.dtype == torch.complex128 and not B.mask.is_complex()
    torch.testing.assert_close(B.matvec(crandn(8, 8)), A.matvec(crandn(8, 8)))
    C = MRI(mri_mask((8, 8), seed=0).bool(), coil_maps((8, 8), 2))  # a boolean mask is taken as 0/1
    torch.testing.assert_close(C.matvec(crandn(8, 8).to(torch.complex64)), A.to(torch.float32).matvec(crandn(8, 8).to(torch.complex64)))


@pytest.mark.parametrize("make, err, match", [
    pytest.param(lambda: MRI(torch.ones(8, 8), coil_maps((8, 9), 2)), ValueError, "coil_maps", id="maps-shape"),
    pytest.param(lambda: MRI(torch.ones(8, 8), coil_maps((8, 8), 2).abs()), TypeError, "complex", id="maps-real"),
    pytest.param(lambda: MRI(torch.ones(2, 8, 8)), ValueError, "mask", id="mask-3d"),
    pytest.param(lambda: MRI(torch.full((8, 8), 0.5)), ValueError, "0", id="mask-values"),
    pytest.param(lambda: MRI(torch.ones(8, 8), dtype=torch.float32), TypeError, "complex", id="real-dtype"),
])
def test_mri_bad_construction(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_mri_bad_application():
    A = MRI(torch.ones(8, 8), coil_maps((8, 8), 3))
    with pytest.raises(ValueError, match="field shape"):
        A.matvec(torch.zeros(8, 9, dtype=torch.complex64))
    with pytest.raises(ValueError, match="field shape"):
        A.rmatvec(torch.zeros(2, 8, 8, dtype=torch.complex64))  # 2 coils given, 3 expected
    with pytest.raises(TypeError, match="complex"):
        A.rmatvec(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="complex"):
        A.H.matvec(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="dtype"):
        A.matvec(torch.zeros(8, 8, dtype=torch.complex128))


# ------------------------------------------------------------------------------------------- Radon
skimage_transform = pytest.importorskip("skimage.transform")


@pytest.fixture(scope="module")
def shepp64():
    from skimage.data import shepp_logan_phantom
    return skimage_transform.resize(shepp_logan_phantom(), (64, 64), anti_aliasing=True)


@pytest.mark.parametrize("circle", [False, True])
@pytest.mark.parametrize("angles_deg", [np.arange(0, 180, 22.5), np.array([0.0, 17.3, 45.0, 90.0, 133.7, 200.0])],
                         ids=["sparse8", "irregular"])
def test_radon_matches_skimage(shepp64, circle, angles_deg):
    img = shepp64
    if circle:  # skimage's circle=True assumes the image vanishes outside the inscribed circle
        yy, xx = np.mgrid[:64, :64]
        img = img * (((yy - 32) ** 2 + (xx - 32) ** 2) <= 32 ** 2)
    ref = skimage_transform.radon(img, theta=angles_deg, circle=circle)
    R = Radon((64, 64), angles=np.deg2rad(angles_deg), circle=circle, dtype=torch.float64)
    s = R.matvec(torch.from_numpy(img)).numpy()
    assert s.shape == (len(angles_deg), ref.shape[0])
    np.testing.assert_allclose(s, ref.T, atol=1e-10 * np.abs(ref).max())


def test_radon_nonsquare_matches_skimage():
    rng = np.random.default_rng(0)
    img = rng.random((20, 13))
    th = np.array([0.0, 30.0, 77.0, 150.0])
    ref = skimage_transform.radon(img, theta=th, circle=False)
    R = Radon((20, 13), angles=np.deg2rad(th), dtype=torch.float64)
    np.testing.assert_allclose(R.matvec(torch.from_numpy(img)).numpy(), ref.T, atol=1e-10 * np.abs(ref).max())


RADON_CASES = [
    pytest.param((16, 16), torch.linspace(0, math.pi, 9)[:-1], False, id="sparse-view"),
    pytest.param((16, 16), torch.linspace(0, 2 * math.pi / 3, 31)[:-1], False, id="limited-angle"),
    pytest.param((12, 17), torch.tensor([0.1, 1.0, 2.5]), False, id="nonsquare"),
    pytest.param((16, 16), torch.linspace(0, math.pi, 21)[:-1], True, id="circle"),
]


@pytest.mark.parametrize("shape, angles, circle", RADON_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "complex"])
@pytest.mark.parametrize("batch", [(), (3,)], ids=["nobatch", "b3"])
def test_radon_dottest(shape, angles, circle, dtype, batch):
    R = Radon(shape, angles=angles, circle=circle, dtype=torch.float64)
    assert dottest(R, batch=batch, dtype=dtype, generator=gen(5)) < 1e-13


def test_radon_adjoint_is_exact_transpose():
    R = Radon((10, 9), angles=torch.tensor([0.0, 0.7, 2.0]), dtype=torch.float64)
    D = R.to_dense()
    DT = R.H.to_dense()
    np.testing.assert_allclose(DT.numpy(), D.numpy().T, atol=1e-15)


def test_radon_float32_and_complex_parts():
    R = Radon((16, 16), angles=torch.linspace(0, math.pi, 7)[:-1])
    assert R.dtype == torch.float32
    assert dottest(R, generator=gen()) < 1e-5
    x = torch.randn(2, 16, 16, generator=gen())
    z = torch.complex(x[0], x[1])
    s = R.matvec(z)
    torch.testing.assert_close(s.real, R.matvec(x[0]))
    torch.testing.assert_close(s.imag, R.matvec(x[1]))


def test_radon_autograd_uses_transpose():
    R = Radon((12, 12), angles=torch.linspace(0, math.pi, 6)[:-1], dtype=torch.float64)
    x = torch.randn(2, 12, 12, dtype=torch.float64, generator=gen(), requires_grad=True)
    w = torch.randn(2, *R.shape_out, dtype=torch.float64, generator=gen(1))
    (R.matvec(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, R.rmatvec(w))
    assert torch.autograd.gradcheck(lambda v: R.matvec(v), (torch.randn(1, 12, 12, dtype=torch.float64, requires_grad=True),))


def test_radon_copies_pickles_and_converts():
    import copy
    import pickle

    R = Radon((16, 16), angles=torch.linspace(0, math.pi, 5)[:-1])
    x = torch.randn(16, 16, generator=gen())
    for other in (copy.deepcopy(R), pickle.loads(pickle.dumps(R))):
        torch.testing.assert_close(other.matvec(x), R.matvec(x), rtol=0, atol=0)
    s32 = R.matvec(x)
    R.to(torch.float64)
    assert R.dtype == torch.float64
    torch.testing.assert_close(R.matvec(x.double()), s32.double(), rtol=1e-6, atol=1e-5)
    assert dottest(R, generator=gen(1)) < 1e-13


def test_fbp_reconstructs_shepp_logan(shepp64):
    th = np.arange(0, 180, 1.0)
    R = Radon((64, 64), angles=np.deg2rad(th), dtype=torch.float64)
    x = torch.from_numpy(shepp64)
    rec = R.fbp(R.matvec(x)).numpy()
    ref = skimage_transform.iradon(skimage_transform.radon(shepp64, theta=th, circle=False), theta=th, circle=False,
                                   filter_name="ramp", output_size=64)
    err = lambda a: np.sqrt(np.mean((a - shepp64) ** 2)) / shepp64.max()  # noqa: E731
    assert err(rec) < 0.05
    assert err(rec) < 1.2 * err(ref)  # as good as skimage's FBP
    # same scale as skimage's iradon (the angle weights sum to pi)
    assert abs(rec.mean() / ref.mean() - 1) < 0.05
    hann = R.fbp(R.matvec(x), filter="hann").numpy()
    assert err(hann) < 0.08


def test_angle_weights():
    R = Radon((8, 8), angles=torch.linspace(0, math.pi, 11)[:-1])
    torch.testing.assert_close(R.angle_weights(), torch.full((10,), math.pi / 10, dtype=torch.float64))
    L = Radon((8, 8), angles=torch.linspace(0, 2 * math.pi / 3, 21)[:-1])
    torch.testing.assert_close(L.angle_weights(arc=2 * math.pi / 3), torch.full((20,), 2 * math.pi / 60, dtype=torch.float64))
    # the arc may wrap through pi: views over [5 pi / 6, 3 pi / 2)
    W = Radon((8, 8), angles=5 * math.pi / 6 + torch.arange(20, dtype=torch.float64) * (2 * math.pi / 3) / 20)
    torch.testing.assert_close(W.angle_weights(arc=2 * math.pi / 3), torch.full((20,), 2 * math.pi / 60, dtype=torch.float64))


@pytest.mark.parametrize("n", [360, 361, 64])
def test_angle_weights_full_circle(n):
    """A [0, 2 pi) scan: views a and a + pi coincide modulo pi and share one direction's weight."""
    R = Radon((8, 8), angles=torch.arange(n, dtype=torch.float64) * 2 * math.pi / n)
    torch.testing.assert_close(R.angle_weights(), torch.full((n,), math.pi / n, dtype=torch.float64))


def _half_gap_weights(angles):
    """Reference weights by brute force: each view's direction (mod pi) gets half the circular distances to the
    nearest other directions on either side, shared equally by the views along it."""
    d = np.mod(np.asarray(angles, dtype=float), np.pi)
    w = np.empty(d.size)
    for i, a in enumerate(d):
        delta = np.mod(d - a, np.pi)
        delta = np.where(np.pi - delta < 1e-9, 0.0, delta)  # a view just below pi is the direction 0
        same = delta < 1e-9
        ahead, behind = delta[~same].min(), (np.pi - delta[~same]).min()
        w[i] = 0.5 * (ahead + behind) / same.sum()
    return w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_angle_weights_random_sparse_views(seed):
    rng = np.random.default_rng(seed)
    ang = rng.random(8) * 2 * np.pi
    ang = np.concatenate([ang, [ang[0], (ang[1] + np.pi) % (2 * np.pi)]])  # repeated directions, one of them a half-turn apart
    w = Radon((8, 8), angles=ang).angle_weights().numpy()
    np.testing.assert_allclose(w, _half_gap_weights(ang), rtol=1e-12, atol=1e-12)
    assert abs(w.sum() - np.pi) < 1e-12 and w.min() > 0  # no random gap mistaken for a missing wedge


def test_angle_weights_limited_angle_checks():
    R = Radon((8, 8), angles=torch.linspace(0, math.pi / 2, 10))
    assert abs(float(R.angle_weights(arc=math.pi / 2 + math.pi / 18).sum()) - (math.pi / 2 + math.pi / 18)) < 1e-12
    with pytest.raises(ValueError, match="span"):
        R.angle_weights(arc=math.pi / 4)
    with pytest.raises(ValueError, match="arc"):
        R.angle_weights(arc=4.0)
    with pytest.raises(ValueError, match="arc"):
        R.fbp(torch.zeros(R.shape_out), arc=0.0)


@pytest.mark.parametrize("n", [120, 45])
def test_fbp_full_circle_matches_iradon(shepp64, n):
    ang = np.arange(n) * 2 * np.pi / n
    R = Radon((64, 64), angles=ang, dtype=torch.float64)
    s = R.matvec(torch.from_numpy(shepp64))
    rec = R.fbp(s).numpy()
    ref = skimage_transform.iradon(s.numpy().T, theta=np.degrees(ang), circle=False, filter_name="ramp", output_size=64)
    err = lambda a: np.linalg.norm(a - shepp64) / np.linalg.norm(shepp64)  # noqa: E731
    assert err(rec) < 1.05 * err(ref) and err(rec) < 0.3
    assert abs((rec * ref).sum() / (ref * ref).sum() - 1) < 0.02  # same scale


@pytest.mark.parametrize("n, seed", [(8, 0), (16, 1), (30, 2)])
def test_fbp_random_sparse_views_vs_iradon(shepp64, n, seed):
    """Irregular views: half-gap weights keep the image's mean (they sum to pi) and do at least about as well as
    iradon's equal weights."""
    ang = np.sort(np.random.default_rng(seed).random(n)) * np.pi
    R = Radon((64, 64), angles=ang, dtype=torch.float64)
    s = R.matvec(torch.from_numpy(shepp64))
    rec = R.fbp(s).numpy()
    ref = skimage_transform.iradon(s.numpy().T, theta=np.degrees(ang), circle=False, filter_name="ramp", output_size=64)
    err = lambda a: np.linalg.norm(a - shepp64) / np.linalg.norm(shepp64)  # noqa: E731
    assert abs(rec.mean() / shepp64.mean() - 1) < 0.06
    assert err(rec) < 1.1 * err(ref)


def test_fbp_limited_angle_with_arc(shepp64):
    ang = np.arange(60) * (2 * np.pi / 3) / 60
    R = Radon((64, 64), angles=ang, dtype=torch.float64)
    s = R.matvec(torch.from_numpy(shepp64))
    err = lambda a: np.linalg.norm(a - shepp64) / np.linalg.norm(shepp64)  # noqa: E731
    ref = skimage_transform.iradon(s.numpy().T, theta=np.degrees(ang), circle=False, filter_name="ramp", output_size=64)
    rec = R.fbp(s, arc=2 * np.pi / 3).numpy()
    assert err(rec) < 1.1 * err(ref)
    assert err(R.fbp(s).numpy()) > err(rec)  # without arc= the end views fill the wedge


def test_radon_refuses_degrees():
    with pytest.raises(ValueError, match="radians.*deg2rad"):
        Radon((8, 8), angles=np.arange(0, 180, 1.0))
    Radon((8, 8), angles=[-2 * math.pi, 2 * math.pi])  # the limits themselves are radians


def test_radon_bad_input():
    with pytest.raises(ValueError, match="angles"):
        Radon((8, 8), angles=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="angles"):
        Radon((8, 8), angles=[0.0, float("nan")])
    with pytest.raises(ValueError, match="square"):
        Radon((8, 9), circle=True)
    with pytest.raises(TypeError, match="precision"):
        Radon((8, 8), dtype=torch.complex64)
    R = Radon((8, 8), angles=[0.0, 1.0])
    with pytest.raises(ValueError, match="field shape"):
        R.matvec(torch.zeros(8, 9))
    with pytest.raises(ValueError, match="field shape"):
        R.rmatvec(torch.zeros(3, R.n_detectors))
    with pytest.raises(ValueError, match="filter"):
        R.fbp(torch.zeros(R.shape_out), filter="ram")


# ------------------------------------------------------------------------------------------- noise
def test_add_noise_seeded_and_scaled():
    y = torch.zeros(4, 1000, dtype=torch.complex128)
    y[:, ::2] = 2.0  # half the entries measured (non-zero), RMS 2 over them
    n1 = add_noise(y, 0.1, generator=gen(7)) - y
    n2 = add_noise(y, 0.1, generator=gen(7)) - y
    torch.testing.assert_close(n1, n2)
    assert bool((n1[:, 1::2] == 0).all())  # unmeasured entries stay zero
    assert abs(float((n1[:, ::2].abs() ** 2).mean().sqrt()) - 0.2) < 0.01
    assert abs(float(n1[:, ::2].real.std()) - 0.2 / math.sqrt(2)) < 0.01  # complex noise: half the power in each part
    na = add_noise(y, 0.1, relative=False, generator=gen(7)) - y
    assert abs(float((na[:, ::2].abs() ** 2).mean().sqrt()) - 0.1) < 0.005
    nall = add_noise(y, 0.1, relative=False, generator=gen(7), support="all") - y
    assert abs(float((nall.abs() ** 2).mean().sqrt()) - 0.1) < 0.005
    # per item: the second item is 10x larger, so is its noise
    z = torch.ones(2, 2000, dtype=torch.float64)
    z[1] *= 10
    nz = add_noise(z, 0.05, ndim=1, generator=gen(1)) - z
    assert 8 < float(nz[1].std() / nz[0].std()) < 12
    assert torch.equal(add_noise(z, 0.0), z)


def test_add_noise_keeps_unsampled_k_space_zero():
    A = MRI(mri_mask((32, 32), acceleration=4, seed=0), coil_maps((32, 32), 4))
    y = A.matvec(crandn(2, 32, 32, dtype=torch.complex64))
    noisy = add_noise(y, 0.05, ndim=3, generator=gen(0))
    unsampled = ~A.mask.bool()
    assert bool((noisy[..., unsampled] == 0).all())  # y stays in the range of the mask
    n = noisy - y
    rms = (y.abs() ** 2).sum((-3, -2, -1)) / (y != 0).sum((-3, -2, -1))
    got = (n.abs() ** 2).sum((-3, -2, -1)) / (y != 0).sum((-3, -2, -1))
    torch.testing.assert_close(got.sqrt() / rms.sqrt(), torch.full((2,), 0.05), rtol=0.05, atol=0)
    explicit = add_noise(y, 0.05, ndim=3, generator=gen(0), support=A.mask.bool())  # the mask broadcasts
    torch.testing.assert_close(explicit, noisy)


def test_operators_say_which_measurements_get_noise():
    """``A.measured``: MRI's sampled k-space (the mask, over every coil), every bin of a CT sinogram, zeros too."""
    A = MRI(mri_mask((32, 32), acceleration=4, seed=0), coil_maps((32, 32), 4))
    assert torch.equal(A.measured.expand(A.shape_out), (A.mask == 1).expand(4, 32, 32))
    y = A.matvec(crandn(2, 32, 32, dtype=torch.complex64))
    torch.testing.assert_close(add_noise(y, 0.05, ndim=3, generator=gen(0), support=A.measured),
                               add_noise(y, 0.05, ndim=3, generator=gen(0)))
    R = Radon((16, 16), angles=torch.linspace(0, math.pi, 5)[:-1])
    s = R.matvec(torch.zeros(2, 16, 16).index_fill_(-1, torch.tensor([7, 8]), 1.0))
    assert bool((s == 0).any())  # rays that miss the object
    noisy = add_noise(s, 0.05, ndim=2, generator=gen(1), support=R.measured)
    assert bool((noisy != s).all())
    torch.testing.assert_close(noisy, add_noise(s, 0.05, ndim=2, generator=gen(1), support="all"))


def test_add_noise_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        add_noise(torch.ones(3), -1.0)
    with pytest.raises(TypeError):
        add_noise(torch.ones(3, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match="ndim"):
        add_noise(torch.ones(3), 0.1, ndim=2)
    with pytest.raises(ValueError, match="support"):
        add_noise(torch.ones(3), 0.1, support="everywhere")
    with pytest.raises(TypeError, match="support"):
        add_noise(torch.ones(3), 0.1, support=torch.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        add_noise(torch.ones(3), 0.1, support=torch.ones(2, dtype=torch.bool))


def test_docstring_examples_run():
    import doctest

    from krylon.operators import imaging

    result = doctest.testmod(imaging, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

"""Function-space losses (krylon.solvers.losses) against closed-form norms of trigonometric fields and numpy."""

import math

import numpy as np
import pytest
import torch

from krylon.solvers.losses import H1Loss, LpLoss, SobolevLoss, h1_loss, lp_loss, sobolev_loss

TWO_PI = 2 * math.pi


def grid2(n, lengths=(1.0, 1.0)):
    x = np.arange(n) * lengths[0] / n
    y = np.arange(n) * lengths[1] / n
    return np.meshgrid(x, y, indexing="ij")


def field(n, a=2, b=3, c=1, const=0.5, lengths=(1.0, 1.0)):
    """sin(2 pi a x/Lx) cos(2 pi b y/Ly) + 0.3 cos(2 pi c x/Lx) + const, and its exact norms' ingredients."""
    X, Y = grid2(n, lengths)
    Lx, Ly = lengths
    return (np.sin(TWO_PI * a * X / Lx) * np.cos(TWO_PI * b * Y / Ly) + 0.3 * np.cos(TWO_PI * c * X / Lx) + const)


def exact_sobolev2(s, alpha, a=2, b=3, c=1, const=0.5, lengths=(1.0, 1.0)):
    """||u||_{H^s}^2 of `field` in closed form: each Fourier pair's mean square times its weight, times the area."""
    Lx, Ly = lengths
    k2_ab = (TWO_PI * a / Lx) ** 2 + (TWO_PI * b / Ly) ** 2
    k2_c = (TWO_PI * c / Lx) ** 2

    def w(k2):
        return (alpha + k2) ** s

    mean_sq = w(k2_ab) * 0.25 + w(k2_c) * 0.3 ** 2 / 2 + w(0.0) * const ** 2
    return Lx * Ly * mean_sq


def t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def as_batch(u):
    return t(u)[None, None]


# ----------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("lengths", [pytest.param((1.0, 1.0), id="unit"), pytest.param((2.0, 0.5), id="box")])
def test_l2_matches_closed_form(lengths):
    u = as_batch(field(32, lengths=lengths))
    got = lp_loss(u, relative=False, lengths=lengths, squared=True)
    assert float(got) == pytest.approx(exact_sobolev2(0.0, 1.0, lengths=lengths), rel=1e-12)


@pytest.mark.parametrize("s,alpha", [pytest.param(1.0, 1.0, id="H1"), pytest.param(-1.0, 10 ** -1.5, id="H-1-SR"),
                                     pytest.param(0.5, 2.0, id="H0.5"), pytest.param(-0.7, 1.0, id="H-0.7"),
                                     pytest.param(2.0, 0.0, id="H2-alpha0")])
@pytest.mark.parametrize("lengths", [pytest.param((1.0, 1.0), id="unit"), pytest.param((2.0, 0.5), id="box")])
def test_sobolev_matches_closed_form(s, alpha, lengths):
    u = as_batch(field(32, lengths=lengths))
    got = sobolev_loss(u, s=s, alpha=alpha, lengths=lengths, squared=True)
    assert float(got) == pytest.approx(exact_sobolev2(s, alpha, lengths=lengths), rel=1e-11)


def test_h1_is_integral_of_u2_plus_grad2_from_the_exact_gradient():
    # independent of any FFT: the analytic gradient sampled on a grid; the periodic rectangle rule is exact here
    n, a, b, c = 48, 2, 3, 1
    X, Y = grid2(n)
    u = np.sin(TWO_PI * a * X) * np.cos(TWO_PI * b * Y) + 0.3 * np.cos(TWO_PI * c * X)
    ux = TWO_PI * a * np.cos(TWO_PI * a * X) * np.cos(TWO_PI * b * Y) - 0.3 * TWO_PI * c * np.sin(TWO_PI * c * X)
    uy = -TWO_PI * b * np.sin(TWO_PI * a * X) * np.sin(TWO_PI * b * Y)
    expected = np.mean(u ** 2 + ux ** 2 + uy ** 2)
    assert float(h1_loss(as_batch(u), squared=True)) == pytest.approx(expected, rel=1e-12)


def numpy_sr_norm2(u, s, alpha):
    """Spectral-Refiner's weights (alpha + 4 pi^2 |m|^2)^(s/2) on the normalised full-FFT coefficients, squared sum."""
    n = u.shape
    c = np.fft.fftn(u) / np.prod(n)
    m = np.meshgrid(*[np.fft.fftfreq(k, 1.0 / k) for k in n], indexing="ij")
    w = (alpha + 4 * np.pi ** 2 * sum(mi ** 2 for mi in m)) ** (s / 2)
    return np.sum(np.abs(w * c) ** 2)


@pytest.mark.parametrize("shape", [pytest.param((16, 12), id="even"), pytest.param((15, 9), id="odd"),
                                   pytest.param((10, 8, 6), id="3d")])
@pytest.mark.parametrize("s", [-1.0, 1.5])
def test_sobolev_equals_spectral_refiner_weights_on_coefficients(shape, s):
    # random (not band-limited) fields exercise every mode, the Nyquist ones included
    rng = np.random.default_rng(0)
    u = rng.standard_normal((3, 2) + shape)
    alpha = 10 ** -1.5
    got = sobolev_loss(t(u), s=s, alpha=alpha, squared=True, reduction="none").numpy()
    expected = [sum(numpy_sr_norm2(u[i, ch], s, alpha) for ch in range(2)) for i in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-11)
    # the same weights applied to the squared coefficients would be the index-s/2 norm: a different number
    half = sobolev_loss(t(u), s=s / 2, alpha=alpha, squared=True, reduction="none").numpy()
    assert not np.allclose(half, expected, rtol=1e-3)


@pytest.mark.parametrize("p", [1.0, 3.0, math.inf])
def test_lp_matches_numpy_quadrature(p):
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((2, 4, 2, 10, 6))
    lengths = (2.0, 3.0)
    cell = 6.0 / 60
    diff = pred - target
    if math.isinf(p):
        num, den = np.abs(diff).max(axis=(1, 2, 3)), np.abs(target).max(axis=(1, 2, 3))
    else:
        num = (cell * np.sum(np.abs(diff) ** p, axis=(1, 2, 3))) ** (1 / p)
        den = (cell * np.sum(np.abs(target) ** p, axis=(1, 2, 3))) ** (1 / p)
    got = lp_loss(t(pred), t(target), p=p, lengths=lengths, reduction="none").numpy()
    np.testing.assert_allclose(got, num / den, rtol=1e-12)
    absolute = lp_loss(t(pred), t(target), p=p, lengths=lengths, relative=False, reduction="sum")
    assert float(absolute) == pytest.approx(num.sum(), rel=1e-12)


# ----------------------------------------------------------------------------- resolution independence
@pytest.mark.parametrize("loss", [
    pytest.param(lambda u, v: lp_loss(u, v), id="rel-L2"),
    pytest.param(lambda u, v: lp_loss(u, v, relative=False), id="abs-L2"),
    pytest.param(lambda u, v: h1_loss(u, v), id="rel-H1"),
    pytest.param(lambda u, v: sobolev_loss(u, v, s=-1.0, alpha=10 ** -1.5), id="rel-H-1"),
    pytest.param(lambda u, v: sobolev_loss(u - v, s=0.5, relative=False), id="abs-H0.5"),
])
def test_same_field_at_32_and_64_gives_the_same_number(loss):
    values = []
    for n in (32, 64):
        u, v = as_batch(field(n)), as_batch(field(n, a=1, b=2, c=3, const=-0.2))
        values.append(float(loss(u, v)))
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    assert values[0] > 0.01  # a real difference, not 0 == 0


def test_lp_p1_converges_with_resolution():
    # |u| has kinks, so the rectangle rule is not exact; it is close to the integral at both resolutions
    exact = 4 / math.pi ** 2  # int |sin(2 pi x) cos(2 pi y)| over the unit square: (2/pi)^2
    errs = []
    for n in (32, 64):
        X, Y = grid2(n)
        u = as_batch(np.sin(TWO_PI * X + 0.1) * np.cos(TWO_PI * Y + 0.2))
        errs.append(abs(float(lp_loss(u, p=1.0)) - exact))
    assert max(errs) < 2e-3


# ----------------------------------------------------------------------------- Bochner in time
def trajectory(n, nt):
    X, Y = grid2(n)
    g = 1.0 + np.linspace(0.0, 1.0, nt, endpoint=False) ** 2
    u = np.sin(TWO_PI * X)[..., None] * np.cos(TWO_PI * 2 * Y)[..., None] * g  # (n, n, nt); ||u(t)||^2 = g^2/4
    return u, g


def test_bochner_l2_in_time_of_space_norm():
    u, g = trajectory(16, 8)
    T = 2.0
    got = lp_loss(as_batch(u), relative=False, time_axis=-1, time_length=T, squared=True)
    assert float(got) == pytest.approx(T / 8 * np.sum(g ** 2 / 4), rel=1e-12)
    s, alpha = -1.0, 0.5
    got = sobolev_loss(as_batch(u), s=s, alpha=alpha, time_axis=-1, time_length=T, squared=True)
    weight = (alpha + 4 * np.pi ** 2 * 5) ** s
    assert float(got) == pytest.approx(T / 8 * np.sum(weight * g ** 2 / 4), rel=1e-12)


def test_per_time_step_values_and_time_axis_position():
    u, g = trajectory(16, 5)
    ref = as_batch(u)
    pred = ref * t(1.0 + 0.1 * np.arange(5))  # error 10%, 20%, ... at the steps after the first
    per_step = h1_loss(pred, ref, time_axis=-1, time_reduction="none", reduction="none")
    assert per_step.shape == (1, 5)
    np.testing.assert_allclose(per_step[0].numpy(), 0.1 * np.arange(5), atol=1e-13)
    # time stored first after the channels: the same numbers
    moved = h1_loss(pred.movedim(-1, 2), ref.movedim(-1, 2), time_axis=2, time_reduction="none", reduction="none")
    torch.testing.assert_close(moved, per_step)
    # the l2-in-time relative error: sqrt(sum e_j^2 g_j^2 / sum g_j^2)
    rel = h1_loss(pred, ref, time_axis=-1)
    e = 0.1 * np.arange(5)
    assert float(rel) == pytest.approx(math.sqrt(np.sum(e ** 2 * g ** 2) / np.sum(g ** 2)), rel=1e-12)


def test_bochner_resolution_independent_in_space_and_time_length():
    vals = [float(lp_loss(as_batch(trajectory(n, 6)[0]), relative=False, time_axis=-1)) for n in (16, 32)]
    assert vals[0] == pytest.approx(vals[1], rel=1e-12)


# ----------------------------------------------------------------------------- batch, channels, dtypes, modules
def test_reductions_channels_and_relative():
    rng = np.random.default_rng(2)
    target = t(rng.standard_normal((3, 2, 8, 8)))
    scale = t([1.1, 1.5, 0.5]).reshape(3, 1, 1, 1)
    per = lp_loss(target * scale, target, reduction="none")
    np.testing.assert_allclose(per.numpy(), [0.1, 0.5, 0.5], rtol=1e-12)
    assert float(lp_loss(target * scale, target, reduction="sum")) == pytest.approx(1.1)
    assert float(lp_loss(target * scale, target)) == pytest.approx(1.1 / 3)
    # two channels: squared norms add (a vector field), so one channel's error is diluted by the other's norm
    one = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    one[:, 0] = 1.0
    two = one.clone()
    two[:, 1] = 1.0
    assert float(lp_loss(two, one + one.roll(1, dims=1), relative=False) ** 2) == pytest.approx(0.0)
    assert float(lp_loss(one, two)) == pytest.approx(math.sqrt(0.5))


def test_modules_match_functions_and_low_precision_and_gradients():
    rng = np.random.default_rng(3)
    target = torch.tensor(rng.standard_normal((2, 1, 16, 16)), dtype=torch.float32)
    pred = (target + 0.1 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))).requires_grad_()
    for module, fn in [(LpLoss(), lp_loss(pred, target)), (H1Loss(), h1_loss(pred, target)),
                       (SobolevLoss(-1.0, alpha=0.1), sobolev_loss(pred, target, s=-1.0, alpha=0.1))]:
        got = module(pred, target)
        torch.testing.assert_close(got, fn)
        got.backward()
        assert pred.grad is not None and torch.isfinite(pred.grad).all()
        pred.grad = None
    half = lp_loss(pred.detach().to(torch.bfloat16), target.to(torch.bfloat16))
    assert half.dtype == torch.float32 and float(half) == pytest.approx(float(lp_loss(pred.detach(), target)), rel=2e-2)
    assert "relative" in repr(LpLoss())


def test_norm_of_a_residual_without_target():
    u = as_batch(field(16))
    assert float(sobolev_loss(u, s=-1.0, alpha=0.1, squared=True)) == pytest.approx(exact_sobolev2(-1.0, 0.1), rel=1e-12)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,err,match", [
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8), torch.ones(2, 1, 9)), ValueError, "different shapes", id="shapes"),
    pytest.param(lambda: lp_loss(torch.ones(2, 8)), ValueError, "at least one space", id="no-space-dim"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8), relative=True), ValueError, "needs a target", id="rel-no-target"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8), torch.ones(2, 1, 8), reduction="avg"), ValueError, "reduction",
                 id="reduction"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8), p=0.5), ValueError, "p must be", id="p"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8, 8), lengths=(1.0, 2.0, 3.0)), ValueError, "lengths", id="lengths"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8, 4), time_axis=1), ValueError, "time_axis", id="time-axis-channel"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8, 4), time_axis=7), ValueError, "time_axis", id="time-axis-range"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8), time_axis=-1), ValueError, "at least one space", id="time-no-space"),
    pytest.param(lambda: sobolev_loss(torch.ones(2, 1, 8), s=-1.0, alpha=0.0), ValueError, "alpha", id="alpha0-neg-s"),
    pytest.param(lambda: sobolev_loss(torch.ones(2, 1, 8), s=float("nan")), ValueError, "s must be", id="s-nan"),
    pytest.param(lambda: lp_loss(torch.ones(2, 1, 8, dtype=torch.complex64)), TypeError, "real fields", id="complex"),
    pytest.param(lambda: lp_loss(np.ones((2, 1, 8))), TypeError, "torch.Tensor", id="numpy"),
    pytest.param(lambda: SobolevLoss(-1.0, alpha=0.0), ValueError, "alpha", id="module-alpha"),
    pytest.param(lambda: LpLoss(reduction="max"), ValueError, "reduction", id="module-reduction"),
    pytest.param(lambda: H1Loss(lengths=-1.0), ValueError, "lengths", id="module-lengths"),
])
def test_bad_input_is_a_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_docstring_examples():
    import doctest

    from krylon.solvers import losses

    result = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_trajectory_loss_modules_refuse_a_non_positive_time_length_at_construction(bad):
    from krylon.solvers.losses import LpLoss

    with pytest.raises(ValueError, match="time_length must be positive"):
        LpLoss(time_axis=-1, time_length=bad)

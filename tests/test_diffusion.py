"""DDS/DPS samplers, the VP schedule, the score U-Net and the shipped prior.

References are independent of the code under test: dense direct solves (torch.linalg.solve), a numpy CG, the
exact Gaussian posterior (with the analytic noise predictor of Gaussian data), closed-form schedule values.
"""

import math

import numpy as np
import pytest
import torch

from krylon.operators import CallableOperator
from krylon.operators.learned import registry
from krylon.operators.learned.unet import ScoreUNet
from krylon.solvers.diffusion import DDS, DPS, VPSchedule, diffusion_loss
from krylon.solvers.training import EMA, TrainConfig, TrainHook, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def assert_close(a, b, rtol=1e-6, atol=1e-6):
    """numpy's check (torch.testing.assert_close imports torch.distributed: seconds per test process)."""
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)


def dense_op(M: torch.Tensor, n: int) -> CallableOperator:
    """``x (n x n image) -> M x.flatten()``, with the exact adjoint ``M^H``."""
    m = M.shape[0]
    return CallableOperator(lambda x: (x.to(M.dtype).reshape(*x.shape[:-2], n * n) @ M.T),
                            (n, n), (m,), adjoint=lambda y: (y @ M.conj()).reshape(*y.shape[:-1], n, n),
                            dtype=M.dtype)


def random_problem(seed, n, m, dtype, x_dtype):
    """A dense ``m x n^2`` operator of ``dtype``, a start image ``(n, n)`` of ``x_dtype`` and data ``(m,)``."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(m, n * n, dtype=dtype, generator=g)
    x0 = torch.randn(n, n, dtype=x_dtype, generator=g)
    return M, dense_op(M, n), x0, torch.randn(m, dtype=dtype, generator=g), g


class GaussianEps(ScoreUNet):
    """The exact noise predictor of data x0 ~ N(0, s0^2 I): E[eps | x_t] = sqrt(1 - a) x_t / (a s0^2 + 1 - a)."""

    def __init__(self, image_size, s0, schedule):
        super().__init__(image_size=image_size, channels=4, mults=(1,), groups=1, attention=False)
        self.s0, self.sched = s0, schedule

    def forward(self, x, t):
        a = self.sched.alpha_bar[t].to(x.dtype)[:, None, None, None]
        return (1 - a).sqrt() * x / (a * self.s0 ** 2 + 1 - a)


def tiny_net(**kw):
    torch.manual_seed(0)
    return ScoreUNet(image_size=8, channels=8, mults=(1, 2), groups=4, **kw)


# ----------------------------------------------------------------------------- schedule
def test_schedule_closed_form():
    s = VPSchedule()
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(s.alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    ts = s.timesteps(50)
    assert ts[0] == 999 and ts[-1] == 0 and len(set(ts.tolist())) == 50
    with pytest.raises(ValueError, match="nfe"):
        s.timesteps(1001)


# ----------------------------------------------------------------------------- data consistency
@pytest.mark.parametrize("gamma", [pytest.param(0.7, id="noisy"), pytest.param(None, id="noiseless")])
def test_cg_data_consistency_matches_dense_solve_complex(gamma):
    g = torch.Generator().manual_seed(1)
    n, m = 4, 10
    M = torch.randn(m, n * n, dtype=torch.complex128, generator=g)
    A = dense_op(M, n)
    x0 = torch.randn(2, n, n, dtype=torch.complex128, generator=g)
    y = torch.randn(2, m, dtype=torch.complex128, generator=g)
    dds = DDS(tiny_net(complex_images=True), gamma=gamma, cg_steps=n * n)
    got = dds.data_consistency(A, y, x0, real=False)
    AhA = M.conj().T @ M
    if gamma is None:  # CG on the normal equations from x0 converges to the solution nearest x0
        ls = torch.linalg.lstsq(M, y.T).solution.T
        null = torch.eye(n * n, dtype=M.dtype) - torch.linalg.pinv(M) @ M
        ref = ls + x0.reshape(2, -1) @ null.T
    else:
        rhs = x0.reshape(2, -1) + gamma * y @ M.conj()
        ref = torch.linalg.solve(torch.eye(n * n, dtype=M.dtype) + gamma * AhA, rhs.T).T
    assert_close(got.reshape(2, -1), ref, rtol=1e-7, atol=1e-7)
    if gamma is not None:  # "snr": the weight at timestep t is gamma (1 - abar_t) / abar_t
        abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[300]
        g_t = gamma * (1 - abar) / abar
        got = dds.data_consistency(A, y, x0, real=False, t=300)
        rhs = x0.reshape(2, -1) + g_t * y @ M.conj()
        ref = torch.linalg.solve(torch.eye(n * n, dtype=M.dtype) + g_t * AhA, rhs.T).T
        assert_close(got.reshape(2, -1), ref, rtol=1e-7, atol=1e-7)
        const = DDS(dds.model, gamma=gamma, gamma_schedule="constant", cg_steps=n * n)
        assert const.data_weight(300) == gamma and dds.data_weight(300) == pytest.approx(g_t, rel=1e-12)
        # the last step's weight is final_weight times the schedule's; 0 returns the network's estimate
        part = DDS(dds.model, gamma=gamma, cg_steps=n * n, final_weight=0.25)
        assert part.data_weight(300, last=True) == pytest.approx(0.25 * g_t, rel=1e-12)
        assert part.data_weight(300) == pytest.approx(g_t, rel=1e-12)
        got = part.data_consistency(A, y, x0, real=False, t=300, last=True)
        rhs = x0.reshape(2, -1) + 0.25 * g_t * y @ M.conj()
        ref = torch.linalg.solve(torch.eye(n * n, dtype=M.dtype) + 0.25 * g_t * AhA, rhs.T).T
        assert_close(got.reshape(2, -1), ref, rtol=1e-7, atol=1e-7)
        none = DDS(dds.model, gamma=gamma, cg_steps=n * n, final_weight=0.0)
        assert torch.equal(none.data_consistency(A, y, x0, real=False, t=300, last=True), x0)
        assert not torch.equal(none.data_consistency(A, y, x0, real=False, t=300), x0)


def test_noise_weighted_data_consistency_matches_dense_solve_per_image():
    """With ``sigma`` (one per image) the weight is ``(1 - abar_t) / abar_t / (lam sigma_i^2)``: a dense solve per image."""
    g = torch.Generator().manual_seed(3)
    n, m, lam = 4, 10, 0.4
    M = torch.randn(m, n * n, dtype=torch.complex128, generator=g)
    A = dense_op(M, n)
    x0 = torch.randn(2, n, n, dtype=torch.complex128, generator=g)
    y = torch.randn(2, m, dtype=torch.complex128, generator=g)
    sigma = torch.tensor([0.05, 0.2], dtype=torch.float64).reshape(2, 1, 1)
    dds = DDS(tiny_net(complex_images=True), gamma=123.0, lam=lam, cg_steps=n * n, final_weight=0.5)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[300]
    AhA = M.conj().T @ M
    for last, f in ((False, 1.0), (True, 0.5)):
        got = dds.data_consistency(A, y, x0, real=False, t=300, sigma=sigma, last=last)
        for i in range(2):  # gamma (123) is not used once the noise is known
            g_i = f * (1 - abar) / abar / (lam * float(sigma[i]) ** 2)
            rhs = x0[i].reshape(-1) + g_i * M.conj().T @ y[i]
            ref = torch.linalg.solve(torch.eye(n * n, dtype=M.dtype) + g_i * AhA, rhs)
            assert_close(got[i].reshape(-1), ref, rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match="lam=None"):
        DDS(dds.model, gamma=1.0).data_weight(300, sigma=0.1)


def test_solve_with_noise_std_is_the_fixed_weight_of_that_noise_in_sampler_units():
    """``noise_std`` in y's units, divided by the per-image scale, gives ``gamma = 1 / (lam sigma^2)``: the same
    run as a fixed ``gamma`` of that value, image by image; bad values are refused."""
    from krylon.operators.imaging import add_noise, noise_std

    net = tiny_net()
    n = net.image_size
    keep = torch.rand(n, n, generator=torch.Generator().manual_seed(0)) < 0.5
    A = CallableOperator(lambda x: x * keep, (n, n), adjoint=lambda y: y * keep)
    x = torch.rand(2, n, n, generator=torch.Generator().manual_seed(1))
    clean = A @ x
    sd = noise_std(clean, 0.05, ndim=2).flatten()
    y = add_noise(clean, 0.05, ndim=2, generator=torch.Generator().manual_seed(2))
    lam, scale = 0.3, torch.tensor([0.9, 1.3])
    got = DDS(net, lam=lam, cg_steps=3).solve(A, y, nfe=4, seed=[4, 5], scale=scale, noise_std=sd).x
    for i in range(2):
        g = 1 / (lam * float(sd[i] / scale[i]) ** 2)
        ref = DDS(net, gamma=g, cg_steps=3).solve(A, y[i], nfe=4, seed=[4 + i], scale=scale[i]).x
        assert_close(got[i], ref, rtol=1e-5, atol=1e-6)
    dds = DDS(net, lam=lam, cg_steps=3)
    for bad, msg in ((-1.0, "positive"), (float("nan"), "positive"), (torch.ones(3), "one per image"),
                     (0.0, "positive")):
        with pytest.raises(ValueError, match=msg):
            dds.solve(A, y, nfe=2, noise_std=bad)
    with pytest.raises(ValueError, match="lam=None"):
        DDS(net, gamma=1.0).solve(A, y, nfe=2, noise_std=0.1)
    with pytest.raises(ValueError, match="DPS does not weigh"):
        DPS(net).solve(A, y, nfe=2, noise_std=0.1)
    with pytest.raises(ValueError, match="lam must be positive"):
        DDS(net, lam=0.0)


def test_noise_std_is_the_std_add_noise_draws():
    """``noise_std`` = the empirical std of ``add_noise``'s noise, per item (complex: E|n|^2 = sigma^2)."""
    from krylon.operators.imaging import add_noise, noise_std

    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 200, 200, dtype=torch.complex128, generator=g) * torch.tensor([1.0, 2.0, 5.0])[:, None, None]
    y[:, :, :50] = 0  # unmeasured entries get no noise and do not count in the RMS
    sd = noise_std(y, 0.1, ndim=2).flatten()
    ref = 0.1 * (y.abs() ** 2).sum((1, 2)).div((y != 0).sum((1, 2))).sqrt()
    assert_close(sd, ref, rtol=1e-12)
    n = add_noise(y, 0.1, ndim=2, generator=g) - y
    emp = (n.abs() ** 2).sum((1, 2)).div((y != 0).sum((1, 2))).sqrt()
    np.testing.assert_allclose(emp.numpy(), sd.numpy(), rtol=0.02)
    assert float(noise_std(y, 0.3, relative=False)) == pytest.approx(0.3)


def test_cg_data_consistency_few_steps_match_numpy_cg_real_prior():
    """3 CG steps of the real-restricted normal system vs an independent numpy CG."""
    n, m = 4, 12
    M, A, x0, y, _ = random_problem(2, n, m, torch.complex128, torch.float64)
    gamma = 2.0
    got = DDS(tiny_net(), gamma=gamma, cg_steps=3).data_consistency(A, y, x0, real=True)
    Mn = M.numpy()
    K = np.eye(n * n) + gamma * (Mn.conj().T @ Mn).real
    b = x0.numpy().ravel() + gamma * (Mn.conj().T @ y.numpy()).real
    x = x0.numpy().ravel().copy()
    r = b - K @ x
    p = r.copy()
    for _ in range(3):
        alpha = (r @ r) / (p @ K @ p)
        x = x + alpha * p
        r_new = r - alpha * K @ p
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    np.testing.assert_allclose(got.numpy().ravel(), x, rtol=1e-9, atol=1e-9)


def test_tuned_sampler_takes_the_chosen_settings():
    """``DDS.tuned`` = the shipped prior with ``dds_settings``; the bench re-exports the same tables."""
    from krylon.bench import dds as bench
    from krylon.solvers.diffusion import COMPLEX_SETTINGS, DDS_SETTINGS, dds_settings

    assert bench.DDS_SETTINGS is DDS_SETTINGS and bench.COMPLEX_SETTINGS is COMPLEX_SETTINGS
    for (modality, noisy), st in DDS_SETTINGS.items():
        dds = DDS.tuned(modality, noisy)
        assert (dds.eta, dds.gamma, dds.spacing) == (st["eta"], st["gamma"], st["spacing"])
        assert dds.cg_steps == tuple(st["cg_steps"]) and not dds.complex_images
    c = DDS.tuned("mri", kind="complex", eta=0.2)
    assert c.complex_images and c.eta == 0.2 and c.cg_power == COMPLEX_SETTINGS["mri", False]["cg_power"]
    assert dds_settings("mri", True, gamma=None) == DDS_SETTINGS["mri", True]  # None keeps the tuned value
    with pytest.raises(ValueError, match="complex prior"):
        DDS.tuned("ct", kind="complex")


def test_cg_ramp_and_its_checks():
    """``cg_steps=(first, last)`` ramps as first + (last - first) (i / (n - 1))^power; a count is constant."""
    n = 50
    ref = np.rint(2 + 48 * (np.arange(n) / (n - 1)) ** 2).astype(int)
    assert DDS.cg_counts(n, (2, 50), 2.0) == ref.tolist()
    dds = DDS(tiny_net(), cg_steps=(1, 40), cg_power=4.0)
    assert [dds.cg_count(i, 20) for i in range(20)] == DDS.cg_counts(20, (1, 40), 4.0)
    assert dds.cg_count(0, 20) == 1 and dds.cg_count(19, 20) == 40 and dds.cg_count(0, 1) == 1
    assert DDS.cg_counts(4, 7) == [7, 7, 7, 7]
    for bad, match in (({"cg_steps": (1, 2, 3)}, "pair"), ({"cg_steps": (1, -2)}, "cg_steps"),
                       ({"cg_power": 0.0}, "cg_power"), ({"carry_correction": "yes"}, "carry_correction"),
                       ({"denoise_below": -1}, "denoise_below"), ({"denoise_below": 2.5}, "denoise_below"),
                       ({"final_weight": -0.1}, "final_weight"), ({"final_weight": float("inf")}, "final_weight")):
        with pytest.raises((ValueError, TypeError), match=match):
            DDS(tiny_net(), **bad)


def test_carried_correction_in_the_range_of_AH_keeps_the_projection():
    """Noiseless CG started at x0 + A^H w converges to the same point as from x0: the solution nearest x0."""
    n, m = 4, 9
    M, A, x0, y, g = random_problem(4, n, m, torch.float64, torch.float64)
    corr = A.rmatvec(torch.randn(m, dtype=torch.float64, generator=g))
    got = DDS(tiny_net(), gamma=None, cg_steps=n * n).data_consistency(A, y, x0, real=True, correction=corr)
    pinv = torch.linalg.pinv(M)
    ref = pinv @ y + (torch.eye(n * n, dtype=M.dtype) - pinv @ M) @ x0.reshape(-1)
    assert_close(got.reshape(-1), ref, rtol=1e-8, atol=1e-8)
    # so the whole sampler with exact consistency gives the same sample with or without the carried correction
    sched = VPSchedule()
    A = dense_op(M[:6], n)
    y = y[:6]

    def sample(carry):
        dds = DDS(GaussianEps(n, 0.8, sched), schedule=sched, gamma=None, cg_steps=n * n, eta=0.5,
                  carry_correction=carry)
        return dds.solve(A, y.expand(3, 6), nfe=8, seed=0, scale=1.0).x

    assert_close(sample(True), sample(False), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- Gaussian posterior
def test_dds_noiseless_gaussian_prior_samples_the_exact_posterior():
    """Prior N(0, s0^2 I), y = A x: posterior mean = A^+ y, covariance s0^2 P_null (exact noise predictor).

    With eta = 0 the re-noising is DDIM's probability-flow step, which transports the prior's variance (up to
    the time discretisation); eta > 0 re-noises the Tweedie mean and under-disperses by design.
    """
    n, m, s0 = 4, 6, 0.8
    sched = VPSchedule()
    g = torch.Generator().manual_seed(3)
    M = torch.randn(m, n * n, dtype=torch.float64, generator=g)
    A = dense_op(M, n)
    y = torch.randn(m, dtype=torch.float64, generator=g)
    dds = DDS(GaussianEps(n, s0, sched), schedule=sched, gamma=None, cg_steps=n * n, eta=0.0, denoise_below=0)
    k = 500
    res = dds.solve(A, y.expand(k, m), nfe=100, seed=0, scale=1.0)
    X = res.x.reshape(k, -1)
    pinv = torch.linalg.pinv(M)
    mean = pinv @ y
    P = torch.eye(n * n, dtype=torch.float64) - pinv @ M
    assert_close(X @ (pinv @ M).T, mean.expand(k, -1), atol=1e-6, rtol=1e-6)  # range part exact
    # sample mean within 4 standard errors; null-space covariance s0^2 P: total variance within the DDIM
    # discretisation error at 100 steps (-4 %, measured: -8 % at 50, -2 % at 200) plus sampling error
    assert float((X.mean(0) - mean).abs().max()) < 4 * s0 / math.sqrt(k)
    C = torch.cov(X.T)
    assert 0.91 < float(torch.trace(C) / torch.trace(s0 ** 2 * P)) < 1.05
    assert float(torch.linalg.matrix_norm(C - s0 ** 2 * P) / torch.linalg.matrix_norm(s0 ** 2 * P)) < 0.2


def test_denoise_tail_shrinks_the_null_space_by_tweedie_toward_the_posterior_mean():
    """Into timesteps below ``denoise_below`` the sampler carries ``sqrt(a) x0`` over without noise: with the exact
    predictor of N(0, s0^2 I) each such step multiplies the null-space part of the consistent x0 by Tweedie's
    shrinkage a s0^2 / (a s0^2 + 1 - a), toward the posterior mean A^+ y; the steps before it add fresh noise."""
    n, m, s0 = 4, 6, 0.8
    sched = VPSchedule()
    g = torch.Generator().manual_seed(5)
    M = torch.randn(m, n * n, dtype=torch.float64, generator=g)
    A, y = dense_op(M, n), torch.randn(m, dtype=torch.float64, generator=g)
    # eta 0.5: the DDIM step has an eps term the tail must drop too; the step into 222 itself is still noisy
    dds = DDS(GaussianEps(n, s0, sched), schedule=sched, gamma=None, cg_steps=n * n, eta=0.5, spacing=1.0,
              denoise_below=222)
    res = dds.solve(A, y.expand(2, m), nfe=10, seed=0, scale=1.0, trajectory=True)
    ts = [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]  # even spacing, closed form
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    pinv = torch.linalg.pinv(M)
    null = res.trajectory.reshape(10, 2, -1) @ (torch.eye(n * n, dtype=torch.float64) - pinv @ M).T
    for i in range(9):
        a = abar[ts[i + 1]]
        shrunk = a * s0 ** 2 / (a * s0 ** 2 + 1 - a) * null[i]
        if ts[i + 1] < 222:
            assert_close(null[i + 1], shrunk, rtol=1e-6, atol=1e-7)
        else:
            assert float((null[i + 1] - shrunk).abs().max()) > 1e-2
    assert_close(res.x.reshape(2, -1) @ (pinv @ M).T, (pinv @ y).expand(2, -1), rtol=1e-7, atol=1e-9)


def test_dps_tail_takes_ddim_deterministic_steps():
    """DPS below ``denoise_below``: DDIM's eta = 0 step sqrt(a') x0 + sqrt(1 - a') eps, then the gradient step.  With
    the exact predictor of N(0, s0^2 I), x0 = c(a) x_t with c(a) = sqrt(a) s0^2 / (a s0^2 + 1 - a) and
    eps = sqrt(1 - a) x_t / (a s0^2 + 1 - a), so the gradient of ||y - M x0|| is -c(a) M^T r / ||r|| and a tail step is
    x_next = k x_t + zeta c(a) M^T r / ||r|| in closed form; ancestral steps (into 222 and above) add fresh noise."""
    n, m, s0, zeta = 4, 6, 0.8, 0.3
    sched = VPSchedule()
    g = torch.Generator().manual_seed(6)
    M = torch.randn(m, n * n, dtype=torch.float64, generator=g)
    y = torch.randn(2, m, dtype=torch.float64, generator=g)
    dps = DPS(GaussianEps(n, s0, sched), schedule=sched, step_size=zeta, spacing=1.0, denoise_below=222)
    res = dps.solve(dense_op(M, n), y, nfe=10, seed=0, scale=1.0, trajectory=True)
    ts = [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    x0s = res.trajectory.reshape(10, 2, -1)

    def c(a):
        return a.sqrt() * s0 ** 2 / (a * s0 ** 2 + 1 - a)

    for i in range(9):
        a, an = abar[ts[i]], abar[ts[i + 1]]
        k = (an.sqrt() * a.sqrt() * s0 ** 2 + (1 - an).sqrt() * (1 - a).sqrt()) / (a * s0 ** 2 + 1 - a)
        r = y - x0s[i] @ M.T
        x_next = k * x0s[i] / c(a) + zeta * c(a) * (r @ M) / r.norm(dim=1, keepdim=True)
        expected = c(an) * x_next
        if ts[i + 1] < 222:
            assert_close(x0s[i + 1], expected, rtol=2e-6, atol=1e-9)  # the network input is float32
        else:
            assert float((x0s[i + 1] - expected).abs().max()) > 1e-2


def test_dps_gaussian_prior_mean_near_posterior_mean():
    """DPS is approximate: its sample mean should still be near the exact posterior mean of a Gaussian prior."""
    n, m, s0 = 4, 6, 0.8
    sched = VPSchedule()
    g = torch.Generator().manual_seed(4)
    M = torch.randn(m, n * n, dtype=torch.float64, generator=g) / 4
    A = dense_op(M, n)
    x_true = s0 * torch.randn(n * n, dtype=torch.float64, generator=g)
    y = M @ x_true
    k = 400
    res = DPS(GaussianEps(n, s0, sched), schedule=sched, step_size=0.5).solve(A, y.expand(k, m), nfe=200,
                                                                              seed=0, scale=1.0)
    mean = torch.linalg.pinv(M) @ y
    err_dps = float(torch.linalg.vector_norm(res.x.reshape(k, -1).mean(0) - mean))
    assert err_dps < 0.25 * float(torch.linalg.vector_norm(mean))


# ----------------------------------------------------------------------------- determinism, batching
class WeightedEps(ScoreUNet):
    """A predictor that is not equivariant: ``eps = w x`` with a fixed, asymmetric weight map ``w``."""

    def __init__(self, w, complex_images=False):
        super().__init__(image_size=w.shape[-1], complex_images=complex_images, channels=4, mults=(1,), groups=1,
                         attention=False)
        self.w = w

    def forward(self, x, t):
        return self.w * x


@pytest.mark.parametrize("complex_images", [False, True])
def test_dihedral_steps_show_the_network_each_symmetry_of_the_square_and_map_it_back(complex_images):
    """With ``dihedral``, step ``i`` calls the network on ``g x`` and returns ``g^-1 eps(g x)``, ``g`` the ``i mod 8``-th
    symmetry: for ``eps = w x`` that is ``(g^-1 w) x``, so the eight steps use the eight maps numpy's rot90 and
    fliplr make of ``w``, each once; without it every step uses ``w``."""
    w = torch.arange(64.0).reshape(8, 8) ** 1.5
    wn = w.numpy()
    want = [np.rot90(m, r) for m in (wn, np.fliplr(wn)) for r in range(4)]
    x = 1 + torch.rand(1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * (1 + 1j) if complex_images else x
    net = WeightedEps(w.double(), complex_images).double()
    for cls in (DDS, DPS):
        sym, plain = cls(net, dihedral=True), cls(net, dihedral=False)
        maps = [(sym._eps(x, 10, i) / x)[0] for i in range(16)]  # the weight each step applied to x
        if complex_images:  # both channels turned alike: the weight is real
            assert all(float(m.imag.abs().max()) < 1e-6 for m in maps)
        got = [m.real.numpy() for m in maps]
        match = [[np.allclose(g, v, atol=1e-3) for v in want] for g in got[:8]]  # a permutation: each map once
        assert all(sum(row) == 1 for row in match) and all(sum(col) == 1 for col in zip(*match))
        assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(got[:8], got[8:]))
        assert all(np.allclose((plain._eps(x, 10, i) / x)[0].real.numpy(), wn, atol=1e-3) for i in range(8))
    with pytest.raises(TypeError, match="dihedral"):
        DDS(net, dihedral="yes")


def test_sampler_determinism():
    net = tiny_net()
    keep = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.5
    A = CallableOperator(lambda x: x * keep, (8, 8), adjoint=lambda y: y * keep)
    y = A @ torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    for sampler in (DDS(net), DPS(net)):
        a = sampler.solve(A, y, nfe=6, seed=5)
        b = sampler.solve(A, y, nfe=6, generator=torch.Generator().manual_seed(5))
        c = sampler.solve(A, y, nfe=6, seed=6)
        assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
        assert a.nfe == 6 and a.x.shape == (3, 8, 8) and a.seconds > 0
    t = DDS(net).solve(A, y, nfe=4, seed=0, trajectory=True)
    assert t.trajectory.shape == (4, 3, 8, 8) and torch.equal(t.trajectory[-1], t.x)


def test_sampler_batch_independence():
    """An image's reconstruction depends on the seed and its position, not on its batch-mates or the batch size
    (one noise generator per image); identical measurements in one batch still get different noise."""
    net = tiny_net()
    keep = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.5
    A = CallableOperator(lambda x: x * keep, (8, 8), adjoint=lambda y: y * keep)
    y = A @ (0.1 + torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(1)))
    other = A @ (0.1 + torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(9)))
    for sampler in (DDS(net, gamma=None), DPS(net)):
        full = sampler.solve(A, y[:3], nfe=5, seed=3).x
        alone = sampler.solve(A, y[:1], nfe=5, seed=3).x
        mates = sampler.solve(A, torch.cat([y[:2], other]), nfe=5, seed=3).x
        assert_close(alone[0], full[0], rtol=1e-5, atol=1e-5)
        assert_close(mates[:2], full[:2], rtol=1e-5, atol=1e-5)
        twins = sampler.solve(A, y[:1].expand(2, 8, 8), nfe=5, seed=3).x
        assert not torch.allclose(twins[0], twins[1], atol=1e-3)


def test_per_image_seeds_follow_the_image():
    """``seed=[...]``: an image's stream is its own seed's, wherever it stands in the batch (as alone with it)."""
    net = tiny_net()
    keep = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.5
    A = CallableOperator(lambda x: x * keep, (8, 8), adjoint=lambda y: y * keep)
    y = A @ (0.1 + torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)))
    for sampler in (DDS(net), DPS(net)):
        full = sampler.solve(A, y, nfe=5, seed=[7, 3, 9]).x
        moved = sampler.solve(A, y[[2, 1]], nfe=5, seed=torch.tensor([9, 3])).x
        alone = sampler.solve(A, y[1:2], nfe=5, seed=3).x
        assert_close(full[1], alone[0], rtol=1e-5, atol=1e-5)
        assert_close(moved, full[[2, 1]], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(sampler.solve(A, y, nfe=5, seed=[7, 4, 9]).x[1], full[1], atol=1e-3)
        with pytest.raises(ValueError, match="2 per-image entries but the batch has 3"):
            sampler.solve(A, y, nfe=2, seed=[1, 2])
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            sampler.solve(A, y, nfe=2, seed=[1, -2, 3])


def test_all_zero_measurements_are_refused_unless_scaled():
    net = tiny_net()
    A = CallableOperator(lambda x: x, (8, 8), adjoint=lambda y: y)
    y = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    y[1] = 0
    with pytest.raises(ValueError, match=r"all zero for image\(s\) \[1\]"):
        DDS(net).solve(A, y, nfe=2)
    assert DDS(net).solve(A, y, nfe=2, scale=1.0).x.shape == (2, 8, 8)


def test_a_generator_of_the_wrong_type_is_a_clear_error():
    net = tiny_net()
    A = CallableOperator(lambda x: x, (8, 8), adjoint=lambda y: y)
    with pytest.raises(TypeError, match="torch.Generator"):
        DDS(net).solve(A, torch.rand(8, 8), nfe=2, generator=3)


def test_complex_x_init_with_a_real_prior_is_taken_by_magnitude():
    net = tiny_net()
    A = CallableOperator(lambda x: x.to(torch.complex64) * keep, (8, 8), adjoint=lambda y: y * keep,
                         dtype=torch.complex64)
    keep = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) < 0.5
    x = 0.2 + torch.rand(8, 8, generator=torch.Generator().manual_seed(1))
    phase = torch.exp(1j * torch.rand(8, 8, generator=torch.Generator().manual_seed(2)) * 3)
    y = A @ x
    ref = DDS(net).solve(A, y, nfe=3, seed=0, x_init=x).x
    got = DDS(net).solve(A, y, nfe=3, seed=0, x_init=x * phase).x
    assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_unet_defaults_are_the_shipped_configuration():
    import inspect

    from krylon.cli import _parser
    from krylon.solvers.diffusion import train_prior

    shipped = registry.record("diffusion", "phantom64")["config"]
    assert ScoreUNet().config == {**shipped, "image_size": 64, "complex_images": False}
    sig = inspect.signature(train_prior).parameters
    assert sig["channels"].default == shipped["channels"] and list(sig["mults"].default) == shipped["mults"]
    args = _parser().parse_args(["train", "diffusion", "--data", "d.h5"])
    assert args.channels == shipped["channels"] and args.mults == shipped["mults"] and args.ema == 0.995


@pytest.mark.gpu
def test_training_loss_and_samplers_on_cuda():
    """diffusion_loss draws t on the images' device: alpha_bar is indexed there (CUDA training crashed)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    net = tiny_net().cuda()
    sched = VPSchedule()
    t = torch.tensor([0, 500, 999], device="cuda")
    a = sched.ab(t, torch.zeros(3, 1, 8, 8, device="cuda"))
    assert a.device.type == "cuda"
    np.testing.assert_allclose(a.flatten().cpu().numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[0, 500, 999]],
                               rtol=1e-6)
    loss = diffusion_loss(net, {"image": torch.rand(4, 8, 8, device="cuda")}, sched)
    loss.backward()
    assert torch.isfinite(loss)
    A = CallableOperator(lambda x: x, (8, 8), adjoint=lambda y: y)
    y = torch.rand(2, 8, 8, device="cuda")
    g = torch.Generator(device="cuda")
    r1 = DDS(net).solve(A, y, nfe=3, generator=g.manual_seed(0)).x
    r2 = DDS(net).solve(A, y, nfe=3, generator=g.manual_seed(0)).x
    assert r1.device.type == "cuda" and torch.equal(r1, r2)


def test_schedule_ab_values_and_final_step():
    sched = VPSchedule()
    ref = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    a = sched.ab(torch.tensor([0, 999, -1]), torch.zeros(3, 2, 2, dtype=torch.float64))
    assert a.shape == (3, 1, 1)
    np.testing.assert_allclose(a.flatten().numpy(), [ref[0], ref[999], 1.0], rtol=1e-12)
    assert float(sched.ab(-1, torch.zeros(2))) == 1.0


# ----------------------------------------------------------------------------- U-Net
def test_unet_shapes_and_checkpoint_round_trip(tmp_path):
    for cplx in (False, True):
        net = tiny_net(complex_images=cplx)
        c = 2 if cplx else 1
        x = torch.randn(2, c, 8, 8)
        assert net(x, torch.tensor([0, 999])).shape == (2, c, 8, 8)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        registry.save_checkpoint(net, tmp_path / "p.pt")
        back = registry.load_checkpoint(tmp_path / "p.pt", expect=ScoreUNet)
        assert back.config == net.config
        assert_close(back(x, torch.tensor([3, 4])), net.eval()(x, torch.tensor([3, 4])))
    with pytest.raises(ValueError, match="multiple of 2"):
        ScoreUNet(image_size=7, mults=(1, 2))
    with pytest.raises(ValueError, match="multiples of 2"):
        tiny_net()(torch.zeros(1, 1, 6, 9), torch.tensor([0]))


def test_ema_hook_in_training_loop_and_resume(tmp_path):
    """The EMA of the training loop equals an independent recomputation from the raw weights' trajectory."""
    net = tiny_net()
    data = [{"image": torch.rand(8, 8, generator=torch.Generator().manual_seed(i))} for i in range(8)]
    sched = VPSchedule()
    ema = EMA(net, 0.9)
    cfg = TrainConfig(epochs=2, batch_size=4, seed=0, val_fraction=0.0)

    class Stop(TrainHook):  # Ctrl-C in the first step of epoch 2: the checkpoint of epoch 1 stays
        def on_step(self, model, optimizer, step):
            if step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(net, lambda m, b: diffusion_loss(m, b, sched), data, tmp_path, cfg, progress=False, log=lambda s: None,
              hooks=[ema, Stop()], plot=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["hooks"][0]["updates"] == 2
    # resume: the EMA continues from its checkpointed state
    net2, ema2 = tiny_net(), None
    ema2 = EMA(net2, 0.9)
    train(net2, lambda m, b: diffusion_loss(m, b, sched), data, tmp_path, cfg, progress=False, log=lambda s: None,
          hooks=[ema2, TrainHook()], plot=False)
    assert ema2.updates == 4
    # EMA arithmetic against a hand recurrence
    lin = torch.nn.Linear(1, 1, bias=False)
    e = EMA(lin, 0.5)
    shadow = float(lin.weight.detach())
    for k, w in enumerate([1.0, 2.0, 3.0]):
        with torch.no_grad():
            lin.weight.fill_(w)
        e.on_step(lin)
        d = min(0.5, (1 + k) / (10 + k))
        shadow = d * shadow + (1 - d) * w
    assert abs(float(e.shadow["weight"]) - shadow) < 1e-6


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    net = tiny_net()
    keep = torch.ones(8, 8, dtype=torch.bool)
    A = CallableOperator(lambda x: x * keep, (8, 8), adjoint=lambda y: y * keep)
    dds = DDS(net)
    y = torch.rand(8, 8)
    with pytest.raises(ValueError, match="NaN"):
        dds.solve(A, torch.full((8, 8), float("nan")), nfe=2)
    A6 = CallableOperator(lambda x: x, (6, 6), adjoint=lambda y: y)
    with pytest.raises(ValueError, match="multiples of 4"):
        DDS(ScoreUNet(image_size=8, channels=8, mults=(1, 2, 2), groups=4)).solve(A6, torch.rand(6, 6), nfe=2)
    A16 = CallableOperator(lambda x: x, (16, 16), adjoint=lambda y: y)
    with pytest.raises(ValueError, match="trained on 8x8"):
        dds.solve(A16, torch.rand(16, 16), nfe=2)
    with pytest.raises(ValueError, match="measurement shape"):
        dds.solve(A, torch.rand(8, 7), nfe=2)
    with pytest.raises(ValueError, match="nfe"):
        dds.solve(A, y, nfe=0)
    with pytest.raises(ValueError, match="eta"):
        DDS(net, eta=1.5)
    with pytest.raises(ValueError, match="gamma"):
        DDS(net, gamma=-1.0)
    with pytest.raises(TypeError, match="ScoreUNet"):
        DDS(torch.nn.Linear(2, 2))
    Areal = CallableOperator(lambda x: x * keep, (8, 8), adjoint=lambda y: y * keep, dtype=torch.float32)
    with pytest.raises(ValueError, match="complex"):
        dds.solve(Areal, y.to(torch.complex64), nfe=2)
    # a checkpoint of another model
    from krylon.operators.learned.dcdm import DCDMNet

    registry.save_checkpoint(DCDMNet(dim=2, in_channels=3, width=4, levels=1), tmp_path / "dcdm.pt")
    with pytest.raises(ValueError, match="not a ScoreUNet"):
        DDS.load(tmp_path / "dcdm.pt")


# ----------------------------------------------------------------------------- shipped prior
def test_shipped_prior_beats_zero_filling_on_a_tiny_reconstruction():
    dds = DDS.pretrained()
    n = dds.image_size
    assert registry.record("diffusion", "phantom64")["sha256"]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    x = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 <= 1).double() * 0.8 + ((xx - 0.2) ** 2 + yy ** 2 <= 0.1).double() * 0.2
    g = torch.Generator().manual_seed(0)
    lines = torch.rand(n, generator=g) < 0.3
    lines[n // 2 - 3: n // 2 + 3] = True
    mask = lines[None, :].expand(n, n)

    def fwd(v):
        return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(v.to(torch.complex128), dim=(-2, -1)),
                                                 norm="ortho"), dim=(-2, -1)) * mask

    def adj(k):
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k * mask, dim=(-2, -1)), norm="ortho"),
                                  dim=(-2, -1))

    A = CallableOperator(fwd, (n, n), adjoint=adj, dtype=torch.complex128)
    y = A @ x
    zf = adj(y).abs()
    rec = dds.solve(A, y, nfe=10, seed=0).x.abs()

    def psnr(a):
        return float(10 * torch.log10(x.max() ** 2 / (a - x).pow(2).mean()))

    assert psnr(rec) > psnr(zf) + 1.0


# ----------------------------------------------------------------------------- CLI, examples, bench summary
def test_cli_reconstruct_and_train_diffusion(tmp_path, capsys):
    from krylon.cli import main

    n = DDS.pretrained().image_size
    img = np.zeros((n, n))
    img[16:48, 20:44] = 1.0
    np.save(tmp_path / "img.npy", img)
    assert main(["reconstruct", "mri", "--image", str(tmp_path / "img.npy"), "--nfe", "3",
                 "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 0 and "DDS 3 NFE" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", np.zeros((3, 4, 5, 6)))
    assert main(["reconstruct", "ct", "--image", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b.png")]) == 2
    from krylon.datasets import write_dataset

    write_dataset(tmp_path / "d.h5", {"x": np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)})
    assert main(["train", "diffusion", "--data", str(tmp_path / "d.h5"), "--out", str(tmp_path / "run"),
                 "--channels", "8", "--mults", "1", "2", "--epochs", "1", "--batch", "4", "--no-progress"]) == 0
    dds = DDS.load(tmp_path / "run" / "prior.pt")
    assert dds.image_size == 8 and (tmp_path / "run" / "training.json").exists()


def test_cli_reconstruct_sampler_seed_ct_noise_and_real_baseline(tmp_path, capsys, monkeypatch):
    """--seed seeds the simulation, --sampler-seed the sampler; CT noise lands on every sinogram bin; the MRI
    baseline solves over real images like the (real) prior."""
    from krylon import cli
    from krylon.operators import imaging
    from krylon.solvers import reconstruction

    n = DDS.pretrained().image_size
    img = np.zeros((n, n))
    img[16:48, 20:44] = 1.0
    np.save(tmp_path / "img.npy", img)
    calls = []
    orig_noise, orig_cg = imaging.add_noise, reconstruction.cg_sense
    monkeypatch.setattr(imaging, "add_noise", lambda *a, **k: calls.append(("noise", k)) or orig_noise(*a, **k))
    monkeypatch.setattr(reconstruction, "cg_sense", lambda *a, **k: calls.append(("cg", k)) or orig_cg(*a, **k))
    assert cli.main(["reconstruct", "ct", "--image", str(tmp_path / "img.npy"), "--nfe", "2", "--views", "8",
                     "--noise", "0.03", "--out", str(tmp_path / "c.png")]) == 0
    support = calls[0][1]["support"]  # every sinogram bin
    assert calls[0][0] == "noise" and (isinstance(support, torch.Tensor) and bool(support.all()))

    def lines(sampler_seed):
        capsys.readouterr()
        assert cli.main(["reconstruct", "mri", "--image", str(tmp_path / "img.npy"), "--nfe", "2", "--seed", "0",
                         "--sampler-seed", str(sampler_seed), "--out", str(tmp_path / "m.png")]) == 0
        out = capsys.readouterr().out
        return [ln for ln in out.splitlines() if "CG-SENSE" in ln], [ln for ln in out.splitlines() if "DDS 2 NFE" in ln]

    base0, dds0 = lines(0)
    base1, dds1 = lines(1)
    assert base0 == base1 and dds0 != dds1
    assert calls[-1][0] == "cg" and calls[-1][1]["real"] is True


def test_cli_reconstruct_uses_the_noisy_dds_settings_only_with_noise(tmp_path, monkeypatch):
    """``--noise > 0`` takes ``DDS_SETTINGS[modality, True]`` (eta, CG steps, gamma); ``--gamma`` overrides its
    gamma; noiseless data take the noiseless settings (gamma None)."""
    from krylon import cli
    from krylon.solvers import diffusion as tuned

    monkeypatch.setitem(tuned.DDS_SETTINGS, ("ct", True), {"eta": 0.3, "cg_steps": 1, "gamma": 0.07})
    seen = []
    orig = DDS.data_consistency
    monkeypatch.setattr(DDS, "data_consistency", lambda self, *a, **k: seen.append(
        (self.eta, self.cg_steps, self.gamma) + ((self.denoise_below,) if tail else ())) or orig(self, *a, **k))
    tail = False
    n = DDS.pretrained().image_size
    np.save(tmp_path / "img.npy", np.pad(np.ones((n // 2, n // 2)), n // 4))

    def run(*extra):
        seen.clear()
        assert cli.main(["reconstruct", "ct", "--image", str(tmp_path / "img.npy"), "--nfe", "2", "--views", "8",
                         "--out", str(tmp_path / "c.png"), *extra]) == 0
        return set(seen)

    assert run("--noise", "0.03") == {(0.3, 1, 0.07)}
    assert run("--noise", "0.03", "--gamma", "0.5") == {(0.3, 1, 0.5)}
    assert run() == {tuple(tuned.DDS_SETTINGS["ct", False][k] for k in ("eta", "cg_steps", "gamma"))}
    assert run("--cg-steps", "3") == {(tuned.DDS_SETTINGS["ct", False]["eta"], 3, None)}
    assert run("--cg-steps", "1", "4") == {(tuned.DDS_SETTINGS["ct", False]["eta"], (1, 4), None)}
    assert cli.main(["reconstruct", "ct", "--image", str(tmp_path / "img.npy"), "--out", str(tmp_path / "c.png"),
                     "--cg-steps", "1", "2", "3"]) == 2
    tail = True  # the tuned tail, or --denoise-below's
    assert {s[-1] for s in run()} == {tuned.DDS_SETTINGS["ct", False]["denoise_below"]}
    assert {s[-1] for s in run("--denoise-below", "0")} == {0}
    monkeypatch.setattr(DDS, "data_consistency", lambda self, *a, **k: seen.append(self.final_weight) or
                        orig(self, *a, **k))  # the tuned last-step weight, or --final-weight's
    assert run("--noise", "0.03") == {1.0}  # the patched setting names none: the class default
    monkeypatch.setitem(tuned.DDS_SETTINGS, ("ct", True), {"gamma": 0.07, "final_weight": 0.25})
    assert run("--noise", "0.03") == {0.25}
    assert run("--noise", "0.03", "--final-weight", "0") == {0.0}
    monkeypatch.setattr(DDS, "data_consistency", lambda self, *a, **k: seen.append(self.dihedral) or
                        orig(self, *a, **k))  # dihedral steps unless --no-dihedral
    assert run() == {True} and run("--no-dihedral") == {False}


def test_cli_reconstruct_weighs_noisy_data_by_the_simulated_noise_std(tmp_path, monkeypatch):
    """``--noise`` passes the simulated noise's std to DDS (the weight from ``lam``); ``--gamma`` fixes the weight
    instead; noiseless data pass none."""
    from krylon import cli
    from krylon.operators.imaging import noise_std

    seen = []
    orig = DDS.solve
    monkeypatch.setattr(DDS, "solve", lambda self, A, y, **k: seen.append((k["noise_std"], self.lam, self.gamma))
                        or orig(self, A, y, **k))
    n = DDS.pretrained().image_size
    img = np.pad(np.ones((n // 2, n // 2)), n // 4)
    np.save(tmp_path / "img.npy", img)

    def run(*extra):
        seen.clear()
        assert cli.main(["reconstruct", "ct", "--image", str(tmp_path / "img.npy"), "--nfe", "2", "--views", "8",
                         "--out", str(tmp_path / "c.png"), *extra]) == 0
        return seen[0]

    from krylon.operators import Radon

    sd, lam, _ = run("--noise", "0.03", "--lam", "0.7")
    y = Radon((n, n), angles=torch.arange(8, dtype=torch.float64) * math.pi / 8).matvec(torch.from_numpy(img).float())
    assert lam == 0.7 and sd == pytest.approx(float(noise_std(y, 0.03, support="all")), rel=1e-5)
    assert run("--noise", "0.03", "--gamma", "10") == (None, DDS.tuned("ct", True).lam, 10.0)
    assert run()[0] is None


def test_examples_use_the_fixes(tmp_path):
    """sparse_view_ct noises every sinogram bin; mri_reconstruction's baselines are real like the prior."""
    import importlib.util
    from pathlib import Path

    def load(name):
        path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    ct = load("sparse_view_ct")
    seen = []
    orig = ct.add_noise
    ct.add_noise = lambda *a, **k: seen.append(k) or orig(*a, **k)
    ct.main(views=8, nfe=2, noise=0.03, out=None)
    assert seen and bool(seen[0]["support"].all())
    _, recs = load("mri_reconstruction").main(nfe=2, out=None)
    assert not recs["zero-filled"].is_complex() and not recs["CG-SENSE"].is_complex()


def test_bench_summary_rows():
    """Unseen phantoms and the in-family Shepp-Logan are compared separately."""
    from krylon.bench import dds as bench

    rows = [{"task": "ct-30views", "noise": 0.0, "method": m, "nfe": nfe, "psnr_unseen": p, "psnr_in_family": q,
             "seconds_per_image": s}
            for m, nfe, p, q, s in [("FBP", None, 30.0, 29.0, 0.01), ("TV", None, 31.0, 36.0, 0.5),
                                    ("DDS-20", 20, 33.0, 35.0, 1.0), ("DDS-50", 50, 34.0, 35.5, 2.0),
                                    ("DPS-500", 500, 28.0, 30.0, 40.0)]]
    out = bench.summary({"rows": rows})
    assert out[0]["metric"] == "PSNR dB unseen" and out[0]["krylon"] == "DDS-50" and out[0]["peer"] == "TV"
    assert abs(out[0]["ratio"] - 34 / 31) < 1e-12
    assert out[1]["metric"] == "PSNR dB in-family" and abs(out[1]["ratio"] - 35.5 / 36) < 1e-12
    assert out[2]["metric"].startswith("s/image") and abs(out[2]["ratio"] - 20.0) < 1e-12


def test_bench_labels_shepp_logan_in_family_and_noises_every_ct_bin():
    from krylon.bench import dds as bench

    x, names, _ = bench._images(1, torch.float32)
    assert names[-1] == "shepp-logan (in-family)" and names[0] == "phantom0"
    R = bench._operator("ct-8views", "cpu")
    clean = R.matvec(x)
    zero = clean == 0
    assert zero.any()  # rays that miss the object
    noisy = bench._noisy(R, clean)
    assert bool((noisy[zero] != 0).all())
    A = bench._operator("mri-x4-uniform1d", "cpu")
    k = A.matvec(x.to(torch.complex64))
    assert bool((bench._noisy(A, k)[k == 0] == 0).all())  # unsampled k-space stays empty


def test_bench_baselines_get_the_real_constraint():
    from krylon.bench import dds as bench
    from krylon.solvers.reconstruction import normal_norm

    x, _, _ = bench._images(1, torch.float32)
    A = bench._operator("mri-x8-gaussian2d", "cpu")
    y = A.matvec(x.to(torch.complex64))
    recs = bench._classical("mri-x8-gaussian2d", A, y, x, normal_norm(A), True)
    assert all(not r[0].is_complex() for r in recs.values())


def test_docstring_examples_run():
    import doctest

    from krylon.operators.learned import unet
    from krylon.solvers import diffusion

    for mod in (diffusion, unet):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


@pytest.mark.parametrize("name", ["mri_reconstruction", "sparse_view_ct"])
def test_examples_run_and_dds_beats_the_direct_baseline(name, tmp_path):
    import importlib.util
    from pathlib import Path

    from krylon.solvers.metrics import psnr

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x, recs = mod.main(nfe=10, out=str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0
    direct = float(psnr(recs["zero-filled" if "mri" in name else "FBP"], x))
    assert float(psnr(recs["DDS (10 NFE)"], x)) > direct + 1.0


def test_bench_oracle_picks_the_best_weight_per_image():
    """Image i's reconstruction is x_i + (lam - c_i): its best lam is the grid value nearest c_i."""
    from krylon.bench import dds as bench

    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    c = torch.tensor([1e-3, 3e-2, 1.0])
    lams = (1e-3, 1e-2, 3e-2, 1e-1)
    rec, sec, note = bench._oracle(lambda lam: x + (lam - c)[:, None, None], lams, x)
    want = [min(lams, key=lambda v: abs(v - float(ci))) for ci in c]  # 1e-3, 3e-2, 1e-1
    assert_close(rec, x + (torch.tensor(want) - c)[:, None, None], rtol=0, atol=1e-7)
    assert note.startswith("lam=0.001*,0.03,0.1*") and sec >= 0


def test_timestep_spacing_power():
    s = VPSchedule()
    for nfe, power in [(50, 1.0), (50, 3.0), (100, 3.0), (300, 6.0), (1000, 3.0)]:
        ts = s.timesteps(nfe, power).tolist()
        assert ts[0] == 999 and ts[-1] == 0 and len(ts) == nfe
        assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly decreasing: no repeated network call
    u = np.linspace(1, 0, 20) ** 2  # DDIM's quadratic spacing, away from the rounding fix-up near 0
    assert s.timesteps(20, 2.0).tolist()[:10] == np.round(999 * u[:10]).astype(int).tolist()
    assert s.timesteps(50, 3.0)[-2] < s.timesteps(50, 1.0)[-2]  # finer steps at low noise
    with pytest.raises(ValueError, match="power"):
        s.timesteps(10, 0.0)
    with pytest.raises(ValueError, match="power"):
        DDS(tiny_net(), spacing=-1.0)


def test_train_prior_fine_tunes_a_given_prior(tmp_path):
    from krylon.solvers.diffusion import train_prior

    data = [{"image": torch.rand(8, 8, generator=torch.Generator().manual_seed(i))} for i in range(4)]
    init = tiny_net()
    with torch.no_grad():
        for p in init.parameters():
            p.add_(0.1)
    start = {k: v.clone() for k, v in init.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-12, seed=0, val_fraction=0.0)
    net = train_prior(data, tmp_path, cfg, init=init, ema_decay=0.0, progress=False, log=lambda s: None)
    assert net.config == init.config  # the architecture comes from init, not from the defaults
    for k, v in net.state_dict().items():  # lr ~0: the exported weights are init's
        assert_close(v, start[k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="channels wanted 32"):
        train_prior(data, tmp_path / "b", cfg, init=init, channels=32, progress=False, log=lambda s: None)
    big = [{"image": torch.rand(16, 16)} for _ in range(2)]
    with pytest.raises(ValueError, match="image_size wanted 16"):
        train_prior(big, tmp_path / "c", cfg, init=init, progress=False, log=lambda s: None)
    with pytest.raises(TypeError, match="ScoreUNet"):
        train_prior(data, tmp_path / "d", cfg, init=torch.nn.Linear(2, 2), progress=False, log=lambda s: None)


def test_bench_baselines_at_held_out_weights_and_oracle():
    """The held-out weight's row is that weight's reconstruction; the oracle is never worse, image by image."""
    from krylon.bench import dds as bench
    from krylon.solvers.metrics import psnr
    from krylon.solvers.reconstruction import cg_sense, normal_norm

    x, _, _ = bench._images(1, torch.float32)
    A = bench._operator("ct-8views", "cpu")
    y = A.matvec(x)
    L = normal_norm(A)
    recs = bench._classical("ct-8views", A, y, x, L, True, {"cg": 1e-2, "tv": 1e-3})
    assert set(recs) == {"FBP", "CG-Tikhonov", "CG-Tikhonov (oracle)", "TV", "TV (oracle)"}
    assert_close(recs["CG-Tikhonov"][0], cg_sense(A, y, lam=1e-2, maxiter=50, L=L, real=True))
    for m in ("CG-Tikhonov", "TV"):
        assert bool((psnr(recs[f"{m} (oracle)"][0], x) >= psnr(recs[m][0], x) - 1e-9).all())
    assert "held-out" in recs["TV"][2]
    assert set(bench._classical("ct-8views", A, y, x, L, True)) == {"FBP", "CG-Tikhonov (oracle)", "TV (oracle)"}
    rows = [{"task": "ct-8views", "noise": 0.0, "method": m, "nfe": None, "psnr_unseen": p, "seconds_per_image": 0.1}
            for m, p in [("TV", 30.0), ("TV (oracle)", 33.0), ("DDS-50", 31.5)]]
    out = bench.summary({"rows": rows})
    assert out[0]["peer"] == "TV" and abs(out[0]["ratio"] - 31.5 / 30) < 1e-12  # the oracle is no peer


def test_tune_rule_prefers_fewer_cg_steps_then_the_shorter_tail_within_the_tolerance():
    from krylon.bench.dds import best_setting

    def rows(cg, tail, psnr):
        return [{"task": t, "noise": 0.0, "cg_steps": cg, "denoise_below": tail, "psnr": psnr} for t in ("a", "b")]

    keys = ("cg_steps", "denoise_below")
    grid = rows([2, 50], 2, 40.0) + rows([2, 50], 1, 39.95) + rows([2, 50], 0, 39.0)
    assert best_setting(grid, keys) == ((2, 50), 1)  # 0.1 dB below the best over two cases: the shorter tail
    assert best_setting(grid + rows(5, 20, 39.91), keys) == (5, 20)  # fewer CG steps (5 < 18 a step) come first
    assert best_setting(grid + rows(5, 20, 39.5), keys) == ((2, 50), 1)  # ... but only within the tolerance
    assert best_setting(grid + rows(5, 20, 39.5), keys, budget=10) == (5, 20)  # the budget rules the others out
    with pytest.raises(ValueError, match="budget"):
        best_setting(grid, keys, budget=1)
    # the tolerance is 0.1 dB per (task, noise) case: 0.075 dB short on 4 cases (noiseless and noisy) is within it
    cheap = rows(5, 20, 39.925)
    both = grid + [{**r, "noise": 0.03} for r in grid] + cheap + [{**r, "noise": 0.03} for r in cheap]
    assert best_setting(both, keys) == (5, 20)
    assert best_setting(grid + rows(5, 20, 39.85), keys) == ((2, 50), 1)
    assert best_setting(grid + rows(5, 20, float("nan")), keys) == ((2, 50), 1)  # a diverged run is never picked
    # per case, not on the sum: a shorter tail 0.3 dB down on one case and 0.2 up on the other is not near the best
    uneven = [{**r, "psnr": 40.2 if r["task"] == "a" else 39.7} for r in rows([2, 50], 1, 0.0)]
    assert best_setting(rows([2, 50], 2, 40.0) + uneven, keys) == ((2, 50), 2)
    # the case key holds the held-out set too: the same task on two sets is two cases
    sets = [{**r, "set": s, "psnr": r["psnr"] - (0.3 if s == "p" and r["denoise_below"] == 1 else 0.0)}
            for s in ("p", "n") for r in rows([2, 50], 2, 40.0) + rows([2, 50], 1, 40.0)]
    assert best_setting(sets, keys) == ((2, 50), 2)


def test_bench_tune_classical_part_picks_the_best_mean_weight(tmp_path, monkeypatch):
    from krylon.bench import dds as bench

    monkeypatch.setattr(bench, "CG_LAMS", (1e-4, 1e-1))
    monkeypatch.setattr(bench, "TV_LAMS", (1e-4,))
    res = bench.tune(images=2, tasks=("ct-8views",), parts=("classical",), out=tmp_path)
    pick = res["choice"]["classical"]
    assert set(pick) == {"ct-8views noiseless real", "ct-8views noisy real"}  # no complex CT
    for key, lams in pick.items():
        noisy = "noisy" in key
        rows = [r for r in res["rows"] if r["method"] == "CG-Tikhonov" and (r["noise"] > 0) == noisy]
        assert lams["cg"] == max(rows, key=lambda r: r["psnr"])["lam"] and lams["tv"] == 1e-4


def test_bench_targets_count_per_task_means_and_per_image():
    from krylon.bench.dds import targets

    def row(method, a, b, task="ct-8views", noise=0.0):
        return {"task": task, "noise": noise, "method": method, "psnr": (a + b) / 2,
                "psnr_per_image": {"p": a, "q": b}}

    rows = [row("FBP", 20.0, 30.0), row("TV", 28.0, 25.0), row("TV (oracle)", 40.0, 40.0), row("DDS-50", 30.0, 30.5),
            row("DPS-500", 29.0, 31.0)]
    t = targets({"rows": rows})["real"]
    # means: DDS 30.25, best classical TV 26.5 (the oracle is no peer), DPS 30.0; per image the best classical of each
    assert t["cases"][0]["best_classical"] == "TV" and t["cases"][0]["vs_classical"] == 3.75
    assert t["per_task"] == {"classical": [1, 1], "dps": [1, 1]}
    assert t["per_image"] == {"classical": [1, 2], "dps": [1, 2]}  # q: 30.5 - 30 < 1 dB; 30.5 < DPS's 31
    assert t["misses"] == {"classical": ["ct-8views noiseless q"], "dps": ["ct-8views noiseless q"]}
    t = targets({"rows": [{**r, "images": "complex"} for r in rows if r["method"] != "DPS-500"]})
    assert set(t) == {"complex"} and "dps" not in t["complex"]["per_task"]
    # a run without DDS-50 is counted at its largest NFE; one without DDS has no cases
    t = targets({"rows": [{**r, "method": "DDS-20", "nfe": 20} if r["method"] == "DDS-50" else r for r in rows]})
    assert t["real"]["dds"] == "DDS-20" and t["real"]["per_task"] == {"classical": [1, 1], "dps": [1, 1]}
    assert targets({"rows": [r for r in rows if r["method"] != "DDS-50"]})["real"]["cases"] == []


def test_bench_tune_scores_a_setting_by_its_mean_over_sampler_seeds(tmp_path, monkeypatch):
    from krylon.bench import dds as bench
    from krylon.solvers.diffusion import DDS

    seen = []
    solve = DDS.solve

    def spy(self, A, y, **kw):
        seen.append(kw["seed"])
        return solve(self, A, y, **kw)

    monkeypatch.setattr(DDS, "solve", spy)
    grid = ({"eta": 1.0, "cg_steps": 2, "spacing": 3.0, "denoise_below": 0},)
    res = bench.tune(images=1, nfe=2, tasks=("mri-x4-uniform1d",), parts=("noisy",), noisy_grid=grid,
                     lams={"mri": (0.3,)}, sampler_seeds=(0, 5), heldout=("phantoms",))
    assert seen == [0, 5] and res["sampler_seeds"] == [0, 5]
    (r,) = res["rows"]
    assert len(r["psnr_per_seed"]) == 2 and abs(r["psnr"] - sum(r["psnr_per_seed"]) / 2) < 1e-3
    with pytest.raises(ValueError, match="sampler_seeds"):
        bench.tune(images=1, nfe=2, parts=("noisy",), sampler_seeds=())

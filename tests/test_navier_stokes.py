"""2-D Navier–Stokes (vorticity) model and its time-stepping driver, against analytic solutions and references."""

import math

import numpy as np
import pytest
import torch

from krylon.datasets.navier_stokes import initial_vorticity, simulate
from krylon.operators.pde import NavierStokes2D
from krylon.operators.pde.navier_stokes import spectral_resample

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def grid(n, L=1.0):
    x = np.arange(n) * L / n
    return np.meshgrid(x, x, indexing="ij")


def developed(n=32, nu=1e-2, seed=0, batch=2):
    """A GRF vorticity, amplified so advection matters (advective time ~ 0.1)."""
    return 10 * initial_vorticity(seed, range(batch), n)


# ------------------------------------------------------------------ exact solutions
@pytest.mark.parametrize("mx,my", [(2, 3), (1, 0), (3, 3)])
def test_taylor_green_decay_is_the_crank_nicolson_factor(mx, my):
    # a Laplacian eigenfunction: advection vanishes, the amplitude decays by the CN factor each step
    nu, dt, steps = 1e-2, 1e-2, 100
    X, Y = grid(32)
    w0 = np.cos(2 * np.pi * mx * X) * np.cos(2 * np.pi * my * Y) + 0.5 * np.sin(2 * np.pi * (mx * X + my * Y))
    ns = NavierStokes2D(viscosity=nu, forcing=None)
    w = simulate(ns, torch.from_numpy(w0), steps * dt, dt).numpy()
    lam = -nu * (2 * np.pi) ** 2 * (mx**2 + my**2)
    cn = ((1 + dt * lam / 2) / (1 - dt * lam / 2)) ** steps
    np.testing.assert_allclose(w, cn * w0, atol=1e-13)
    # and the exact solution exp(lam t) to second order in dt
    errs = []
    for dt in (4e-2, 2e-2):
        w = simulate(ns, torch.from_numpy(w0), 1.0, dt).numpy()
        errs.append(np.abs(w - math.exp(lam) * w0).max())
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.02)


def test_forced_steady_state():
    # the forcing is a Laplacian eigenfunction (|k|^2 = 8 pi^2): w = f / (8 pi^2 nu) is an exact steady state
    nu = 1e-3
    X, Y = grid(32)
    f = 0.1 * (np.sin(2 * np.pi * (X + Y)) + np.cos(2 * np.pi * (X + Y)))
    ws = f / (8 * np.pi**2 * nu)
    w = simulate(NavierStokes2D(viscosity=nu), torch.from_numpy(ws), 1.0, 1e-2).numpy()
    np.testing.assert_allclose(w, ws, atol=1e-12)
    # without the forcing it would decay: the forcing is really added with the right sign and size
    w = simulate(NavierStokes2D(viscosity=nu, forcing=None), torch.from_numpy(ws), 1.0, 1e-2).numpy()
    assert np.abs(w - ws).max() > 1e-2 * np.abs(ws).max()


def test_advection_matches_analytic_field():
    # w = sin(2 pi x) cos(4 pi y) + cos(6 pi x): psi = sin(2 pi x) cos(4 pi y)/(20 pi^2) + cos(6 pi x)/(36 pi^2),
    # u = psi_y, v = -psi_x and grad w by hand
    X, Y = grid(32)
    p2 = (2 * np.pi) ** 2
    w = np.sin(2 * np.pi * X) * np.cos(4 * np.pi * Y) + np.cos(6 * np.pi * X)
    u = -4 * np.pi * np.sin(2 * np.pi * X) * np.sin(4 * np.pi * Y) / (5 * p2)
    v = -(2 * np.pi * np.cos(2 * np.pi * X) * np.cos(4 * np.pi * Y) / (5 * p2) - 6 * np.pi * np.sin(6 * np.pi * X) / (9 * p2))
    wx = 2 * np.pi * np.cos(2 * np.pi * X) * np.cos(4 * np.pi * Y) - 6 * np.pi * np.sin(6 * np.pi * X)
    wy = -4 * np.pi * np.sin(2 * np.pi * X) * np.sin(4 * np.pi * Y)
    ns = NavierStokes2D(forcing=None)
    w_hat = ns.spectral(torch.from_numpy(w))
    uu, vv = ns.velocity(w_hat)
    np.testing.assert_allclose(uu.numpy(), u, atol=1e-13)
    np.testing.assert_allclose(vv.numpy(), v, atol=1e-13)
    # the product has modes |m| <= 6, inside the 2/3 band of a 32-grid (|m| <= 10): dealiasing removes nothing
    adv = ns.physical(ns.advection(w_hat)).numpy()
    np.testing.assert_allclose(adv, u * wx + v * wy, atol=1e-11)
    np.testing.assert_allclose(ns.physical(ns.nonlinear(w_hat)).numpy(), -(u * wx + v * wy), atol=1e-11)


def test_dealiasing_removes_modes_outside_two_thirds():
    ns = NavierStokes2D(forcing=None)
    w = developed(32)
    n = ns.advection(ns.spectral(w))
    m = torch.fft.fftfreq(32, 1 / 32).abs().reshape(-1, 1)
    outside = (m > 32 / 3) | (torch.arange(17).reshape(1, -1) > 32 / 3)
    assert float(n[..., outside].abs().max()) == 0.0
    assert float(n[..., ~outside].abs().max()) > 0.0


# ------------------------------------------------------------------ convergence and invariants
def test_second_order_in_dt_against_etdrk4_reference():
    ns = NavierStokes2D(viscosity=1e-2)
    w0 = developed(32, batch=1)
    ref = simulate(ns, w0, 0.5, 5e-3, method="etdrk4")
    errs = [float((simulate(ns, w0, 0.5, dt) - ref).norm() / ref.norm()) for dt in (5e-2, 2.5e-2, 1.25e-2)]
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(1.8 < p < 2.6 for p in orders), (errs, orders)
    assert errs[-1] < 2e-4


def test_mean_vorticity_is_conserved_and_drag_damps_it():
    w0 = developed(32) + 0.3
    w = simulate(NavierStokes2D(viscosity=1e-2), w0, 1.0, 1e-2)
    np.testing.assert_allclose(w.mean(dim=(-2, -1)).numpy(), w0.mean(dim=(-2, -1)).numpy(), atol=1e-13)
    drag, dt = 0.5, 1e-2
    w = simulate(NavierStokes2D(viscosity=1e-2, drag=drag), w0, 1.0, dt)
    cn = ((1 - dt * drag / 2) / (1 + dt * drag / 2)) ** 100
    np.testing.assert_allclose(w.mean(dim=(-2, -1)).numpy(), cn * w0.mean(dim=(-2, -1)).numpy(), atol=1e-13)


def test_batch_float32_and_snapshots():
    ns = NavierStokes2D(viscosity=1e-2)
    w0 = developed(32, batch=3)
    snaps = simulate(ns, w0, 0.2, 1e-2, snapshots=[0.0, 0.1, 0.2])
    assert snaps.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(snaps[..., 0].numpy(), w0.numpy(), atol=1e-14)  # t = 0: the start (rfft round trip)
    one = simulate(ns, w0[1], 0.1, 1e-2)
    np.testing.assert_allclose(snaps[1, ..., 1].numpy(), one.numpy(), atol=1e-12)
    assert torch.equal(simulate(ns, w0, 0.2, 1e-2, snapshots=2)[..., -1], snaps[..., -1])
    w32 = simulate(ns, w0.float(), 0.2, 1e-2)
    assert w32.dtype == torch.float32
    assert float((w32.double() - snaps[..., -1]).abs().max()) < 1e-4 * float(snaps.abs().max())


# ------------------------------------------------------------------ Crank–Nicolson residual
def test_crank_nicolson_residual_is_second_order_on_a_simulated_pair():
    ns = NavierStokes2D(viscosity=1e-2)
    w0 = developed(32, batch=1)
    norms, T = [], 0.2
    for dt in (2e-2, 1e-2):  # the pair (T, T + dt) of a CNAB2 run: R = -dt^2/2 d2N/dt2 + O(dt^3)
        traj = simulate(ns, w0, T + dt, dt, snapshots=[T, T + dt])
        norms.append(float(ns.crank_nicolson_residual(traj[..., 0], traj[..., 1], dt).norm()))
    assert norms[0] / norms[1] == pytest.approx(4.0, rel=0.05)
    scale = float(((traj[..., 1] - traj[..., 0]) / dt).norm())
    assert norms[1] < 1e-3 * scale
    bumped = traj[..., 1] + 1e-2 * torch.randn(32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(ns.crank_nicolson_residual(traj[..., 0], bumped, dt).norm()) > 100 * norms[1]


def test_trajectory_residual_is_the_pairwise_residual():
    ns = NavierStokes2D(viscosity=1e-2)
    traj = simulate(ns, developed(16, batch=2), 0.3, 0.1, snapshots=[0.0, 0.1, 0.2, 0.3])
    r = ns.trajectory_residual(traj, 0.1)
    assert r.shape == (2, 16, 16, 3)
    for k in range(3):
        np.testing.assert_allclose(r[..., k].numpy(), ns.crank_nicolson_residual(traj[..., k], traj[..., k + 1], 0.1).numpy(),
                                   atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        ns.trajectory_residual(traj[..., :1], 0.1)


def test_crank_nicolson_residual_by_hand():
    # with a single Laplacian eigenfunction advection vanishes: R = (b - a)/dt - nu lam (a + b)/2 - f, by numpy
    nu, dt = 1e-2, 0.1
    X, Y = grid(16)
    e = np.cos(2 * np.pi * (X + 2 * Y))
    a, b = 1.0 * e, 0.7 * e
    f = 0.1 * (np.sin(2 * np.pi * (X + Y)) + np.cos(2 * np.pi * (X + Y)))
    expected = (b - a) / dt + nu * (2 * np.pi) ** 2 * 5 * (a + b) / 2 - f
    r = NavierStokes2D(viscosity=nu).crank_nicolson_residual(torch.from_numpy(a), torch.from_numpy(b), dt)
    np.testing.assert_allclose(r.numpy(), expected, atol=1e-12)


def test_crank_nicolson_residual_gradient_and_finer_grid():
    ns = NavierStokes2D(viscosity=1e-2)
    w = developed(8, batch=1)[0]
    w_next = (w + 0.01 * torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: ns.crank_nicolson_residual(w, z, 0.05), (w_next,), fast_mode=True)
    # on a spectrally upsampled pair, the modes the coarse grid resolves carry the coarse residual
    w0 = developed(32, batch=1)
    traj = simulate(ns, w0, 2e-2, 1e-2, snapshots=2)
    a = ns.physical(ns.spectral(traj[..., 0]) * (ns._tables((32, 32), torch.float64, "cpu")[4]))  # in the 2/3 band
    b = ns.physical(ns.spectral(traj[..., 1]) * (ns._tables((32, 32), torch.float64, "cpu")[4]))
    coarse = ns.crank_nicolson_residual(a, b, 1e-2)
    fine = ns.crank_nicolson_residual(spectral_resample(a, (64, 64)), spectral_resample(b, (64, 64)), 1e-2)
    back = spectral_resample(fine, (32, 32))
    keep = ns._tables((32, 32), torch.float64, "cpu")[4]
    np.testing.assert_allclose(ns.physical(ns.spectral(back) * keep).numpy(),
                               ns.physical(ns.spectral(coarse) * keep).numpy(), atol=1e-9)


def test_spectral_resample_interpolates_band_limited_fields():
    X, Y = grid(16)
    X2, Y2 = grid(48)

    def field(x, y):
        return np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 5 * y) + np.cos(2 * np.pi * (x - 2 * y))

    fine = spectral_resample(torch.from_numpy(field(X, Y)), (48, 48))
    np.testing.assert_allclose(fine.numpy(), field(X2, Y2), atol=1e-12)
    back = spectral_resample(torch.from_numpy(field(X2, Y2)), (16, 16))
    np.testing.assert_allclose(back.numpy(), field(X, Y), atol=1e-12)
    # a mode the coarse grid cannot hold is dropped, not aliased onto a low one
    high = np.cos(2 * np.pi * 12 * X2)
    assert float(spectral_resample(torch.from_numpy(high), (16, 16)).abs().max()) < 1e-12


def test_forcing_forms_agree_across_grids():
    X, Y = grid(32)
    f = 0.1 * (np.sin(2 * np.pi * (X + Y)) + np.cos(2 * np.pi * (X + Y)))
    by_tensor = NavierStokes2D(forcing=torch.from_numpy(f))
    by_callable = NavierStokes2D(forcing=lambda x, y: 0.1 * (torch.sin(2 * math.pi * (x + y)) + torch.cos(2 * math.pi * (x + y))))
    default = NavierStokes2D()
    for model in (by_tensor, by_callable):
        np.testing.assert_allclose(model.forcing_field((64, 64)).numpy(), default.forcing_field((64, 64)).numpy(), atol=1e-14)


# ------------------------------------------------------------------ bad input
def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="viscosity"):
        NavierStokes2D(viscosity=-1.0)
    with pytest.raises(ValueError, match="dealias"):
        NavierStokes2D(dealias=0.0)
    with pytest.raises(ValueError, match="forcing"):
        NavierStokes2D(forcing="kolmogorov")
    with pytest.raises(TypeError, match="forcing"):
        NavierStokes2D(forcing=3)
    ns = NavierStokes2D()
    w = torch.zeros(2, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="multiple of the time step"):
        simulate(ns, w, 0.105, 0.01)
    with pytest.raises(ValueError, match="even"):
        simulate(ns, torch.zeros(15, 16, dtype=torch.float64), 0.1, 0.01)
    with pytest.raises(ValueError, match="non-finite|NaN|finite"):
        simulate(ns, w.clone().fill_(float("nan")), 0.1, 0.01)
    with pytest.raises(TypeError, match="float"):
        simulate(ns, w.to(torch.int64), 0.1, 0.01)
    with pytest.raises(ValueError, match="method"):
        simulate(ns, w, 0.1, 0.01, method="euler")
    with pytest.raises(ValueError, match="snapshot"):
        simulate(ns, w, 0.1, 0.01, snapshots=[0.05, 0.2])
    with pytest.raises(ValueError, match="share the grid"):
        ns.crank_nicolson_residual(w, torch.zeros(2, 32, 32, dtype=torch.float64), 0.1)
    with pytest.raises(FloatingPointError, match="finite"):  # a blow-up is reported, not returned
        simulate(NavierStokes2D(viscosity=1e-6), 1e3 * developed(16, batch=1), 5.0, 0.5)


def test_default_forcing_follows_the_box():
    # on a (1, 2) box the documented forcing is 0.1 (sin + cos) of 2 pi (x + y / 2): periodic on that box
    from krylon.operators.pde import NavierStokes2D

    model = NavierStokes2D(lengths=(1.0, 2.0))
    f = model.forcing_field((16, 32)).numpy()
    x = np.arange(16)[:, None] / 16
    y = np.arange(32)[None, :] * 2.0 / 32
    phase = 2 * np.pi * (x + y / 2.0)
    np.testing.assert_allclose(f, 0.1 * (np.sin(phase) + np.cos(phase)), atol=1e-14)

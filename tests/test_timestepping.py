"""Semi-linear integrators against exact and scipy-integrated solutions; Gaussian random fields against their covariance."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from krylon.datasets.random_fields import gaussian_random_field
from krylon.solvers.timestepping import CNAB2, ETDRK4, integrate

LAMBDAS = np.array([-50.0, -3.0, -0.2, 0.0, 0.7])  # stiff to mildly unstable, and L = 0 (the contour case)


def _nonlinear(v):
    return -0.5 * v**2 + torch.sin(v)


def _reference(v0, t_end):
    def rhs(_t, v):
        return LAMBDAS * v - 0.5 * v**2 + np.sin(v)

    sol = solve_ivp(rhs, (0.0, t_end), v0, method="Radau", rtol=1e-12, atol=1e-14)
    return sol.y[:, -1]


@pytest.mark.parametrize("method", [CNAB2, ETDRK4], ids=["cnab2", "etdrk4"])
def test_linear_part_is_exact_or_cn(method):
    lam = torch.tensor(LAMBDAS)
    v0 = torch.linspace(0.3, 1.0, 5, dtype=torch.float64)
    dt, steps = 0.05, 20
    v, _ = integrate(method(lam, torch.zeros_like, dt), v0, steps)
    if method is ETDRK4:
        expected = np.exp(LAMBDAS * dt * steps) * v0.numpy()
    else:
        z = LAMBDAS * dt / 2
        expected = ((1 + z) / (1 - z)) ** steps * v0.numpy()
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(("method", "order"), [(CNAB2, 2), (ETDRK4, 4)], ids=["cnab2", "etdrk4"])
def test_convergence_order_against_scipy(method, order):
    lam = torch.tensor(LAMBDAS)
    v0 = np.linspace(0.3, 1.0, 5)
    t_end = 1.0
    ref = _reference(v0, t_end)
    errors = []
    for steps in (40, 80, 160):
        v, _ = integrate(method(lam, _nonlinear, t_end / steps), torch.tensor(v0), steps)
        errors.append(np.abs(v.numpy() - ref).max())
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(rates > order - 0.3), (errors, rates)


def test_complex_symbol_dispersion_is_exact():
    # v_t = i k^3 v: pure dispersion, the linear part a full-circle contour must handle
    k = torch.arange(0, 8, dtype=torch.float64)
    lam = 1j * k**3
    v0 = torch.ones(8, dtype=torch.complex128)
    v, _ = integrate(ETDRK4(lam, torch.zeros_like, 0.01), v0, 10)
    np.testing.assert_allclose(v.numpy(), np.exp(1j * k.numpy() ** 3 * 0.1), rtol=1e-10)
    with pytest.raises(TypeError, match="complex"):
        ETDRK4(lam, torch.zeros_like, 0.01).step(torch.ones(8, dtype=torch.float64))


def test_snapshots_memory_and_batch():
    lam = torch.tensor(LAMBDAS)
    v0 = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stepper = CNAB2(lam, _nonlinear, 0.01)
    v, memory, snaps = integrate(stepper, v0, 10, every=5)
    assert snaps.shape == (3, 5, 3) and torch.equal(snaps[..., 0], v0) and torch.equal(snaps[..., -1], v)
    # continuing with the memory equals one uninterrupted run; each batch row equals its own run
    v_half, mem_half = integrate(stepper, v0, 5)
    v_cont, _ = integrate(stepper, v_half, 5, memory=mem_half)
    torch.testing.assert_close(v_cont, v, rtol=0, atol=0)
    v_row, _ = integrate(stepper, v0[1], 10)
    torch.testing.assert_close(v_row, v[1], rtol=1e-15, atol=1e-15)


def test_bad_input_and_blow_up():
    lam = torch.tensor([1.0])
    with pytest.raises(ValueError, match="time step"):
        CNAB2(lam, _nonlinear, 0.0)
    with pytest.raises(TypeError, match="callable"):
        ETDRK4(lam, "not a function", 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        integrate(CNAB2(lam, _nonlinear, 0.1), torch.tensor([math.nan]), 1)
    with pytest.raises(FloatingPointError, match="stopped being finite"):
        integrate(ETDRK4(lam, lambda v: v**3, 0.1), torch.tensor([2.0], dtype=torch.float64), 200)


def test_gaussian_random_field_covariance():
    alpha, tau, n = 2.0, 3.0, 16
    g = torch.Generator().manual_seed(1)
    u = gaussian_random_field((n, n), alpha=alpha, tau=tau, batch=4000, generator=g)
    assert u.shape == (4000, n, n) and u.dtype == torch.float64
    np.testing.assert_allclose(u.mean(dim=(-2, -1)).numpy(), 0.0, atol=1e-12)  # constant mode dropped
    # per-mode variance of the unit-normalised coefficients against the covariance eigenvalues (numpy grid)
    k = 2 * np.pi * np.fft.fftfreq(n, 1.0 / n)
    lam = (tau ** (alpha - 1)) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2 + tau**2) ** (-alpha)
    lam[0, 0] = 0.0
    coef = np.fft.fft2(u.numpy()) / n**2  # projections on the orthonormal Fourier basis of the unit torus
    var = (np.abs(coef) ** 2).mean(0)
    low = np.abs(k)[:, None] + np.abs(k)[None, :] <= 2 * np.pi * 3
    low[0, 0] = False
    np.testing.assert_allclose(var[low], lam[low], rtol=0.12)
    np.testing.assert_allclose(u.var(0).mean().item(), lam.sum(), rtol=0.05)
    again = gaussian_random_field((n, n), alpha=alpha, tau=tau, batch=4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(u, again)
    with pytest.raises(ValueError, match="alpha"):
        gaussian_random_field((8, 8), alpha=-1.0)


def test_one_driver_snapshot_conventions_against_the_exact_linear_solution():
    # KS without its nonlinear term is linear: every Fourier mode decays as exp(L(k) t), exactly for ETDRK4
    from krylon.operators.pde import KuramotoSivashinsky
    from krylon.solvers.timestepping import simulate, whole_steps

    model = KuramotoSivashinsky({"u_xx": -0.1, "u_xxxx": -0.01}, length=2 * math.pi, n=32)
    u0 = torch.randn(3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lin = model.linear_symbol((32,))

    def exact(t):
        return torch.fft.irfft(torch.exp(lin * t) * torch.fft.rfft(u0), n=32)

    every = simulate(model, u0, 0.5, 0.05, every=0.25)                    # initial state first, time before grid
    assert every.shape == (3, 3, 32)
    for i, t in enumerate((0.0, 0.25, 0.5)):
        torch.testing.assert_close(every[:, i], exact(t), rtol=0, atol=1e-12)
    last = simulate(model, u0, 0.5, 0.05, times=[0.1, 0.5], time_axis="last", transform=lambda u: 2 * u)
    assert last.shape == (3, 32, 2)
    torch.testing.assert_close(last[..., 0], 2 * exact(0.1), rtol=0, atol=1e-12)
    counted = simulate(model, u0, 0.5, 0.05, times=5)                      # an int: t_end k / n, k = 1..n
    assert counted.shape == (3, 5, 32)
    torch.testing.assert_close(counted[:, 1], exact(0.2), rtol=0, atol=1e-12)
    assert whole_steps(0.3, 0.1) == 3
    with pytest.raises(ValueError, match="multiple of the time step"):
        whole_steps(0.25, 0.1, "spacing")
    with pytest.raises(ValueError, match="times= or every="):
        simulate(model, u0, 0.5, 0.05, times=[0.5], every=0.25)


def test_one_driver_continues_a_multistep_run_with_its_memory():
    # leapfrog (the QG truth's scheme) in two calls with the memory carried = one call, bit for bit
    from krylon.operators.pde import KuramotoSivashinsky
    from krylon.solvers.timestepping import simulate

    model = KuramotoSivashinsky((1, 1, 1), length=22.0, n=32)
    u0 = 0.1 * torch.randn(2, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    opts = {"filter": 0.04}
    whole = simulate(model, u0, 0.2, 1e-3, method="leapfrog", options=opts)
    half, memory = simulate(model, u0, 0.1, 1e-3, method="leapfrog", options=opts, return_memory=True)
    again = simulate(model, half, 0.1, 1e-3, method="leapfrog", options=opts, memory=memory)
    torch.testing.assert_close(again, whole, rtol=0, atol=1e-13)  # the physical round trip of the state only
    restarted = simulate(model, half, 0.1, 1e-3, method="leapfrog", options=opts)  # a restart step differs
    assert not torch.allclose(restarted, whole, rtol=0, atol=1e-13)


def test_navier_stokes_simulate_is_the_one_driver():
    from krylon.datasets.navier_stokes import simulate as ns_simulate
    from krylon.operators.pde import NavierStokes2D
    from krylon.solvers.timestepping import simulate

    model = NavierStokes2D()
    w0 = gaussian_random_field((16, 16), alpha=2.5, tau=7.0, generator=torch.Generator().manual_seed(0))[None]
    a = ns_simulate(model, w0, 0.02, 1e-3, snapshots=[0.01, 0.02])
    b = simulate(model, w0, 0.02, 1e-3, method="cnab2", times=[0.01, 0.02], time_axis="last")
    assert a.shape == (1, 16, 16, 2) and torch.equal(a, b)

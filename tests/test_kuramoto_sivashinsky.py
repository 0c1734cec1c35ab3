"""Kuramoto–Sivashinsky model: term names, exact solutions of reduced cases, convergence in dt, chaos statistics."""

import math

import pytest
import torch

from krylon.operators.pde import KuramotoSivashinsky
from krylon.operators.pde.kuramoto_sivashinsky import initial_condition, parse_term, term_name
from krylon.solvers.medida import one_step, simulate

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_term_names_round_trip():
    names = {term_name(p, d) for p in range(5) for d in range(5) if p or d}
    assert len(names) == 24
    for p in range(5):
        for d in range(5):
            if p or d:
                assert parse_term(term_name(p, d)) == (p, d)
    assert term_name(1, 1) == "u*u_x" and term_name(2, 1) == "u^2*u_x" and term_name(0, 3) == "u_xxx"
    for bad in ("v_x", "u^0*u_x", "u**2", "", "u_y"):
        with pytest.raises(ValueError):
            parse_term(bad)
    with pytest.raises(ValueError, match="constant"):
        term_name(0, 0)


def _burgers_exact(x, t, nu, k, length):
    """Cole–Hopf: u = -2 nu phi_x / phi with phi = 2 + exp(-nu k^2 t) cos(k x) solves u_t + u u_x = nu u_xx."""
    e = math.exp(-nu * k**2 * t)
    return 2 * nu * k * e * torch.sin(k * x) / (2 + e * torch.cos(k * x))


@pytest.mark.parametrize("method,dt,tol", [pytest.param("etdrk4", 1e-2, 1e-9, id="etdrk4"), pytest.param("cnab2", 1e-3, 1e-5, id="cnab2")])
def test_viscous_burgers_reduced_case_matches_cole_hopf(method, dt, tol):
    # l = (1, -nu, 0): u_t = -u u_x + nu u_xx, a reduced KS with an exact periodic solution
    nu, length, n = 0.5, 2 * math.pi, 64
    model = KuramotoSivashinsky((1.0, -nu, 0.0), length=length, n=n)
    x = model.grid()
    u0 = _burgers_exact(x, 0.0, nu, 1.0, length)
    u1 = simulate(model, u0, 0.5, dt, method=method)
    err = float((u1 - _burgers_exact(x, 0.5, nu, 1.0, length)).abs().max())
    assert err < tol


def test_extra_dispersion_term_is_an_exact_phase_shift():
    # u_t = c u_xxx alone: sin(k x) -> sin(k (x - c k^2 t)); the extra term enters with a plus sign
    c, length, n = 0.1, 2 * math.pi, 32
    model = KuramotoSivashinsky((0.0, 0.0, 0.0), extra={"u_xxx": c}, length=length, n=n)
    assert model.linear.is_complex()
    x = model.grid()
    u = simulate(model, torch.sin(3 * x), 1.0, 0.01)
    assert torch.allclose(u, torch.sin(3 * (x - c * 9 * 1.0)), atol=1e-10)


def test_rhs_matches_independent_finite_evaluation():
    # the pseudo-spectral right-hand side against the analytic derivatives of a trigonometric state
    length, n = 2 * math.pi, 64
    model = KuramotoSivashinsky((1.0, 1.0, 1.0), extra={"u^2*u_x": 0.3}, length=length, n=n)
    x = model.grid()
    u, ux = torch.sin(x) + 0.5 * torch.cos(2 * x), torch.cos(x) - torch.sin(2 * x)
    uxx, uxxxx = -torch.sin(x) - 2 * torch.cos(2 * x), torch.sin(x) + 8 * torch.cos(2 * x)
    expected = -u * ux - uxx - uxxxx + 0.3 * u**2 * ux
    assert torch.allclose(model.rhs(u), expected, atol=1e-11)


def _chaotic_state(n=128, length=32 * math.pi):
    truth = KuramotoSivashinsky((1, 1, 1), length=length, n=n)
    return truth, simulate(truth, initial_condition(n, length), 60.0, 0.05)


def test_etdrk4_fourth_order_and_cnab2_second_order_on_chaotic_ks():
    truth, u0 = _chaotic_state()
    ref = simulate(truth, u0, 2.0, 1e-3, method="etdrk4")
    err = {}
    for method in ("etdrk4", "cnab2"):
        e = [float((simulate(truth, u0, 2.0, dt, method=method) - ref).norm() / ref.norm()) for dt in (0.02, 0.01)]
        err[method] = math.log2(e[0] / e[1])
    assert 3.7 < err["etdrk4"] < 4.3
    assert 1.9 < err["cnab2"] < 2.1


def test_chaotic_ks_statistics_match_the_literature():
    # L = 32 pi (Kassam–Trefethen's run): the mean is conserved, the time-averaged spectrum peaks near the
    # fastest-growing linear mode k = 1/sqrt(2) and the rms settles at ~1.3 (Hyman & Nicolaenko 1986 report
    # ||u||_2/sqrt(L) about 1.2-1.4 for large L)
    truth, u0 = _chaotic_state()
    snaps = simulate(truth, u0, 100.0, 0.05, every=1.0)
    assert abs(float(snaps.mean())) < 1e-10
    rms = float(snaps.square().mean().sqrt())
    assert 1.1 < rms < 1.5
    k = 2 * math.pi * torch.arange(65, dtype=torch.float64) / truth.length
    spec = torch.fft.rfft(snaps).abs().square().mean(0)
    k_peak = float(k[int(spec.argmax())])
    assert 0.5 < k_peak < 1.0


def test_one_step_is_cnab2_start_and_blow_up_is_reported():
    truth, u0 = _chaotic_state(n=64)
    dt = 1e-3
    step = one_step(truth, u0, dt)
    # Crank–Nicolson on the linear part, forward Euler on the nonlinear part, written out by hand
    v = torch.fft.rfft(u0)
    L = truth.linear
    expected = torch.fft.irfft(((1 + dt * L / 2) * v + dt * truth.nonlinear(v)) / (1 - dt * L / 2), n=64)
    assert torch.allclose(step, expected, atol=1e-13)
    unstable = KuramotoSivashinsky((1, 1, 0), length=truth.length, n=64, extra={"u^4": 1e3})  # explosive u^4 growth
    with pytest.raises(FloatingPointError, match="blew up"):
        one_step(unstable, 1e90 * u0, 0.3)


def test_bad_input():
    with pytest.raises(ValueError, match="l0, l1, l2"):
        KuramotoSivashinsky((1, 1))
    with pytest.raises(ValueError, match="cannot resolve"):
        KuramotoSivashinsky((1, 1, 1), n=8)
    with pytest.raises(ValueError, match="not a term name"):
        KuramotoSivashinsky((1, 1, 1), extra={"u_yy": 1.0})
    model = KuramotoSivashinsky((1, 1, 1), n=64)
    with pytest.raises(ValueError, match="shape"):
        model.rhs(torch.zeros(3, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        model.rhs(torch.full((64,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="whole number"):
        simulate(model, torch.zeros(64, dtype=torch.float64), 1.0, 0.3)

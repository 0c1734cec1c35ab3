"""Two-layer QG model and the leapfrog integrator, against analytic results: PV inversion of plane waves, the
analytic jet streamfunction and Jacobian, conservation of energy and potential enstrophy without forcing, the
two-layer Rossby-wave dispersion relation, leapfrog's order on an exact linear ODE; a forced run stays bounded;
full-observation discovery recovers the changed relaxation rate."""

import math

import numpy as np
import pytest
import torch

from krylon.operators.pde import QuasiGeostrophic
from krylon.operators.pde.quasi_geostrophic import CASES, library_names
from krylon.solvers.timestepping import Leapfrog, integrate

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FREE = dict(tau_d=0.0, tau_f=0.0, nu=0.0, sponge=0.0)  # no forcing, no dissipation
SMALL = dict(shape=(32, 32), lengths=(20.0, 20.0))


def _grid(m):
    y, x = torch.meshgrid(m.y, m.x, indexing="ij")
    return y, x


# ----------------------------------------------------------------------------- leapfrog
@pytest.mark.parametrize("filt, alpha, order", [pytest.param(0.0, 1.0, 2, id="plain"),
                                                 pytest.param(0.01, 0.53, 2, id="raw-williams"),
                                                 pytest.param(0.04, 1.0, 1, id="robert-asselin")])
def test_leapfrog_order_on_exact_ode(filt, alpha, order):
    """v' = (-0.3 + 2i) v leapfrogged (L = 0): exact exp((-0.3 + 2i) t)."""
    lam, om, t_end = -0.3, 2.0, 2.0
    exact = math.exp(lam * t_end) * complex(math.cos(om * t_end), math.sin(om * t_end))
    errs = []
    for n in (200, 400, 800):
        stepper = Leapfrog(torch.tensor([0.0]), lambda v: (lam + 1j * om) * v, t_end / n, filter=filt, alpha=alpha)
        v, _ = integrate(stepper, torch.ones(1, dtype=torch.complex128), n)
        errs.append(abs(v.item() - exact))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(r > order - 0.25 for r in rates), (errs, rates)
    if order == 1:  # the classic filter is first order: the observed rate must not look second order
        assert all(r < 1.5 for r in rates), rates


def test_leapfrog_backward_linear_part():
    """v' = L v + i v with L backward over the double step: first order, converging to the exact solution."""
    errs = []
    for n in (200, 400):
        v, _ = integrate(Leapfrog(torch.tensor([-0.5]), lambda v: 1j * v, 1.0 / n, filter=0.0), torch.ones(1, dtype=torch.complex128), n)
        errs.append(abs(v.item() - complex(math.exp(-0.5) * math.cos(1.0), math.exp(-0.5) * math.sin(1.0))))
    assert errs[0] < 5e-3 and 1.8 < errs[0] / errs[1] < 2.2, errs


@pytest.mark.parametrize("kwargs", [pytest.param(dict(filter=0.5), id="filter-too-big"),
                                    pytest.param(dict(filter=-0.1), id="filter-negative"),
                                    pytest.param(dict(alpha=0.2), id="alpha"),
                                    pytest.param(dict(filter=True), id="filter-bool")])
def test_leapfrog_refuses_bad_filter(kwargs):
    with pytest.raises(ValueError, match="filter|alpha"):
        Leapfrog(torch.zeros(3), lambda v: v, 0.1, **kwargs)


# ----------------------------------------------------------------------------- inversion, jet, terms
def test_pv_of_plane_waves_and_inversion():
    m = QuasiGeostrophic(**SMALL)
    y, x = _grid(m)
    k, l_ = 2 * math.pi * 2 / 20, 2 * math.pi / 20
    psi1, psi2 = torch.sin(k * x + l_ * y), 0.5 * torch.cos(l_ * y)
    psi = torch.stack((psi1, psi2))
    q = m.irfft(m.q_from_psi(m.rfft(psi)))
    q1 = -(k**2 + l_**2) * psi1 + psi2 - psi1
    q2 = -(l_**2) * psi2 + psi1 - psi2
    torch.testing.assert_close(q, torch.stack((q1, q2)), atol=1e-12, rtol=0)
    torch.testing.assert_close(m.physical(m.spectral(psi)), psi, atol=1e-12, rtol=0)


def test_jet_streamfunction_is_the_analytic_one():
    m = QuasiGeostrophic(shape=(192, 8), lengths=(68.0, 46.0))
    y = m.y.double().numpy()
    s, half = 3.5, 34.0
    d = half - np.abs(y)
    ref = -s * np.tanh(y / s) - np.sign(y) * s * (np.tanh(d / s) - np.tanh(half / s))  # -int u_R dy (u_R: mean 0)
    got = m.psi_r[:, 0].numpy()
    np.testing.assert_allclose(got - got.mean(), ref - ref.mean(), atol=1e-6)


def test_library_terms_match_analytic_fields():
    m = QuasiGeostrophic(**SMALL)
    y, x = _grid(m)
    k, l_ = 2 * math.pi / 20, 2 * math.pi * 2 / 20
    psi = torch.stack((torch.sin(k * x), torch.cos(l_ * y)))
    cols = m.library(psi[None], space="q")[0]
    names = library_names()
    assert cols.shape == (2, 32, 32, 22) and len(names) == 22
    col = {n: cols[..., i] for i, n in enumerate(names)}
    # q_1 = -k^2 sin(kx) - sin(kx) + cos(ly): J(psi_1, q_1) = psi_1x q_1y = -k l cos(kx) sin(ly)
    torch.testing.assert_close(col["q1:J(psi_1,q_1)"][0], -k * l_ * torch.cos(k * x) * torch.sin(l_ * y), atol=1e-11, rtol=0)
    # q_2 = -l^2 cos(ly) + sin(kx) - cos(ly): J(psi_2, q_2) = -psi_2y q_2x = l sin(ly) k cos(kx)
    torch.testing.assert_close(col["q2:J(psi_2,q_2)"][1], k * l_ * torch.sin(l_ * y) * torch.cos(k * x), atol=1e-11, rtol=0)
    torch.testing.assert_close(col["q1:dy(psi_2)"][0], -l_ * torch.sin(l_ * y), atol=1e-12, rtol=0)
    torch.testing.assert_close(col["q2:lap(psi_1)"][1], -k**2 * torch.sin(k * x), atol=1e-12, rtol=0)
    assert torch.count_nonzero(col["q1:psi_1"][1]) == 0 and torch.count_nonzero(col["q2:psi_1"][0]) == 0
    # the streamfunction-space columns are the PV inversion of the PV-space ones (less the barotropic mean,
    # which a periodic streamfunction cannot carry)
    inv = m.library(psi[None])[0]
    back = m.irfft(m.q_from_psi(m.rfft(inv.movedim(-1, 0)))).movedim(0, -1)
    bt = cols.mean((1, 2)).sum(0) / 2
    torch.testing.assert_close(back, cols - bt, atol=1e-11, rtol=0)


def test_lowpass_keeps_long_waves_only():
    m = QuasiGeostrophic(**SMALL)
    y, x = _grid(m)
    k_long, k_short = 2 * math.pi / 20, 2 * math.pi * 3 / 20  # 0.31 and 0.94
    f = torch.stack((torch.sin(k_long * x) + torch.cos(k_short * y), torch.cos(k_short * x + k_long * y)))
    out = m.lowpass(f[None], 0.6)[0]
    torch.testing.assert_close(out, torch.stack((torch.sin(k_long * x), torch.zeros_like(x))), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        m.lowpass(torch.zeros(4, 4), 0.6)


def test_model_terms_reproduce_the_right_hand_side():
    """With sponge and hyperviscosity off, the tendency is exactly model.terms . library (in PV space)."""
    m = QuasiGeostrophic(**SMALL, sponge=0.0, nu=0.0, jacobian=0.7, tau_f=0.2, tau_d=0.05, tau_r=0.03)
    psi = m.initial_state(batch=2, amplitude=1.0, generator=torch.Generator().manual_seed(1))
    psi = m.physical(m.spectral(psi))
    cols = m.library(psi, space="q")
    names = library_names()
    coef = torch.tensor([m.terms.get(n, 0.0) for n in names], dtype=torch.float64)
    torch.testing.assert_close(m.irfft(m.tendency(m.spectral(psi))), cols @ coef, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- invariants and waves
def _free_state(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    psi = torch.randn(2, *m.shape, generator=g, dtype=torch.float64)
    v = m.rfft(psi) * ((m.k2 < 2.0**2) & (m.k2 > 0))
    return m.q_from_psi(v) * m.mask


def test_invariants_exact_semi_discretely():
    """dE/dt = -<psi, q_t> and dZ/dt = <q, q_t> vanish for the truncated system (beta kept)."""
    m = QuasiGeostrophic(**SMALL, **FREE)
    q = _free_state(m)
    qt = m.tendency(q)
    psi, qp, qtp = (m.irfft(t) for t in (m.psi_from_q(q), q, qt))
    de = -(psi * qtp).mean()
    dz = (qp * qtp).mean()
    scale = qtp.abs().mean() * (psi.abs().mean() + qp.abs().mean())
    assert abs(de) < 1e-12 * scale and abs(dz) < 1e-12 * scale
    assert qtp.abs().max() > 1e-2  # the flow is not trivially steady
    # energy and enstrophy by Parseval match the grid sums with numpy derivatives
    p = psi.numpy()
    kx = 2 * np.pi * np.fft.fftfreq(32, 20 / 32)
    dx = np.real(np.fft.ifft(1j * kx[None, None, :] * np.fft.fft(p, axis=-1), axis=-1))
    dy = np.real(np.fft.ifft(1j * kx[None, :, None] * np.fft.fft(p, axis=-2), axis=-2))
    e_ref = 0.5 * (dx**2 + dy**2).sum(0).mean() + 0.5 * ((p[0] - p[1]) ** 2).mean()
    np.testing.assert_allclose(m.energy(q).item(), e_ref, rtol=1e-12)
    np.testing.assert_allclose(m.enstrophy(q).item(), 0.5 * (qp.numpy() ** 2).sum(0).mean(), rtol=1e-12)


def test_invariants_conserved_to_time_stepping_error():
    m = QuasiGeostrophic(**SMALL, **FREE)
    q0 = _free_state(m, seed=3)
    e0, z0 = m.energy(q0).item(), m.enstrophy(q0).item()
    drifts = []
    for dt in (0.02, 0.01):
        v, _ = integrate(Leapfrog(m.linear, m.nonlinear, dt, filter=0.01, alpha=0.53), q0, round(4.0 / dt))
        drifts.append((abs(m.energy(v).item() / e0 - 1), abs(m.enstrophy(v).item() / z0 - 1)))
    (e1, z1), (e2, z2) = drifts
    assert e1 < 1e-3 and z1 < 1e-3, drifts
    assert e2 < e1 / 2 and z2 < z1 / 2, drifts  # decreasing with dt


@pytest.mark.parametrize("mode", ["barotropic", "baroclinic"])
def test_rossby_wave_dispersion(mode):
    """omega = -beta k / K^2 (barotropic) and -beta k / (K^2 + 2) (baroclinic, two equal layers, F = 1)."""
    beta = 0.5
    m = QuasiGeostrophic(**SMALL, **FREE, beta=beta)
    y, x = _grid(m)
    k, l_ = 2 * math.pi * 2 / 20, 2 * math.pi / 20
    k2 = k**2 + l_**2
    sign = 1.0 if mode == "barotropic" else -1.0
    omega = -beta * k / (k2 if mode == "barotropic" else k2 + 2)
    wave = lambda t: torch.stack((torch.cos(k * x + l_ * y - omega * t), sign * torch.cos(k * x + l_ * y - omega * t)))  # noqa: E731
    t_end, dt = 10.0, 0.01
    v, _ = integrate(Leapfrog(m.linear, m.nonlinear, dt, filter=0.0), m.spectral(wave(0.0)), round(t_end / dt))
    err = (m.physical(v) - wave(t_end)).abs().max().item()
    assert err < 1e-3, err
    # the other mode's frequency is far off: the test can tell them apart
    wrong = -beta * k / (k2 + 2 if mode == "barotropic" else k2)
    assert abs(wrong - omega) * t_end > 0.1


def test_forced_run_stays_bounded():
    m = QuasiGeostrophic(shape=(48, 24), lengths=(68.0, 46.0), nu=2e-3)
    psi = m.initial_state(batch=2, generator=torch.Generator().manual_seed(0))
    v, _ = integrate(Leapfrog(m.linear, m.nonlinear, 0.025), m.spectral(psi), 1000)
    e = m.energy(v)
    assert torch.isfinite(e).all() and (e < 50).all() and (e > 0.1).all(), e


# ----------------------------------------------------------------------------- cases and bad input
def test_cases_change_only_their_parameters():
    for name, change in CASES.items():
        truth, model = QuasiGeostrophic.case(name, shape=(8, 8))
        diff = {k for k in truth.config if truth.config[k] != model.config[k]}
        assert diff == set(change), (name, diff)
        assert truth.terms != model.terms


@pytest.mark.parametrize("kwargs, err", [pytest.param(dict(shape=(33, 32)), ValueError, id="odd"),
                                         pytest.param(dict(shape=(32,)), ValueError, id="1d"),
                                         pytest.param(dict(lengths=(1.0, -2.0)), ValueError, id="length"),
                                         pytest.param(dict(tau_d=-1.0), ValueError, id="rate"),
                                         pytest.param(dict(nu="x"), TypeError, id="type"),
                                         pytest.param(dict(dtype=torch.int32), TypeError, id="dtype")])
def test_bad_settings(kwargs, err):
    with pytest.raises(err):
        QuasiGeostrophic(**{"shape": (16, 16), **kwargs})


def test_bad_state_and_case():
    m = QuasiGeostrophic(shape=(16, 16))
    with pytest.raises(ValueError, match="shape"):
        m.spectral(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="case"):
        QuasiGeostrophic.case("nope")
    with pytest.raises(ValueError, match="dt"):
        m.forecast(torch.zeros(2, 16, 16), 0.0)


# ----------------------------------------------------------------------------- discovery, data sets, command line
TINY = dict(shape=(32, 16), nu=5e-3)


@pytest.fixture(scope="module")
def tiny_windows():
    from krylon.datasets.quasi_geostrophic import truth_windows

    # 40 time units: eddies have grown, so psi_1 - psi_2 - psi_R is no longer ~0 (near the radiative equilibrium
    # the relaxation's three columns are nearly collinear)
    return truth_windows(**TINY, spinup=40.0, samples=2, members=2, spacing=2.0)[1]


@pytest.mark.parametrize("case", ["tau_d", "tau_f", "jacobian", "beta"])
def test_full_observations_recover_the_changed_parameter(case, tiny_windows):
    from krylon.solvers.medida_qg import discover_qg

    found = discover_qg(case, tiny_windows, **TINY)
    assert not found.spurious and not found.missed, (found.spurious, found.missed)
    assert max(found.errors.values()) < 0.05, found.errors
    truth, model = QuasiGeostrophic.case(case, **TINY)
    for name, value in found.corrected.items():  # the corrected model is the truth again
        assert abs(value - truth.terms.get(name, 0.0)) < 0.05 * max(abs(truth.terms.get(name, 0.0)), 0.01), name


def test_generate_writes_and_resumes(tmp_path, monkeypatch):
    from krylon.datasets import open_dataset
    from krylon.datasets import quasi_geostrophic as qgdata
    from krylon.datasets.hdf5 import DatasetWriter

    kw = dict(n_samples=3, members=1, spinup=1.0, spacing=0.5, settings={"shape": (16, 16), "nu": 5e-3})
    full = qgdata.observation_windows(QuasiGeostrophic(**kw["settings"]), 3, spinup=1.0, spacing=0.5)
    path = tmp_path / "qg.h5"
    write = DatasetWriter.write
    calls = []

    def failing(self, i, sample):
        if len(calls) == 2:
            raise KeyboardInterrupt  # a run stopped after two samples
        calls.append(i)
        write(self, i, sample)

    monkeypatch.setattr(DatasetWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        qgdata.generate(path, **kw)
    monkeypatch.setattr(DatasetWriter, "write", write)
    assert not path.exists() and path.with_name("qg.h5.partial").exists()
    qgdata.generate(path, **kw)
    ds = open_dataset(path)
    got = torch.stack([torch.as_tensor(ds[i]["psi"]) for i in range(len(ds))])
    assert got.shape == (3, 2, 2, 16, 16)
    torch.testing.assert_close(got, full)  # deterministic: the resumed file is the uninterrupted run
    with pytest.raises(FileExistsError):
        qgdata.generate(path, **kw)


def test_cli_generate_and_discover(tmp_path, capsys):
    import json

    from krylon.cli import main

    assert main(["discover", "qg", "--case", "nope"]) == 2
    assert "unknown QG case" in capsys.readouterr().err
    data, out = tmp_path / "qg.h5", tmp_path / "found.json"
    assert main(["generate", "qg", "--grid", "32", "16", "--nu", "5e-3", "--samples", "2", "--members", "2",
                 "--spinup", "40", "--spacing", "2", "--out", str(data), "--no-progress"]) == 0
    assert main(["discover", "qg", "--case", "tau_f", "--data", str(data), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["discovered"]) == {"q2:lap(psi_2)"} and record["spurious"] == []
    assert abs(record["discovered"]["q2:lap(psi_2)"]["coefficient"] - 0.3) < 0.015
    assert abs(record["corrected"]["q2:lap(psi_2)"] + 0.07) < 0.015


def test_bench_summary_compares_fills_against_cubic():
    from krylon.bench.medida_qg import SIZES, run_qg, summary_qg

    rows = [{"case": "tau_d", "observations": label, "worst error %": err, "spurious": sp, "missed": "-"}
            for label, err, sp in (("full", 0.2, "-"), ("25% cubic", 40.0, "-"), ("25% spectral", 9.0, "-"),
                                   ("25% rff", 3.0, "q1:psi_1"))]
    (row,) = summary_qg({"rows": rows})
    # rff found a spurious term, so the spectral fill is krylon's best; cubic is the peer
    assert (row["krylon"], row["krylon_value"], row["peer"], row["peer_value"]) == ("spectral", 9.0, "cubic", 40.0)
    assert row["ratio"] == pytest.approx(40.0 / 9.0)
    assert set(SIZES) == {"quick", "default", "paper"}
    with pytest.raises(ValueError, match="size"):
        run_qg("huge")


def test_lowpass_regression_keeps_the_coefficients(tiny_windows):
    """The same filter on the model error and on every column (rows of whole fields) keeps c in y = Theta c."""
    from krylon.solvers.medida_qg import discover_qg

    for cut in (None, 0.8):
        found = discover_qg("tau_f", tiny_windows, **TINY, lowpass=cut)
        assert found.info["lowpass"] == cut
        assert list(found.coefficients) == ["q2:lap(psi_2)"] and found.errors["q2:lap(psi_2)"] < 0.05, found.errors

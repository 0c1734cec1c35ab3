"""MEDIDA on Kuramoto–Sivashinsky: the library against analytic derivatives, a small discovery, bad input."""

import json
import math

import pytest
import torch

from krylon.operators.pde import KuramotoSivashinsky
from krylon.solvers import MEDIDA
from krylon.solvers.libraries import Library, PolynomialDerivativeLibrary
from krylon.solvers.medida import Observations, observe, simulate

pytestmark = pytest.mark.usefixtures("torch_one_thread")

L, N = 22.0, 64


def test_library_against_analytic_derivatives():
    lib = PolynomialDerivativeLibrary(L)
    assert len(lib.names) == 24 and len(set(lib.names)) == 24
    assert {"u*u_x", "u_xx", "u_xxxx", "u^2*u_x", "u_xxx", "u", "u^4*u_xxxx"} <= set(lib.names)
    x = torch.arange(N, dtype=torch.float64) * L / N
    w = 2 * math.pi / L
    u = torch.sin(w * x) + 0.3 * torch.cos(2 * w * x)
    d = [u, w * torch.cos(w * x) - 0.6 * w * torch.sin(2 * w * x), -w**2 * torch.sin(w * x) - 1.2 * w**2 * torch.cos(2 * w * x),
         -w**3 * torch.cos(w * x) + 2.4 * w**3 * torch.sin(2 * w * x), w**4 * torch.sin(w * x) + 4.8 * w**4 * torch.cos(2 * w * x)]
    theta = lib(torch.stack([u, 2 * u]))  # a batch of two states
    assert theta.shape == (2, N, 24)
    for j, name in enumerate(lib.names):
        p, k = lib.terms[j]
        expected = u**p * (d[k] if k else 1)
        assert torch.allclose(theta[0, :, j], expected, atol=1e-10), name
        assert torch.allclose(theta[1, :, j], 2 ** (p + (k > 0)) * expected, atol=1e-9), name


def test_library_refuses_unresolvable_derivatives_and_warns_on_noise():
    with pytest.raises(ValueError, match="cannot resolve"):
        PolynomialDerivativeLibrary(L, n=8)
    with pytest.raises(ValueError, match="cannot resolve"):
        PolynomialDerivativeLibrary(L)(torch.zeros(3, 6, dtype=torch.float64))
    noisy = torch.randn(4, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="does not resolve 'u_xxxx'"):
        PolynomialDerivativeLibrary(L)(noisy)


@pytest.fixture(scope="module")
def windows(torch_one_thread):
    truth = KuramotoSivashinsky((1, 1, 1), length=L, n=N)
    u0 = 0.1 * torch.randn(8, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = simulate(truth, u0, 60.0, 1e-2)  # eight independent states on the attractor
    return truth, simulate(truth, u, 1e-2, 1e-3, every=5e-3)  # (8, 3, N): three snapshots 5e-3 apart


@pytest.mark.parametrize("lam,expected", [
    pytest.param((1, 0.5, 1), {"u_xx": -0.5}, id="halved-u_xx"),
    pytest.param((0, 1, 1), {"u*u_x": -1.0}, id="missing-u*u_x"),
    pytest.param((1, 1, 0), {"u_xxxx": -1.0}, id="missing-u_xxxx"),
    pytest.param((2, 2, 2), {"u*u_x": 1.0, "u_xx": 1.0, "u_xxxx": 1.0}, id="doubled"),
])
def test_small_noise_free_discovery(windows, lam, expected):
    # the midpoint estimator (the default) recovers the coefficients to well under 1%
    truth, w = windows
    model = KuramotoSivashinsky(lam, length=L, n=N)
    found = MEDIDA(model, PolynomialDerivativeLibrary(L)).discover(observe(w[:, :2], 5e-3), truth=truth.terms)
    assert found.info["estimator"] == "midpoint"
    assert set(found.terms) == set(expected) and found.exact and not found.spurious
    for name, c in expected.items():
        assert abs(found.coefficients[name] - c) < 0.01 * abs(c), (name, found.coefficients[name])
        assert 0 < found.stds[name] < 0.05 * abs(c)
    for name, c in truth.terms.items():  # the corrected model is close to the truth
        assert abs(found.corrected[name] - c) < 0.01
    record = json.loads(json.dumps(found.to_json()))
    assert set(record["discovered"]) == set(expected) and record["spurious"] == []
    assert record["corrected"]["u_xx"] == pytest.approx(found.corrected["u_xx"])
    assert found.equation("corrected").startswith("u_t = ")


def test_paper_estimator_is_biased_where_the_midpoint_one_is_not(windows):
    # l = (0, 0.5, 2): the paper's one-step estimator carries the Crank-Nicolson filter of the stiff
    # hyperdiffusion into the coefficients; the midpoint estimator removes it
    truth, w = windows
    model = KuramotoSivashinsky((0, 0.5, 2), length=L, n=N)
    errors = {}
    for estimator in ("start", "midpoint"):
        found = MEDIDA(model, PolynomialDerivativeLibrary(L), estimator=estimator).discover(observe(w[:, :2], 5e-3), truth=truth.terms)
        errors[estimator] = max(found.errors.values())
    assert errors["midpoint"] < 0.01 < 0.05 < errors["start"]


def test_extra_term_and_stlsq(windows):
    truth, w = windows
    model = KuramotoSivashinsky((1, 1, 1), extra={"u_xxx": 0.5}, length=L, n=N)
    for regression in ("rvm", "stlsq"):
        found = MEDIDA(model, PolynomialDerivativeLibrary(L), regression=regression).discover(observe(w[:, :2], 5e-3),
                                                                                              truth=truth.terms)
        assert found.terms == ("u_xxx",)
        assert found.coefficients["u_xxx"] == pytest.approx(-0.5, rel=0.01)
        assert abs(found.corrected["u_xxx"]) < 0.005


def test_noisy_observations_go_through_the_enkf(windows):
    truth, w = windows
    obs = observe(w, 5e-3, noise=0.01, seed=1)
    assert obs.noise_std == pytest.approx(0.01 * float(w.std()))
    assert torch.equal(obs.values, observe(w, 5e-3, noise=0.01, seed=1).values)  # seeded
    medida = MEDIDA(KuramotoSivashinsky((1, 0.5, 1), length=L, n=N), PolynomialDerivativeLibrary(L), members=64)
    theta, y, info = medida.model_error(obs)
    assert info["assimilated"] and info["pairs"] == 8 and theta.shape == (8 * N, 24) and y.shape == (8 * N,)
    # the analysis states are closer to the truth than the noisy observations are
    states, first = medida.analysis_states(obs)
    assert first == 1
    assert float((states - w[:, 1:]).square().mean()) < float((obs.values[:, 1:] - w[:, 1:]).square().mean())


def test_times_and_observations_must_match(windows):
    truth, w = windows
    medida = MEDIDA(truth, PolynomialDerivativeLibrary(L))
    with pytest.raises(ValueError, match="times"):
        medida.discover(w[:, :2])
    with pytest.raises(ValueError, match="2 times per sample"):
        medida.discover(w[:, :2], times=torch.tensor([0.0, 5e-3, 1e-2]))
    with pytest.raises(ValueError, match="equally spaced"):
        medida.discover(w, times=torch.tensor([0.0, 5e-3, 2e-2]))
    with pytest.raises(ValueError, match="observations say dt"):
        medida.discover(observe(w, 5e-3), times=torch.tensor([0.0, 1e-2, 2e-2]))
    found = medida.discover(w[:, :2], times=torch.tensor([0.0, 5e-3]))  # the perfect model: nothing to find
    assert found.terms == () or max(abs(c) for c in found.coefficients.values()) < 1e-2
    with pytest.raises(ValueError, match="at least 3 times"):
        MEDIDA(truth, PolynomialDerivativeLibrary(L)).discover(observe(w[:, :2], 5e-3, noise=0.01))
    with pytest.raises(ValueError, match="sensor mask"):
        Observations(w, 5e-3, mask=torch.ones(N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="interpolate"):
        MEDIDA(truth, PolynomialDerivativeLibrary(L)).discover(observe(w, 5e-3, sensors=0.5))


def test_ensemble_and_library_errors(windows):
    truth, w = windows
    with pytest.raises(ValueError, match="at least 2 members"):
        MEDIDA(truth, PolynomialDerivativeLibrary(L), members=1)

    class Duplicated(Library):
        names = ("u_xx", "u_xx_again")

        def evaluate(self, states):
            from krylon.kernels import fft
            uxx = fft.derivative(states, 2, (L,))
            return torch.stack([uxx, 2 * uxx], dim=-1)

    model = KuramotoSivashinsky((1, 0.5, 1), length=L, n=N)
    with pytest.raises(ValueError, match="'u_xx' and 'u_xx_again'"):
        MEDIDA(model, Duplicated()).discover(observe(w[:, :2], 5e-3))
    unstable = KuramotoSivashinsky((1, 1, 1), extra={"u^4": 1e3}, length=L, n=N)
    with pytest.raises(FloatingPointError, match="blew up"):
        MEDIDA(unstable, PolynomialDerivativeLibrary(L)).discover(observe(1e90 * w[:, :2], 5e-3))


def test_cli_discover_ks_writes_the_json(tmp_path, capsys):
    from krylon.cli import main

    out = tmp_path / "ks.json"
    rc = main(["discover", "ks", "--model", "1", "0.5", "1", "--n", "64", "--length", "22", "--samples", "3", "--spinup", "40",
               "--spacing", "2", "--json", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())
    assert set(record["discovered"]) == {"u_xx"} and record["spurious"] == []
    assert record["discovered"]["u_xx"]["coefficient"] == pytest.approx(-0.5, rel=0.01)
    assert record["corrected"]["u_xx"] == pytest.approx(-1.0, rel=0.005)
    assert "model error = - 0.5" in capsys.readouterr().out
    assert main(["discover", "ks", "--model", "1", "1", "1", "--extra-term", "u_xxx"]) == 2


def test_generate_ks_is_resumable(tmp_path, monkeypatch):
    import h5py

    from krylon.datasets.hdf5 import DatasetWriter
    from krylon.datasets.kuramoto_sivashinsky import generate, observation_windows

    kw = dict(n_samples=3, n_times=2, spacing=1.0, spinup=5.0, length=L, n=N)
    ref = observation_windows(KuramotoSivashinsky((1, 1, 1), length=L, n=N), 3, n_times=2, spacing=1.0, spinup=5.0)
    path = tmp_path / "ks.h5"
    write = DatasetWriter.write

    def write_then_stop(self, index, sample):  # an interruption after the first window
        write(self, index, sample)
        if index == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        generate(path, **kw)
    assert (tmp_path / "ks.h5.partial").exists() and not path.exists()
    monkeypatch.setattr(DatasetWriter, "write", write)
    generate(path, **kw)  # resumes at window 1 and ends identical to an uninterrupted run
    with h5py.File(path) as f:
        assert f.attrs["complete"] and torch.equal(torch.as_tensor(f["u"][:]), ref)


def test_example_script_runs_small(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "kuramoto_sivashinsky_discovery.py"
    spec = importlib.util.spec_from_file_location("ks_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.discover(n=N, length=L, samples=4, members=64, spinup=40.0, spacing=2.0, plot=str(tmp_path / "ks.png"))
    assert results["noise-free"].terms == ("u_xx",) and (tmp_path / "ks.png").exists()


def test_bench_suite_tiny(tmp_path, monkeypatch):
    from krylon.bench import load

    suite = load("medida")
    monkeypatch.setitem(suite.SIZES, "quick", {"n": N, "length": L, "samples": 3, "spacing": 2.0, "spinup": 40.0,
                                               "transit_dt": 1e-2, "noisy": ["halved u_xx"], "noise": 0.01, "members": 32,
                                               "plot_time": 2.0})
    monkeypatch.setattr(suite, "CASES", [c for c in suite.CASES if c[0] in ("halved u_xx", "mixed 0, 0.5, 2", "extra 0.5 u_xxx")])
    result = suite.run("quick", out=tmp_path, peers=False)
    assert all(c["krylon"]["exact"] and c["krylon"]["worst_error"] < 0.01 for c in result["cases"])
    assert (tmp_path / "medida.json").exists() and (tmp_path / "medida_ks.png").exists()
    rows = suite.summary(result)
    assert rows[0]["krylon_value"] == 3 and rows[0]["family"] == "medida"


@pytest.mark.parametrize("module", ["krylon.solvers.medida", "krylon.solvers.sparse_regression", "krylon.solvers.assimilation",
                                    "krylon.solvers.libraries", "krylon.operators.pde.kuramoto_sivashinsky"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_resolution_check_is_quiet_on_a_resolved_single_state():
    import warnings

    x = torch.arange(N, dtype=torch.float64) * L / N
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PolynomialDerivativeLibrary(L)(torch.sin(2 * math.pi * x / L))  # one unbatched, resolved state
        PolynomialDerivativeLibrary(L)(torch.sin(2 * math.pi * 3 * x / L))  # the review's case (#12): warned 97.4%


def test_cli_generate_ks_then_discover_from_the_file(tmp_path, capsys):
    from krylon.cli import main

    data = tmp_path / "ks.h5"
    grid = ["--n", str(N), "--length", str(L), "--samples", "3", "--spinup", "40", "--spacing", "2"]
    assert main(["generate", "ks", "--out", str(data), "--no-progress", *grid]) == 0 and data.exists()
    out = tmp_path / "found.json"
    assert main(["discover", "ks", "--model", "1", "1", "0.5", "--data", str(data), "--json", str(out), *grid]) == 0
    record = json.loads(out.read_text())
    assert set(record["discovered"]) == {"u_xxxx"} and record["discovered"]["u_xxxx"]["coefficient"] == pytest.approx(-0.5, rel=0.01)
    assert "discovery)" in capsys.readouterr().out


def test_cli_discover_from_a_file_uses_its_settings_and_all_its_windows(tmp_path, capsys):
    # regression (#12): --data took interval, L, n and the truth from command-line defaults, and only the first
    # --samples (10) windows
    from krylon.cli import main

    data = tmp_path / "ks.h5"
    assert main(["generate", "ks", "--out", str(data), "--no-progress", "--n", str(N), "--length", str(L), "--samples", "12",
                 "--spinup", "40", "--spacing", "1", "--interval", "1e-2", "--truth", "1", "1", "1.5"]) == 0
    out = tmp_path / "found.json"
    assert main(["discover", "ks", "--model", "1", "0.5", "1.5", "--data", str(data), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["discovered"]) == {"u_xx"} and record["spurious"] == []
    assert record["discovered"]["u_xx"]["coefficient"] == pytest.approx(-0.5, rel=0.01)
    assert record["truth"]["u_xxxx"] == -1.5 and record["info"]["dt"] == pytest.approx(1e-2)
    assert record["info"]["samples"] == 12
    assert main(["discover", "ks", "--model", "1", "0.5", "1.5", "--data", str(data), "--samples", "4", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["info"]["samples"] == 4
    capsys.readouterr()
    for conflict in (["--interval", "5e-3"], ["--length", "100"], ["--truth", "1", "1", "1"], ["--samples", "13"]):
        assert main(["discover", "ks", "--model", "1", "0.5", "1.5", "--data", str(data), *conflict]) == 2
        assert conflict[0] in capsys.readouterr().err


def test_noisy_sparse_observations_fill_whole_windows(windows):
    # regression (#12): the EnKF start states were filled one at a time (a batch of 1), so an interpolator that
    # works on whole time windows crashed
    truth, w = windows
    model = KuramotoSivashinsky((1, 0.5, 1), length=L, n=N)
    calls = []

    def fill(values, mask):  # periodic linear interpolation, on windows of 3 consecutive snapshots
        if values.shape[0] % 3:
            raise ValueError(f"window = 3 does not divide the {values.shape[0]} fields")
        calls.append(values.shape[0])
        idx = mask.nonzero().flatten()
        x = torch.arange(N, dtype=torch.float64)
        xp = torch.cat([idx - N, idx, idx + N]).to(torch.float64)
        out = []
        for v in values:
            fp = v[idx].repeat(3)
            j = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
            t = (x - xp[j - 1]) / (xp[j] - xp[j - 1])
            out.append(fp[j - 1] + t * (fp[j] - fp[j - 1]))
        return torch.stack(out)

    obs = observe(w[:2], 5e-3, noise=0.01, sensors=0.75)
    medida = MEDIDA(model, PolynomialDerivativeLibrary(L), members=16, interpolate=fill)
    states, first = medida.analysis_states(obs)
    assert first == 1 and states.shape == (2, 2, N) and torch.isfinite(states).all()
    assert calls and all(c % 3 == 0 for c in calls)


def test_observe_draws_the_sensors_before_the_noise():
    w = torch.randn(2, 2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    masks = [observe(w, 0.1, sensors=0.25, noise=noise, seed=3).mask for noise in (0.0, 0.01, 0.1)]
    assert all(torch.equal(m, masks[0]) for m in masks)  # regression (#12): the layout changed with the noise level
    assert int(masks[0].sum()) == round(0.25 * 3 * 64)
    shared = observe(w, 0.1, sensors=0.25, shared=True, seed=3).mask
    assert all(torch.equal(shared[i], shared[0]) for i in range(3)) and int(shared[0].sum()) == 16
    with pytest.raises(ValueError, match="shared"):
        observe(w[:, :, 0, 0], 0.1, sensors=0.5, shared=True)


# regressions of the review's bad-input findings (#12), one each
def test_simulate_refuses_a_zero_step():
    with pytest.raises(ValueError, match="time step"):  # was ZeroDivisionError
        simulate(KuramotoSivashinsky((1, 1, 1), length=L, n=N), torch.zeros(N, dtype=torch.float64), 1.0, 0.0)


def test_simulate_every_must_divide_the_run():
    with pytest.raises(ValueError, match="not a multiple of every"):  # silently dropped the final state
        simulate(KuramotoSivashinsky((1, 1, 1), length=L, n=N), torch.zeros(N, dtype=torch.float64), 1e-2, 1e-3, every=3e-3)


def test_integrate_refuses_check_every_zero():
    from krylon.solvers.timestepping import integrate

    with pytest.raises(ValueError, match="check_every"):  # was ZeroDivisionError at the first step
        integrate(None, torch.zeros(N, dtype=torch.float64), 1, check_every=0)


def test_library_on_another_domain_is_refused():
    with pytest.raises(ValueError, match="length = 100 differs from the model's length = 22"):
        MEDIDA(KuramotoSivashinsky((1, 1, 1), length=L, n=N), PolynomialDerivativeLibrary(100.0))


def test_enkf_names_the_shape_of_a_wrong_list_observation():
    from krylon.solvers.assimilation import EnKF

    with pytest.raises(ValueError, match=r"observation has shape \(3,\)"):  # was AttributeError
        EnKF().analyse(torch.randn(4, 5, dtype=torch.float64), [1.0, 2.0, 3.0], 0.1)


def test_midpoint_estimator_is_refused_for_a_model_with_its_own_forecast():
    class Forecasting:  # like the QG model: a spectral interface, but it steps itself
        linear = linear_symbol = nonlinear = spectral = physical = None

        def forecast(self, states, dt):
            return states

    with pytest.raises(TypeError, match="midpoint"):
        MEDIDA(Forecasting(), PolynomialDerivativeLibrary(L), estimator="midpoint")


def test_library_columns_are_double_precision_for_single_precision_states(windows):
    import warnings

    truth, w = windows
    model = KuramotoSivashinsky((1, 0.5, 1), length=L, n=N)
    medida = MEDIDA(model, PolynomialDerivativeLibrary(L, resolution_tol=0), estimator="start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theta, _, _ = medida.model_error(observe(w[:2, :2].float(), 5e-3))
    assert theta.dtype == torch.float64
    ref = PolynomialDerivativeLibrary(L)(w[:2, 0].float().double()).reshape(-1, 24)
    torch.testing.assert_close(theta, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise_threshold,found", [(0.0, {"u_xx"}), (None, {"u_xx", "u_xxx"})])
def test_a_small_true_term_next_to_a_large_one_is_found(windows, noise_threshold, found):
    # regression (#12): the RVM's relative pruning dropped 0.02 u_xxx next to a missing u_xx, noise-free
    truth, w = windows
    model = KuramotoSivashinsky((1, 0, 1), extra={"u_xxx": 0.02}, length=L, n=N)
    medida = MEDIDA(model, PolynomialDerivativeLibrary(L), noise_threshold=noise_threshold)  # 0: the old rule
    result = medida.discover(observe(w[:, :2], 5e-3), truth=truth.terms)
    assert set(result.coefficients) == found
    if "u_xxx" in found:
        assert result.coefficients["u_xxx"] == pytest.approx(-0.02, rel=0.01) and not result.spurious


def test_qg_noisy_sparse_observations_with_a_window_interpolator():
    # the review's reproduction (#12): a QG model, noisy observations at half the grid points, an interpolator
    # over windows of 3 snapshots; the EnKF start states used to be filled one at a time and crashed
    from krylon.operators.pde import QuasiGeostrophic
    from krylon.solvers.interpolation import SensorInterpolator
    from krylon.solvers.libraries import QuasiGeostrophicLibrary

    truth, model = QuasiGeostrophic.case("tau_d", shape=(16, 16), lengths=(34.0, 23.0), nu=1e-3)
    psi = truth.initial_state(batch=2, generator=torch.Generator().manual_seed(0))
    w = torch.stack([psi, truth.forecast(psi, 0.025), truth.forecast(truth.forecast(psi, 0.025), 0.025)], 1)
    obs = observe(w, 0.025, noise=0.01, sensors=0.5, shared=True, seed=1)
    medida = MEDIDA(model, QuasiGeostrophicLibrary(model), members=8, interpolate=SensorInterpolator("cubic", window=3))
    states, first = medida.analysis_states(obs)
    assert first == 1 and states.shape == (2, 2, 2, 16, 16) and torch.isfinite(states).all()


def test_sparse_sensors_on_the_ks_grid_filled_spectrally(windows):
    # three quarters of the points observed (the same in every snapshot), filled by a least-squares Fourier fit: the
    # KS state is smooth, so the fill is near exact and the halved u_xx comes back (at half the points of this
    # 64-point grid the fit aliases modes 15-24 and the 4th derivative / dt amplifies them: spurious terms)
    from krylon.solvers.medida import discover_ks

    truth, w = windows
    model = KuramotoSivashinsky((1, 0.5, 1), length=L, n=N)
    found = discover_ks(model, w[:, :2], 5e-3, truth=truth, sensors=0.75, interp="spectral")
    assert found.info["sensors"] == 0.75
    assert set(found.terms) == {"u_xx"} and not found.spurious
    assert abs(found.coefficients["u_xx"] + 0.5) < 0.01
    with pytest.raises(ValueError, match="interpolate"):  # sparse observations without a fill are refused
        MEDIDA(model, PolynomialDerivativeLibrary(L)).discover(observe(w[:, :2], 5e-3, sensors=0.5), truth=truth.terms)

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

"""Spectral-Refiner that lowers the error: the padded (non-periodic) SFNO output window, the zero-initialised
additive spectral bias, the physics loss without its k = 0 mode, per-sample refinement on a generated
Navier-Stokes case whose truth is known, and checkpoints written before these options."""

import json
import math

import numpy as np
import pytest
import torch

from krylon.operators.learned import SFNO, SpectralBias, SpectralConv, registry
from krylon.solvers import OperatorLearner
from krylon.solvers.operator_learning import NavierStokesResidual, relative_errors

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TWO_PI = 2 * math.pi


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_sfno(**kw):
    cfg = dict(modes=(4, 4, 3), width=8, n_layers=2, in_steps=6, out_steps=12)
    cfg.update(kw)
    return SFNO(**cfg).double()


# ----------------------------------------------------------------------------- the padded window
def test_spectral_bias_is_the_first_samples_of_one_longer_period():
    # numpy reference: for rfft frequencies kt >= 1 (below Nyquist) a coefficient c contributes 2 Re(c e^{i theta})
    modes, grid, window = (3, 2, 4), (8, 6, 10), 25
    bias = SpectralBias(1, modes).double()
    with torch.no_grad():
        bias.coeffs.normal_()
        bias.coeffs[..., 0, :] = 0  # the kt = 0 plane: irfftn keeps only its Hermitian part
    c = torch.view_as_complex(bias.coeffs.detach())[0].numpy()
    x, y, t = np.meshgrid(*[np.arange(n) / n for n in grid[:2]], np.arange(grid[2]) / window, indexing="ij")
    expected = np.zeros(grid)
    for ix in range(-modes[0], modes[0]):
        for iy in range(-modes[1], modes[1]):
            for it in range(1, modes[2]):
                expected += 2 * np.real(c[ix % 6, iy % 4, it] * np.exp(1j * TWO_PI * (ix * x + iy * y + it * t)))
    np.testing.assert_allclose(bias(grid, window=window)[0].detach().numpy(), expected, atol=1e-12)
    assert bias(grid).shape == (1, *grid)  # window defaults to the grid: periodic
    with pytest.raises(ValueError, match="window must be >="):
        bias(grid, window=5)


def _best_fit_error(window, steps=40, modes=6):
    """Relative L2 error of the least-squares fit of a linear ramp in time by a SpectralBias of ``modes`` time modes
    on ``steps`` of a ``window``-step period (the field is linear in the coefficients: fit on its basis)."""
    bias = SpectralBias(1, (1, 1, modes)).double()
    basis = []
    for j in range(bias.coeffs.numel()):
        with torch.no_grad():
            bias.coeffs.zero_()
            bias.coeffs.view(-1)[j] = 1.0
        basis.append(bias((2, 2, steps), window=window)[0, 0, 0].detach().numpy())
    a = np.stack(basis, axis=1)
    ramp = np.arange(1, steps + 1) / steps
    coef = np.linalg.lstsq(a, ramp, rcond=None)[0]
    return np.linalg.norm(a @ coef - ramp) / np.linalg.norm(ramp)


def test_a_padded_window_represents_a_ramp_in_time_a_periodic_one_cannot():
    # the trajectory's change from its first step grows with time: a periodic window ties step T back to step 1
    assert _best_fit_error(80) < 0.02
    assert _best_fit_error(40) > 0.1


def test_padded_sfno_output_is_not_periodic_and_still_resamples_one_trajectory():
    x = torch.randn(2, 1, 16, 16, 6, dtype=torch.float64)
    padded, periodic = small_sfno(time_padding=1.0), small_sfno(time_padding=0.0)
    periodic.load_state_dict(padded.state_dict())
    # the same network: the padded output's first T steps are the first T of the periodic one over 2T
    torch.testing.assert_close(padded(x), periodic(x, out_steps=24)[..., :12], atol=1e-12, rtol=0)
    # over its whole period the padded trajectory does not come back: its step T + 1 is not its step 1
    continued = periodic(x, out_steps=24)
    assert not torch.allclose(continued[..., 12], continued[..., 0], atol=1e-3)
    # resampling in time samples one trajectory (time_padding * out_steps integer)
    torch.testing.assert_close(padded(x, out_steps=24)[..., ::2], padded(x), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="time_padding"):
        small_sfno(time_padding=-1)


# ----------------------------------------------------------------------------- the zero-initialised bias
def test_a_zero_bias_leaves_the_output_bit_for_bit_and_receives_gradient():
    model = small_sfno()
    x = torch.randn(2, 1, 16, 16, 6, dtype=torch.float64)
    model.widen_last_layer(model.full_modes((16, 16)))  # widening alone changes the output by roundoff only
    before = model(x).detach()
    params = model.widen_last_layer(model.full_modes((16, 16)), bias_modes=(8, 8, 6))
    assert torch.equal(model(x), before)
    assert model.config["last_bias_modes"] == [8, 8, 6] and model.out.bias.coeffs.shape == (1, 16, 16, 6, 2)
    model(x).square().sum().backward()
    assert any(p is model.out.bias.coeffs for p in params) and model.out.bias.coeffs.grad.abs().sum() > 0
    conv = SpectralConv(2, 3, (3, 3, 2)).double()
    h = torch.randn(1, 2, 8, 8, 6, dtype=torch.float64)
    assert torch.equal(conv.widened((3, 3, 2), bias_modes=(4, 4, 3))(h, out_last=9, window=18),
                       conv(h, out_last=9, window=18))
    with pytest.raises(ValueError, match="bias_modes"):
        SpectralConv(1, 1, (2, 2), bias_modes=(2, 2, 2))


def test_a_refined_checkpoint_with_a_bias_rebuilds_itself(tmp_path):
    model = small_sfno().float()
    model.widen_last_layer(model.full_modes((16, 16)), bias_modes=(8, 8, 4))
    with torch.no_grad():
        model.out.bias.coeffs.normal_()
    model.save(tmp_path / "m.pt")
    again = SFNO.load(tmp_path / "m.pt")
    x = torch.randn(1, 1, 16, 16, 6)
    assert again.config["last_bias_modes"] == [8, 8, 4]
    assert torch.equal(again(x), model(x))


# ----------------------------------------------------------------------------- the physics loss without k = 0
def test_the_physics_loss_ignores_a_constant_added_to_the_prediction():
    learner = OperatorLearner(small_sfno(), normalize=False, time_axis=-1)
    residual = NavierStokesResidual(1e-3, 0.2)
    x = torch.randn(2, 1, 16, 16, 6, dtype=torch.float64)
    pred = torch.randn(2, 1, 16, 16, 12, dtype=torch.float64)

    def loss(p, drop_mean):
        from krylon.solvers.losses import sobolev_loss

        def hs2(u):
            return sobolev_loss(u, None, s=-1.0, alpha=10 ** -1.5, squared=True, reduction="none", time_axis=-1)
        return learner._physics_loss(x, p, residual, hs2, drop_mean=drop_mean)

    # a constant vorticity moves no fluid and only changes the residual's mean (the first step's dw/dt)
    torch.testing.assert_close(loss(pred + 0.7, True), loss(pred, True), rtol=1e-10, atol=0)
    assert not torch.allclose(loss(pred + 0.7, False), loss(pred, False), rtol=1e-3)


# ----------------------------------------------------------------------------- refinement on a known truth
@pytest.fixture(scope="module")
def ns16(tmp_path_factory):
    from krylon.datasets import open_dataset
    from krylon.datasets.navier_stokes import generate

    path = tmp_path_factory.mktemp("ns") / "ns16.h5"
    generate(path, 2, resolution=16, sim_resolution=16, dt=2e-2, warmup=2.0, interval=0.2, t_in=6, t_out=12,
             seed=3, store_dtype="float64")
    return path, open_dataset(path)


def test_per_sample_refinement_of_a_persistence_forecast_lowers_its_error(ns16):
    from krylon.datasets import read_attrs

    path, data = ns16
    model = small_sfno()
    with torch.no_grad():
        model.out.weight.zero_()  # stage 1 = persistence: every output step is the last input step
    learner = OperatorLearner(model, normalize=False, time_axis=-1)
    residual = NavierStokesResidual.from_attrs(read_attrs(path), str(path))
    x = torch.stack([torch.as_tensor(data[i]["x"]) for i in range(len(data))])
    y = torch.stack([torch.as_tensor(data[i]["y"]) for i in range(len(data))])
    before = relative_errors(learner.predict(x), y, time_axis=-1)
    out = learner.refine(x, residual=residual, steps=60)
    after = relative_errors(out["predictions"], y, time_axis=-1)
    assert out["loss"][-1] < 0.2 * out["loss"][0]
    assert bool((after < 0.25 * before).all()), (before, after)  # 0.25, 0.31 -> 0.02, 0.03
    assert torch.equal(model.out.weight, torch.zeros_like(model.out.weight))  # the model is untouched
    # the k = 0 mode left out of the loss: each snapshot's mean is the last input's, as the equations conserve it
    torch.testing.assert_close(out["predictions"].mean(dim=(2, 3)),
                               x[..., -1:].mean(dim=(2, 3)).expand(-1, -1, 12), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.mean(dim=(2, 3)), x[..., -1:].mean(dim=(2, 3)).expand(-1, -1, 12), atol=1e-8, rtol=0)
    ev = learner.evaluate(data, refine={"residual": residual, "steps": 60})
    np.testing.assert_allclose(ev["l2_per_sample"], after.numpy(), rtol=1e-6)
    assert ev["refine_seconds"] > 0


def test_refine_rejects_per_sample_data_mode_and_lbfgs_on_a_data_set(ns16):
    _, data = ns16
    learner = OperatorLearner(small_sfno(), normalize=False, time_axis=-1)
    with pytest.raises(ValueError, match="per-sample refinement uses no targets"):
        learner.refine(data, mode="data", per_sample=True)
    with pytest.raises(ValueError, match="lbfgs"):
        learner.refine(data, mode="data", optimizer="lbfgs")
    with pytest.raises(TypeError, match="refine must be a dict"):
        learner.evaluate(data, refine=True)


def test_cli_refine_and_evaluate_refine_each_sample(ns16, tmp_path, capsys):
    from krylon import cli

    path, _ = ns16
    model = small_sfno().float()
    with torch.no_grad():
        model.out.weight.zero_()
    OperatorLearner(model, normalize=False, time_axis=-1).save(tmp_path / "m.pt")
    assert cli.main(["refine", "--model", str(tmp_path / "m.pt"), "--data", str(path), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "refined per sample" in out and "x lower" in out
    record = json.loads((tmp_path / "m-refined.json").read_text())["sets"][str(path)]
    assert record["after"]["l2"] < 0.5 * record["before"]["l2"]
    assert cli.main(["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(path), "--refine", "--steps", "40",
                     "--json", str(tmp_path / "e.json")]) == 0
    assert "(refined)" in capsys.readouterr().out
    refined = json.loads((tmp_path / "e.json").read_text())[str(path)]
    np.testing.assert_allclose(refined["l2"], record["after"]["l2"], rtol=1e-6)
    assert not (tmp_path / "m-refined.pt").exists()  # per sample: the model is not rewritten


# ----------------------------------------------------------------------------- old checkpoints
def test_a_checkpoint_written_before_time_padding_loads_periodic(tmp_path):
    old = small_sfno(time_padding=0.0).float()
    ckpt = registry.checkpoint(old)
    config = json.loads(ckpt["config"])
    del config["time_padding"], config["last_bias_modes"]  # what the previous version wrote
    ckpt["config"] = json.dumps(config)
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = SFNO.load(tmp_path / "old.pt")
    assert loaded.config["time_padding"] == 0.0 and loaded.out.bias is None
    x = torch.randn(1, 1, 16, 16, 6)
    assert torch.equal(loaded(x), old(x))
    assert SFNO().config["time_padding"] == 1.0  # a fresh model is padded

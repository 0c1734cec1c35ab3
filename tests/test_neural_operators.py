"""Spectral neural operators: SpectralConv against single-mode analytic fields, SFNO, FNO, widening, checkpoints."""

import doctest
import json
import math

import numpy as np
import pytest
import torch

from krylon.operators.learned import FNO, SFNO, SpectralConv, fno, registry, sfno, spectral

TWO_PI = 2 * math.pi
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def mode_field(shape, freq, phase=0.3):
    """cos(2 pi (f . x) + phase) on the unit cell, float64, shape (1, 1, *shape)."""
    axes = np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij")
    arg = TWO_PI * sum(f * x for f, x in zip(freq, axes)) + phase
    return torch.tensor(np.cos(arg))[None, None], arg


def weight_at(conv, freq):
    """The complex weight a SpectralConv applies to frequency ``freq`` (the last entry >= 0)."""
    w = torch.view_as_complex(conv.weight.detach())[0, 0]
    idx = tuple(f % (2 * m) if a < len(freq) - 1 else f for a, (f, m) in enumerate(zip(freq, conv.modes)))
    return complex(w[idx])


# ----------------------------------------------------------------------------- SpectralConv
@pytest.mark.parametrize("freq", [pytest.param((2, 1), id="pos"), pytest.param((-3, 2), id="neg-x"),
                                  pytest.param((0, 3), id="axis"), pytest.param((-4, 1), id="edge"),
                                  pytest.param((3,), id="1d")])
@pytest.mark.parametrize("shape", [pytest.param((16, 12), id="16x12"), pytest.param((33, 20), id="33x20")])
def test_spectral_conv_multiplies_a_kept_mode_by_its_weight(freq, shape):
    # a kept mode cos(theta) comes out as Re(W e^{i theta}), whatever the resolution: the coefficients are normalised
    shape = shape[: len(freq)]
    conv = SpectralConv(1, 1, (4, 4)[: len(freq)]).double()
    u, arg = mode_field(shape, freq)
    w = weight_at(conv, freq)
    expected = w.real * np.cos(arg) - w.imag * np.sin(arg)
    np.testing.assert_allclose(conv(u)[0, 0].detach().numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("freq", [pytest.param((4, 1), id="x-beyond"), pytest.param((1, 4), id="t-beyond"),
                                  pytest.param((-5, 0), id="neg-beyond")])
def test_spectral_conv_drops_modes_it_does_not_keep(freq):
    conv = SpectralConv(1, 1, (4, 4)).double()
    u, _ = mode_field((16, 16), freq)
    assert float(conv(u).detach().abs().max()) < 1e-12


def test_spectral_conv_channels_mix_by_the_weight_matrix():
    conv = SpectralConv(2, 3, (3, 2, 2)).double()
    u0, arg = mode_field((8, 6, 4), (1, -2, 1))
    u = torch.cat([u0, 2 * u0], dim=1)
    w = torch.view_as_complex(conv.weight.detach())[:, :, 1, -2 % 4, 1]  # (in, out)
    coef = (w[0] + 2 * w[1]).numpy()
    out = conv(u)[0].detach().numpy()
    for o in range(3):
        np.testing.assert_allclose(out[o], coef[o].real * np.cos(arg) - coef[o].imag * np.sin(arg), atol=1e-12)


def test_spectral_conv_resamples_the_last_axis_spectrally():
    conv = SpectralConv(1, 1, (3, 3)).double()
    u, _ = mode_field((12, 10), (1, 2))
    fine = conv(u, out_last=40)
    coarse = conv(u)
    # the output on 40 points interpolates the output on 10: every 4th sample is the same
    torch.testing.assert_close(fine[..., ::4], coarse, atol=1e-12, rtol=0)
    _, arg_fine = mode_field((12, 40), (1, 2))
    w = weight_at(conv, (1, 2))
    np.testing.assert_allclose(fine[0, 0].detach().numpy(), w.real * np.cos(arg_fine) - w.imag * np.sin(arg_fine),
                               atol=1e-12)


def test_spectral_conv_weights_are_real_and_widening_keeps_the_output():
    conv = SpectralConv(2, 2, (3, 3, 2))
    assert all(not p.is_complex() for p in conv.parameters())
    x = torch.randn(2, 2, 10, 8, 6)
    wide = conv.widened((5, 4, 4))
    assert wide.weight.shape == (2, 2, 10, 8, 4, 2)
    torch.testing.assert_close(wide(x), conv(x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cannot drop modes"):
        conv.widened((2, 3, 2))
    # on a grid coarser than its new modes the widened layer uses what that grid resolves (the old modes fit)
    coarse = torch.randn(2, 2, 8, 8, 6)
    torch.testing.assert_close(wide(coarse), conv(coarse), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs at least 6 points"):
        wide(torch.randn(2, 2, 4, 8, 6))  # but not below the modes it was widened from


def test_spectral_conv_runs_in_float32_under_autocast():
    conv = SpectralConv(1, 1, (2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.randn(1, 1, 6, 10).to(torch.bfloat16))
    assert y.dtype == torch.float32 and y.shape == (1, 1, 6, 10)


# ----------------------------------------------------------------------------- SFNO
def small_sfno(**kw):
    cfg = dict(modes=(4, 4, 3), width=8, n_layers=2, in_steps=6, out_steps=12)
    cfg.update(kw)
    return SFNO(**cfg)


def test_sfno_shapes_resolutions_and_out_steps():
    model = small_sfno()
    assert model(torch.randn(2, 1, 16, 16, 6)).shape == (2, 1, 16, 16, 12)
    assert model(torch.randn(1, 1, 24, 8, 6), out_steps=7).shape == (1, 1, 24, 8, 7)
    mlp = small_sfno(mlp_channels=16)
    assert mlp(torch.randn(1, 1, 8, 8, 6)).shape == (1, 1, 8, 8, 12) and len(mlp.mlp[0]) == 3
    two = small_sfno(in_channels=2, out_channels=3)
    assert not two.residual
    assert two(torch.randn(1, 2, 8, 8, 6)).shape == (1, 3, 8, 8, 12)
    assert all(not p.is_complex() for p in model.parameters())  # DDP and AMP see real tensors only


def test_sfno_output_is_resampled_in_time_spectrally():
    model = small_sfno().double()
    x = torch.randn(2, 1, 16, 16, 6, dtype=torch.float64)
    y12, y24, y6 = model(x), model(x, out_steps=24), model(x, out_steps=6)
    torch.testing.assert_close(y24[..., ::2], y12, atol=1e-12, rtol=0)
    torch.testing.assert_close(y12[..., ::2], y6, atol=1e-12, rtol=0)


def test_sfno_residual_adds_the_last_input_step():
    model = small_sfno().double()
    with torch.no_grad():
        model.out.weight.zero_()  # the network's own part is then zero
    x = torch.randn(1, 1, 8, 8, 6, dtype=torch.float64)
    torch.testing.assert_close(model(x), x[..., -1:].expand(-1, -1, -1, -1, 12))


def test_sfno_widen_last_layer_keeps_output_and_trains_new_modes(tmp_path):
    model = small_sfno().double()
    x = torch.randn(2, 1, 16, 16, 6, dtype=torch.float64)
    before = model(x).detach()
    assert model.full_modes((16, 16, 12)) == (8, 8, 4)
    params = model.widen_last_layer(model.full_modes((16, 16)))  # the full grid of 16 x 16 x 6
    assert model.last_spectral_layer() is model.out and model.out.modes == (8, 8, 4)
    assert [p is q for p, q in zip(params, model.out.parameters())] == [True]
    torch.testing.assert_close(model(x), before, atol=1e-12, rtol=0)
    # the new modes receive gradient: refinement can use them
    model(x).square().sum().backward()
    g = torch.view_as_complex(model.out.weight.grad)
    assert float(g[0, 0, 7, 7, 3].abs()) > 0
    # the config records the widening, so the refined checkpoint rebuilds itself
    assert model.config["last_modes"] == [8, 8, 4]
    registry.save_checkpoint(model, tmp_path / "sfno.pt")
    loaded = SFNO.load(tmp_path / "sfno.pt").double()
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match="cannot drop modes"):
        model.widen_last_layer((4, 4, 3))
    with pytest.raises(ValueError, match="time modes"):
        model.widen_last_layer((8, 8, 5))


def test_sfno_learns_in_a_few_steps():
    # a smoke test of trainability: the loss of a fixed batch falls
    model = small_sfno(width=6)
    x = torch.randn(4, 1, 8, 8, 6)
    target = torch.roll(x[..., -1:], 1, dims=2).expand(-1, -1, -1, -1, 12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (model(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("call,match", [
    pytest.param(lambda m: m(torch.randn(1, 1, 6, 16, 6)), "needs at least 8 points", id="grid-too-small"),
    pytest.param(lambda m: m(torch.randn(1, 1, 16, 16, 5)), "input steps", id="wrong-steps"),
    pytest.param(lambda m: m(torch.randn(1, 2, 16, 16, 6)), r"\(B, 1, X, Y, 6\)", id="wrong-channels"),
    pytest.param(lambda m: m(torch.randn(1, 16, 16, 6)), "got", id="wrong-dims"),
    pytest.param(lambda m: m(torch.randn(1, 1, 16, 16, 6), out_steps=0), "out_steps", id="out-steps"),
    pytest.param(lambda m: SFNO(modes=(4, 4)), "three integers", id="modes"),
    pytest.param(lambda m: SFNO(modes=(4, 4, 6), in_steps=6), "in_steps", id="time-modes"),
])
def test_sfno_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(small_sfno())


# ----------------------------------------------------------------------------- FNO (neuraloperator's)
@pytest.fixture(scope="module")
def fno_model():
    torch.manual_seed(1)
    return FNO((8, 6), hidden_channels=8, n_layers=2)


def test_fno_shapes_and_zero_shot(fno_model):
    assert fno_model(torch.randn(3, 1, 16, 16)).shape == (3, 1, 16, 16)
    assert fno_model(torch.randn(1, 1, 40, 24)).shape == (1, 1, 40, 24)
    assert type(fno_model.net).__module__.startswith("neuralop")


def test_fno_modes_use_neuraloperators_total_count_convention(fno_model):
    # n_modes=(8, 6): frequencies -4..3 on the first axis, rfft 0..3 (6 // 2 + 1 modes) on the last; the bias aside
    conv = fno_model.last_spectral_layer()
    with torch.no_grad():
        for f, passes in [((3, 1), True), ((-4, 1), True), ((5, 1), False), ((1, 3), True), ((1, 4), False)]:
            u, _ = mode_field((16, 16), f)
            out = conv(u.float().expand(1, 8, 16, 16).contiguous()) - conv.bias
            assert (float(out.abs().max()) > 1e-3) is passes, f


def test_fno_widen_last_layer_keeps_output(tmp_path):
    model = FNO((6, 4), hidden_channels=8, n_layers=2)
    x = torch.randn(2, 1, 16, 12)
    before = model(x).detach()
    assert model.full_modes((16, 12)) == (16, 12)
    params = model.widen_last_layer(model.full_modes((16, 12)))  # the full grid
    assert model.config["last_n_modes"] == [16, 12]
    conv = model.last_spectral_layer()
    assert conv.weight.shape == (8, 8, 16, 7)
    assert {id(p) for p in params} == {id(p) for p in conv.parameters()}
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
    model(x).square().sum().backward()
    assert float(conv.weight.tensor.grad[..., 0, 6].abs().max()) > 0  # an outermost new mode learns
    registry.save_checkpoint(model, tmp_path / "fno.pt")
    loaded = registry.load_checkpoint(tmp_path / "fno.pt", expect=FNO)
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match="cannot drop modes"):
        model.widen_last_layer((8, 8))
    with pytest.raises(ValueError, match="at least.*widened to \\(16, 12\\) modes by a refinement"):
        model(torch.randn(1, 1, 12, 12))  # the widened layer needs the full 16 x 12 grid


def test_fno_checkpoint_round_trip_and_other_model_refused(tmp_path, fno_model):
    path = tmp_path / "fno.pt"
    registry.save_checkpoint(fno_model, path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model"] == "fno.FNO" and json.loads(ckpt["config"])["n_modes"] == [8, 6]
    loaded = FNO.from_config(json.loads(ckpt["config"]))
    loaded.load_state_dict(ckpt["state_dict"])
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(loaded(x), fno_model(x))
    with pytest.raises(ValueError, match="holds a fno.FNO checkpoint, not a SFNO"):
        registry.load_checkpoint(path, expect=SFNO)
    small_sfno().save(tmp_path / "sfno.pt")
    with pytest.raises(ValueError, match="holds a sfno.SFNO checkpoint, not a FNO"):
        FNO.load(tmp_path / "sfno.pt")
    with pytest.raises(ValueError, match="holds a fno.FNO checkpoint, not a SFNO"):
        SFNO.load(path)
    dcdm = registry.load_pretrained("dcdm", "poisson2d")
    registry.save_checkpoint(dcdm, tmp_path / "dcdm.pt")
    with pytest.raises(ValueError, match="holds a dcdm.DCDMNet checkpoint, not a SFNO"):
        SFNO.load(tmp_path / "dcdm.pt")
    assert isinstance(FNO.load(path), FNO) and not FNO.load(path).training


def test_fno_to_float64_keeps_the_complex_spectral_weights():
    model = FNO((6, 6), hidden_channels=4, n_layers=1)
    w = model.last_spectral_layer().weight.tensor.detach().clone()
    x = torch.randn(2, 1, 12, 12)
    y = model(x).detach()
    model.to(torch.float64)
    w64 = model.last_spectral_layer().weight.tensor
    assert w64.dtype == torch.complex128 and torch.equal(w64.detach().to(torch.complex64), w)
    torch.testing.assert_close(model(x.double()).float(), y, atol=1e-5, rtol=1e-5)
    model.float()
    assert model.last_spectral_layer().weight.tensor.dtype == torch.complex64


def test_fno_passes_neuraloperator_options_through_its_config(tmp_path):
    model = FNO((6, 6), in_channels=2, out_channels=3, hidden_channels=4, n_layers=1, positional_embedding=None,
                domain_padding=(0.25, 0.25), lifting_channel_ratio=1)
    assert model.config["domain_padding"] == [0.25, 0.25] and model.net.positional_embedding is None
    x = torch.randn(2, 2, 12, 12)
    model.save(tmp_path / "f.pt")
    torch.testing.assert_close(FNO.load(tmp_path / "f.pt")(x), model(x))


@pytest.mark.parametrize("call,err,match", [
    pytest.param(lambda m: m(torch.randn(1, 1, 6, 16)), ValueError, "at least", id="grid-too-small"),
    pytest.param(lambda m: m(torch.randn(1, 2, 16, 16)), ValueError, r"\(B, 1, <2 space axes>\)", id="channels"),
    pytest.param(lambda m: m(torch.randn(1, 1, 16)), ValueError, "space axes", id="dims"),
    pytest.param(lambda m: m(np.zeros((1, 1, 16, 16))), TypeError, "torch.Tensor", id="numpy"),
    pytest.param(lambda m: m.widen_last_layer((8,)), ValueError, "2 entries", id="widen-dims"),
    pytest.param(lambda m: FNO((8, 8), non_linearity=torch.tanh), TypeError, "JSON", id="not-json"),
    pytest.param(lambda m: FNO((8, 8), n_layers=0), ValueError, "n_layers", id="layers"),
])
def test_fno_bad_input(fno_model, call, err, match):
    with pytest.raises(err, match=match):
        call(fno_model)


def test_docstring_examples():
    for mod in (spectral, sfno, fno):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__

"""Review fixes of OperatorLearner: refine leaves the trainable flags as it found them (also when it fails), refuses
lr=0; the physics residual of a trajectory (all steps at once, optionally on a finer grid); the SFNO skip connection
in physical units; the Navier-Stokes residual built from a data set's attributes; errors that name the file."""

import math

import numpy as np
import pytest
import torch

from krylon.operators.learned.sfno import SFNO
from krylon.operators.pde.navier_stokes import NavierStokes2D
from krylon.solvers.operator_learning import NavierStokesResidual, OperatorLearner

pytestmark = pytest.mark.usefixtures("torch_one_thread")
QUIET = dict(progress=False, log=lambda s: None, plot=False)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=4, grid=16, t_in=6, t_out=8, offset=0.0, seed=0, path=None):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, grid, grid, t_in, generator=g) + offset
        self.y = 3 * torch.randn(n, 1, grid, grid, t_out, generator=g) - 2 * offset
        if path is not None:
            self.path = path

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _sfno(**kw):
    torch.manual_seed(0)
    return SFNO(**{**dict(modes=(4, 4, 3), width=6, n_layers=1, in_steps=6, out_steps=8), **kw})


def test_refine_with_invalid_modes_leaves_every_parameter_trainable():
    model = _sfno()
    learner = OperatorLearner(model, normalize=False, time_axis=-1)
    with pytest.raises(ValueError, match="cannot drop modes"):
        learner.refine(Pairs(), mode="data", modes=(2, 2, 2))
    assert all(p.requires_grad for p in model.parameters())


def test_refine_restores_the_flags_the_user_set():
    model = _sfno()
    model.lift.weight.requires_grad_(False)  # frozen by the user before refining
    learner = OperatorLearner(model, normalize=False, time_axis=-1)
    learner.refine(Pairs(), mode="data", steps=1)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert flags.pop("lift.weight") is False and all(flags.values())


@pytest.mark.parametrize("kw, match", [({"lr": 0.0}, "lr must be positive"), ({"grid": (17, 16)}, "two even sizes")])
def test_refine_refuses_bad_options(kw, match):
    learner = OperatorLearner(_sfno(), normalize=False, time_axis=-1)
    with pytest.raises(ValueError, match=match):
        learner.refine(Pairs(), mode="data", **kw)


def test_sfno_skip_connection_predicts_the_change_in_physical_units(tmp_path):
    """With the output spectral layer zeroed the network's output is its skip connection: the last input frame,
    in physical units, although x and y have very different statistics."""
    model = _sfno()
    learner = OperatorLearner(model, time_axis=-1)
    data = Pairs(offset=5.0)
    learner.fit(data, epochs=1, batch_size=4, lr=1e-4, val_fraction=0.0, out_dir=tmp_path, **QUIET)
    with torch.no_grad():
        model.last_spectral_layer().weight.zero_()
    pred = learner.predict(data.x)
    torch.testing.assert_close(pred, data.x[..., -1:].expand_as(pred), atol=1e-5, rtol=1e-5)


def _spectral_upsample(w, n):
    """numpy zero padding of the centred spectrum (an independent band-limited interpolation), last two axes."""
    m = w.shape[-1]
    c = np.fft.fftshift(np.fft.fft2(w), axes=(-2, -1))
    c[..., 0, :] = 0.0  # drop the coarse Nyquist row/column (not a real field's symmetric pair)
    c[..., :, 0] = 0.0
    pad = (n - m) // 2
    big = np.zeros(w.shape[:-2] + (n, n), dtype=complex)
    big[..., pad:pad + m, pad:pad + m] = c
    return np.real(np.fft.ifft2(np.fft.ifftshift(big, axes=(-2, -1)))) * (n * n) / (m * m)


def test_physics_loss_is_the_trajectory_residual_on_the_chosen_grid():
    ns = NavierStokes2D(viscosity=1e-3)
    residual = NavierStokesResidual(1e-3, 0.2)
    learner = OperatorLearner(_sfno(), normalize=False, time_axis=-1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 16, 6, generator=g, dtype=torch.float64)
    pred = torch.randn(2, 1, 16, 16, 8, generator=g, dtype=torch.float64)

    def hs2(r):  # s = 0: L2 per sample and step on the unit box, time integral with dt = 1 / T
        return (r**2).mean(dim=(-3, -2)).sum(dim=1).mean(-1)

    for grid in (None, (32, 32)):
        w = torch.cat([x[..., -1:], pred], dim=-1).numpy()
        if grid is not None:
            w = np.moveaxis(_spectral_upsample(np.moveaxis(w, -1, -3), 32), -3, -1)
        w = torch.from_numpy(w)
        pairs = torch.stack([ns.crank_nicolson_residual(w[..., t], w[..., t + 1], 0.2) for t in range(8)], dim=-1)
        got = learner._physics_loss(x, pred, residual, hs2, grid, drop_mean=False)  # per sample
        torch.testing.assert_close(got, hs2(pairs), rtol=1e-10, atol=0)


def test_navier_stokes_residual_from_a_data_sets_attributes():
    r = NavierStokesResidual.from_attrs({"viscosity": 1e-4, "times": [30.0, 30.25, 30.5], "lengths": [1.0, 1.0]})
    assert r.interval == pytest.approx(0.25) and r.equations.viscosity == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="ns.h5 does not say its viscosity"):
        NavierStokesResidual.from_attrs({"times": [0.0, 1.0]}, "ns.h5")


def test_evaluate_shape_error_names_the_file():
    learner = OperatorLearner(_sfno(), normalize=False, time_axis=-1)
    with pytest.raises(ValueError, match="targets of /data/ns-test.h5"):
        learner.evaluate(Pairs(t_out=5, path="/data/ns-test.h5"))
    assert math.isfinite(learner.evaluate(Pairs())["l2"])

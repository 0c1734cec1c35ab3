"""SpectralConv's time resampling treats the Nyquist bin like ``scipy.signal.resample`` (a layer widened to every
time mode gives the same trajectory at every number of output steps), and a widened layer runs on the coarser
grids its original modes fit (an SFNO refined at a fine grid still runs at a coarse one)."""

import numpy as np
import pytest
import scipy.signal
import torch

from krylon.operators.learned import registry
from krylon.operators.learned.sfno import SFNO
from krylon.operators.learned.spectral import SpectralConv

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _full_time_layer(t=10):
    torch.manual_seed(0)
    return SpectralConv(2, 2, (3, t // 2 + 1)).double()  # every rfft mode of t steps, the Nyquist bin included


@pytest.mark.parametrize("n_out", [40, 15, 8, 7, 4])
def test_time_resampling_with_the_nyquist_bin_matches_scipy_resample(n_out):
    conv = _full_time_layer()
    x = torch.randn(3, 2, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        native = conv(x).numpy()
        out = conv(x, out_last=n_out).numpy()
    np.testing.assert_allclose(out, scipy.signal.resample(native, n_out, axis=-1), atol=1e-12)


def test_every_fourth_of_40_steps_is_the_10_step_output():
    conv = _full_time_layer()
    x = torch.randn(2, 2, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, out_last=40)[..., ::4], conv(x), atol=1e-12, rtol=0)


def test_a_refined_sfno_runs_on_a_coarser_grid_and_after_reloading(tmp_path):
    torch.manual_seed(0)
    model = SFNO(modes=(3, 3, 3), width=4, n_layers=1, in_steps=6, out_steps=6).double()
    coarse = torch.randn(2, 1, 8, 8, 6, dtype=torch.float64)
    with torch.no_grad():
        before = model(coarse)
    model.widen_last_layer(model.full_modes((16, 16)))  # refined at 16^2: (8, 8, 4) modes
    with torch.no_grad():
        # the new modes start at zero and the grid still holds the old ones: the same output at 8^2
        torch.testing.assert_close(model(coarse), before, atol=1e-12, rtol=0)
        torch.nn.init.normal_(model.last_spectral_layer().weight)
        at8, at16 = model(coarse), model(torch.randn(1, 1, 16, 16, 6, dtype=torch.float64))
    assert at8.shape == (2, 1, 8, 8, 6) and at16.shape == (1, 1, 16, 16, 6)
    registry.save_checkpoint(model, tmp_path / "m.pt")
    loaded = registry.load_checkpoint(tmp_path / "m.pt", expect=SFNO).double()
    with torch.no_grad():
        torch.testing.assert_close(loaded(coarse), at8)
    with pytest.raises(ValueError, match="at least 6 points"):
        model(torch.randn(1, 1, 4, 8, 6, dtype=torch.float64))  # the hidden layers' 3 modes need 6 points


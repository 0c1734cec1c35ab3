"""Sparse-sensor interpolation (cubic, spectral, RFF-MLP) against exact band-limited fields and smooth periodic
fields; the RFF network's checkpoint round trip and periodicity; bad input."""

import math

import pytest
import torch

from krylon.operators.learned import registry
from krylon.operators.learned.rff import RFFMLP
from krylon.solvers.interpolation import SensorInterpolator, interpolate

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _field(n1=32, n2=32, modes=((1, 2), (3, -1), (0, 4))):
    x1 = torch.arange(n1, dtype=torch.float64)[:, None] / n1
    x2 = torch.arange(n2, dtype=torch.float64)[None, :] / n2
    u = torch.zeros(n1, n2, dtype=torch.float64)
    for i, (a, b) in enumerate(modes):
        u = u + (1 + 0.3 * i) * torch.cos(2 * math.pi * (a * x1 + b * x2) + 0.7 * i)
    return u


def _mask(shape, frac, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < frac


def test_spectral_is_exact_for_band_limited_fields_per_channel():
    u = torch.stack((_field(), _field(modes=((2, 2), (1, -3)))))      # two channels
    mask = torch.stack((_mask((32, 32), 0.3, 0), _mask((32, 32), 0.25, 1)))  # different layouts
    values = torch.stack((u, 2 * u)).masked_fill(~mask, float("nan"))  # batch of 2
    out = interpolate(values, mask, method="spectral")
    torch.testing.assert_close(out, torch.stack((u, 2 * u)), atol=1e-8, rtol=0)


def test_cubic_passes_through_sensors_and_is_accurate_on_smooth_fields():
    u = _field(48, 48, modes=((1, 1), (0, 2)))
    mask = _mask((48, 48), 0.4)
    out = interpolate(u.masked_fill(~mask, float("nan")), mask, method="cubic")
    torch.testing.assert_close(out[mask], u[mask], atol=1e-12, rtol=0)
    err = (out - u).abs().max().item()
    assert err < 3e-2, err  # the field spans [-2.3, 2.3]
    # near the box's edges too: the periodic copies of the sensors cover them
    assert (out - u)[:, :3].abs().max() < 3e-2 and (out - u)[-3:].abs().max() < 3e-2


@pytest.mark.parametrize("method", ["cubic", "spectral"])
def test_window_changes_nothing_for_linear_methods(method):
    u = torch.stack((_field(), _field() + 0.01 * _field(modes=((2, 1),))))
    mask = _mask((32, 32), 0.35)
    v = u.masked_fill(~mask, float("nan"))
    # Clough-Tocher estimates its gradients iteratively (scipy's tol 1e-6): linear only to that accuracy
    torch.testing.assert_close(interpolate(v, mask, method=method, window=2), interpolate(v, mask, method=method),
                               atol=1e-10 if method == "spectral" else 1e-7, rtol=0)


def test_rff_fits_a_smooth_field_and_its_increment():
    base = _field(32, 32, modes=((1, 0), (0, 1), (1, 1)))
    step = 1e-3 * _field(32, 32, modes=((1, 2),))
    u = torch.stack((base, base + step))
    mask = _mask((32, 32), 0.4)
    out = interpolate(u.masked_fill(~mask, float("nan")), mask, method="rff", window=2, sigma=1.0, features=32,
                      width=32, depth=2, epochs=400, lr=5e-3)
    assert ((out[0] - base).norm() / base.norm()).item() < 0.05
    # the increment is a thousand times smaller than the state, fitted on its own scale
    assert ((out[1] - out[0] - step).norm() / step.norm()).item() < 0.2


def test_rff_network_checkpoint_round_trip_and_periodicity(tmp_path):
    net = RFFMLP(2, 3, sigma=3.0, features=16, width=24, depth=2, periodic=True, seed=5)
    x = torch.rand(7, 2)
    torch.testing.assert_close(net(x), net(x + torch.tensor([1.0, -2.0])), atol=1e-5, rtol=0)
    registry.save_checkpoint(net, tmp_path / "rff.pt")
    back = registry.load_checkpoint(tmp_path / "rff.pt", expect=RFFMLP)
    assert back.config == net.config
    torch.testing.assert_close(back(x), net(x))
    assert back.encode(x).shape == (7, 32)
    with pytest.raises(ValueError, match="components"):
        net(torch.rand(4, 3))
    same = RFFMLP(2, 3, sigma=3.0, features=16, width=24, depth=2, periodic=True, seed=5)
    torch.testing.assert_close(same(x), net(x))  # seeded: independent of the global RNG


@pytest.mark.parametrize("call, err, match", [
    pytest.param(lambda v, m: interpolate(v, m.int()), TypeError, "boolean", id="mask-dtype"),
    pytest.param(lambda v, m: interpolate(v, m[:8]), ValueError, "shape", id="mask-shape"),
    pytest.param(lambda v, m: interpolate(v, torch.zeros_like(m)), ValueError, "at least 4", id="no-sensors"),
    pytest.param(lambda v, m: interpolate(v, m, method="linear"), ValueError, "method", id="method"),
    pytest.param(lambda v, m: interpolate(v, m, method="cubic", sigma=2.0), TypeError, "rff", id="option-method"),
    pytest.param(lambda v, m: interpolate(v, m, method="rff", bogus=1), TypeError, "unknown", id="option-name"),
    pytest.param(lambda v, m: interpolate(torch.full_like(v, float("nan")), m), ValueError, "finite", id="nan-sensor"),
    pytest.param(lambda v, m: interpolate(v[None].expand(3, 16, 16), m, window=2), ValueError, "window", id="window"),
    pytest.param(lambda v, m: interpolate(v, m, method="spectral", cutoff=8), ValueError, "unknowns", id="cutoff"),
    pytest.param(lambda v, m: SensorInterpolator("rff", width=0), ValueError, "width", id="interpolator-option"),
])
def test_bad_input(call, err, match):
    v = _field(16, 16)
    m = _mask((16, 16), 0.3)
    with pytest.raises(err, match=match):
        call(v, m)


def test_docstring_examples():
    import doctest

    from krylon.operators.learned import rff
    from krylon.operators.pde import quasi_geostrophic
    from krylon.solvers import interpolation, libraries

    for mod in (rff, interpolation, quasi_geostrophic):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__
    finder = doctest.DocTestFinder()
    (test,) = [t for t in finder.find(libraries.QuasiGeostrophicLibrary) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0


def test_spectral_keeps_the_sine_of_the_first_frequency():
    # regression (#12): the basis dropped the sine of its first frequency (-c0, 1) instead of the (0, 0) one's,
    # so sin 2 pi (-3 x + y) at cutoff (3, 2) came back with a max error of 1.30
    x1 = torch.arange(32, dtype=torch.float64)[:, None] / 32
    x2 = torch.arange(32, dtype=torch.float64)[None, :] / 32
    u = torch.sin(2 * math.pi * (-3 * x1 + x2)) + 0.5 + 0.2 * torch.cos(2 * math.pi * (x1 - 2 * x2))
    mask = _mask((32, 32), 0.3, 2)
    out = interpolate(u.masked_fill(~mask, float("nan"))[None], mask, method="spectral", cutoff=(3, 2))[0]
    torch.testing.assert_close(out, u, atol=1e-9, rtol=0)


def test_one_dimensional_grids_spectral_exact_and_cubic_spline_converges():
    # a 1-D mask is a 1-D periodic grid (Kuramoto-Sivashinsky states): a band-limited field is recovered exactly
    # by the Fourier fit, and the periodic cubic spline's error falls ~16x when the sensor spacing halves
    from krylon.solvers.interpolation import interpolate

    def field(n):
        x = torch.arange(n, dtype=torch.float64) / n
        return torch.stack([torch.sin(2 * math.pi * 3 * x) + 0.5 * torch.cos(2 * math.pi * 5 * x + 0.3), torch.cos(2 * math.pi * x)])

    n = 256
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:64]] = True
    u = field(n)
    filled = interpolate(u.masked_fill(~mask, float("nan")), mask, method="spectral", cutoff=8)
    assert filled.shape == u.shape and float((filled - u).abs().max()) < 1e-10
    errors = []
    for step in (8, 4):
        regular = torch.zeros(n, dtype=torch.bool)
        regular[::step] = True
        filled = interpolate(u.masked_fill(~regular, float("nan")), regular, method="cubic")
        assert torch.allclose(filled[:, regular], u[:, regular], atol=1e-12)  # through the sensors
        errors.append(float((filled - u).abs().max()))
    assert 12 < errors[0] / errors[1] < 24, errors  # fourth order: 16
    with pytest.raises(ValueError, match="grid_dims"):
        interpolate(u, mask, grid_dims=3)

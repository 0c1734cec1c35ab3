"""ChannelNormalizer: statistics against numpy, exact inverse, streaming = in-memory, checkpoints, bad input."""

import json

import numpy as np
import pytest
import torch

from krylon.datasets import write_dataset
from krylon.operators.learned import registry
from krylon.operators.learned.normalizer import ChannelNormalizer


def _data(seed=0, n=12, c=3, shape=(5, 4), offset=1e6):
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 10.0, 0.01])[:c].reshape(1, c, *([1] * len(shape)))
    offset = np.array([0.0, -4.0, offset])[:c].reshape(1, c, *([1] * len(shape)))
    return rng.standard_normal((n, c, *shape)) * scale + offset


def test_fit_matches_numpy_and_encode_decode_are_inverse():
    x = _data()
    norm = ChannelNormalizer(3).fit(torch.from_numpy(x))
    axes = (0, 2, 3)
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(axis=axes), rtol=1e-12)
    # channel 2 sits at 1e6 with spread 1e-2: a sum-of-squares formula loses it, the pairwise update does not
    np.testing.assert_allclose(norm.std.numpy(), x.std(axis=axes), rtol=1e-7)
    z = norm.encode(torch.from_numpy(x))
    np.testing.assert_allclose(z.numpy(), (x - x.mean(axis=axes, keepdims=True)) / x.std(axis=axes, keepdims=True),
                               atol=1e-6)
    np.testing.assert_allclose(norm.decode(z).numpy(), x, rtol=1e-13)
    x32 = torch.from_numpy(x).float()
    assert norm.encode(x32).dtype == torch.float32
    # one sample, channels on axis 0 (channel 2 at 1e6 is below float32's resolution: left out)
    np.testing.assert_allclose(norm.encode(x32[0], dim=0)[:2].numpy(), z[0, :2].numpy(), atol=1e-5)


def test_streamed_fit_over_a_data_set_split_equals_numpy(tmp_path):
    x = _data(1, n=10, offset=1e3)  # float32 on disk: keep channel 2's spread above its resolution
    y = _data(2, n=10, c=2)
    ds_path = write_dataset(tmp_path / "d.h5", {"x": x.astype(np.float32), "y": y})
    from krylon.datasets import open_dataset

    ds = open_dataset(ds_path)
    train = [0, 2, 3, 7, 9]
    nx = ChannelNormalizer(3).fit(ds, indices=train)
    ref = x.astype(np.float32)[train].astype(np.float64)
    np.testing.assert_allclose(nx.mean.numpy(), ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(nx.std.numpy(), ref.std(axis=(0, 2, 3)), rtol=1e-8)
    ny = ChannelNormalizer(2).fit(ds, key="y")
    np.testing.assert_allclose(ny.std.numpy(), y.std(axis=(0, 2, 3)), rtol=1e-10)
    nt = ChannelNormalizer(3).fit(torch.from_numpy(ref))
    torch.testing.assert_close(nt.mean, nx.mean, rtol=1e-12, atol=0)


def test_constant_channel_is_only_shifted():
    x = torch.randn(6, 2, 8, dtype=torch.float64)
    x[:, 1] = 7.5
    norm = ChannelNormalizer(2).fit(x)
    assert float(norm.std[1]) == 1.0 and float(norm.mean[1]) == 7.5
    z = norm.encode(x)
    assert torch.isfinite(z).all() and float(z[:, 1].abs().max()) == 0.0
    assert torch.equal(norm.decode(z)[:, 1], x[:, 1])


def test_statistics_live_in_state_dict_and_checkpoints(tmp_path):
    norm = ChannelNormalizer(3, eps=1e-5).fit(torch.from_numpy(_data()))
    assert json.loads(json.dumps(norm.config)) == {"channels": 3, "eps": 1e-5}
    registry.save_checkpoint(norm, tmp_path / "n.pt")
    back = registry.load_checkpoint(tmp_path / "n.pt", expect=ChannelNormalizer)
    assert back.fitted and torch.equal(back.mean, norm.mean) and torch.equal(back.std, norm.std)

    class Model(torch.nn.Module):  # how an operator model holds its normalisers
        def __init__(self):
            super().__init__()
            self.x_norm = ChannelNormalizer(3)

    m = Model()
    m.x_norm.fit(torch.from_numpy(_data()))
    sd = torch.load(_save(m.state_dict(), tmp_path / "m.pt"), weights_only=True)
    assert {"x_norm.mean", "x_norm.std", "x_norm.count"} <= set(sd)
    m2 = Model()
    assert not m2.x_norm.fitted
    m2.load_state_dict(sd)
    assert m2.x_norm.fitted and torch.equal(m2.x_norm.mean, norm.mean)


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_bad_input_is_a_clear_error():
    norm = ChannelNormalizer(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        norm.encode(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="has 2 channels on axis 1"):
        norm.fit(torch.zeros(4, 2, 5))
    bad = torch.zeros(4, 3, 5)
    bad[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        norm.fit(bad)
    with pytest.raises(IndexError, match="out of range"):
        norm.fit(torch.zeros(4, 3, 5), indices=[0, 9])
    with pytest.raises(ValueError, match="no values"):
        norm.fit(torch.zeros(4, 3, 5), indices=[])
    with pytest.raises(TypeError, match="tensor .* or a data set"):
        norm.fit(3.0)
    with pytest.raises(ValueError, match="channels must be an integer >= 1"):
        ChannelNormalizer(0)
    norm.fit(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match="dim=4 is not an axis"):
        norm.encode(torch.zeros(2, 3, 4), dim=4)


def test_fit_on_any_indexable_data_set_with_samples_of_different_sizes():
    rng = np.random.default_rng(4)
    samples = [rng.standard_normal((2, n)) * [[1.0], [3.0]] + [[0.5], [-2.0]] for n in (5, 9, 7, 3)]

    class Plain:  # no __getitems__, samples of different grid sizes (zero-shot resolutions)
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return {"x": torch.from_numpy(samples[i])}

    norm = ChannelNormalizer(2).fit(Plain(), indices=[0, 1, 3])
    ref = np.concatenate([samples[i] for i in (0, 1, 3)], axis=1)
    np.testing.assert_allclose(norm.mean.numpy(), ref.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(norm.std.numpy(), ref.std(axis=1), rtol=1e-12)
    with pytest.raises(KeyError, match="sample 0 .* no key 'y'"):
        ChannelNormalizer(2).fit(Plain(), key="y")


def test_docstring_example_runs():
    import doctest

    from krylon.operators.learned import normalizer

    result = doctest.testmod(normalizer)
    assert result.attempted > 0 and result.failed == 0

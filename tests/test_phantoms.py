"""Phantoms: Shepp–Logan against skimage's, random families' properties, the HDF5 writer and its resume, the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from krylon.datasets import open_dataset, read_attrs
from krylon.datasets.phantoms import FAMILIES, PHANTOM_FAMILIES, generate_phantoms, phantom_generator, random_phantom, random_phantoms, shepp_logan

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_shepp_logan_matches_skimage():
    skd = pytest.importorskip("skimage.data")
    skt = pytest.importorskip("skimage.transform")
    ref = skd.shepp_logan_phantom()  # 400 x 400, modified Shepp-Logan
    mine = shepp_logan(400, supersample=1).numpy()
    assert mine.shape == ref.shape
    # same table and orientation: within 0.05 everywhere but on a thin band of pixels cut by an ellipse edge
    # (skimage rounds some grey levels, e.g. 0.098 for 0.1, and samples the grid differently)
    d = np.abs(mine - ref)
    assert np.mean(d > 0.05) < 0.01
    assert np.mean(np.abs(mine[::-1] - ref) > 0.05) > 0.05  # the check can tell an upside-down phantom
    small = shepp_logan(64).numpy()
    ref64 = skt.resize(ref, (64, 64), anti_aliasing=True)
    assert np.corrcoef(small.ravel(), ref64.ravel())[0, 1] > 0.98


def test_shepp_logan_variants():
    m, o = shepp_logan(64), shepp_logan(64, modified=False)
    assert float(m.max()) == 1.0 and 1.9 < float(o.max()) <= 2.0 + 1e-12
    assert torch.equal(shepp_logan(32), shepp_logan(32))
    assert shepp_logan((40, 30)).shape == (40, 30)
    # the head's axis is vertical: the phantom is left-right symmetric up to the tilted inner ellipses
    assert float((m - m.flip(-1)).abs().mean()) < 0.05


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_random_family_properties(family, complex_):
    xs = torch.stack([random_phantom(48, family, complex=complex_, generator=phantom_generator(3, i)) for i in range(4)])
    assert xs.shape == (4, 48, 48)
    assert xs.dtype == (torch.complex128 if complex_ else torch.float64)
    mag = xs.abs()
    np.testing.assert_allclose(mag.amax(dim=(-2, -1)).numpy(), 1.0)
    assert bool(torch.isfinite(mag).all())
    if not complex_:
        assert float(xs.min()) >= 0
    else:  # a genuine, smooth phase where the image is not tiny
        big = mag > 0.3
        ph = xs.angle()
        assert float(ph[big].std()) > 0.05
    # the samples differ and are not blank
    assert float((xs[0].abs() - xs[1].abs()).abs().mean()) > 1e-3
    assert float((mag > 0.05).double().mean()) > 0.05


def _high_frequency_share(xs, k0=8):
    """Share of the (mean-free) power at wavenumbers |k| > k0."""
    F = torch.fft.fft2(xs - xs.mean((-2, -1), keepdim=True)).abs() ** 2
    k = torch.fft.fftfreq(xs.shape[-1], 1 / xs.shape[-1])
    high = (k[:, None] ** 2 + k[None, :] ** 2) > k0 ** 2
    return float(F[..., high].sum() / F.sum())


def test_natural_image_families_fill_the_frame_with_detail():
    # phantoms are objects on a dark background; the natural-image families cover the frame and carry more fine
    # detail (occlusion edges, rough textures) than the smooth-edged phantoms
    phantoms = random_phantoms(12, 64, seed=2, families=PHANTOM_FAMILIES)
    assert float((phantoms > 0.05).double().mean()) < 0.75
    for family in ("dead_leaves", "textures"):
        xs = random_phantoms(12, 64, seed=2, families=(family,))
        assert float((xs > 0.05).double().mean()) > 0.9, family
        assert _high_frequency_share(xs) > 1.25 * _high_frequency_share(phantoms), family
    # the default families are the phantoms: data sets and test images drawn before the natural families stay the same
    assert torch.equal(random_phantoms(6, 32, seed=4), random_phantoms(6, 32, seed=4, families=PHANTOM_FAMILIES))


def test_photos_family_crops_real_images_never_the_bench_test_images(monkeypatch):
    pytest.importorskip("skimage")
    from krylon.bench.dds import IMAGE_SETS
    from krylon.datasets import phantoms

    # the bench's test images and held-out photographs (chelsea is also skimage's "cat") are never cropped
    held_out = {name for names in IMAGE_SETS.values() for name in names} | {"cat", "shepp_logan_phantom"}
    assert not held_out & set(phantoms.PHOTO_SOURCES)
    xs = random_phantoms(8, 64, seed=3, families=("photos",))
    assert xs.shape == (8, 64, 64) and float(xs.min()) >= 0 and torch.allclose(xs.flatten(1).amax(1), torch.ones(8, dtype=xs.dtype))
    assert torch.equal(xs[5], random_phantoms(1, 64, seed=3, start=5, families=("photos",))[0])
    assert float((xs > 0.05).double().mean()) > 0.8
    assert len({round(float(x.mean()), 4) for x in xs}) == 8
    # without scikit-image the family says what to install
    monkeypatch.setitem(sys.modules, "skimage", None)
    phantoms._photos.cache_clear()
    try:
        with pytest.raises(ValueError, match="scikit-image"):
            random_phantoms(1, 32, families=("photos",))
    finally:
        phantoms._photos.cache_clear()


def test_skimage_grey_scales_to_unit_range_and_converts_colour_by_luminance():
    pytest.importorskip("skimage")
    import numpy as np
    from skimage import data

    from krylon.datasets.phantoms import skimage_grey

    (cam,) = skimage_grey("camera")
    np.testing.assert_array_equal(cam, data.camera() / 255.0)  # uint8 grey: divided by 255
    (ast,) = skimage_grey("astronaut")
    r, g, b = (data.astronaut()[..., i] / 255.0 for i in range(3))
    np.testing.assert_allclose(ast, 0.2125 * r + 0.7154 * g + 0.0721 * b, atol=1e-12)  # ITU-R 709 luminance
    left, right = skimage_grey("stereo_motorcycle")  # a pair: the two views, not the disparity map
    assert left.shape == right.shape and left.ndim == 2 and 0 <= left.min() and left.max() <= 1


def test_random_phantoms_reproducible_and_independent_of_batching():
    a = random_phantoms(6, 32, seed=5)
    b = torch.cat([random_phantoms(2, 32, seed=5), random_phantoms(4, 32, seed=5, start=2)])
    assert torch.equal(a, b)
    assert not torch.equal(a, random_phantoms(6, 32, seed=6))
    # round robin over the families
    c = random_phantoms(2, 32, seed=5, start=4, families=("polygons",))
    assert torch.equal(c[0], random_phantom(32, "polygons", generator=phantom_generator(5, 4)))
    # global RNG untouched
    torch.manual_seed(0)
    r1 = torch.rand(1)
    torch.manual_seed(0)
    random_phantoms(2, 16)
    assert torch.equal(torch.rand(1), r1)


@pytest.mark.parametrize("call, err", [
    pytest.param(lambda: random_phantom(32, "squares"), ValueError, id="family"),
    pytest.param(lambda: random_phantom(2), ValueError, id="too-small"),
    pytest.param(lambda: random_phantom((8, 8, 8)), ValueError, id="3d"),
    pytest.param(lambda: random_phantoms(2, 16, families=()), ValueError, id="no-families"),
    pytest.param(lambda: shepp_logan(32, supersample=0), ValueError, id="supersample"),
    pytest.param(lambda: random_phantoms(-1, 16), ValueError, id="n"),
    pytest.param(lambda: random_phantom(16, complex=True, dtype=torch.float32), TypeError, id="complex-real-dtype"),
    pytest.param(lambda: random_phantoms(0, 16, complex=True, dtype=torch.float64), TypeError, id="complex-real-dtype-n0"),
    pytest.param(lambda: random_phantom(16, dtype=torch.int64), TypeError, id="int-dtype"),
])
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_generate_phantoms_writes_and_resumes(tmp_path, complex_):
    path = tmp_path / "ph.h5"
    n, size = 7, (16, 20)
    # an interrupted run: write 3 samples into the partial file by hand through the same writer
    from krylon.datasets.hdf5 import DatasetWriter

    params_probe = tmp_path / "probe.h5"
    generate_phantoms(params_probe, n, size, seed=2, complex=complex_)
    attrs = read_attrs(params_probe)
    ch = 2 if complex_ else 1
    w = DatasetWriter(path, n, {"x": ((ch, 16, 20), "float32")}, generator=attrs["generator"],
                      parameters=attrs["parameters"], seed=2)
    full = open_dataset(params_probe)
    for i in range(3):
        w.write(i, {"x": full[i]["x"]})
    w.close()
    assert not path.exists() and path.with_name("ph.h5.partial").exists()
    generate_phantoms(path, n, size, seed=2, complex=complex_)  # resumes at sample 3
    ds = open_dataset(path)
    assert len(ds) == n
    expect = random_phantoms(n, size, seed=2, complex=complex_)
    for i in range(n):
        x = ds[i]["x"]
        assert x.shape == (ch, 16, 20)
        got = x[0] + 1j * x[1] if complex_ else x[0]
        np.testing.assert_allclose(got, expect[i].numpy(), atol=1e-6)
    with pytest.raises(FileExistsError):
        generate_phantoms(path, n, size, seed=2, complex=complex_)


def test_generate_phantoms_refuses_other_settings_on_resume(tmp_path):
    from krylon.datasets.hdf5 import DatasetWriter

    path = tmp_path / "ph.h5"
    w = DatasetWriter(path, 4, {"x": ((1, 16, 16), "float32")}, generator="krylon.datasets.phantoms.generate_phantoms",
                      parameters={"size": [16, 16]}, seed=0)
    w.close()
    with pytest.raises(ValueError, match="resume"):
        generate_phantoms(path, 4, 16, seed=0)


def test_cli_generate_phantoms(tmp_path):
    out = tmp_path / "ph.h5"
    p = subprocess.run([sys.executable, "-m", "krylon", "generate", "phantoms", "--n", "5", "--size", "24", "--out", str(out),
                        "--seed", "1", "--complex", "--no-progress", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout
    ds = open_dataset(out)
    assert len(ds) == 5 and ds[4]["x"].shape == (2, 24, 24)
    np.testing.assert_allclose(ds[4]["x"][0].numpy(), random_phantoms(1, 24, seed=1, start=4, complex=True)[0].real.numpy(), atol=1e-6)


def test_cli_generate_phantoms_bad_input(tmp_path, capsys):
    from krylon.cli import main

    assert main(["generate", "phantoms", "--n", "2", "--out", str(tmp_path / "b.h5"), "--families", "squares"]) == 2
    assert "families" in capsys.readouterr().err
    assert main(["generate", "phantoms", "--n", "2", "--size", "24", "24", "24", "--out", str(tmp_path / "c.h5")]) == 2
    assert "size" in capsys.readouterr().err
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "c.h5").exists()


def test_docstring_examples_run():
    import doctest

    from krylon.datasets import phantoms

    result = doctest.testmod(phantoms, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

"""krylon convert: neuraloperator's real .pt files and the reader layouts into krylon HDF5, library and command."""

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from krylon.cli import main
from krylon.datasets import convert, open_dataset, read_attrs

# neuraloperator's small files sit in ../shared/data/neuralop beside the clone (a worktree is one level deeper)
DATA = next((p / "shared" / "data" / "neuralop" for p in Path(__file__).resolve().parents
             if (p / "shared" / "data" / "neuralop").is_dir()), Path("shared/data/neuralop"))
needs_data = pytest.mark.skipif(not (DATA / "darcy_test_16.pt").is_file(), reason="neuraloperator sample data not present")


@needs_data
@pytest.mark.parametrize("name", ["darcy_train_16", "darcy_test_32"])
def test_convert_real_darcy_matches_the_pt_file(tmp_path, name):
    src = DATA / f"{name}.pt"
    ref = torch.load(src, weights_only=True)
    out = convert(src, tmp_path / f"{name}.h5")
    ds = open_dataset(out)
    n, s = ref["x"].shape[0], ref["x"].shape[-1]
    assert ds.layout == "krylon" and len(ds) == n and ds.shapes == {"x": (1, s, s), "y": (1, s, s)}
    with h5py.File(out, "r") as f:
        assert f["x"].dtype == np.float32 and f["y"].dtype == np.float32
        np.testing.assert_array_equal(f["x"][:, 0], ref["x"].numpy().astype(np.float32))
        np.testing.assert_array_equal(f["y"][:, 0], ref["y"].numpy())
    attrs = read_attrs(out)
    assert attrs["source"] == src.name and attrs["source_layout"] == "neuralop-pt"
    assert attrs["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert attrs["generator"] == "krylon.datasets.convert" and attrs["parameters"]["source_sha256"] == attrs["source_sha256"]


@needs_data
def test_convert_real_burgers_trajectory_goes_time_last(tmp_path):
    src = DATA / "burgers_test_16.pt"
    ref = torch.load(src, weights_only=True)
    ds = open_dataset(convert(src, tmp_path / "b.h5"))
    assert ds.shapes == {"x": (1, 16), "y": (1, 16, 17)}
    for i in (0, len(ds) - 1):
        np.testing.assert_array_equal(ds[i]["x"].numpy(), ref["x"][i].numpy()[None])
        np.testing.assert_array_equal(ds[i]["y"].numpy(), ref["y"][i].numpy().T[None])  # (T, X) -> (1, X, T)
    assert ds[0]["y"].dtype == torch.float64
    assert float(ds.attrs["visc"]) == pytest.approx(float(ref["visc"]))


def test_convert_a_reader_layout_keeps_split_and_coordinates(tmp_path):
    rng = np.random.default_rng(3)
    tensor = rng.random((5, 13, 6))
    src = tmp_path / "adv.hdf5"
    with h5py.File(src, "w") as f:
        f["tensor"], f["x-coordinate"], f["t-coordinate"] = tensor, np.arange(6.0) / 6, np.arange(14.0)
    out = convert(src, tmp_path / "adv.h5", input_steps=3, dtype="float32")
    ds = open_dataset(out)
    np.testing.assert_allclose(ds[4]["y"].numpy(), np.moveaxis(tensor[4, 3:], 0, -1)[None].astype(np.float32))
    assert ds[4]["y"].dtype == torch.float32
    np.testing.assert_array_equal(ds.coords["x"], np.arange(6.0) / 6)
    np.testing.assert_array_equal(ds.coords["t"], np.arange(13.0))
    assert ds.attrs["input_steps"] == 3 and ds.attrs["source_layout"] == "pdebench"
    assert ds.attrs["parameters"]["options"] == {"input_steps": 3}


def test_convert_errors(tmp_path):
    torch.save({"x": torch.zeros(4, 8), "y": torch.zeros(3, 8)}, tmp_path / "count.pt")
    with pytest.raises(ValueError, match=r"'x' has 4 samples but target 'y' has 3"):
        convert(tmp_path / "count.pt", tmp_path / "o.h5")
    torch.save({"a": torch.zeros(4, 8), "u": torch.zeros(4, 8)}, tmp_path / "names.pt")
    with pytest.raises(KeyError, match=r"no tensor 'x'.*\['a', 'u'\].*x_key"):
        convert(tmp_path / "names.pt", tmp_path / "o.h5")
    assert len(open_dataset(convert(tmp_path / "names.pt", tmp_path / "o.h5", x_key="a", y_key="u"))) == 4
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(tmp_path / "names.pt", tmp_path / "o.h5", x_key="a", y_key="u")
    torch.save({"x": torch.zeros(4, 8), "y": torch.zeros(4, 3, 9)}, tmp_path / "grid.pt")
    with pytest.raises(ValueError, match="wrong axis order"):
        convert(tmp_path / "grid.pt", tmp_path / "g.h5")
    torch.save({"x": torch.zeros(4, 8), "y": torch.full((4, 8), float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"cannot convert .*nan\.pt: field 'y' of sample 0 contains 8 non-finite"):
        convert(tmp_path / "nan.pt", tmp_path / "n.h5")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "grid.pt").read_bytes()[:300])
    with pytest.raises(ValueError, match="trunc.pt is not a readable"):
        convert(tmp_path / "trunc.pt", tmp_path / "t.h5")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing.pt", tmp_path / "m.h5")


def test_convert_command(tmp_path, capsys):
    torch.save({"x": torch.rand(6, 4, 4) > 0.5, "y": torch.rand(6, 4, 4)}, tmp_path / "toy.pt")
    out = tmp_path / "toy.h5"
    assert main(["convert", str(tmp_path / "toy.pt"), str(out)]) == 0
    assert "6 samples, x (1, 4, 4), y (1, 4, 4)" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "toy.pt"), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "toy.pt"), str(out), "--force", "--dtype", "float64"]) == 0
    assert open_dataset(out)[0]["y"].dtype == torch.float64
    assert main(["convert", str(tmp_path / "toy.pt"), str(tmp_path / "z.h5"), "--y-key", "u"]) == 2
    assert "no tensor 'u'" in capsys.readouterr().err


def test_interrupted_conversion_resumes(tmp_path, monkeypatch):
    from krylon.datasets import hdf5

    x = torch.rand(150, 4)
    torch.save({"x": x, "y": 2 * x}, tmp_path / "s.pt")
    calls = []
    write_many = hdf5.DatasetWriter.write_many

    def dies_on_second_block(self, start, samples):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write_many(self, start, samples)

    monkeypatch.setattr(hdf5.DatasetWriter, "write_many", dies_on_second_block)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "s.pt", tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()
    with h5py.File(tmp_path / "s.h5.partial", "r") as f:
        assert int(f.attrs["n_written"]) == calls[1] > 0
    calls.clear()
    monkeypatch.setattr(hdf5.DatasetWriter, "write_many", lambda self, s, b: (calls.append(s), write_many(self, s, b)))
    ds = open_dataset(convert(tmp_path / "s.pt", tmp_path / "s.h5"))
    assert calls[0] == 64  # resumed after the block on disk, not from 0
    np.testing.assert_array_equal(ds[:]["y"].numpy()[:, 0], 2 * x.numpy())


def test_convert_matlab_v5_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(5)
    a, u = rng.random((4, 6, 5)), rng.random((4, 6, 5))
    savemat(tmp_path / "darcy.mat", {"coeff": a, "sol": u})  # scipy writes MATLAB v5
    ds = open_dataset(convert(tmp_path / "darcy.mat", tmp_path / "darcy.h5"))
    np.testing.assert_array_equal(ds[3]["x"].numpy(), a[3][None])
    np.testing.assert_array_equal(ds[3]["y"].numpy(), u[3][None])
    assert ds.attrs["source"] == "darcy.mat" and ds.attrs["source_layout"] == "fno-mat"
    assert ds.attrs["source_sha256"] == hashlib.sha256((tmp_path / "darcy.mat").read_bytes()).hexdigest()
    traj = rng.random((3, 4, 4, 13))
    savemat(tmp_path / "ns.mat", {"u": traj, "a": traj[..., 0], "t": np.arange(1.0, 14.0)[None]})
    ds = open_dataset(convert(tmp_path / "ns.mat", tmp_path / "ns.h5", input_steps=4))
    np.testing.assert_array_equal(ds[1]["y"].numpy(), traj[1, ..., 4:][None])
    np.testing.assert_array_equal(ds.coords["t"], np.arange(1.0, 14.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["darcy.h5", "darcy.mat", "ns.h5", "ns.mat"]  # no temporaries


# ----------------------------------------------------------------------------- review fixes (regressions)
def test_converted_cfd_file_keeps_list_attributes_and_drops_the_readers_sources(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "cfd.hdf5"
    with h5py.File(src, "w") as f:
        for v in ("density", "Vx"):
            f[v] = rng.random((3, 6, 5))
    ds = open_dataset(convert(src, tmp_path / "cfd.h5", input_steps=2))
    assert ds.attrs["channels"] == ["density", "Vx"]  # a list again, not its JSON text
    assert "sources" not in ds.attrs  # described the source file's data sets, not this file's
    assert read_attrs(ds.path)["channels"] == ["density", "Vx"]


def _dies_on_second_block(monkeypatch):
    from krylon.datasets import hdf5

    write_many, calls = hdf5.DatasetWriter.write_many, []

    def flaky(self, start, samples):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write_many(self, start, samples)

    monkeypatch.setattr(hdf5.DatasetWriter, "write_many", flaky)
    return lambda: monkeypatch.setattr(hdf5.DatasetWriter, "write_many", write_many)


def test_overwrite_ignores_a_stale_partial_and_replaces_only_when_done(tmp_path, monkeypatch):
    x = torch.rand(150, 4)
    torch.save({"x": x, "y": 2 * x}, tmp_path / "s.pt")
    dst = tmp_path / "s.h5"
    convert(tmp_path / "s.pt", dst)
    restore = _dies_on_second_block(monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # an overwrite with other options, interrupted: leaves a .partial
        convert(tmp_path / "s.pt", dst, overwrite=True, dtype="float64")
    restore()
    assert (tmp_path / "s.h5.partial").exists()
    np.testing.assert_array_equal(open_dataset(dst)[:]["y"].numpy()[:, 0], 2 * x.numpy())  # the old file is intact
    convert(tmp_path / "s.pt", dst, overwrite=True)  # other options than the partial's: starts afresh
    ds = open_dataset(dst)
    assert ds[0]["y"].dtype == torch.float32 and ds.attrs["parameters"]["dtype"] is None
    np.testing.assert_array_equal(ds[:]["y"].numpy()[:, 0], 2 * x.numpy())
    assert not (tmp_path / "s.h5.partial").exists()


def test_failed_overwrite_keeps_the_old_file_and_names_the_source(tmp_path):
    good = {"x": torch.rand(5, 8), "y": torch.rand(5, 8)}
    torch.save(good, tmp_path / "d.pt")
    dst = convert(tmp_path / "d.pt", tmp_path / "d.h5")
    y = good["y"].clone()
    y[3, 2] = float("nan")
    torch.save({"x": good["x"], "y": y}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"cannot convert .*bad\.pt: field 'y' of sample 3 contains 1 non-finite"):
        convert(tmp_path / "bad.pt", dst, overwrite=True)
    np.testing.assert_array_equal(open_dataset(dst)[:]["y"].numpy()[:, 0], good["y"].numpy())
    assert not (tmp_path / "d.h5.partial").exists()  # a NaN would stop any resume at the same sample
    with pytest.raises(ValueError, match=r"bad\.pt"):
        convert(tmp_path / "bad.pt", tmp_path / "new.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "d.h5", "d.pt"]


def test_conversion_module_is_importable_beside_the_function():
    from krylon.datasets import conversion
    from krylon.datasets import convert as fn

    assert conversion.convert is fn and callable(fn)

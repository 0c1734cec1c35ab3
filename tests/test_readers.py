"""open_dataset on every layout: small files written here with h5py, samples checked against the numpy source."""

import pickle

import h5py
import numpy as np
import pytest
import torch

from krylon.datasets import DatasetWriter, detect_layout, open_dataset, write_dataset

RNG = np.random.default_rng(0)


def _mat(path, arrays, *, userblock=True):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 with a 512-byte user block holding the MAT header, every
    array stored column-major (h5py sees its axes reversed) and tagged with MATLAB_class."""
    with h5py.File(path, "w", userblock_size=512 if userblock else 0) as f:
        for k, a in arrays.items():
            f[k] = np.asarray(a).T
            f[k].attrs["MATLAB_class"] = np.bytes_("double")
    if userblock:
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed Dec  2 00:00:00 2026 HDF5 schema 1.00 ."
        with open(path, "r+b") as fh:
            fh.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")
    return path


# ----------------------------------------------------------------------------- FNO .mat
def test_fno_mat_darcy_pairs_reverse_matlab_axes(tmp_path):
    # a non-square grid: swapping the two spatial axes would change the shape and fail
    a = RNG.random((5, 6, 4))
    u = RNG.random((5, 6, 4))
    p = _mat(tmp_path / "darcy.mat", {"coeff": a, "sol": u})
    assert h5py.File(p, "r")["coeff"].shape == (4, 6, 5)
    ds = open_dataset(p)
    assert ds.layout == "fno-mat" and len(ds) == 5 and ds.shapes == {"x": (1, 6, 4), "y": (1, 6, 4)}
    for i in (0, 3, -1):
        s = ds[i]
        np.testing.assert_array_equal(s["x"].numpy(), a[i][None])
        np.testing.assert_array_equal(s["y"].numpy(), u[i][None])
    assert ds[0]["x"].dtype == torch.float64
    assert open_dataset(p, dtype=torch.float32)[0]["y"].dtype == torch.float32


def test_fno_mat_navier_stokes_split_and_initial_condition(tmp_path):
    N, s1, s2, T = 3, 5, 4, 14
    u = RNG.random((N, s1, s2, T))  # MATLAB's (N, s, s, T): h5py (T, s, s, N)
    a = RNG.random((N, s1, s2))
    t = np.arange(1, T + 1)[None] * 0.5  # MATLAB (1, T)
    p = _mat(tmp_path / "ns.mat", {"a": a, "u": u, "t": t})
    assert h5py.File(p, "r")["u"].shape == (T, s2, s1, N)
    ds = open_dataset(p)  # FNO-3D: t 0..9 -> 10..
    assert ds.shapes == {"x": (1, s1, s2, 10), "y": (1, s1, s2, 4)}
    np.testing.assert_array_equal(ds[2]["x"].numpy(), u[2, ..., :10][None])
    np.testing.assert_array_equal(ds[2]["y"].numpy(), u[2, ..., 10:][None])
    np.testing.assert_array_equal(ds.coords["t"], t[0])
    assert ds.attrs["input_steps"] == 10 and ds.attrs["output_steps"] == 4
    batch = ds.__getitems__([2, 0, 1])  # one read of the samples' h5py range
    np.testing.assert_array_equal(batch[0]["y"].numpy(), u[2, ..., 10:][None])
    np.testing.assert_array_equal(batch[1]["x"].numpy(), u[0, ..., :10][None])
    ds = open_dataset(p, input_steps=3, output_steps=5, keys=["y"])
    assert list(ds[1]) == ["y"] and list(open_dataset(p, "x")[0]) == ["x"]
    np.testing.assert_array_equal(ds[1]["y"].numpy(), u[1, ..., 3:8][None])
    np.testing.assert_array_equal(ds.coords["t"], t[0, :8])
    ds = open_dataset(p, x_key="a", output_steps=6)  # initial vorticity -> trajectory
    np.testing.assert_array_equal(ds[0]["x"].numpy(), a[0][None])
    np.testing.assert_array_equal(ds[0]["y"].numpy(), u[0, ..., :6][None])


def test_fno_mat_detected_without_user_block_and_misnamed_keys(tmp_path):
    a, u = RNG.random((4, 5, 5)), RNG.random((4, 5, 5))
    p = _mat(tmp_path / "x.mat", {"perm": a, "pressure": u}, userblock=False)
    assert detect_layout(p) == "fno-mat"
    with pytest.raises(KeyError, match=r"no data set 'u'.*\['perm', 'pressure'\].*y_key"):
        open_dataset(p)
    ds = open_dataset(p, x_key="perm", y_key="pressure")
    np.testing.assert_array_equal(ds[3]["y"].numpy(), u[3][None])


def test_fno_mat_bad_files(tmp_path):
    a, u = RNG.random((4, 5, 5)), RNG.random((5, 5, 5))
    with pytest.raises(ValueError, match=r"'a' has 4 samples.*'u' has 5"):
        open_dataset(_mat(tmp_path / "count.mat", {"a": a, "u": u}))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        open_dataset(_mat(tmp_path / "grid.mat", {"a": RNG.random((4, 5, 5)), "u": RNG.random((4, 6, 6))}))
    # a trajectory written samples-first from Python (not reversed): t does not match the first h5py axis
    p = tmp_path / "order.mat"
    with h5py.File(p, "w", userblock_size=512) as f:
        f["u"] = RNG.random((6, 5, 5, 20))  # (N, s, s, T) as h5py sees it: wrong
        f["t"] = np.arange(20.0)[:, None]
        f["u"].attrs["MATLAB_class"] = np.bytes_("double")
    with pytest.raises(ValueError, match=r"'t' has 20 time values.*wrong axis order"):
        open_dataset(p)
    with pytest.raises(ValueError, match=r"'t' has 20 time values.*wrong axis order"):
        open_dataset(p, trajectory=True)
    with pytest.raises(ValueError, match="input_steps=12"):
        open_dataset(_mat(tmp_path / "short.mat", {"u": RNG.random((2, 4, 4, 12)), "t": np.arange(12.0)[None]}),
                     input_steps=12)


# ----------------------------------------------------------------------------- PDEBench
def _pdebench(path, tensor, *, t_extra=1, coords=True):
    with h5py.File(path, "w") as f:
        f["tensor"] = tensor
        if coords:
            for axis, n in zip("xyz", tensor.shape[2:]):
                f[f"{axis}-coordinate"] = np.linspace(0, 1, n, endpoint=False)
            f["t-coordinate"] = np.linspace(0, 2, tensor.shape[1] + t_extra)
    return path


@pytest.mark.parametrize("space", [pytest.param((8,), id="1d"), pytest.param((6, 5), id="2d")])
def test_pdebench_single_file_time_last(tmp_path, space):
    tensor = RNG.random((4, 15, *space)).astype(np.float32)
    p = _pdebench(tmp_path / "b.hdf5", tensor)
    ds = open_dataset(p, input_steps=10)
    assert ds.layout == "pdebench" and len(ds) == 4
    assert ds.shapes == {"x": (1, *space, 10), "y": (1, *space, 5)}
    for i in (0, 3):
        traj = np.moveaxis(tensor[i], 0, -1)[None]
        np.testing.assert_array_equal(ds[i]["x"].numpy(), traj[..., :10])
        np.testing.assert_array_equal(ds[i]["y"].numpy(), traj[..., 10:])
    assert set(ds.coords) == {"t", *"xyz"[: len(space)]}
    np.testing.assert_allclose(ds.coords["t"], np.linspace(0, 2, 16)[:15])
    ds = open_dataset(p, input_steps=1, output_steps=2)
    np.testing.assert_array_equal(ds[1]["y"].numpy(), np.moveaxis(tensor[1, 1:3], 0, -1)[None])


def test_pdebench_darcy(tmp_path):
    nu, u = RNG.random((5, 6, 7)), RNG.random((5, 1, 6, 7))
    p = tmp_path / "darcy.hdf5"
    with h5py.File(p, "w") as f:
        f["nu"], f["tensor"] = nu, u
        f["x-coordinate"], f["y-coordinate"] = np.arange(6.0), np.arange(7.0)
    ds = open_dataset(p)
    assert ds.layout == "pdebench-darcy" and ds.shapes == {"x": (1, 6, 7), "y": (1, 6, 7)}
    np.testing.assert_array_equal(ds[4]["x"].numpy(), nu[4][None])
    np.testing.assert_array_equal(ds[4]["y"].numpy(), u[4])
    np.testing.assert_array_equal(ds[1:5]["x"].numpy()[:, 0], nu[1:5])
    np.testing.assert_array_equal(ds.coords["y"], np.arange(7.0))
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["nu"], f["tensor"] = nu, u[:4]
    with pytest.raises(ValueError, match=r"'nu' has 5 samples but target 'tensor' has 4"):
        open_dataset(tmp_path / "bad.hdf5")


def test_pdebench_cfd_variables_become_channels(tmp_path):
    fields = {v: RNG.random((3, 12, 4, 5)) for v in ("Vx", "density", "pressure", "Vy")}
    p = tmp_path / "cfd.hdf5"
    with h5py.File(p, "w") as f:
        for k, v in fields.items():
            f[k] = v
        f["t-coordinate"] = np.arange(13.0)
    ds = open_dataset(p, input_steps=2, output_steps=3)
    assert ds.layout == "pdebench-cfd" and ds.shapes == {"x": (4, 4, 5, 2), "y": (4, 4, 5, 3)}
    order = ["density", "pressure", "Vx", "Vy"]
    assert ds.attrs["channels"] == order
    ref = np.stack([np.moveaxis(fields[v][1], 0, -1) for v in order])
    np.testing.assert_array_equal(ds[1]["x"].numpy(), ref[..., :2])
    np.testing.assert_array_equal(ds[1]["y"].numpy(), ref[..., 2:5])
    np.testing.assert_array_equal(ds[0:3]["y"].numpy()[1], ref[..., 2:5])
    ds = open_dataset(p, variables=["Vy", "Vx"], input_steps=2)
    np.testing.assert_array_equal(ds[0]["y"].numpy()[0], np.moveaxis(fields["Vy"][0, 2:], 0, -1))
    ds.close()
    with h5py.File(p, "a") as f:
        f["Vz"] = np.zeros((3, 12, 4, 4))
    with pytest.raises(ValueError, match=r"inconsistent shapes: 'Vz'"):
        open_dataset(p, layout="pdebench-cfd")


def test_pdebench_seeds_groups(tmp_path):
    data = RNG.random((3, 9, 4, 5, 2))  # per seed (T, X, Y, V)
    p = tmp_path / "seeds.h5"
    with h5py.File(p, "w") as f:
        for s in range(3):
            g = f.create_group(f"{s:04d}")
            g["data"] = data[s]
            g["grid/x"], g["grid/y"], g["grid/t"] = np.arange(4.0), np.arange(5.0), np.arange(9.0) / 8
    ds = open_dataset(p, input_steps=4)
    assert ds.layout == "pdebench-seeds" and len(ds) == 3
    assert ds.shapes == {"x": (2, 4, 5, 4), "y": (2, 4, 5, 5)}
    ref = np.moveaxis(data[2], (0, 3), (3, 0))  # (V, X, Y, T)
    np.testing.assert_array_equal(ds[2]["x"].numpy(), ref[..., :4])
    np.testing.assert_array_equal(ds[2]["y"].numpy(), ref[..., 4:])
    np.testing.assert_array_equal(ds[1:3]["x"].numpy()[1], ref[..., :4])  # sample by sample: one group each
    np.testing.assert_array_equal(ds.coords["t"], np.arange(9.0) / 8)
    ds.close()
    with h5py.File(p, "a") as f:
        g = f.create_group("0003")
        g["data"] = np.zeros((8, 4, 5, 2))
    with pytest.raises(ValueError, match=r"inconsistent shapes: '0003/data'"):
        open_dataset(p)


def test_pdebench_seeds_with_a_metadata_group(tmp_path):
    data = RNG.random((2, 12, 4, 1))  # per seed (T, X, V)
    p = tmp_path / "seeds.h5"
    with h5py.File(p, "w") as f:
        for s in range(2):
            f.create_group(f"{s:04d}")["data"] = data[s]
        f.create_group("meta")["info"] = np.arange(3)  # not a seed: no 'data'
        f.create_group("aaa/data/inner")  # 'data' a group, not a data set
    assert detect_layout(p) == "pdebench-seeds"
    ds = open_dataset(p)
    assert len(ds) == 2 and ds.attrs["groups"] == ["0000", "0001"]
    np.testing.assert_array_equal(ds[1]["y"].numpy(), np.moveaxis(data[1], (0, 2), (2, 0))[..., 10:])
    with pytest.raises(KeyError, match=r"no per-seed group with a data set 'u'.*y_key"):
        open_dataset(p, layout="pdebench-seeds", y_key="u")


def test_fno_mat_refuses_input_steps_with_x_key(tmp_path):
    u, a = RNG.random((3, 4, 4, 12)), RNG.random((3, 4, 4))
    p = _mat(tmp_path / "ns.mat", {"u": u, "a": a, "t": np.arange(12.0)[None]})
    with pytest.raises(ValueError, match=r"input_steps=4 splits a trajectory.*x_key='a'"):
        open_dataset(p, x_key="a", input_steps=4)
    ds = open_dataset(p, x_key="a", output_steps=5)
    np.testing.assert_array_equal(ds[2]["y"].numpy(), u[2][None, ..., :5])
    with pytest.raises(ValueError, match=r"cannot give input_steps=0 \+ output_steps=13"):
        open_dataset(p, x_key="a", output_steps=13)
    with pytest.raises(TypeError, match="output_steps"):
        open_dataset(p, x_key="a", output_steps=2.5)


# ----------------------------------------------------------------------------- krylon files
def test_krylon_files_pass_fields_coords_and_attrs_through(tmp_path):
    x, y = RNG.random((3, 1, 8, 8, 10)).astype(np.float32), RNG.random((3, 1, 8, 8, 40)).astype(np.float32)
    p = write_dataset(tmp_path / "ns.h5", {"x": x, "y": y}, generator="krylon.datasets.ns2d",
                      attrs={"lengths": [1.0, 1.0], "times": np.linspace(0, 5, 50)},
                      coords={"x": np.arange(8) / 8, "y": np.arange(8) / 8})
    ds = open_dataset(p)
    assert ds.layout == "krylon" and ds.shapes == {"x": (1, 8, 8, 10), "y": (1, 8, 8, 40)}
    np.testing.assert_array_equal(ds[2]["y"].numpy(), y[2])
    np.testing.assert_array_equal(ds.attrs["lengths"], [1.0, 1.0])
    np.testing.assert_array_equal(ds.coords["x"], np.arange(8) / 8)
    assert "coords" not in ds.shapes
    with pytest.raises(TypeError, match="takes no option"):
        open_dataset(p, input_steps=3)


# ----------------------------------------------------------------------------- bad input, common to all
def test_nan_sample_names_file_key_and_index(tmp_path):
    tensor = RNG.random((4, 12, 6))
    tensor[2, 11, 3] = np.nan
    p = _pdebench(tmp_path / "nan.hdf5", tensor)
    ds = open_dataset(p)
    ds[1]
    with pytest.raises(ValueError, match=r"nan\.hdf5: key 'y' \(from 'tensor'\) of sample 2 contains 1 non-finite value"):
        ds[2]
    assert torch.isnan(open_dataset(p, check_finite=False)[2]["y"]).any()
    # krylon files too (a file some other program wrote)
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.attrs.update({"krylon_format": "krylon-dataset", "n_samples": 2, "n_written": 2})
        f["b"] = np.array([[1.0, 2.0], [np.inf, 0.0]])
    with pytest.raises(ValueError, match=r"key 'b' of sample 1"):
        open_dataset(tmp_path / "k.h5")[1]


def test_unknown_layout_lists_contents_and_options_are_checked(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["velocity"] = np.zeros((3, 4))
        f.attrs["note"] = "x"
    with pytest.raises(ValueError, match=r"matches none of.*velocity \(3, 4\).*note"):
        open_dataset(tmp_path / "other.h5")
    with pytest.raises(ValueError, match="layout must be one of"):
        open_dataset(tmp_path / "other.h5", layout="fno")
    p = _pdebench(tmp_path / "b.hdf5", RNG.random((2, 12, 6)))
    with pytest.raises(TypeError, match=r"takes no option\(s\) \['x_key'\]"):
        open_dataset(p, x_key="a")
    with pytest.raises(KeyError, match="gives the keys 'x' and 'y'"):
        open_dataset(p, keys=["u"])
    with pytest.raises(ValueError, match="input_steps must be an integer >= 1"):
        open_dataset(p, input_steps=0)
    with pytest.raises(ValueError, match=r"'x-coordinate' has 5 entries.*6 points"):
        with h5py.File(tmp_path / "c.hdf5", "w") as f:
            f["tensor"], f["x-coordinate"] = RNG.random((2, 12, 6)), np.arange(5.0)
        open_dataset(tmp_path / "c.hdf5")


def test_truncated_and_unfinished_files(tmp_path):
    p = _pdebench(tmp_path / "b.hdf5", RNG.random((64, 12, 32)))
    data = p.read_bytes()
    t = tmp_path / "t.hdf5"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.hdf5 is not a readable HDF5 file \(truncated"):
        open_dataset(t)
    w = DatasetWriter(tmp_path / "gen.h5", 4, {"x": ((2,), "float32")}, generator="g")
    w.write(0, {"x": np.zeros(2, np.float32)})
    w.f.close()  # interrupted
    w.f = None
    with pytest.raises(FileNotFoundError, match=r"unfinished gen\.h5\.partial"):
        open_dataset(tmp_path / "gen.h5")
    with pytest.raises(ValueError, match=r"incomplete: 1 of 4"):
        open_dataset(tmp_path / "gen.h5.partial")


def test_readers_pickle_and_feed_a_dataloader(tmp_path):
    tensor = RNG.random((6, 12, 8)).astype(np.float32)
    ds = open_dataset(_pdebench(tmp_path / "b.hdf5", tensor), input_steps=10)
    ds[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[5]["y"].numpy(), np.moveaxis(tensor[5, 10:], 0, -1)[None])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["x"].shape == (4, 1, 8, 10) and batch["y"].shape == (4, 1, 8, 2)
    assert ds[1:3]["x"].shape == (2, 1, 8, 10)


def test_batched_reads_match_single_reads_and_name_the_bad_sample(tmp_path):
    b = RNG.random((40, 3, 2))
    b[33, 1, 0] = np.inf
    p = tmp_path / "k.h5"
    with h5py.File(p, "w") as f:  # written by another program: the krylon writer refuses Inf
        f.attrs.update({"krylon_format": "krylon-dataset", "n_samples": 40, "n_written": 40})
        f["b"] = b
    ds = open_dataset(p)
    for idx in ([7, 2, 7, 30], [0, 39], list(range(5, 12))):  # unsorted, repeated, sparse (fancy read), dense
        got = ds.__getitems__(idx)
        assert [float(g["b"][0, 0]) for g in got] == [b[i, 0, 0] for i in idx]
    np.testing.assert_array_equal(ds[3:9]["b"].numpy(), b[3:9])
    assert ds[5:5]["b"].shape == (0, 3, 2)
    with pytest.raises(ValueError, match=r"key 'b' of sample 33 contains 1 non-finite value"):
        ds.__getitems__([40 - 1, 33, 1])
    with pytest.raises(IndexError):
        ds.__getitems__([1, 40])
    batches = list(torch.utils.data.DataLoader(torch.utils.data.Subset(ds, list(range(30))), batch_size=8, shuffle=True,
                                               generator=torch.Generator().manual_seed(0)))
    assert sorted(float(v) for bt in batches for v in bt["b"][:, 0, 0]) == sorted(b[:30, 0, 0])


def test_files_that_are_not_hdf5_say_what_they_are(tmp_path):
    torch.save({"x": torch.zeros(2, 3)}, tmp_path / "d.pt")
    with pytest.raises(ValueError, match="torch file: convert it with `krylon convert`"):
        open_dataset(tmp_path / "d.pt")
    (tmp_path / "v5.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(128, b" ") + b"\0" * 64)
    with pytest.raises(ValueError, match="MATLAB v5 .mat file, not v7.3.*krylon convert"):
        open_dataset(tmp_path / "v5.mat")


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("hdf5", "readers", "conversion"):
        module = importlib.import_module(f"krylon.datasets.{name}")
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_writer_attrs_coords_and_blocks_are_checked(tmp_path):
    f32 = {"x": ((2,), "float32")}
    with pytest.raises(ValueError, match="'seed' is part of the schema"):
        DatasetWriter(tmp_path / "a.h5", 2, f32, generator="g", attrs={"seed": 3})
    with pytest.raises(ValueError, match="coordinate 'x' must be a 1-D numeric array"):
        DatasetWriter(tmp_path / "b.h5", 2, f32, generator="g", coords={"x": np.zeros((2, 2))})
    with pytest.raises(TypeError, match="attribute 'f' must be"):
        DatasetWriter(tmp_path / "c.h5", 2, f32, generator="g", attrs={"f": object()})
    with pytest.raises(ValueError, match="'coords' is reserved"):
        DatasetWriter(tmp_path / "d.h5", 2, {"coords": ((2,), "float32")}, generator="g")
    w = DatasetWriter(tmp_path / "e.h5", 3, f32, generator="g", attrs={"meta": {"k": [1, 2]}, "names": ["a", "b"]})
    block = np.ones((2, 2), np.float32)
    block[1, 0] = np.nan
    with pytest.raises(ValueError, match="'x' of sample 1 contains 1 non-finite"):
        w.write_many(0, {"x": block})
    with pytest.raises(IndexError, match="runs past the end"):
        w.write_many(0, {"x": np.ones((4, 2), np.float32)})
    assert w.n_written == 0  # nothing of a refused block is on disk
    w.write_many(0, {"x": np.ones((3, 2), np.float32)})
    assert w.close()
    attrs = open_dataset(tmp_path / "e.h5").attrs
    assert attrs["meta"] == {"k": [1, 2]} and attrs["names"] == ["a", "b"]  # decoded again (json_attrs)

"""HDF5 data sets: schema, atomic and resumable writes, lazy reads, clear errors; obstacle geometry."""

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from krylon.datasets import DatasetWriter, open_dataset, read_attrs, write_dataset
from krylon.datasets.geometry import fill_enclosed, random_obstacles

FIELDS = {"b": ((3, 4), "float64"), "mask": ((3, 4), "bool")}


def _sample(i):
    return {"b": np.full((3, 4), float(i)), "mask": np.eye(3, 4, dtype=bool)}


def test_round_trip_and_provenance(tmp_path):
    path = tmp_path / "d.h5"
    with DatasetWriter(path, 5, FIELDS, generator="test.gen", parameters={"n": 4, "rule": "x"}, seed=7) as w:
        for i in range(w.n_written, 5):
            w.write(i, _sample(i))
    assert path.exists() and not (tmp_path / "d.h5.partial").exists()
    ds = open_dataset(path)
    assert len(ds) == 5 and ds.shapes == {"b": (3, 4), "mask": (3, 4)}
    s = ds[3]
    assert isinstance(s["b"], torch.Tensor) and float(s["b"][0, 0]) == 3.0 and s["mask"].dtype == torch.bool
    assert float(ds[-1]["b"][0, 0]) == 4.0
    assert ds[1:3]["b"].shape == (2, 3, 4)
    attrs = read_attrs(path)
    assert attrs["generator"] == "test.gen" and attrs["parameters"] == {"n": 4, "rule": "x"} and attrs["seed"] == 7
    assert attrs["complete"] and attrs["n_written"] == attrs["n_samples"] == 5
    # picklable for DataLoader workers, reopens lazily
    ds2 = pickle.loads(pickle.dumps(ds))
    assert float(ds2[2]["b"][0, 0]) == 2.0


def test_interrupted_generation_resumes_without_losing_samples(tmp_path):
    path = tmp_path / "d.h5"
    w = DatasetWriter(path, 6, FIELDS, generator="g", parameters={"a": 1}, seed=0)
    for i in range(4):
        w.write(i, _sample(i))
    w.f.close()  # simulate a crash: the file is never finished
    w.f = None
    assert not path.exists() and (tmp_path / "d.h5.partial").exists()
    with pytest.raises(FileNotFoundError, match="unfinished"):
        open_dataset(path)
    w = DatasetWriter(path, 6, FIELDS, generator="g", parameters={"a": 1}, seed=0)
    assert w.n_written == 4
    for i in range(w.n_written, 6):
        w.write(i, _sample(i))
    assert w.close()
    ds = open_dataset(path)
    assert [float(ds[i]["b"][0, 0]) for i in range(6)] == [0, 1, 2, 3, 4, 5]


def test_resume_with_other_parameters_refuses(tmp_path):
    path = tmp_path / "d.h5"
    w = DatasetWriter(path, 3, FIELDS, generator="g", parameters={"a": 1})
    w.write(0, _sample(0))
    w.f.close()
    w.f = None
    with pytest.raises(ValueError, match="parameters differ"):
        DatasetWriter(path, 3, FIELDS, generator="g", parameters={"a": 2})


def test_writer_checks_order_shape_and_values(tmp_path):
    w = DatasetWriter(tmp_path / "d.h5", 3, FIELDS, generator="g")
    with pytest.raises(ValueError, match="in order"):
        w.write(1, _sample(1))
    bad = _sample(0)
    bad["b"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        w.write(0, bad)
    bad = _sample(0)
    bad["b"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        w.write(0, bad)
    with pytest.raises(KeyError, match="missing"):
        w.write(0, {"b": np.zeros((3, 4))})
    w.close()
    with pytest.raises(ValueError, match="n_samples"):
        DatasetWriter(tmp_path / "e.h5", 0, FIELDS, generator="g")


def test_reader_errors_are_clear(tmp_path):
    p = write_dataset(tmp_path / "x.h5", {"a": np.zeros((4, 2))})
    with pytest.raises(KeyError, match="available"):
        open_dataset(p, keys=["nope"])
    with pytest.raises(IndexError):
        open_dataset(p)[4]
    # truncated file
    t = tmp_path / "t.h5"
    data = p.read_bytes()
    t.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated|not a readable"):
        open_dataset(t)
    # a foreign HDF5 file
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["u"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a krylon data set"):
        open_dataset(tmp_path / "f.h5")
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "missing.h5")


def test_random_obstacles_reproducible_and_open():
    m1 = random_obstacles((48, 40), 6, seed=3)
    m2 = random_obstacles((48, 40), 6, seed=3)
    assert torch.equal(m1, m2) and m1.any() and not m1.all()
    assert not m1[0].any() and not m1[-1].any() and not m1[:, 0].any() and not m1[:, -1].any()
    m3 = random_obstacles((16, 16, 16), 4, kind="spheres", seed=1)
    assert m3.shape == (16, 16, 16)
    with pytest.raises(ValueError):
        random_obstacles((16,), 2)


def test_fill_enclosed_closes_sealed_pockets():
    m = torch.zeros(9, 9, dtype=torch.bool)
    m[2:7, 2:7] = True
    m[3:6, 3:6] = False  # a fluid pocket sealed by a ring
    out = fill_enclosed(m)
    assert out[4, 4] and out[3:6, 3:6].all() and not out[0].any()


# ----------------------------------------------------------------------------- review fixes (regressions)
@pytest.mark.parametrize("bad", [dict(attrs={"f": object()}), dict(coords={"x": np.zeros((2, 2))}),
                                 dict(fields={"coords": ((4,), "float32")}), dict(attrs={"n_written": 3})])
def test_refused_writer_setup_leaves_no_partial_and_a_retry_works(tmp_path, bad):
    path = tmp_path / "d.h5"
    kwargs = {"fields": {"u": ((4,), "float32")}, "generator": "g", **bad}
    with pytest.raises((TypeError, ValueError)):
        DatasetWriter(path, 2, **kwargs)
    assert not (tmp_path / "d.h5.partial").exists()
    with DatasetWriter(path, 2, {"u": ((4,), "float32")}, generator="g") as w:  # the corrected call
        w.write_many(0, {"u": np.ones((2, 4), np.float32)})
    assert len(open_dataset(path)) == 2


def test_writer_setup_failing_inside_h5py_deletes_the_partial(tmp_path):
    with pytest.raises(Exception):  # h5py cannot store an object dtype
        DatasetWriter(tmp_path / "o.h5", 2, {"u": ((4,), object)}, generator="g")
    assert not (tmp_path / "o.h5.partial").exists()


def test_writer_n_samples_and_index_must_be_integers(tmp_path):
    with pytest.raises(TypeError, match="n_samples"):
        DatasetWriter(tmp_path / "b.h5", True, FIELDS, generator="g")
    with pytest.raises(TypeError, match="n_samples"):
        DatasetWriter(tmp_path / "b.h5", 2.0, FIELDS, generator="g")
    assert not (tmp_path / "b.h5.partial").exists()
    w = DatasetWriter(tmp_path / "c.h5", 1, FIELDS, generator="g")
    with pytest.raises(TypeError, match="index"):
        w.write(False, _sample(0))
    w.write(0, _sample(0))
    with pytest.raises(IndexError, match="past the end"):
        w.write(1, _sample(1))
    assert w.close()


def test_write_dataset_replaces_a_stale_partial_and_refuses_to_clobber(tmp_path):
    path = tmp_path / "w.h5"
    w = DatasetWriter(path, 3, {"a": ((2,), "float64")}, generator="user")  # an earlier attempt, interrupted
    w.write(0, {"a": np.full(2, 7.0)})
    w.close()
    assert (tmp_path / "w.h5.partial").exists()
    a = np.arange(6.0).reshape(3, 2)
    write_dataset(path, {"a": a})
    np.testing.assert_array_equal(open_dataset(path)[:]["a"].numpy(), a)
    assert not (tmp_path / "w.h5.partial").exists()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dataset(path, {"a": 2 * a})
    np.testing.assert_array_equal(open_dataset(path)[:]["a"].numpy(), a)  # untouched
    bad = 2 * a
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="sample 1"):
        write_dataset(path, {"a": bad}, overwrite=True)
    np.testing.assert_array_equal(open_dataset(path)[:]["a"].numpy(), a)  # a failed overwrite keeps the old file
    assert not (tmp_path / "w.h5.partial").exists()
    write_dataset(path, {"a": 2 * a}, overwrite=True)
    np.testing.assert_array_equal(open_dataset(path)[:]["a"].numpy(), 2 * a)


def test_json_attributes_come_back_decoded(tmp_path):
    attrs = {"channels": ["density", "Vx"], "meta": {"k": [1, 2], "s": "x"}, "lengths": [1.0, 2.0], "name": "n",
             "empty": []}
    p = write_dataset(tmp_path / "j.h5", {"a": np.zeros((2, 3))}, attrs=attrs)
    for got in (open_dataset(p).attrs, read_attrs(p)):
        assert got["channels"] == ["density", "Vx"] and got["meta"] == {"k": [1, 2], "s": "x"}
        assert got["empty"] == [] and got["name"] == "n"
        np.testing.assert_array_equal(got["lengths"], [1.0, 2.0])  # numeric lists stay arrays
    with h5py.File(p, "r") as f:  # on disk: JSON strings, listed
        assert isinstance(f.attrs["channels"], str) and sorted(json.loads(f.attrs["json_attrs"])) == ["channels", "empty", "meta"]

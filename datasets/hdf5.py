"""krylon's HDF5 data-set format: one schema, atomic and resumable writes, lazy reads.

Schema (format version 1)
-------------------------
A data set is one HDF5 file.  Every field is an HDF5 dataset whose first axis
indexes samples: ``/u`` of shape ``(N, *sample_shape)``.  File attributes:

``krylon_format``    ``"krylon-dataset"``
``format_version``   ``1``
``generator``        what made it (e.g. ``"krylon.datasets.dcdm.ritz_rhs"``)
``parameters``       JSON of the generator's parameters
``seed``             the seed (or -1)
``krylon_version``   the package version that wrote it
``n_samples``        samples the file is meant to hold
``n_written``        samples written so far (== n_samples once complete)
``complete``         True after :meth:`DatasetWriter.close` finished it

Writes are atomic: a :class:`DatasetWriter` fills ``<name>.partial`` and renames it
to ``<name>`` only when every sample is written.  An interrupted run leaves the
``.partial`` file; opening a writer with the same path and the same generator
parameters resumes at ``n_written``, so finished samples are never lost or
recomputed.  Samples are written in order and ``n_written`` is updated (and the
file flushed) after each one, so a crash can lose at most the sample in flight.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "DatasetWriter", "write_dataset", "open_dataset", "H5Dataset", "read_attrs"]

FORMAT = "krylon-dataset"
FORMAT_VERSION = 1


def _h5py():
    import h5py

    return h5py


def _version() -> str:
    """krylon's version from the installed distribution (pyproject's, the one source), like ``krylon.__version__``.

    Read here rather than imported from ``krylon``: datasets sits below the package's top level.
    """
    from importlib import metadata

    try:
        return metadata.version("krylon")
    except metadata.PackageNotFoundError:  # running from an uninstalled tree
        return "0+unknown"


def _canonical_json(params: Mapping | None) -> str:
    return json.dumps(params or {}, sort_keys=True, default=str)


class DatasetWriter:
    """Write samples one at a time into an HDF5 data set, atomically and resumably.

    Parameters
    ----------
    path : str or Path
        Final file name.  Work happens in ``path + ".partial"``.
    n_samples : int
        How many samples the finished data set holds.
    fields : mapping name -> (sample_shape, dtype)
        The fields every sample has.
    generator : str
        Name of what produces the samples (provenance).
    parameters : mapping, optional
        The generator's parameters (JSON-able).  Resuming requires the same ones.
    seed : int, optional
    chunk : int
        Samples per HDF5 chunk (compression off: these are float fields).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.h5")
    >>> with DatasetWriter(path, 3, {"u": ((4,), "float32")}, generator="demo") as w:
    ...     for i in range(w.n_written, 3):
    ...         w.write(i, {"u": np.full(4, i, dtype=np.float32)})
    >>> ds = open_dataset(path)
    >>> len(ds), ds[2]["u"].tolist()
    (3, [2.0, 2.0, 2.0, 2.0])
    """

    def __init__(self, path, n_samples: int, fields: Mapping[str, tuple], *, generator: str,
                 parameters: Mapping | None = None, seed: int | None = None, chunk: int = 16):
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if not fields:
            raise ValueError("a data set needs at least one field")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.n_samples = int(n_samples)
        self.fields = {k: (tuple(int(s) for s in shape), np.dtype(dt)) for k, (shape, dt) in fields.items()}
        self.generator = generator
        self.parameters = _canonical_json(parameters)
        self.seed = -1 if seed is None else int(seed)
        h5py = _h5py()
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists (a finished data set); delete it to regenerate")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            try:
                self.f = h5py.File(self.partial, "r+")
            except OSError as exc:
                raise ValueError(f"cannot resume from {self.partial}: the partial file is unreadable ({exc}); delete it") from exc
            self._check_resumable()
        else:
            self.f = h5py.File(self.partial, "w")
            a = self.f.attrs
            a["krylon_format"] = FORMAT
            a["format_version"] = FORMAT_VERSION
            a["generator"] = generator
            a["parameters"] = self.parameters
            a["seed"] = self.seed
            a["krylon_version"] = _version()
            a["n_samples"] = self.n_samples
            a["n_written"] = 0
            a["complete"] = False
            for name, (shape, dt) in self.fields.items():
                self.f.create_dataset(name, shape=(self.n_samples,) + shape, dtype=dt,
                                      chunks=(min(chunk, self.n_samples),) + shape)
            self.f.flush()

    def _check_resumable(self):
        a = self.f.attrs
        problems = []
        if a.get("krylon_format") != FORMAT:
            problems.append("not a krylon data set")
        if a.get("generator") != self.generator:
            problems.append(f"generator {a.get('generator')!r} != {self.generator!r}")
        if a.get("parameters") != self.parameters:
            problems.append("generator parameters differ")
        if int(a.get("seed", -2)) != self.seed:
            problems.append(f"seed {a.get('seed')} != {self.seed}")
        if int(a.get("n_samples", -1)) != self.n_samples:
            problems.append(f"n_samples {a.get('n_samples')} != {self.n_samples}")
        for name, (shape, dt) in self.fields.items():
            if name not in self.f:
                problems.append(f"field {name!r} missing")
            elif self.f[name].shape[1:] != shape or self.f[name].dtype != dt:
                problems.append(f"field {name!r} is {self.f[name].shape[1:]} {self.f[name].dtype}, expected {shape} {dt}")
        if problems:
            self.f.close()
            raise ValueError(f"cannot resume {self.partial}: " + "; ".join(problems) + ". Delete it or use the original settings.")

    @property
    def n_written(self) -> int:
        """Samples already on disk: start (or resume) the generation loop here."""
        return int(self.f.attrs["n_written"])

    def write(self, index: int, sample: Mapping[str, np.ndarray]) -> None:
        """Write sample ``index`` (must be the next one, ``== n_written``)."""
        if index != self.n_written:
            raise ValueError(f"samples are written in order: expected index {self.n_written}, got {index}")
        if index >= self.n_samples:
            raise IndexError(f"the data set holds {self.n_samples} samples; index {index} is past the end")
        missing = set(self.fields) - set(sample)
        extra = set(sample) - set(self.fields)
        if missing or extra:
            raise KeyError(f"sample fields do not match the schema: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, value in sample.items():
            arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            shape = self.fields[name][0]
            if arr.shape != shape:
                raise ValueError(f"field {name!r}: sample of shape {arr.shape}, expected {shape}")
            if not np.all(np.isfinite(arr)) and np.issubdtype(arr.dtype, np.inexact):
                raise ValueError(f"field {name!r} of sample {index} contains NaN/Inf")
            self.f[name][index] = arr
        self.f.attrs["n_written"] = index + 1
        self.f.flush()

    def write_many(self, start: int, samples: Mapping[str, np.ndarray]) -> None:
        """Write a block of consecutive samples (first axis) starting at ``start``."""
        n = None
        for name, value in samples.items():
            arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            n = arr.shape[0] if n is None else n
            if arr.shape[0] != n:
                raise ValueError("all fields of a block need the same number of samples")
        for i in range(n or 0):
            self.write(start + i, {k: (v[i]) for k, v in samples.items()})

    def close(self) -> bool:
        """Close the file; rename it into place when complete.  Returns True when complete."""
        if self.f is None:
            return self.path.exists()
        done = self.n_written == self.n_samples
        if done:
            self.f.attrs["complete"] = True
        self.f.flush()
        self.f.close()
        self.f = None
        if done:
            os.replace(self.partial, self.path)
        return done

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def write_dataset(path, fields: Mapping[str, np.ndarray], *, generator: str = "user", parameters: Mapping | None = None,
                  seed: int | None = None) -> Path:
    """Write whole arrays (first axis = samples) as a finished data set, atomically.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = write_dataset(os.path.join(tempfile.mkdtemp(), "x.h5"), {"a": np.zeros((5, 2, 2))})
    >>> len(open_dataset(p))
    5
    """
    arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in fields.items()}
    ns = {a.shape[0] for a in arrays.values()}
    if len(ns) != 1:
        raise ValueError(f"every field needs the same number of samples (first axis), got {sorted(ns)}")
    n = ns.pop()
    path = Path(path)
    if path.exists():
        path.unlink()
    with DatasetWriter(path, n, {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}, generator=generator,
                       parameters=parameters, seed=seed) as w:
        for name, a in arrays.items():
            w.f[name][...] = a
        w.f.attrs["n_written"] = n
    return path


def read_attrs(path) -> dict:
    """The provenance attributes of a krylon data set (parameters decoded from JSON)."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        out = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    if isinstance(out.get("parameters"), str):
        out["parameters"] = json.loads(out["parameters"])
    return out


class H5Dataset:
    """Lazy, index-able view of a krylon HDF5 data set (a ``torch.utils.data.Dataset``).

    The file is opened on first access in each process (safe with DataLoader
    workers); ``ds[i]`` returns a dict of torch tensors for the selected keys.
    """

    def __init__(self, path, keys: Sequence[str] | None = None, *, allow_partial: bool = False, dtype=None):
        h5py = _h5py()
        self.path = Path(path)
        if not self.path.exists():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = f" (an unfinished {partial.name} exists: resume its generation)" if partial.exists() else ""
            raise FileNotFoundError(f"no data set at {self.path}{hint}")
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                available = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
                shapes = {k: f[k].shape for k in available}
        except OSError as exc:
            raise ValueError(f"{self.path} is not a readable HDF5 file (truncated or corrupt?): {exc}") from exc
        if attrs.get("krylon_format") != FORMAT:
            raise ValueError(f"{self.path} is not a krylon data set (no krylon_format attribute); "
                             "use the matching reader for FNO .mat or PDEBench files")
        n_written, n_samples = int(attrs.get("n_written", 0)), int(attrs.get("n_samples", 0))
        if n_written < n_samples and not allow_partial:
            raise ValueError(f"{self.path} is incomplete: {n_written} of {n_samples} samples written")
        self.keys = list(keys) if keys is not None else available
        missing = [k for k in self.keys if k not in available]
        if missing:
            raise KeyError(f"{self.path} has no field(s) {missing}; available: {available}")
        self.n = n_written
        self.shapes = {k: shapes[k][1:] for k in self.keys}
        self.attrs = attrs
        self.dtype = dtype
        self._file = None
        self._pid = None

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = _h5py().File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        import torch

        if isinstance(index, slice):
            idx = range(*index.indices(self.n))
            return {k: torch.stack([self[i][k] for i in idx]) for k in self.keys}
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a data set of {self.n} samples")
        f = self._handle()
        out = {}
        for k in self.keys:
            try:
                arr = f[k][index]
            except OSError as exc:
                raise ValueError(f"{self.path}: cannot read sample {index} of {k!r} (truncated file?): {exc}") from exc
            t = torch.from_numpy(np.ascontiguousarray(arr))
            out[k] = t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t
        return out

    def __getstate__(self):  # picklable for DataLoader workers: reopen in the child
        d = dict(self.__dict__)
        d["_file"] = None
        d["_pid"] = None
        return d

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self):
        return f"H5Dataset({str(self.path)!r}, n={self.n}, fields={self.shapes})"


def open_dataset(path, keys: Iterable[str] | None = None, **kw) -> H5Dataset:
    """Open a krylon HDF5 data set lazily (see :class:`H5Dataset`)."""
    return H5Dataset(path, keys, **kw)

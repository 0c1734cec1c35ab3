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
``json_attrs``       JSON list of the further attributes stored as JSON (dicts, lists of strings); only when any

Optional: ``/coords/<axis>`` 1-D datasets with the coordinates of the sample axes (``x``, ``y``, ``t``, ...), and
further attributes a writer passes (``attrs=``; e.g. a generator's ``lengths``/``times``, a conversion's source
file and checksum), read back unchanged (those in ``json_attrs`` decoded again).

Readers of other layouts (FNO ``.mat``, PDEBench) live in :mod:`.readers`; :func:`open_dataset` picks one.  Every
reader is a :class:`LazyH5Dataset`: lazily opened per process (picklable for DataLoader workers), ``ds[i]`` a dict
of torch tensors, every floating sample checked for NaN/Inf on read.

A data set written in parts by several processes (``part=`` of :class:`DatasetWriter`, ``torchrun krylon
generate``) is one file of HDF5 virtual data sets linking the part files (see :mod:`.parts`); it reads as above.

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
import torch

from ..kernels import validate

__all__ = ["FORMAT", "FORMAT_VERSION", "SCHEMA_ATTRS", "DatasetWriter", "write_dataset", "open_dataset", "H5Dataset",
           "LazyH5Dataset", "read_attrs", "open_h5", "file_kind"]

FORMAT = "krylon-dataset"
FORMAT_VERSION = 1
# the attributes the schema owns: a writer's attrs= cannot set them
SCHEMA_ATTRS = ("krylon_format", "format_version", "generator", "parameters", "seed", "krylon_version", "n_samples",
                "n_written", "complete", "json_attrs")


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
    attrs : mapping, optional
        Further file attributes (numbers, strings, 1-D numeric arrays; dicts and lists of strings are stored as
        JSON, listed in ``json_attrs`` and decoded on read), e.g. provenance of a conversion or a generator's
        ``lengths``/``times``.  Written once, at creation.
    coords : mapping axis -> 1-D array, optional
        Coordinates of the sample axes, stored as ``/coords/<axis>`` (readers expose them as ``ds.coords``).
    overwrite : bool
        Allow an existing finished ``path``: it is replaced (atomically) only when the new file is complete.
    part : (index, count), optional
        Write only part ``index`` of ``count`` (one rank of a distributed generation): the samples
        :attr:`start` .. :attr:`stop` - 1 (:func:`~.parts.part_range`), into the file
        :func:`~.parts.part_path` ``(path, index, count)``, a krylon data set of its own with attributes
        ``part_index``, ``part_count``, ``part_start``, ``part_stop``, ``n_total``.  Indices stay global
        (:attr:`n_written`, :meth:`write`, :meth:`pending_batches`).  A finished part file is reused (checked
        against the parameters) and nothing is left to write; :func:`~.parts.link_parts` joins the parts.
    granule : int
        With ``part``: parts hold whole blocks of this many samples (the generator's batch, so that the parts
        compute the batches a single process does).

    Every argument is checked before ``.partial`` is created, and a creation that fails half-way deletes it, so a
    corrected retry starts clean.

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
                 parameters: Mapping | None = None, seed: int | None = None, chunk: int = 16,
                 attrs: Mapping | None = None, coords: Mapping | None = None, overwrite: bool = False,
                 part: tuple[int, int] | None = None, granule: int = 1):
        from .parts import PART_ATTRS, part_path, part_range

        self.f = None
        self.n_samples = validate.integer(n_samples, "n_samples")
        if not fields:
            raise ValueError("a data set needs at least one field")
        if "coords" in fields:
            raise ValueError("'coords' is reserved for the coordinates group; name the field otherwise")
        overwrite = validate.boolean(overwrite, "overwrite")
        self.path = Path(path)
        self.start, self.stop = 0, self.n_samples
        self.part = None
        if part is not None:
            if not (isinstance(part, (tuple, list)) and len(part) == 2):
                raise TypeError(f"part must be a pair (index, count), got {part!r}")
            index = validate.integer(part[0], "part index", minimum=0)
            count = validate.integer(part[1], "part count", minimum=1)
            rng = part_range(self.n_samples, index, count, granule)
            self.start, self.stop = rng.start, rng.stop
            self.part = {"part_index": index, "part_count": count, "part_start": self.start, "part_stop": self.stop,
                         "n_total": self.n_samples}
            if self.path.exists() and not overwrite:
                raise FileExistsError(f"{self.path} already exists (a finished data set); delete it to regenerate")
            self.path = part_path(self.path, index, count)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.fields = {k: (tuple(int(s) for s in shape), np.dtype(dt)) for k, (shape, dt) in fields.items()}
        self.generator = generator
        self.parameters = _canonical_json(parameters)
        self.seed = -1 if seed is None else int(seed)
        chunk = validate.integer(chunk, "chunk")
        # everything checked before the .partial exists, so a refused call leaves nothing behind
        stored, json_keys = {}, []
        for key, value in (attrs or {}).items():
            if key in SCHEMA_ATTRS or key in PART_ATTRS:
                raise ValueError(f"attribute {key!r} is part of the schema and cannot be set through attrs=")
            stored[key] = _attr_value(key, value)
            if _is_json_attr(value):
                json_keys.append(key)
        axes = {}
        for axis, values in (coords or {}).items():
            arr = np.asarray(values)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
                raise ValueError(f"coordinate {axis!r} must be a 1-D numeric array, got shape {arr.shape} {arr.dtype}")
            axes[axis] = arr
        h5py = _h5py()
        if self.part is not None and self.path.exists():  # this part finished in an earlier run: reuse it
            self.f = h5py.File(self.path, "r+")
            self._check_resumable()
            return
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists (a finished data set); delete it to regenerate")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            try:
                self.f = h5py.File(self.partial, "r+")
            except OSError as exc:
                raise ValueError(f"cannot resume from {self.partial}: the partial file is unreadable ({exc}); delete it") from exc
            self._check_resumable()
            return
        self.f = h5py.File(self.partial, "w")
        try:
            a = self.f.attrs
            a["krylon_format"] = FORMAT
            a["format_version"] = FORMAT_VERSION
            a["generator"] = generator
            a["parameters"] = self.parameters
            a["seed"] = self.seed
            a["krylon_version"] = _version()
            a["n_samples"] = self.stop - self.start
            a["n_written"] = 0
            for key, value in (self.part or {}).items():
                a[key] = value
            a["complete"] = False
            for key, value in stored.items():
                a[key] = value
            if json_keys:
                a["json_attrs"] = json.dumps(json_keys)
            for axis, arr in axes.items():
                self.f.create_dataset(f"coords/{axis}", data=arr)
            m = self.stop - self.start
            for name, (shape, dt) in self.fields.items():  # (an empty part: no chunks, HDF5 wants them >= 1)
                self.f.create_dataset(name, shape=(m,) + shape, dtype=dt,
                                      chunks=(min(chunk, m),) + shape if m else None)
            self.f.flush()
        except BaseException:  # h5py refused something (a dtype, a name): no half-made .partial to trip a retry
            self.discard()
            raise

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
        if int(a.get("n_samples", -1)) != self.stop - self.start:
            problems.append(f"n_samples {a.get('n_samples')} != {self.stop - self.start}")
        for key, value in (self.part or {}).items():
            if int(a.get(key, -1)) != value:
                problems.append(f"{key} {a.get(key)} != {value}")
        for name, (shape, dt) in self.fields.items():
            if name not in self.f:
                problems.append(f"field {name!r} missing")
            elif self.f[name].shape[1:] != shape or self.f[name].dtype != dt:
                problems.append(f"field {name!r} is {self.f[name].shape[1:]} {self.f[name].dtype}, expected {shape} {dt}")
        if problems:
            where = self.f.filename
            self.f.close()
            self.f = None
            raise ValueError(f"cannot resume {where}: " + "; ".join(problems) + ". Delete it or use the original settings.")

    def pending_batches(self, batch_size: int):
        """Index ranges still to compute, in batches starting at multiples of ``batch_size`` whatever the resume point.

        A resumed run computes exactly the batches an uninterrupted one does (the same tensors, the same rounding);
        the caller writes the samples of a batch from :attr:`n_written` on.
        """
        batch_size = validate.integer(batch_size, "batch_size", minimum=1)
        n, done = self.stop, self.n_written
        for start in range((done // batch_size) * batch_size, n if done < n else 0, batch_size):
            yield range(start, min(start + batch_size, n))

    @property
    def n_written(self) -> int:
        """Samples already on disk: start (or resume) the generation loop here (a global index, also in a part)."""
        return self.start + int(self.f.attrs["n_written"])

    def write(self, index: int, sample: Mapping[str, np.ndarray]) -> None:
        """Write sample ``index`` (must be the next one, ``== n_written``): :meth:`write_many` with a block of one."""
        index = validate.integer(index, "index", minimum=0)
        self.write_many(index, {k: _as_array(v)[None] for k, v in sample.items()})

    def write_many(self, start: int, samples: Mapping[str, np.ndarray]) -> None:
        """Write a block of consecutive samples (first axis) starting at ``start``, in one HDF5 write per field.

        The block is checked (order, fields, shapes, NaN/Inf) before anything is written, and ``n_written`` moves
        once, after the whole block is on disk.
        """
        if start != self.n_written:
            raise ValueError(f"samples are written in order: expected index {self.n_written}, got {start}")
        missing = set(self.fields) - set(samples)
        extra = set(samples) - set(self.fields)
        if missing or extra:
            raise KeyError(f"sample fields do not match the schema: missing {sorted(missing)}, unexpected {sorted(extra)}")
        arrays = {k: _as_array(v) for k, v in samples.items()}
        counts = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
        if len(set(counts.values())) != 1 or None in counts.values():
            raise ValueError(f"all fields of a block need the same number of samples (first axis), got {counts}")
        n = next(iter(counts.values()))
        if start + n > self.stop:
            raise IndexError(f"the data set (part) holds samples up to {self.stop}; a block of {n} at {start} runs past "
                             "the end")
        for name, arr in arrays.items():
            shape = self.fields[name][0]
            if arr.shape[1:] != shape:
                raise ValueError(f"field {name!r}: samples of shape {arr.shape[1:]}, expected {shape}")
            if arr.dtype.kind in "fc":
                native = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # torch takes native byte order only
                for i in range(n):  # per sample, so the message names the bad one
                    validate.finite(torch.from_numpy(np.ascontiguousarray(native[i])), f"field {name!r} of sample {start + i}")
        local = start - self.start
        for name, arr in arrays.items():
            self.f[name][local:local + n] = arr
        self.f.attrs["n_written"] = local + n
        self.f.flush()

    def discard(self) -> None:
        """Close the file and delete the ``.partial`` (a write that cannot succeed: nothing worth resuming)."""
        if self.f is not None:
            self.f.close()
            self.f = None
        self.partial.unlink(missing_ok=True)

    def close(self) -> bool:
        """Close the file; rename it into place when complete.  Returns True when complete."""
        if self.f is None:
            return self.path.exists()
        done = self.n_written == self.stop
        finished = Path(self.f.filename) == self.path  # a finished part, reopened: nothing to move
        if done:
            self.f.attrs["complete"] = True
        self.f.flush()
        self.f.close()
        self.f = None
        if done and not finished:
            os.replace(self.partial, self.path)
        return done

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def write_dataset(path, fields: Mapping[str, np.ndarray], *, generator: str = "user", parameters: Mapping | None = None,
                  seed: int | None = None, attrs: Mapping | None = None, coords: Mapping | None = None,
                  overwrite: bool = False) -> Path:
    """Write whole arrays (first axis = samples) as a finished data set, atomically.

    Everything is written at once, so a ``.partial`` left by an interrupted earlier call is stale and replaced.
    An existing ``path`` is a ``FileExistsError`` unless ``overwrite=True``; then it is replaced only once the new
    file is complete.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = write_dataset(os.path.join(tempfile.mkdtemp(), "x.h5"), {"a": np.zeros((5, 2, 2))})
    >>> len(open_dataset(p))
    5
    """
    overwrite = validate.boolean(overwrite, "overwrite")
    arrays = {k: _as_array(v) for k, v in fields.items()}
    if not arrays or any(a.ndim == 0 for a in arrays.values()):
        raise ValueError("write_dataset needs at least one field, each an array with a leading sample axis")
    ns = {a.shape[0] for a in arrays.values()}
    if len(ns) != 1:
        raise ValueError(f"every field needs the same number of samples (first axis), got {sorted(ns)}")
    n = ns.pop()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.with_name(path.name + ".partial").unlink(missing_ok=True)
    w = DatasetWriter(path, n, {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}, generator=generator,
                      parameters=parameters, seed=seed, attrs=attrs, coords=coords, overwrite=overwrite)
    try:
        w.write_many(0, arrays)
    except BaseException:
        w.discard()
        raise
    w.close()
    return path


def _as_array(value) -> np.ndarray:
    """A numpy view of a tensor (moved to the CPU) or array-like."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _is_json_attr(value) -> bool:
    """Whether :func:`_attr_value` stores ``value`` as JSON (dicts and lists that are not all numbers)."""
    return isinstance(value, (dict, list, tuple)) and not (
        value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _attr_value(key: str, value):
    """An HDF5-storable form of a user attribute (JSON for dicts and string lists), or ``TypeError`` naming it."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if _is_json_attr(value):
        return json.dumps(value, sort_keys=True, default=str)
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufU" or arr.ndim > 1:
        raise TypeError(f"attribute {key!r} must be a number, a string, a 1-D numeric array or JSON-able, got {value!r}")
    return value if arr.dtype.kind == "U" else arr


def _decoded(attrs: dict) -> dict:
    """File attributes with ``parameters`` and those listed in ``json_attrs`` decoded from JSON (in place)."""
    names = attrs.get("json_attrs")
    try:
        names = json.loads(names) if isinstance(names, str) else []
    except ValueError:
        names = []
    for key in ["parameters", *names]:
        if isinstance(attrs.get(key), str):
            try:
                attrs[key] = json.loads(attrs[key])
            except ValueError:
                pass
    return attrs


def _plain(value):
    """An HDF5 attribute as plain Python/numpy (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return value.item() if isinstance(value, np.generic) else value


def read_attrs(path) -> dict:
    """The provenance attributes of a krylon data set (``parameters`` and the ``json_attrs`` decoded from JSON)."""
    with open_h5(path) as f:
        return _decoded({k: _plain(v) for k, v in f.attrs.items()})


def file_kind(path) -> str | None:
    """What a file that is not HDF5 may be, from its first bytes: ``"torch"`` (``torch.save``'s zip container),
    ``"matlab-v5"`` (a MATLAB v5 ``.mat``, which HDF5 cannot read), else ``None``."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(b"MATLAB 5.0"):
        return "matlab-v5"
    return None


def open_h5(path):
    """Open ``path`` read-only with h5py, or raise a clear error.

    ``FileNotFoundError`` for a missing file (saying so when an unfinished ``.partial`` generation sits next to
    it); ``ValueError`` for a file h5py cannot open (truncated, corrupt, not HDF5).
    """
    h5py = _h5py()
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = f" (an unfinished {partial.name} exists: resume its generation)" if partial.exists() else ""
        raise FileNotFoundError(f"no data set at {path}{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        kind = file_kind(path)
        if kind == "torch":
            hint = "; it is a torch file: convert it with `krylon convert` (krylon.datasets.convert)"
        elif kind == "matlab-v5":
            hint = "; it is a MATLAB v5 .mat file, not v7.3 (HDF5): convert it with `krylon convert`"
        else:
            hint = " (truncated or corrupt?)"
        raise ValueError(f"{path} is not a readable HDF5 file{hint}: {exc}") from exc


class LazyH5Dataset(torch.utils.data.Dataset):
    """Common machinery of every reader: a lazy, index-able, picklable view of an HDF5 file.

    A subclass fills ``path``, ``layout``, ``keys``, ``n``, ``shapes``, ``coords``, ``attrs`` in its constructor
    (with the file opened once to look at it) and implements ``_sample(f, i) -> {key: (numpy array, source)}``,
    where ``source`` names the HDF5 object the array came from (for error messages), and, where its layout can
    read several samples at once, ``_range(f, lo, hi)`` (the same with a leading sample axis), which batched
    fetches (``ds[a:b]``, ``ds.__getitems__``, hence DataLoader) use.  The file is opened on first
    access in each process (safe with DataLoader workers); ``ds[i]`` returns a dict of torch tensors, converted
    to ``dtype`` when one is given (floating fields only); a sample holding NaN or Inf raises ``ValueError``
    naming the file, the key and the sample index (``check_finite=False`` skips the check).
    """

    layout = "?"

    def _init_common(self, path, *, dtype=None, check_finite: bool = True):
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch dtype or None, got {dtype!r}")
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
        self.path = Path(path)
        self.dtype = dtype
        self.check_finite = check_finite
        self.coords: dict = {}
        self.attrs: dict = {}
        self._file = None
        self._pid = None

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path)
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return self.n

    def _sample(self, f, index: int) -> dict:
        raise NotImplementedError

    def _range(self, f, lo: int, hi: int) -> dict | None:
        """Samples ``lo..hi-1`` in one read per key: ``{key: (array (hi - lo, ...), source)}``; ``None`` where a
        layout reads sample by sample."""
        return None

    def _block(self, f, indices: list) -> dict | None:
        """The sorted unique ``indices`` from one contiguous read when they are dense enough, else ``None``."""
        lo, hi = indices[0], indices[-1] + 1
        if hi - lo > 4 * len(indices):  # sparse: reading the span would cost more than sample by sample
            return None
        raw = self._range(f, lo, hi)
        if raw is None:
            return None
        pick = np.asarray(indices) - lo
        return {k: (arr[pick], source) for k, (arr, source) in raw.items()}

    def _index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"a data set is indexed by an integer or a slice, got {index!r}")
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a data set of {self.n} samples")
        return index

    def _read(self, fn, what: str):
        try:
            return fn(self._handle())
        except (OSError, RuntimeError) as exc:  # h5py raises these for unreadable chunks
            raise ValueError(f"{self.path}: cannot read {what} (truncated file?): {exc}") from exc

    def _tensor(self, arr, key: str, source: str, index: int) -> torch.Tensor:
        arr = np.asarray(arr)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.check_finite and arr.dtype.kind in "fc":
            src = "" if source == key else f" (from {source!r})"
            validate.finite(t, f"{self.path}: key {key!r}{src} of sample {index}")
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    def __getitem__(self, index):
        if isinstance(index, slice):
            samples = self.__getitems__(range(*index.indices(self.n)))
            return {k: torch.stack([s[k] for s in samples]) if samples else torch.empty((0, *self.shapes[k]))
                    for k in self.keys}
        index = self._index(index)
        raw = self._read(lambda f: self._sample(f, index), f"sample {index}")
        return {k: self._tensor(arr, k, source, index) for k, (arr, source) in raw.items()}

    def __getitems__(self, indices) -> list:
        """A list of samples (DataLoader's batched fetch): one read per key where the layout allows it."""
        idx = [self._index(i) for i in indices]
        if not idx:
            return []
        order = sorted(set(idx))
        raw = self._read(lambda f: self._block(f, order), f"samples {order[0]}..{order[-1]}")
        if raw is None:
            return [self[i] for i in idx]
        pos = {j: n for n, j in enumerate(order)}
        return [{k: self._tensor(arr[pos[i]], k, source, i) for k, (arr, source) in raw.items()} for i in idx]

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
        return f"{type(self).__name__}({str(self.path)!r}, layout={self.layout!r}, n={self.n}, fields={self.shapes})"


def read_coords(f, group: str = "coords") -> dict:
    """The 1-D coordinate arrays stored under ``group`` of an open file (empty when there is none)."""
    g = f.get(group)
    if g is None or not isinstance(g, _h5py().Group):
        return {}
    return {k: np.asarray(v[()]).reshape(-1) for k, v in g.items() if isinstance(v, _h5py().Dataset)}


def _check_sources(f, path: Path) -> None:
    """``FileNotFoundError`` when a virtual data set of ``f`` links a file that is not there; ``ValueError`` when
    a linked part is not the one the link was made from.

    HDF5 reads the missing part of a virtual data set as its fill value (zeros): a moved or deleted part file
    would silently turn into zero samples, and a part regenerated with another seed or split (a rerun on
    another number of ranks) would silently mix data sets.  Each part must be complete, come from the linking
    file's generator, parameters and seed, and hold exactly the samples mapped from it.  Relative source names
    resolve next to the linking file.
    """
    h5py = _h5py()
    checked = set()
    for key, obj in f.items():
        if not (isinstance(obj, h5py.Dataset) and obj.is_virtual):
            continue
        for source in obj.virtual_sources():
            name = Path(source.file_name)
            if source.file_name == ".":
                continue
            file = name if name.is_absolute() else path.parent / name
            if not file.exists():
                raise FileNotFoundError(f"{path}: field {key!r} links the part file {source.file_name!r}, which is "
                                        f"missing (the parts must stay next to {path.name})")
            lo, hi = source.vspace.get_select_bounds()
            rows = (int(lo[0]), int(hi[0]) + 1)
            if (file, rows) in checked:
                continue
            checked.add((file, rows))
            with open_h5(file) as part:
                a = {k: _plain(v) for k, v in part.attrs.items()}
            for attr in ("generator", "parameters", "seed"):
                if a.get(attr) != _plain(f.attrs.get(attr)):
                    raise ValueError(f"{path}: the part file {source.file_name!r} has {attr} {a.get(attr)!r}, the "
                                     f"linked data set {_plain(f.attrs.get(attr))!r} (a part regenerated since "
                                     f"it was linked? generate the data set again)")
            if not a.get("complete") or (a.get("part_start"), a.get("part_stop")) != rows:
                raise ValueError(f"{path}: the part file {source.file_name!r} holds samples {a.get('part_start')}.."
                                 f"{a.get('part_stop')} (complete: {a.get('complete')}), the link maps samples "
                                 f"{rows[0]}..{rows[1]} to it (a part regenerated since it was linked?)")


class H5Dataset(LazyH5Dataset):
    """Lazy, index-able view of a krylon HDF5 data set (layout ``"krylon"``; a ``torch.utils.data.Dataset``).

    ``ds[i]`` returns a dict of torch tensors for the selected ``keys`` (default: every field), as stored;
    ``ds.attrs`` holds the file attributes (``parameters`` and the ``json_attrs`` decoded from JSON) and ``ds.coords`` the ``/coords``
    group (or, without one, a 1-D ``times`` attribute as ``"t"``).
    """

    layout = "krylon"

    def __init__(self, path, keys: Sequence[str] | None = None, *, allow_partial: bool = False, dtype=None,
                 check_finite: bool = True):
        self._init_common(path, dtype=dtype, check_finite=check_finite)
        h5py = _h5py()
        with open_h5(self.path) as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            available = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
            shapes = {k: f[k].shape for k in available}
            coords = read_coords(f)
            _check_sources(f, self.path)
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
        _decoded(attrs)
        times = attrs.get("times")
        if "t" not in coords and isinstance(times, np.ndarray) and times.ndim == 1:
            coords["t"] = times
        self.attrs = attrs
        self.coords = coords

    def _sample(self, f, index):
        return {k: (f[k][index], k) for k in self.keys}

    def _range(self, f, lo, hi):
        return {k: (f[k][lo:hi], k) for k in self.keys}


def open_dataset(path, keys: Iterable[str] | None = None, *, layout: str = "auto", **options) -> LazyH5Dataset:
    """Open a data set lazily, krylon's own or another layout (see :func:`krylon.datasets.readers.open_dataset`)."""
    from .readers import open_dataset as _open

    return _open(path, keys, layout=layout, **options)

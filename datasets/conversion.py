"""Convert other programs' data into krylon's HDF5 schema (``krylon convert``).

Two kinds of source:

* neuraloperator's ``.pt`` dicts (layout ``"neuralop-pt"``), e.g. its small Darcy and Burgers files: ``x``
  (N, *space) and ``y`` (N, *space) for a steady problem or ``y`` (N, T, *space) for a trajectory.  They become
  fields ``"x"`` (N, 1, *space) and ``"y"`` (N, 1, *space) or (N, 1, *space, T) -- channels first, time last,
  the sample convention of :mod:`.readers`; booleans become float32; scalar entries (Burgers' ``visc``) become
  attributes.  Read with ``torch.load(weights_only=True)``: tensors only, never pickled code.
* anything :func:`.readers.open_dataset` reads (FNO ``.mat``, PDEBench, krylon), with the same options, and
  FNO's older MATLAB v5 ``.mat`` files (read with scipy, then as the v7.3 layout ``"fno-mat"``).

The output is written through :class:`.hdf5.DatasetWriter` (atomic, resumable) and records its provenance: the
source file's name and sha256, the layout and the options (attributes ``source``, ``source_sha256``,
``source_layout``, ``parameters``), plus the reader's coordinates and split (``input_steps``...).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..kernels import validate
from .hdf5 import SCHEMA_ATTRS, DatasetWriter, _attr_value, file_kind
from .readers import LAYOUTS, open_dataset

__all__ = ["convert", "PT_LAYOUT", "sha256"]

PT_LAYOUT = "neuralop-pt"
_BLOCK = 64  # samples per HDF5 write
# attributes of a source that describe the source file itself, not its samples: not copied
_SCHEMA = set(SCHEMA_ATTRS) | {"source", "source_sha256", "source_layout", "layout", "sources"}


def sha256(path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_pt(path: Path, x_key: str, y_key: str) -> tuple[dict, dict]:
    """Fields ``{"x", "y"}`` (numpy, channels first) and scalar attributes of a neuraloperator ``.pt`` dict."""
    from ..operators.learned.registry import read_torch_file

    with open(path, "rb") as fh:
        d = read_torch_file(fh, str(path))
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a {type(d).__name__}, not a dict of tensors like neuraloperator's data files")
    tensors = {k: v for k, v in d.items() if hasattr(v, "detach")}
    for k, opt in ((x_key, "x_key"), (y_key, "y_key")):
        if k not in tensors:
            raise KeyError(f"{path} has no tensor {k!r}; it has {sorted(d)}: name the right one with {opt}=")
    x, y = (tensors[k].detach().cpu().numpy() for k in (x_key, y_key))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{path}: input {x_key!r} has {x.shape[0]} samples but target {y_key!r} has {y.shape[0]}")
    if y.ndim == x.ndim:
        if y.shape != x.shape:
            raise ValueError(f"{path}: inconsistent shapes: {x_key!r} {x.shape} and {y_key!r} {y.shape}")
        y = y[:, None]
    elif y.ndim == x.ndim + 1:  # a trajectory (N, T, *space): time goes last
        if y.shape[2:] != x.shape[1:]:
            raise ValueError(f"{path}: the trajectory {y_key!r} {y.shape} is (N, T, *space) with a grid other than "
                             f"the input {x_key!r} {x.shape} (wrong axis order?)")
        y = np.moveaxis(y, 1, -1)[:, None]
    else:
        raise ValueError(f"{path}: cannot pair input {x_key!r} {x.shape} with target {y_key!r} {y.shape}: expected "
                         "the same shape or a trajectory (N, T, *space)")
    fields = {"x": x[:, None], "y": y}
    fields = {k: (a.astype(np.float32) if a.dtype == np.bool_ else a) for k, a in fields.items()}
    attrs = {}
    for k, v in d.items():
        if k in (x_key, y_key):
            continue
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
            v = v.item() if v.size == 1 else v
        try:
            _attr_value(k, v)  # only checked: the writer stores it (and records JSON ones)
        except TypeError:
            continue  # per-sample or structured extras are not part of the sample convention
        attrs[k] = v
    return fields, attrs


def convert(src, dst, *, layout: str = "auto", dtype: str | None = None, overwrite: bool = False, **options) -> Path:
    """Convert ``src`` into a krylon HDF5 data set at ``dst``; returns ``dst``.

    Parameters
    ----------
    src : str or Path
        A neuraloperator ``.pt`` dict, or a file :func:`~krylon.datasets.open_dataset` reads.
    dst : str or Path
        The krylon file to write (atomically; an interrupted conversion resumes from ``dst.partial``).
    layout : str
        ``"auto"``, ``"neuralop-pt"`` or one of :data:`~krylon.datasets.readers.LAYOUTS`.
    dtype : str, optional
        Store floating fields in this numpy dtype (``"float32"``); default as read (booleans become float32).
    overwrite : bool
        Replace an existing ``dst`` (only once the new file is complete: a failed conversion keeps the old one) and
        start afresh instead of resuming a ``dst.partial``; otherwise an existing file is a ``FileExistsError``.
    **options
        ``x_key``/``y_key`` for ``.pt`` files; the reader's options otherwise (``input_steps``, ...).

    Examples
    --------
    >>> import torch, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> torch.save({"x": torch.rand(3, 8) > 0.5, "y": torch.rand(3, 8)}, os.path.join(d, "toy.pt"))
    >>> from krylon.datasets import open_dataset
    >>> ds = open_dataset(convert(os.path.join(d, "toy.pt"), os.path.join(d, "toy.h5")))
    >>> ds.shapes, ds[0]["x"].dtype, ds.attrs["source_layout"]
    ({'x': (1, 8), 'y': (1, 8)}, torch.float32, 'neuralop-pt')
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"no file to convert at {src}")
    if src.resolve() == dst.resolve():
        raise ValueError(f"source and destination are the same file: {src}")
    if not isinstance(layout, str) or layout not in ("auto", PT_LAYOUT) + LAYOUTS:
        raise ValueError(f"layout must be one of {('auto', PT_LAYOUT) + LAYOUTS}, got {layout!r}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype such as 'float32', got {dtype}")
    overwrite = validate.boolean(overwrite, "overwrite")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--force) to replace it")
    if overwrite:  # a fresh conversion: whatever an earlier attempt left is not resumed
        dst.with_name(dst.name + ".partial").unlink(missing_ok=True)
    kind = file_kind(src)
    if layout == "auto":
        layout = PT_LAYOUT if src.suffix in (".pt", ".pth") or kind == "torch" else "auto"
    digest = sha256(src)
    if layout in ("auto", "fno-mat") and kind == "matlab-v5":
        # FNO's older files (Darcy, Burgers) are MATLAB v5, which HDF5 cannot read: rewrite them the way
        # MATLAB's v7.3 would store them and read that with the one .mat reader
        tmp = dst.with_name(dst.name + ".v73.tmp")
        try:
            _matlab_v5_as_v73(src, tmp)
            return _convert(tmp, dst, "fno-mat", dtype, options, src, digest, overwrite)
        finally:
            tmp.unlink(missing_ok=True)
    return _convert(src, dst, layout, dtype, options, src, digest, overwrite)


def _matlab_v5_as_v73(src: Path, out: Path) -> None:
    """Write the arrays of a MATLAB v5 ``.mat`` file as MATLAB v7.3 would: HDF5, every array's axes reversed."""
    import h5py
    from scipy.io import loadmat

    try:
        arrays = loadmat(src)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise ValueError(f"{src} is not a readable MATLAB v5 .mat file (truncated or corrupt?): {exc}") from exc
    with h5py.File(out, "w") as f:
        for k, a in arrays.items():
            if k.startswith("__") or not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
                continue  # header, version, globals; cells and structs are not fields
            f[k] = np.ascontiguousarray(a.T)
            f[k].attrs["MATLAB_class"] = np.bytes_("double")


def _convert(src: Path, dst: Path, layout: str, dtype, options: dict, origin: Path, digest: str, overwrite: bool) -> Path:
    """Write ``src`` (read with ``layout``) to ``dst``; ``origin``/``digest`` identify the original source."""
    name = origin.name
    coords, extra = {}, {}
    if layout == PT_LAYOUT:
        unknown = sorted(set(options) - {"x_key", "y_key"})
        if unknown:
            raise TypeError(f"the {PT_LAYOUT!r} layout takes the options x_key and y_key, not {unknown}")
        fields, extra = _load_pt(src, options.get("x_key", "x"), options.get("y_key", "y"))
        n = next(iter(fields.values())).shape[0]
        shapes = {k: (a.shape[1:], a.dtype) for k, a in fields.items()}

        def blocks(start):
            for i in range(start, n, _BLOCK):
                yield i, {k: a[i:i + _BLOCK] for k, a in fields.items()}
    else:
        ds = open_dataset(src, layout=layout, **options)
        layout = ds.layout
        n = len(ds)
        if n < 1:
            raise ValueError(f"{src} holds no samples")
        first = ds[0]
        shapes = {k: (tuple(v.shape), v.numpy().dtype) for k, v in first.items()}
        coords = ds.coords
        for k, v in ds.attrs.items():
            if k not in _SCHEMA:
                try:
                    _attr_value(k, v)  # only checked: the writer stores it (and records JSON ones)
                except TypeError:
                    continue
                extra[k] = v

        def blocks(start):
            for i in range(start, n, _BLOCK):
                samples = ds.__getitems__(range(i, min(i + _BLOCK, n)))  # one read per key where the layout allows
                yield i, {k: np.stack([s[k].numpy() for s in samples]) for k in shapes}
    if dtype is not None:
        shapes = {k: (s, dtype if dt.kind == "f" else dt) for k, (s, dt) in shapes.items()}
    parameters = {"source": name, "source_sha256": digest, "layout": layout, "options": options,
                  "dtype": None if dtype is None else dtype.name}
    attrs = dict(extra, source=name, source_sha256=digest, source_layout=layout)
    w = DatasetWriter(dst, n, shapes, generator="krylon.datasets.convert", parameters=parameters,
                      attrs=attrs, coords=coords, overwrite=overwrite)
    try:
        for start, block in blocks(w.n_written):
            w.write_many(start, {k: a.astype(shapes[k][1], copy=False) for k, a in block.items()})
    except ValueError as exc:  # bad data (NaN/Inf, unreadable): a retry fails the same way, so keep no .partial
        w.discard()
        raise ValueError(f"cannot convert {origin}: {exc}") from exc
    finally:
        w.close()  # complete: into place; interrupted: the .partial stays, to resume
    return dst

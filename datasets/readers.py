"""Readers for the data sets people already have: one sample convention whatever the file.

:func:`open_dataset` opens krylon's own files and the operator-learning benchmarks' layouts, detected from the
file's contents (or named with ``layout=``):

==================  ==========================================================================================
``"krylon"``        krylon's schema (:mod:`.hdf5`): fields as stored, selected with ``keys``
``"fno-mat"``       the FNO benchmark files, MATLAB v7.3 (= HDF5, h5py sees the axes reversed): Darcy ``a``/``u``
                    (or ``coeff``/``sol``) stored (s, s, N); Navier--Stokes ``u`` stored (T, s, s, N) [+ ``a``
                    (s, s, N) and ``t``]
``"pdebench"``      PDEBench single file: ``tensor`` (N, T, X[, Y[, Z]]) with ``x-coordinate``, ``t-coordinate``
``"pdebench-darcy"`` PDEBench 2-D Darcy: ``nu`` (N, X, Y) -> x, ``tensor`` (N, 1, X, Y) -> y
``"pdebench-cfd"``  PDEBench CFD: one data set per variable (``density``, ``pressure``, ``Vx``, ``Vy``, ``Vz``),
                    each (N, T, X[, Y[, Z]]) -> channels
``"pdebench-seeds"`` PDEBench per-seed groups ``'0000'``, ... each with ``data`` (T, X[, Y], V), ``grid/x``,
                    ``grid/t``, ...
==================  ==========================================================================================

Every layout but krylon's gives samples ``{"x": input, "y": target}``, channels first: ``(C, *space)`` for a
steady problem, ``(C, *space, T)`` for a trajectory (time last, as FNO-3D).  A trajectory splits in time: the
first ``input_steps`` snapshots are ``x``, the next ``output_steps`` (default: the rest) are ``y`` -- with the
defaults, FNO-3D's t = 0..9 -> 10..  ``ds.coords`` holds the coordinates the file stores (``"x"``, ``"y"``,
``"z"``, ``"t"``; ``"t"`` covers the steps used, ``x``'s first), ``ds.attrs`` the file attributes plus
``input_steps``/``output_steps`` and ``sources`` (which HDF5 object each key comes from).
Samples are read lazily, one at a time, and checked for NaN/Inf (see :class:`.hdf5.LazyH5Dataset`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterable

import numpy as np

from ..kernels import validate
from .hdf5 import FORMAT, H5Dataset, LazyH5Dataset, _h5py, _plain, open_h5

__all__ = ["LAYOUTS", "open_dataset", "detect_layout", "FNOMatDataset", "PDEBenchDataset", "PDEBenchDarcyDataset",
           "PDEBenchCFDDataset", "PDEBenchSeedsDataset"]

CFD_VARIABLES = ("density", "pressure", "Vx", "Vy", "Vz")
SPACE_AXES = ("x", "y", "z")


# ----------------------------------------------------------------------------- shared pieces
def _datasets(f) -> dict:
    """Top-level HDF5 data sets of ``f``: name -> shape."""
    h5py = _h5py()
    return {k: f[k].shape for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def _describe(f, limit: int = 12) -> str:
    """What a file holds, for error messages: data sets with shapes, groups (one level deep), attributes."""
    h5py = _h5py()
    items = []
    for k in list(f.keys())[:limit]:
        obj = f[k]
        if isinstance(obj, h5py.Dataset):
            items.append(f"{k} {obj.shape} {obj.dtype}")
        else:
            inner = ", ".join(f"{j} {obj[j].shape}" if isinstance(obj[j], h5py.Dataset) else f"{j}/" for j in list(obj.keys())[:6])
            items.append(f"{k}/ [{inner}]")
    more = f" and {len(f) - limit} more" if len(f) > limit else ""
    attrs = sorted(f.attrs.keys())[:10]
    return f"data sets and groups: {'; '.join(items) or 'none'}{more}; attributes: {attrs or 'none'}"


def _is_matlab(f) -> bool:
    """A MATLAB v7.3 file: its 512-byte user block starts with the MAT header, or its data sets carry MATLAB_class."""
    if f.userblock_size >= 128:
        with open(f.filename, "rb") as fh:
            if fh.read(10).startswith(b"MATLAB"):
                return True
    h5py = _h5py()
    return any(isinstance(f[k], h5py.Dataset) and "MATLAB_class" in f[k].attrs for k in f.keys() if k != "#refs#")


def _seed_groups(f, data_key: str = "data") -> list[str]:
    """The top-level groups holding a data set ``data_key``, sorted: PDEBench's per-seed samples (other groups,
    such as metadata, are not samples)."""
    h5py = _h5py()
    return sorted(k for k in f.keys() if isinstance(f[k], h5py.Group) and isinstance(f[k].get(data_key), h5py.Dataset))


def detect_layout(path) -> str:
    """The layout of the file at ``path`` (one of :data:`LAYOUTS`), or ``ValueError`` listing what it holds."""
    with open_h5(path) as f:
        if f.attrs.get("krylon_format") == FORMAT:
            return "krylon"
        if _is_matlab(f):
            return "fno-mat"
        ds = _datasets(f)
        if "nu" in ds and "tensor" in ds:
            return "pdebench-darcy"
        if "tensor" in ds:
            return "pdebench"
        if any(v in ds for v in CFD_VARIABLES):
            return "pdebench-cfd"
        if _seed_groups(f):
            return "pdebench-seeds"
        raise ValueError(f"cannot tell the layout of {path}: it is not a krylon data set and matches none of {LAYOUTS}. It holds {_describe(f)}. "
                         "Name the layout with layout=... (and misnamed keys with x_key=/y_key=) if it is one of them")


def _split(n_steps: int, input_steps, output_steps, where: str, *, min_input: int = 1) -> tuple[int, int]:
    """Validated (input_steps, output_steps) for a trajectory of ``n_steps`` snapshots (``min_input=0`` with
    ``input_steps=0``: the target alone, for a steady input paired with a trajectory)."""
    input_steps = validate.integer(input_steps, "input_steps", minimum=min_input)
    if output_steps is None:
        output_steps = n_steps - input_steps
        if output_steps < 1:
            raise ValueError(f"{where}: a trajectory of {n_steps} time steps leaves no target after input_steps={input_steps}")
    output_steps = validate.integer(output_steps, "output_steps")
    if input_steps + output_steps > n_steps:
        raise ValueError(f"{where}: a trajectory of {n_steps} time steps cannot give input_steps={input_steps} + "
                         f"output_steps={output_steps}")
    return input_steps, output_steps


def _require(ds: dict, key: str, path, what: str, option: str):
    """``ds[key]``, or ``KeyError`` naming the file, the key, what the file has and the option that renames it."""
    if key not in ds:
        raise KeyError(f"{path} has no data set {key!r} ({what}); it has {sorted(ds)}: name the right one with {option}=")
    return ds[key]


class _Foreign(LazyH5Dataset):
    """A reader of another program's layout: samples ``{"x", "y"}`` channels first."""

    def _init_foreign(self, path, keys, *, dtype, check_finite):
        self._init_common(path, dtype=dtype, check_finite=check_finite)
        keys = ["x", "y"] if keys is None else list(keys)
        bad = [k for k in keys if k not in ("x", "y")]
        if bad or not keys:
            raise KeyError(f"{self.path} ({self.layout} layout) gives the keys 'x' and 'y'; got keys={keys}")
        self.keys = keys

    def _finish(self, f, n: int, shapes: dict, sources: dict, coords: dict, extra: dict):
        self.n = int(n)
        self.shapes = {k: tuple(int(s) for s in shapes[k]) for k in self.keys}
        self.coords = {k: np.asarray(v).reshape(-1) for k, v in coords.items()}
        self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
        self.attrs.update(extra)
        self.attrs["layout"] = self.layout
        self.attrs["sources"] = dict(sources)

    def _sample(self, f, i):  # one sample is a range of one
        return {k: (arr[0], src) for k, (arr, src) in self._range(f, i, i + 1).items()}

    def _window(self) -> tuple[int, int]:
        """The time steps a sample reads: x's, y's or both (a data set of one key reads only its own)."""
        n_in, n_out = self._t
        return (0 if "x" in self.keys else n_in), (n_in + n_out if "y" in self.keys else n_in)

    def _split_sample(self, traj, lo: int, src: str) -> dict:
        """``{"x", "y"}`` from trajectories ``(..., C, *space, T)`` read from time step ``lo`` on."""
        n_in, out = self._t[0], {}
        if "x" in self.keys:
            out["x"] = (traj[..., : n_in - lo], src)
        if "y" in self.keys:
            out["y"] = (traj[..., n_in - lo:], src)
        return out

    def _trajectory_times(self, t, n_steps: int, used: int, key: str):
        """The time coordinate for the steps used (a t with one extra entry, PDEBench's cell edges, is cut)."""
        t = np.asarray(t).reshape(-1)
        if t.size not in (n_steps, n_steps + 1):
            raise ValueError(f"{self.path}: {key!r} has {t.size} entries but the trajectory has {n_steps} time steps "
                             "(wrong axis order?)")
        return t[:used]

    def _space_coords(self, f, names: dict, space: tuple) -> dict:
        """Coordinates ``names[axis]`` -> 1-D arrays, checked against the spatial shape."""
        out = {}
        for axis, n in zip(SPACE_AXES, space):
            key = names.get(axis)
            if key is None or key not in f:
                continue
            c = np.asarray(f[key][()]).reshape(-1)
            if c.size != n:
                raise ValueError(f"{self.path}: {key!r} has {c.size} entries but the field's {axis} axis has {n} points "
                                 "(wrong axis order?)")
            out[axis] = c
        return out


# ----------------------------------------------------------------------------- FNO .mat (MATLAB v7.3)
class FNOMatDataset(_Foreign):
    """The FNO benchmark files: MATLAB v7.3 ``.mat`` (HDF5 with a MATLAB user block), axes reversed by h5py.

    MATLAB writes column-major, so an array MATLAB calls (N, s, s, T) reads in h5py as (T, s, s, N): the sample
    index is the LAST h5py axis and every sample is reversed back to MATLAB's order (as FNO's ``MatReader``).
    A sample's values therefore lie strided through the file: reading one 64x64x50 float32 trajectory took
    ~90 ms (15 ms each in a batch of 64) where a krylon file takes under 1 ms, so for training convert the file
    once (:func:`krylon.datasets.convert`).

    Parameters
    ----------
    x_key, y_key : str, optional
        Input and target fields; default the first present of ``a``/``coeff`` and ``u``/``sol``.  With a
        trajectory ``u`` and no ``x_key`` given, the trajectory is split in time (FNO-3D); with ``x_key`` given,
        ``x`` is that steady field and ``y`` the trajectory's first ``output_steps`` steps (default all).
    t_key : str
        The time coordinate, if the file has it (``t``).
    trajectory : bool, optional
        Whether ``y_key`` holds a trajectory (a leading h5py time axis); default: yes when ``t`` matches that axis
        or ``u`` has one axis more than ``a``.
    input_steps, output_steps : int
        The time split (default 10 -> the rest).  ``input_steps`` splits a trajectory and is refused with
        ``x_key``, where ``x`` is a steady field.

    Notes
    -----
    A file written samples-first from Python (not by MATLAB) is recognised only when ``t`` or the input's shape
    disagrees with the reversed order; one whose sample count equals its time steps (``N == T``), with neither
    to tell, reads as MATLAB's order and gives wrong samples: write such files with MATLAB's axis order.
    """

    layout = "fno-mat"

    def __init__(self, path, keys: Iterable[str] | None = None, *, x_key: str | None = None, y_key: str | None = None,
                 t_key: str = "t", trajectory: bool | None = None, input_steps: int | None = None,
                 output_steps: int | None = None, dtype=None, check_finite: bool = True):
        self._init_foreign(path, keys, dtype=dtype, check_finite=check_finite)
        if input_steps is not None and x_key is not None:
            raise ValueError(f"input_steps={input_steps!r} splits a trajectory in time, but x_key={x_key!r} makes the "
                             "input a steady field: drop input_steps (output_steps picks the target's steps)")
        with open_h5(self.path) as f:
            ds = _datasets(f)
            ds.pop("#refs#", None)
            y_key = y_key or next((k for k in ("u", "sol") if k in ds), "u")
            ushape = _require(ds, y_key, self.path, "the target or trajectory", "y_key")
            x_given = x_key is not None
            x_key = x_key or next((k for k in ("a", "coeff") if k in ds), None)
            ashape = _require(ds, x_key, self.path, "the input", "x_key") if x_key is not None else None
            t = np.asarray(f[t_key][()]).reshape(-1) if t_key in ds else None
            if t is not None and len(ushape) >= 3 and t.size not in (ushape[0], ushape[0] + 1) and t.size == ushape[-1]:
                raise ValueError(f"{self.path}: {t_key!r} has {t.size} time values, which matches the last h5py axis of "
                                 f"{y_key!r} {ushape} where a MATLAB v7.3 file keeps the samples: wrong axis order "
                                 "(written samples-first from Python, not by MATLAB?)")
            if trajectory is None:
                trajectory = len(ushape) >= 3 and ((t is not None and t.size in (ushape[0], ushape[0] + 1))
                                                   or (ashape is not None and len(ushape) == len(ashape) + 1))
            trajectory = validate.boolean(trajectory, "trajectory")
            where = f"{self.path} ({y_key!r} h5py shape {ushape})"
            if len(ushape) < (3 if trajectory else 2):
                raise ValueError(f"{where}: expected {'(T, *space, N)' if trajectory else '(*space, N)'} as h5py sees a "
                                 "MATLAB array; wrong layout?")
            n = ushape[-1]
            hspace = tuple(ushape[1:-1] if trajectory else ushape[:-1])  # the grid as h5py sees it
            space = hspace[::-1]  # ... and as MATLAB (and every sample) has it
            # samples-first arrays (written from Python, not MATLAB) show the sample count first: say so
            if ashape is not None and ashape[-1] != n:
                hint = " (the arrays look samples-first, not MATLAB's reversed order)" if ashape[0] == ushape[0] else ""
                raise ValueError(f"{self.path}: input {x_key!r} has {ashape[-1]} samples (last h5py axis of {ashape}) but "
                                 f"{y_key!r} has {n} (last axis of {ushape}){hint}")
            if ashape is not None and tuple(ashape[:-1]) != hspace:
                raise ValueError(f"{self.path}: inconsistent shapes: input {x_key!r} h5py shape {ashape} has grid "
                                 f"{tuple(ashape[:-1])}, target {y_key!r} h5py shape {ushape} has grid {hspace} "
                                 "(wrong axis order?)")
            sources, coords, extra = {}, {}, {}
            self._x_key, self._y_key = x_key, y_key
            if trajectory:
                T = ushape[0]
                if t is not None and t.size not in (T, T + 1):
                    raise ValueError(f"{self.path}: {t_key!r} has {t.size} time values but {y_key!r} h5py shape {ushape} "
                                     f"has {T} steps on its first axis (a MATLAB array (N, s, s, T) reads as (T, s, s, N); "
                                     "wrong axis order?)")
                if x_given:
                    self._mode = "pair-trajectory"
                    _, n_out = _split(T, 0, output_steps, where, min_input=0)
                    self._t = (0, n_out)
                    shapes = {"x": (1, *space), "y": (1, *space, n_out)}
                    sources = {"x": x_key, "y": f"{y_key}[0:{n_out}]"}
                    extra["output_steps"] = n_out
                    used = n_out
                else:
                    self._mode = "split"
                    n_in, n_out = _split(T, 10 if input_steps is None else input_steps, output_steps, where)
                    self._t = (n_in, n_out)
                    shapes = {"x": (1, *space, n_in), "y": (1, *space, n_out)}
                    sources = {"x": f"{y_key}[0:{n_in}]", "y": f"{y_key}[{n_in}:{n_in + n_out}]"}
                    extra.update(input_steps=n_in, output_steps=n_out)
                    used = n_in + n_out
                if t is not None:
                    coords["t"] = self._trajectory_times(t, T, used, t_key)
            else:
                if x_key is None:
                    raise KeyError(f"{self.path} has no input field ('a' or 'coeff'); it has {sorted(ds)}: name it with x_key=")
                self._mode = "pair"
                shapes = {"x": (1, *space), "y": (1, *space)}
                sources = {"x": x_key, "y": y_key}
            self._finish(f, n, shapes, sources, coords, extra)

    def _range(self, f, lo, hi):
        # reversing every h5py axis gives MATLAB's (n, *space[, T]); the channel axis goes in after the samples
        def read(key, steps=None):
            return np.transpose(f[key][..., lo:hi] if steps is None else f[key][steps, ..., lo:hi])[:, None]

        if self._mode == "split":
            t0, t1 = self._window()
            return self._split_sample(read(self._y_key, slice(t0, t1)), t0, self._y_key)
        out = {}
        if "x" in self.keys:
            out["x"] = (read(self._x_key), self._x_key)
        if "y" in self.keys:
            out["y"] = (read(self._y_key, slice(0, self._t[1]) if self._mode == "pair-trajectory" else None), self._y_key)
        return out


# ----------------------------------------------------------------------------- PDEBench
def _coord_names(prefix: str = "") -> dict:
    return {a: f"{prefix}{a}-coordinate" for a in SPACE_AXES}


class _Trajectories(_Foreign):
    """Time-split of trajectories stored (N, T, *space) per variable, stacked as channels."""

    def _setup_trajectories(self, f, variables: list, input_steps, output_steps, t_key: str | None, coord_names: dict):
        shapes = {v: f[v].shape for v in variables}
        first = shapes[variables[0]]
        where = f"{self.path} ({variables[0]!r} shape {first})"
        if len(first) < 3:
            raise ValueError(f"{where}: a trajectory data set is (N, T, *space), got {len(first)} axes")
        for v, s in shapes.items():
            if s != first:
                raise ValueError(f"{self.path}: inconsistent shapes: {v!r} is {s}, {variables[0]!r} is {first}")
        n, T, space = first[0], first[1], tuple(first[2:])
        n_in, n_out = _split(T, input_steps, output_steps, where)
        C = len(variables)
        coords = self._space_coords(f, coord_names, space)
        if t_key is not None and t_key in f:
            coords["t"] = self._trajectory_times(f[t_key][()], T, n_in + n_out, t_key)
        self._variables = variables
        self._t = (n_in, n_out)
        shapes = {"x": (C, *space, n_in), "y": (C, *space, n_out)}
        names = "+".join(variables)
        sources = {"x": f"{names}[:, 0:{n_in}]", "y": f"{names}[:, {n_in}:{n_in + n_out}]"}
        self._finish(f, n, shapes, sources, coords, {"input_steps": n_in, "output_steps": n_out, "channels": list(variables)})

    def _range(self, f, lo, hi):
        t0, t1 = self._window()
        traj = np.stack([np.moveaxis(f[v][lo:hi, t0:t1], 1, -1) for v in self._variables], axis=1)  # (n, C, *space, T)
        return self._split_sample(traj, t0, "+".join(self._variables))


class PDEBenchDataset(_Trajectories):
    """PDEBench single-file trajectories: ``tensor`` (N, T, X[, Y[, Z]]), ``x-coordinate``, ``t-coordinate``.

    ``y_key`` names the trajectory data set if it is not ``tensor``; ``input_steps``/``output_steps`` split it.
    """

    layout = "pdebench"

    def __init__(self, path, keys: Iterable[str] | None = None, *, y_key: str = "tensor", input_steps: int = 10,
                 output_steps: int | None = None, dtype=None, check_finite: bool = True):
        self._init_foreign(path, keys, dtype=dtype, check_finite=check_finite)
        with open_h5(self.path) as f:
            _require(_datasets(f), y_key, self.path, "the trajectory", "y_key")
            self._setup_trajectories(f, [y_key], input_steps, output_steps, "t-coordinate", _coord_names())


class PDEBenchCFDDataset(_Trajectories):
    """PDEBench CFD: one data set per variable (``density``, ``pressure``, ``Vx``, ...), each (N, T, *space).

    ``variables`` picks and orders the channels (default: those of ``density, pressure, Vx, Vy, Vz`` present).
    """

    layout = "pdebench-cfd"

    def __init__(self, path, keys: Iterable[str] | None = None, *, variables: Iterable[str] | None = None,
                 input_steps: int = 10, output_steps: int | None = None, dtype=None, check_finite: bool = True):
        self._init_foreign(path, keys, dtype=dtype, check_finite=check_finite)
        with open_h5(self.path) as f:
            ds = _datasets(f)
            if variables is None:
                variables = [v for v in CFD_VARIABLES if v in ds]
            elif isinstance(variables, str):
                raise TypeError(f"variables must be a list of data set names, got the string {variables!r}")
            variables = list(variables)
            if not variables:
                raise KeyError(f"{self.path} has none of the CFD variables {CFD_VARIABLES}; it has {sorted(ds)}: "
                               "name them with variables=")
            for v in variables:
                _require(ds, v, self.path, "a CFD variable", "variables")
            self._setup_trajectories(f, variables, input_steps, output_steps, "t-coordinate", _coord_names())


class PDEBenchDarcyDataset(_Foreign):
    """PDEBench 2-D Darcy flow: ``nu`` (N, X, Y) is the input ``x`` (1, X, Y), ``tensor`` (N, C, X, Y) the target."""

    layout = "pdebench-darcy"

    def __init__(self, path, keys: Iterable[str] | None = None, *, x_key: str = "nu", y_key: str = "tensor",
                 dtype=None, check_finite: bool = True):
        self._init_foreign(path, keys, dtype=dtype, check_finite=check_finite)
        with open_h5(self.path) as f:
            ds = _datasets(f)
            a = _require(ds, x_key, self.path, "the input coefficient", "x_key")
            u = _require(ds, y_key, self.path, "the target", "y_key")
            if len(u) != len(a) + 1:
                raise ValueError(f"{self.path}: target {y_key!r} {u} should be (N, C, *space) for input {x_key!r} {a} "
                                 "(N, *space)")
            if a[0] != u[0]:
                raise ValueError(f"{self.path}: input {x_key!r} has {a[0]} samples but target {y_key!r} has {u[0]}")
            if tuple(u[2:]) != tuple(a[1:]):
                raise ValueError(f"{self.path}: inconsistent shapes: {x_key!r} {a} and {y_key!r} {u} have different "
                                 "grids (wrong axis order?)")
            space = tuple(a[1:])
            self._keys = (x_key, y_key)
            coords = self._space_coords(f, _coord_names(), space)
            self._finish(f, a[0], {"x": (1, *space), "y": tuple(u[1:])}, {"x": x_key, "y": y_key}, coords, {})

    def _range(self, f, lo, hi):
        out = {}
        if "x" in self.keys:
            out["x"] = (f[self._keys[0]][lo:hi][:, None], self._keys[0])
        if "y" in self.keys:
            out["y"] = (f[self._keys[1]][lo:hi], self._keys[1])
        return out


class PDEBenchSeedsDataset(_Foreign):
    """PDEBench per-seed groups: ``'0000'/data`` (T, X[, Y[, Z]], V) and ``'0000'/grid/x``, ``grid/t``, ...

    Sample ``i`` is the ``i``-th group holding ``y_key`` in sorted order (other groups, e.g. metadata, are not
    samples); its ``V`` variables become channels, time goes last and is
    split with ``input_steps``/``output_steps``.  ``y_key`` names the data set inside each group if not ``data``.
    """

    layout = "pdebench-seeds"

    def __init__(self, path, keys: Iterable[str] | None = None, *, y_key: str = "data", input_steps: int = 10,
                 output_steps: int | None = None, dtype=None, check_finite: bool = True):
        self._init_foreign(path, keys, dtype=dtype, check_finite=check_finite)
        with open_h5(self.path) as f:
            groups = _seed_groups(f, y_key)  # the layout's detection rule: groups without y_key are not samples
            if not groups:
                raise KeyError(f"{self.path} has no per-seed group with a data set {y_key!r} (name it with y_key=); "
                               f"it holds {_describe(f)}")
            first = f[groups[0]][y_key].shape
            if len(first) < 3:
                raise ValueError(f"{self.path}: '{groups[0]}/{y_key}' is {first}; a per-seed trajectory is (T, *space, V)")
            for g in groups[1:]:  # shape metadata only: cheap even for thousands of groups
                if f[g][y_key].shape != first:
                    raise ValueError(f"{self.path}: inconsistent shapes: '{g}/{y_key}' is {f[g][y_key].shape}, "
                                     f"'{groups[0]}/{y_key}' is {first}")
            T, space, V = first[0], tuple(first[1:-1]), first[-1]
            n_in, n_out = _split(T, input_steps, output_steps, f"{self.path} ('{groups[0]}/{y_key}' shape {first})")
            grid = f"{groups[0]}/grid/"
            coords = self._space_coords(f, {a: grid + a for a in SPACE_AXES}, space)
            if grid + "t" in f:
                coords["t"] = self._trajectory_times(f[grid + "t"][()], T, n_in + n_out, grid + "t")
            self._groups, self._key, self._t = groups, y_key, (n_in, n_out)
            shapes = {"x": (V, *space, n_in), "y": (V, *space, n_out)}
            sources = {"x": f"<group>/{y_key}[0:{n_in}]", "y": f"<group>/{y_key}[{n_in}:{n_in + n_out}]"}
            self._finish(f, len(groups), shapes, sources, coords,
                         {"input_steps": n_in, "output_steps": n_out, "groups": [groups[0], groups[-1]]})

    def _sample(self, f, i):
        lo, hi = self._window()
        src = f"{self._groups[i]}/{self._key}"
        data = f[src][lo:hi]  # (T, *space, V)
        return self._split_sample(np.moveaxis(data, (0, data.ndim - 1), (data.ndim - 1, 0)), lo, src)  # (V, *space, T)


# ----------------------------------------------------------------------------- entry point
_READERS = {"krylon": H5Dataset, "fno-mat": FNOMatDataset, "pdebench": PDEBenchDataset,
            "pdebench-darcy": PDEBenchDarcyDataset, "pdebench-cfd": PDEBenchCFDDataset,
            "pdebench-seeds": PDEBenchSeedsDataset}
LAYOUTS = tuple(_READERS)


def options_of(layout: str) -> list[str]:
    """The keyword options the reader of ``layout`` takes."""
    params = inspect.signature(_READERS[layout]).parameters
    return [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY]


def open_dataset(path, keys: Iterable[str] | None = None, *, layout: str = "auto", **options) -> LazyH5Dataset:
    """Open a data set lazily: krylon's schema, an FNO ``.mat`` file or a PDEBench file.

    Parameters
    ----------
    path : str or Path
    keys : sequence of str, optional
        krylon files: the fields to read (default all, e.g. DCDM's ``"b"``); other layouts: ``"x"`` and/or ``"y"``.
    layout : str
        ``"auto"`` (detect from the file) or one of :data:`LAYOUTS`.
    **options
        The layout's options: ``input_steps``, ``output_steps`` (trajectory split), ``x_key``, ``y_key``,
        ``variables``, ``t_key``, ``trajectory``; ``dtype`` (a floating torch dtype for the samples),
        ``check_finite``; ``allow_partial`` for krylon files.  An option the layout does not take is a TypeError.

    Returns
    -------
    LazyH5Dataset
        ``len(ds)``, ``ds[i]`` (dict of torch tensors), ``ds.path``, ``ds.layout``, ``ds.coords``, ``ds.shapes``,
        ``ds.attrs``.

    Examples
    --------
    >>> import h5py, numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "burgers.hdf5")
    >>> with h5py.File(p, "w") as f:   # PDEBench: tensor (N, T, X)
    ...     f["tensor"] = np.random.rand(4, 30, 16).astype("float32")
    ...     f["x-coordinate"] = np.linspace(0, 1, 16)
    >>> ds = open_dataset(p, input_steps=10)
    >>> ds.layout, ds.shapes["x"], ds.shapes["y"], len(ds)
    ('pdebench', (1, 16, 10), (1, 16, 20), 4)
    """
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a string, got {layout!r}")
    validate.choice(layout, "layout", ("auto",) + LAYOUTS)
    if not Path(path).exists():
        open_h5(path)  # the clear FileNotFoundError (with the .partial hint)
    if isinstance(keys, str):  # one field named as a string, not its characters
        keys = [keys]
    if layout == "auto":
        layout = detect_layout(path)
    allowed = options_of(layout)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"the {layout!r} layout of {path} takes no option(s) {unknown}; it takes {allowed}")
    return _READERS[layout](path, keys, **options)

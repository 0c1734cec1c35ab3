"""Data sets written in parts by several processes, read as one file through an HDF5 virtual data set.

Under ``torchrun`` each rank of ``krylon generate`` writes the samples ``part_range(n, index, count, granule)``
into its own krylon file ``<out stem>.part-0000i-of-0000c<suffix>`` (a :class:`~.hdf5.DatasetWriter` with
``part=(index, count)``: atomic and resumable like any other), so no HDF5 file is ever shared between
processes.  When every part is finished, rank 0 writes ``out`` itself: for each field an HDF5 *virtual* data
set mapping its sample ranges onto the parts (no data copied), the parts' attributes (generator, parameters,
seed, ...) and coordinates, and ``parts``, the part file names.  :func:`~.readers.open_dataset` then reads
``out`` as one data set; the part files must stay next to it (a missing one is a clear error, not zeros).

Samples are pure functions of ``(seed, index)`` in every sharded generator and parts hold whole generator batches
(``granule``), so the data are bit for bit those of a single-process run.
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from pathlib import Path
from typing import Callable

from ..kernels import distributed, validate

__all__ = ["PART_ATTRS", "part_path", "part_range", "link_parts", "generate_sharded", "GENERATE_TIMEOUT_ENV",
           "DEFAULT_GENERATE_TIMEOUT"]

GENERATE_TIMEOUT_ENV = "KRYLON_GENERATE_TIMEOUT"
"""Environment variable: seconds a rank waits for the others' parts (default :data:`DEFAULT_GENERATE_TIMEOUT`)."""
DEFAULT_GENERATE_TIMEOUT = 24 * 3600.0

# attributes the writer adds to a part file (schema-owned: attrs= cannot set them; the linked file drops them)
PART_ATTRS = ("part_index", "part_count", "part_start", "part_stop", "n_total")


def part_path(path, index: int, count: int) -> Path:
    """The file of part ``index`` of ``count``: ``out.h5`` -> ``out.part-00000-of-00002.h5``."""
    path = Path(path)
    count = validate.integer(count, "count", minimum=1)
    index = validate.integer(index, "index", minimum=0)
    if index >= count:
        raise ValueError(f"part index must be < count ({count}), got {index}")
    return path.with_name(f"{path.stem}.part-{index:05d}-of-{count:05d}{path.suffix}")


def part_range(n: int, index: int, count: int, granule: int = 1) -> range:
    """The samples of part ``index`` of ``count``: a balanced split of ``n`` samples in whole ``granule`` blocks.

    ``granule`` is the generator's batch (samples computed together), so a part computes exactly the batches a
    single process does.
    """
    granule = validate.integer(granule, "granule", minimum=1)
    units = distributed.split(-(-validate.integer(n, "n", minimum=0) // granule), count, index)
    return range(min(units.start * granule, n), min(units.stop * granule, n))


def link_parts(path, count: int, *, overwrite: bool = False) -> Path:
    """Write ``path`` as one data set linking its ``count`` finished part files (virtual data sets), atomically.

    Checks that every part exists, is complete and comes from the same generator, parameters and seed, and that
    their sample ranges tile ``0 .. n_total``; ``FileExistsError`` when ``path`` exists and not ``overwrite``.
    """
    from . import hdf5

    h5py = hdf5._h5py()
    path = Path(path)
    if path.exists() and not validate.boolean(overwrite, "overwrite"):
        raise FileExistsError(f"{path} already exists; delete it to link its parts again")
    parts = [part_path(path, i, count) for i in range(count)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"cannot link {path}: part file(s) {missing} missing (an unfinished rank? resume it)")
    infos = []
    for p in parts:
        with hdf5.open_h5(p) as f:
            a = {k: hdf5._plain(v) for k, v in f.attrs.items()}
            shapes = {k: (f[k].shape, f[k].dtype) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        if not a.get("complete") or a.get("part_count") != count:
            raise ValueError(f"{p} is not a finished part {a.get('part_index')} of {count} (complete: "
                             f"{a.get('complete')}, part_count: {a.get('part_count')})")
        infos.append((p, a, shapes))
    first = infos[0][1]
    n_total = int(first["n_total"])
    position = 0
    for i, (p, a, shapes) in enumerate(infos):
        for key in ("generator", "parameters", "seed", "n_total"):
            if a.get(key) != first.get(key):
                raise ValueError(f"{p} has {key} {a.get(key)!r}, part 0 has {first.get(key)!r}: not parts of one data set")
        if int(a["part_index"]) != i or int(a["part_start"]) != position:
            raise ValueError(f"{p} holds samples {a['part_start']}..{a['part_stop']}, expected to start at {position}")
        if shapes.keys() != infos[0][2].keys() or any(s[0][1:] != infos[0][2][k][0][1:] or s[1] != infos[0][2][k][1]
                                                      for k, s in shapes.items()):
            raise ValueError(f"{p} has fields {shapes}, part 0 has {infos[0][2]}: not parts of one data set")
        position = int(a["part_stop"])
    if position != n_total:
        raise ValueError(f"the parts of {path} hold samples 0..{position}, the data set has {n_total}")
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with h5py.File(partial, "w") as out:
            with hdf5.open_h5(parts[0]) as src:
                for key, value in src.attrs.items():
                    if key not in PART_ATTRS:
                        out.attrs[key] = value
                if "coords" in src:
                    src.copy(src["coords"], out, "coords")
            out.attrs["n_samples"] = n_total
            out.attrs["n_written"] = n_total
            out.attrs["complete"] = True
            out.attrs["parts"] = json.dumps([p.name for p in parts])
            listed = json.loads(hdf5._plain(out.attrs.get("json_attrs", "[]")))
            out.attrs["json_attrs"] = json.dumps(sorted(set(listed) | {"parts"}))
            for name, (shape, dtype) in infos[0][2].items():
                layout = h5py.VirtualLayout(shape=(n_total,) + shape[1:], dtype=dtype)
                for p, a, shapes in infos:
                    lo, hi = int(a["part_start"]), int(a["part_stop"])
                    if hi > lo:  # a relative name: HDF5 looks for it next to the linked file, so the folder can move
                        layout[lo:hi] = h5py.VirtualSource(p.name, name, shape=shapes[name][0])
                out.create_virtual_dataset(name, layout)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def _other_parts(path, count: int) -> list[Path]:
    """Part files of ``path`` written by a run on another number of ranks than ``count``."""
    path = Path(path)
    mine = f"-of-{count:05d}{path.suffix}"
    return sorted(p for p in path.parent.glob(f"{glob.escape(path.stem)}.part-*-of-*{glob.escape(path.suffix)}")
                  if not p.name.endswith(mine) and not p.name.endswith(".partial"))


def generate_sharded(path, generate: Callable, *args, **kwargs):
    """Run a generator on every rank of the process group, each writing its part, then link the parts on rank 0.

    ``generate(path, *args, part=(rank, world), **kwargs)`` must write through a :class:`~.hdf5.DatasetWriter`
    with that ``part``.  Without a process group (or with one rank) it is ``generate(path, *args, **kwargs)``.
    A rank that fails makes the others fail at the next barrier, never hang; a rank that finishes its part
    waits up to ``$KRYLON_GENERATE_TIMEOUT`` seconds (default a day) for the slowest part, and the run's
    timeout is checked before any work (a bad value fails every rank alike).
    """
    world = distributed.world_size()
    stale = _other_parts(path, world)
    if stale and distributed.rank() == 0:
        warnings.warn(f"{Path(path).name}: part files of an unfinished run on another number of ranks are next to it "
                      f"({', '.join(p.name for p in stale[:4])}{', ...' if len(stale) > 4 else ''}); they are not "
                      f"reused: this run on {world} rank(s) generates its own (delete the old ones)", stacklevel=2)
    if world == 1:
        return generate(path, *args, **kwargs)
    final = Path(path)
    if final.exists():  # every rank refuses alike, before any work
        raise FileExistsError(f"{final} already exists (a finished data set); delete it to regenerate")
    timeout = distributed.env_seconds(None, GENERATE_TIMEOUT_ENV, DEFAULT_GENERATE_TIMEOUT)
    generate(path, *args, part=(distributed.rank(), world), **kwargs)
    # a rank whose part was already complete (a resume) or was just faster waits for the slowest part with a
    # generation-scale timeout, not the collectives' (a rank that died still fails the wait at once)
    distributed.wait_for_all(timeout, "waiting for the other ranks' parts")
    if distributed.rank() == 0:
        link_parts(final, world)
    distributed.barrier()
    return path

"""Process-group helpers over ``torch.distributed``: the one place krylon starts, queries and synchronises ranks.

krylon runs on torch's own engine -- gloo on CPUs, NCCL on GPUs, processes started by ``torchrun`` -- and these
helpers are all it adds: :func:`init_from_env` joins the group torchrun describes in the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...), with a timeout so that a rank whose peer died raises instead of
waiting forever; :func:`rank`, :func:`world_size`, :func:`is_distributed` answer for a plain single process too
(rank 0 of 1), so library code calls them unconditionally; :func:`split` is the balanced contiguous split of
``n`` items (samples, grid planes) over ranks; :func:`all_reduce_sum` reduces a few Python numbers (metrics);
:func:`collective_errors` turns a failed collective into an error that says what probably happened.

Examples
--------
>>> from krylon.kernels import distributed
>>> distributed.rank(), distributed.world_size(), distributed.is_distributed()  # a plain process
(0, 1, False)
>>> [list(distributed.split(5, 2, r)) for r in range(2)]
[[0, 1, 2], [3, 4]]
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Sequence

import torch

from . import validate

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "local_rank", "device", "barrier", "split",
           "all_reduce_sum", "collective_errors", "shutdown", "DEFAULT_TIMEOUT", "TIMEOUT_ENV"]

DEFAULT_TIMEOUT = 300.0
"""Seconds a collective waits for its peers before raising (torch's own default is 30 minutes)."""
TIMEOUT_ENV = "KRYLON_DIST_TIMEOUT"
"""Environment variable that overrides :data:`DEFAULT_TIMEOUT` (seconds) when ``timeout`` is not given."""


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return _dist().get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """The rank on this node (torchrun's ``LOCAL_RANK``; 0 without it): the GPU a process uses."""
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env(timeout: float | None = None, backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment; ``False`` (nothing done) outside torchrun.

    Parameters
    ----------
    timeout : float, optional
        Seconds any collective waits for the other ranks before raising (default: ``$KRYLON_DIST_TIMEOUT`` or
        :data:`DEFAULT_TIMEOUT`).  A rank that died makes its peers fail within this time, never hang.
    backend : {"gloo", "nccl"}, optional
        Default NCCL when CUDA is available, else gloo.  With NCCL each process takes GPU ``LOCAL_RANK``.

    Returns
    -------
    bool
        Whether the process is now part of a group (already initialised counts).
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    timeout = validate.real_number(timeout, "timeout")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive (seconds), got {timeout!r}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and _dist().is_nccl_available() else "gloo"
    backend = validate.choice(backend, "backend", ("gloo", "nccl"))
    kwargs = {}
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
        kwargs["device_id"] = torch.device("cuda", local_rank())
    _dist().init_process_group(backend, timeout=timedelta(seconds=timeout), **kwargs)
    return True


def device() -> torch.device:
    """The device this rank computes on: GPU ``LOCAL_RANK`` under NCCL, else the CPU."""
    if is_distributed() and _dist().get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if not is_distributed():
        return
    with collective_errors("barrier"):
        if _dist().get_backend() == "nccl":
            _dist().barrier(device_ids=[local_rank()])
        else:
            _dist().barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sums over ranks of a few numbers (float64), in one collective; the values themselves in a single process."""
    values = [float(v) for v in values]
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())
    with collective_errors("all-reduce"):
        _dist().all_reduce(t)
    return t.tolist()


def split(n: int, parts: int, index: int) -> range:
    """Part ``index`` of ``range(n)`` cut into ``parts`` contiguous pieces whose sizes differ by at most one.

    The first ``n % parts`` pieces hold one more item; a piece is empty when ``parts > n``.
    """
    n = validate.integer(n, "n", minimum=0)
    parts = validate.integer(parts, "parts", minimum=1)
    index = validate.integer(index, "index", minimum=0)
    if index >= parts:
        raise ValueError(f"index must be < parts ({parts}), got {index}")
    q, r = divmod(n, parts)
    start = index * q + min(index, r)
    return range(start, start + q + (index < r))


@contextlib.contextmanager
def collective_errors(what: str):
    """Re-raise a failed collective as a ``RuntimeError`` that names this rank and the likely cause.

    A collective fails when a peer process died (its connection closes) or did not arrive within the group's
    timeout; torch's own message (kept, and chained as the cause) names sockets and stores, not the dead rank.
    Gloo reports a closed connection as a plain ``RuntimeError``, so every ``RuntimeError`` inside the block is
    taken for a failed collective: wrap collectives only.
    """
    try:
        yield
    except RuntimeError as exc:
        if not is_distributed():
            raise
        raise RuntimeError(f"rank {rank()} of {world_size()}: {what} failed -- another rank probably exited with "
                           f"an error or did not arrive within the timeout (see its log): {exc}") from exc


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if is_distributed():
        _dist().destroy_process_group()

"""Communication kernels on ``torch.distributed``: process-group setup, slab decomposition, halo exchange, sums.

krylon never carries its own transport: everything here is a thin layer over ``torch.distributed`` (gloo on
CPUs, NCCL on GPUs), started by ``torchrun``, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` for every process.

* :func:`init_from_env` joins the process group those variables describe (a no-op without them), with a
  timeout; :func:`rank`, :func:`world_size`, :func:`is_distributed` say where this process stands and work
  unchanged in a plain single process (rank 0 of 1).
* :class:`Slabs` splits the first grid axis into contiguous slabs, one per rank (uneven counts allowed), says
  which global planes a rank owns, and scatters/gathers a global field.
* :func:`start_halo_exchange` sends a slab's first and last planes to its neighbours (point-to-point, one plane
  each way) and returns a handle whose ``wait()`` gives the neighbours' planes, so the caller can compute
  meanwhile.
* :func:`all_reduce_sum` sums per-system partial inner products over the ranks.

A failed collective (a peer rank died, or stopped taking part for longer than the timeout) raises
:class:`RankFailure` naming this rank and the operation, never hangs: a dead peer's closed connection fails
the pending operation at once, a silent one after the process group's timeout.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Sequence

import torch

__all__ = ["init_from_env", "rank", "world_size", "is_distributed", "local_device", "RankFailure", "Slabs",
           "split_planes", "start_halo_exchange", "HaloExchange", "all_reduce_sum", "DEFAULT_TIMEOUT"]

#: seconds a collective waits for the other ranks before it fails (torch's own default is 30 min for gloo)
DEFAULT_TIMEOUT = 120.0

#: tags of the two halo messages (gloo matches them; NCCL matches sends and receives by order, which
#: :func:`start_halo_exchange` keeps the same on both sides)
_UP, _DOWN = 1, 2


class RankFailure(RuntimeError):
    """A collective failed: another rank died, raised, or did not take part within the timeout."""


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True when this process belongs to an initialised ``torch.distributed`` process group."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the default process group (1 without one)."""
    return _dist().get_world_size() if is_distributed() else 1


def init_from_env(timeout: float = DEFAULT_TIMEOUT, backend: str | None = None) -> bool:
    """Join the process group that ``torchrun``'s environment variables describe.

    Parameters
    ----------
    timeout : float
        Seconds any collective waits for the other ranks before raising (the process-group timeout).  With
        NCCL it is enforced by torch's asynchronous error handling (on by default in torch >= 2.2).
    backend : str, optional
        ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available (each process then takes GPU
        ``LOCAL_RANK``), else gloo.

    Returns
    -------
    bool
        True when this process is now (or already was) part of a process group; False when the environment
        names none (no ``WORLD_SIZE``): a plain single process, which everything here treats as rank 0 of 1.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if backend is not None and backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None, got {backend!r}")
    if is_distributed():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun, or set all of "
                         "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    dist = _dist()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout)))
    return True


def local_device() -> torch.device:
    """The device this rank computes on: its GPU ``LOCAL_RANK`` under NCCL, else the CPU."""
    if is_distributed() and _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _failed(what: str, exc: Exception) -> RankFailure:
    return RankFailure(f"krylon.distributed: rank {rank()} of {world_size()}: {what} failed -- another rank died, "
                       f"raised, or did not take part within the process-group timeout ({type(exc).__name__}: {exc})")


def all_reduce_sum(partial: torch.Tensor) -> torch.Tensor:
    """Sum ``partial`` (e.g. one partial inner product per system) over every rank; returns a new tensor.

    Every rank receives bitwise the same sum, so decisions taken on it (convergence, breakdown) agree.
    The identity (a copy) without a process group.
    """
    out = partial.detach().clone(memory_format=torch.contiguous_format)
    if not is_distributed():
        return out
    try:
        _dist().all_reduce(out)
    except RuntimeError as exc:
        raise _failed("all-reduce of an inner product", exc) from exc
    return out


def split_planes(n: int, parts: int) -> tuple[int, ...]:
    """``n`` planes over ``parts`` ranks as evenly as possible, the first ranks taking one more.

    Examples
    --------
    >>> split_planes(10, 3)
    (4, 3, 3)
    """
    if parts < 1 or n < parts:
        raise ValueError(f"cannot split {n} planes over {parts} ranks: every rank needs at least one plane")
    q, r = divmod(n, parts)
    return tuple(q + 1 if i < r else q for i in range(parts))


class Slabs:
    """A slab decomposition of a grid's first axis: rank ``r`` owns planes ``starts[r] : starts[r] + counts[r]``.

    Parameters
    ----------
    shape : tuple of int
        The global grid shape ``(n1, n2[, n3])``.
    counts : sequence of int, optional
        Planes per rank (summing to ``n1``, each >= 1); default :func:`split_planes` over the world size.
    parts : int, optional
        The number of ranks (default: the world size).

    Examples
    --------
    >>> s = Slabs((10, 8), parts=3)
    >>> s.counts, s.planes(1), s.local_shape(2)
    ((4, 3, 3), range(4, 7), (3, 8))
    """

    def __init__(self, shape: Sequence[int], counts: Sequence[int] | None = None, *, parts: int | None = None):
        shape = tuple(int(n) for n in shape)
        if len(shape) < 1 or any(n < 1 for n in shape):
            raise ValueError(f"grid shape must be non-empty with sizes >= 1, got {shape}")
        parts = world_size() if parts is None else int(parts)
        if counts is None:
            counts = split_planes(shape[0], parts)
        counts = tuple(int(c) for c in counts)
        if len(counts) != parts:
            raise ValueError(f"counts {counts} name {len(counts)} slabs but there are {parts} ranks")
        if any(c < 1 for c in counts) or sum(counts) != shape[0]:
            raise ValueError(f"counts {counts} must be >= 1 each and sum to the {shape[0]} planes of the first axis")
        self.shape, self.counts, self.parts = shape, counts, parts
        self.starts = tuple(sum(counts[:i]) for i in range(parts))

    def planes(self, r: int | None = None) -> range:
        """The global indices of the planes rank ``r`` (default: this rank) owns."""
        r = rank() if r is None else r
        return range(self.starts[r], self.starts[r] + self.counts[r])

    def local_shape(self, r: int | None = None) -> tuple[int, ...]:
        """The grid shape of rank ``r``'s slab."""
        r = rank() if r is None else r
        return (self.counts[r],) + self.shape[1:]

    def local(self, field: torch.Tensor, r: int | None = None) -> torch.Tensor:
        """Rank ``r``'s slab of a global field ``(*batch, *shape)`` held by this process (a contiguous copy)."""
        self._check(field, self.shape, "field")
        p = self.planes(r)
        return field.narrow(field.dim() - len(self.shape), p.start, len(p)).contiguous()

    def scatter(self, field: torch.Tensor | None, *, root: int = 0, batch: Sequence[int] = (),
                dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Send each rank its slab of a global field held by ``root`` only; returns this rank's slab.

        ``field`` ``(*batch, *shape)`` is read on ``root`` (pass None elsewhere); the other ranks say what they
        receive with ``batch``, ``dtype`` and ``device`` (which must match the root's field).
        """
        me = rank()
        if me == root:
            self._check(field, self.shape, "field")
            if self.parts == 1:
                return field.contiguous()
            reqs = [self._p2p("isend", self.local(field, r), r) for r in range(self.parts) if r != root]
            self._wait(reqs, "scatter")
            return self.local(field, root)
        buf = torch.empty(tuple(batch) + self.local_shape(me), dtype=dtype, device=device)
        self._wait([self._p2p("irecv", buf, root)], "scatter")
        return buf

    def gather(self, local: torch.Tensor, *, root: int = 0) -> torch.Tensor | None:
        """Collect the slabs on ``root`` as one global field ``(*batch, *shape)``; None on the other ranks."""
        me = rank()
        self._check(local, self.local_shape(me), "local slab")
        if self.parts == 1:
            return local.clone()
        if me != root:
            self._wait([self._p2p("isend", local.contiguous(), root)], "gather")
            return None
        axis = local.dim() - len(self.shape)
        bufs = [local if r == root else torch.empty(local.shape[:axis] + self.local_shape(r), dtype=local.dtype,
                                                    device=local.device) for r in range(self.parts)]
        self._wait([self._p2p("irecv", bufs[r], r) for r in range(self.parts) if r != root], "gather")
        return torch.cat(bufs, dim=axis)

    @staticmethod
    def _p2p(kind: str, t: torch.Tensor, peer: int):
        try:
            return getattr(_dist(), kind)(t, peer)
        except RuntimeError as exc:
            raise _failed(f"{kind} with rank {peer}", exc) from exc

    @staticmethod
    def _wait(reqs, what: str) -> None:
        try:
            for q in reqs:
                q.wait()
        except RuntimeError as exc:
            raise _failed(what, exc) from exc

    @staticmethod
    def _check(t, shape, what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        nd = len(shape)
        if t.dim() < nd or tuple(t.shape[t.dim() - nd:]) != tuple(shape):
            raise ValueError(f"{what} of shape {tuple(t.shape)} does not end in the grid shape {tuple(shape)}")

    def __repr__(self) -> str:
        return f"Slabs(shape={self.shape}, counts={self.counts})"


class HaloExchange:
    """A halo exchange in flight; :meth:`wait` returns ``(low, high)``: the neighbours' planes or None."""

    def __init__(self, works, low, high):
        self._works, self.low, self.high = works, low, high

    def wait(self):
        try:
            for w in self._works:
                w.wait()
        except RuntimeError as exc:
            raise _failed("halo exchange", exc) from exc
        self._works = ()
        return self.low, self.high


def start_halo_exchange(u: torch.Tensor, ndim: int, *, periodic: bool = False) -> HaloExchange:
    """Start sending the first and last planes (along the first of the ``ndim`` grid axes) of this rank's slab.

    Rank ``r`` sends its last plane up to ``r + 1`` and its first plane down to ``r - 1`` and receives theirs
    (wrapping around when ``periodic``); the first rank has no lower neighbour and the last no upper one
    unless periodic.  Point-to-point messages of one plane each (``batch_isend_irecv``, which NCCL runs as one
    group and gloo as separate messages), started at once; compute on the interior, then call ``wait()``.
    Without a process group (or with one rank) a periodic axis wraps onto this slab itself.
    """
    axis = u.dim() - ndim
    n = u.shape[axis]
    first, last = u.narrow(axis, 0, 1), u.narrow(axis, n - 1, 1)
    me, size = rank(), world_size()
    if size == 1:
        return HaloExchange((), last if periodic else None, first if periodic else None)
    lo = me - 1 if me > 0 else (size - 1 if periodic else None)
    hi = me + 1 if me < size - 1 else (0 if periodic else None)
    dist = _dist()
    low = torch.empty_like(first, memory_format=torch.contiguous_format) if lo is not None else None
    high = torch.empty_like(last, memory_format=torch.contiguous_format) if hi is not None else None
    ops = []
    # the same order on every rank (sends up, sends down, receives from below, receives from above), so NCCL,
    # which matches by order, pairs each send with the right receive even when both neighbours are one rank
    if hi is not None:
        ops.append(dist.P2POp(dist.isend, last.contiguous(), hi, tag=_UP))
    if lo is not None:
        ops.append(dist.P2POp(dist.isend, first.contiguous(), lo, tag=_DOWN))
    if lo is not None:
        ops.append(dist.P2POp(dist.irecv, low, lo, tag=_UP))
    if hi is not None:
        ops.append(dist.P2POp(dist.irecv, high, hi, tag=_DOWN))
    try:
        works = dist.batch_isend_irecv(ops)
    except RuntimeError as exc:
        raise _failed("halo exchange", exc) from exc
    return HaloExchange(works, low, high)

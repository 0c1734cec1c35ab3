"""Process-group helpers over ``torch.distributed``: the one place krylon starts, queries and synchronises ranks.

krylon runs on torch's own engine -- gloo on CPUs, NCCL on GPUs, processes started by ``torchrun`` -- and these
helpers are all it adds: :func:`init_from_env` joins the group torchrun describes in the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ...), with a timeout so that a rank whose peer died raises instead of
waiting forever; :func:`rank`, :func:`world_size`, :func:`is_distributed` answer for a plain single process too
(rank 0 of 1), so library code calls them unconditionally; :func:`split` is the balanced contiguous split of
``n`` items (samples, grid planes) over ranks; :func:`all_reduce_sum` reduces a few Python numbers (metrics);
:func:`collective_errors` turns a failed collective into an error that says what probably happened;
:func:`wait_for_all` is a barrier with a timeout of its own (for a long job's slowest rank);
:func:`raise_together` makes bad input on one rank an error on every rank at once (not a timeout on the others).

For fields split across ranks (domain decomposition): :class:`Slabs` cuts a grid's first axis into contiguous
slabs, one per rank (uneven counts allowed), says which global planes a rank owns and scatters/gathers a global
field; :func:`start_halo_exchange` sends a slab's first and last planes to its neighbours (point-to-point, one
plane each way) and returns a handle whose ``wait()`` gives theirs, so the caller computes meanwhile;
:func:`sum_over_ranks` sums per-system partial inner products (a tensor) over the ranks.

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
           "all_reduce_sum", "collective_errors", "raise_together", "wait_for_all", "env_seconds",
           "shutdown", "DEFAULT_TIMEOUT", "TIMEOUT_ENV",
           "Slabs", "HaloExchange", "start_halo_exchange", "sum_over_ranks"]

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


def env_seconds(timeout: float | None, env: str, default: float) -> float:
    """``timeout``, else ``$env``, else ``default``: a positive number of seconds."""
    if timeout is None:
        try:
            timeout = float(os.environ.get(env, default))
        except ValueError:
            raise ValueError(f"${env} must be a number of seconds, got {os.environ[env]!r}") from None
    timeout = validate.real_number(timeout, "timeout")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive (seconds), got {timeout!r}")
    return timeout


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
    timeout = env_seconds(timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and _dist().is_nccl_available() else "gloo"
    backend = validate.choice(backend, "backend", ("gloo", "nccl"))
    kwargs = {}
    if backend == "nccl":
        if local_rank() >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank()} has no GPU: this node has {torch.cuda.device_count()}; start one "
                             "process per GPU (torchrun --nproc-per-node gpu) or use the CPU (gloo)")
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


def wait_for_all(timeout: float, what: str) -> None:
    """Wait for every rank for up to ``timeout`` seconds, whatever the group's own timeout (a no-op alone).

    For waits longer than a collective's: ranks that finished their share of a long job (a data set part, a
    timing) wait for the slowest one.  The wait runs in a gloo group of its own made with ``timeout`` (every
    rank calls this); a rank that dies still fails it at once (its connection closes).
    """
    if not is_distributed():
        return
    group = _dist().new_group(backend="gloo", timeout=timedelta(seconds=timeout))
    try:
        with collective_errors(what):
            _dist().barrier(group=group)
    finally:
        _dist().destroy_process_group(group)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sums over ranks of a few numbers (float64), in one collective; the values themselves in a single process."""
    values = [float(v) for v in values]
    if not is_distributed():
        return values
    return sum_over_ranks(torch.tensor(values, dtype=torch.float64, device=device()), what="all-reduce").tolist()


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


#: words of torch's messages for a failed transfer (gloo's closed pair or timeout, NCCL, the rendezvous store)
_TRANSPORT_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "store", "peer",
                    "process group", "processgroup", "watchdog", "broken pipe")


def _is_transport_failure(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a failed transfer between ranks rather than an error of this rank's own work."""
    backend_error = getattr(_dist(), "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    text = str(exc).lower()
    return any(w in text for w in _TRANSPORT_WORDS)


@contextlib.contextmanager
def collective_errors(what: str, *, local_work: bool = False):
    """Re-raise a failed collective as a ``RuntimeError`` that names this rank and the likely cause.

    A collective fails when a peer process died (its connection closes) or did not arrive within the group's
    timeout; torch's own message (kept, and chained as the cause) names sockets and stores, not the dead rank.
    Gloo reports a closed connection as a plain ``RuntimeError``, so every ``RuntimeError`` inside the block is
    taken for a failed collective -- unless ``local_work``: the block also computes on this rank (a backward
    pass whose hooks all-reduce), so only errors that look like a failed transfer (``DistBackendError``, or
    torch's gloo/NCCL/store messages) are blamed on a peer; the others (an autograd error, CUDA running out of
    memory) propagate unchanged, with this rank noted.
    """
    try:
        yield
    except RuntimeError as exc:
        if not is_distributed():
            raise
        if local_work and not _is_transport_failure(exc):
            exc.add_note(f"(on rank {rank()} of {world_size()}, during {what})")
            raise
        raise RuntimeError(f"rank {rank()} of {world_size()}: {what} failed -- another rank probably exited with "
                           f"an error or did not arrive within the timeout (see its log): {exc}") from exc


@contextlib.contextmanager
def raise_together(what: str, enabled: bool = True):
    """Run a rank's input checks so that every rank raises at once when any rank's input is bad.

    Bad input on one rank (a NaN in its slab of ``b``) would otherwise stop only that rank, and the others
    would wait in their next collective for the whole timeout.  Inside the block a ``ValueError`` or
    ``TypeError`` is held back; on leaving it the ranks all-reduce a flag (one small collective, also when all
    is well), the faulty rank re-raises its own error (its rank noted) and the others raise a ``ValueError``
    saying which check failed elsewhere.  Every rank must enter the block.  A no-op without a process group or
    when not ``enabled``.
    """
    if not enabled or not is_distributed():
        yield
        return
    error = None
    try:
        yield
    except (ValueError, TypeError) as exc:
        error = exc
    bad = torch.zeros(world_size(), dtype=torch.float64, device=device())
    bad[rank()] = float(error is not None)
    with collective_errors(f"the agreement on {what}"):
        _dist().all_reduce(bad)
    if error is not None:
        error.add_note(f"(on rank {rank()} of {world_size()}; every rank stops)")
        raise error
    if bool((bad > 0).any()):
        ranks = [int(r) for r in torch.nonzero(bad.cpu() > 0).flatten()]
        raise ValueError(f"rank {rank()} of {world_size()}: {what} was rejected on rank(s) {ranks} (see its error); "
                         f"every rank stops")


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    if is_distributed():
        _dist().destroy_process_group()


#: tags of the two halo messages (gloo matches them; NCCL matches sends and receives by order, which
#: :func:`start_halo_exchange` keeps the same on both sides)
_UP, _DOWN = 1, 2


def sum_over_ranks(partial: torch.Tensor, *, what: str = "all-reduce of an inner product") -> torch.Tensor:
    """Sum ``partial`` (e.g. one partial inner product per system) over every rank; returns a new tensor.

    Every rank receives bitwise the same sum, so decisions taken on it (convergence, breakdown) agree.
    A copy of ``partial`` without a process group; ``what`` names the collective in a failure's message.
    """
    out = partial.detach().clone(memory_format=torch.contiguous_format)
    if is_distributed():
        with collective_errors(what):
            _dist().all_reduce(out)
    return out


class Slabs:
    """A slab decomposition of a grid's first axis: rank ``r`` owns planes ``starts[r] : starts[r] + counts[r]``.

    Parameters
    ----------
    shape : tuple of int
        The global grid shape ``(n1, n2[, n3])``.
    counts : sequence of int, optional
        Planes per rank (summing to ``n1``, each >= 1); default :func:`split` over the world size.
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
        if parts < 1 or shape[0] < parts:
            raise ValueError(f"cannot split {shape[0]} planes over {parts} ranks: every rank needs at least one plane")
        if counts is None:
            counts = [len(split(shape[0], parts, r)) for r in range(parts)]
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
        with collective_errors(f"{kind} with rank {peer}"):
            return getattr(_dist(), kind)(t, peer)

    @staticmethod
    def _wait(reqs, what: str) -> None:
        with collective_errors(what):
            for q in reqs:
                q.wait()

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
        with collective_errors("halo exchange"):
            for w in self._works:
                w.wait()
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
    with collective_errors("halo exchange"):
        works = dist.batch_isend_irecv(ops)
    return HaloExchange(works, low, high)

"""Fused CPU kernels for the conjugate-gradient hot loop, compiled with numba (optional).

Eager PyTorch moves every field through memory once per elementary operation:
one CG iteration with the 5/7-point Laplacian is about 26 full passes
(the stencil alone is 2d + 1).  On a CPU those passes run at memory bandwidth,
so their count *is* the cost.  These kernels do the same arithmetic in three
passes, about 10 field streams in all:

* :func:`stencil_dot`      ``Ap = A p`` and ``p . Ap`` per system, reading ``p`` once
  (constant-coefficient Laplacian, any boundary conditions)
* :func:`weighted_stencil_dot`  the same for a general stencil (obstacles, ``-div(k grad u)``) from
  the diagonal and one array of face weights per axis (:func:`prepare_weights`); both are one numba
  loop, compiled once with float weights (read from registers) and once with weight arrays
* :func:`residual_update`  ``r -= alpha Ap`` and ``||r||^2``
* :func:`advance`          ``x += alpha p`` and ``p = z + beta p`` (the x update
  is deferred to here, where ``p`` is read anyway)

They are used only where they apply (a real float32/float64 contiguous CPU
tensor, no overlapping outputs, big enough that the call overhead does not
matter; see :func:`usable`) and only when numba can be imported; everything
else takes the eager path in :mod:`krylon.kernels.linalg` and
:mod:`krylon.kernels.stencil` (whose :func:`~krylon.kernels.stencil.realisation`
asks :func:`usable`), which stays the reference the tests compare against.
The choice is a function of the call alone (sizes, dtype, device, layout,
torch's thread count, ``KRYLON_NUMBA`` read from the environment at
each call, :func:`disabled`), never of what the process did before, so the
same solve gives bitwise the same answer whenever it runs.  ``KRYLON_NUMBA=0``
turns them off.  With several torch threads a large field runs on a
multi-threaded build of the same kernels (numba's ``prange``, as many threads
as torch uses) when that is safe: from the main thread of the process that imported krylon,
on a threading layer other than numba's slow workqueue; otherwise the eager
(multi-threaded) passes run.

numba is an optional dependency (the ``fast`` extra): it is the well-kept tool
for compiled loops over numpy buffers, and ``torch.compile``'s CPU code was
measured slower than eager here (see BENCHMARKS.md).  The first call that
takes them imports numba and loads the kernels from numba's on-disk cache
(once per process; compiling them the very first time takes longer -- the
README gives the measured costs); :func:`warm` pays that up front.

Accumulations (dots, norms) are done in float64 whatever the field dtype.
Floating-point reassociation is allowed (so the reductions vectorise), but
not the "no NaN/Inf" assumptions, so a NaN still propagates to the solver's
breakdown checks.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading

import torch

from .stencil import BOUNDARY_CONDITIONS

__all__ = ["available", "usable", "warm", "disabled", "stencil_dot", "prepare_weights", "weighted_stencil_dot", "residual_update", "advance",
           "Unavailable", "MIN_ELEMENTS"]

#: below this many field values per call the eager path is as fast (call overhead dominates)
MIN_ELEMENTS = 4096

#: torch parallelises an elementwise pass only above this many values (at::internal::GRAIN_SIZE)
_TORCH_GRAIN = 32768

#: the kernels' boundary codes, the positions in stencil.BOUNDARY_CONDITIONS: 0 dirichlet (ghost 0),
#: 1 neumann (ghost = the cell), 2 periodic (wrap); see _fused_cpu_loops._neighbour
_BC_CODE = {bc: code for code, bc in enumerate(BOUNDARY_CONDITIONS)}


def available() -> bool:
    """True when ``KRYLON_NUMBA`` is not ``0`` (read at each call), numba imports and its kernels compile here."""
    return os.environ.get("KRYLON_NUMBA", "1") != "0" and not _failed and _importable()


@functools.lru_cache(maxsize=1)
def _importable() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


#: the compile error that turned the kernels off in this process (a fact about this numba install, so every
#: later call is eager like the one that failed; nothing is written to the environment)
_failed: list = []


_FLOATS = (torch.float32, torch.float64)


def usable(*tensors: torch.Tensor) -> bool:
    """Can the fused kernels run on these tensors (and are they worth it)?  (Called per operation: kept lean.)"""
    t = tensors[0]
    n = t.numel()
    dt = t.dtype
    if n < MIN_ELEMENTS or dt not in _FLOATS or not t.is_cpu:
        return False
    for s in tensors:
        if s.dtype is not dt or not s.is_cpu or s.requires_grad or not s.is_contiguous():
            return False
    if len(tensors) > 1 and _overlap(tensors):
        return False  # an output aliasing an input: the eager path raises a clear error
    if _OFF.get() or not available():
        return False
    if n >= _TORCH_GRAIN and torch.get_num_threads() > 1 and not _parallel_ok():
        # eager torch would split this pass across its threads; serial kernels would lose to it
        return False
    return True


def _overlap(tensors) -> bool:
    """Do any two of these (contiguous) tensors share memory?"""
    spans = [(s.data_ptr(), s.nbytes) for s in tensors]
    for i, (pi, ni) in enumerate(spans):
        for pj, nj in spans[:i]:
            if pi < pj + nj and pj < pi + ni:
                return True
    return False


def warm(dtypes=(torch.float64,)) -> float:
    """Load (compiling on the very first run) the kernels now; returns the seconds taken.

    The first call that takes the kernels pays this otherwise (importing numba and loading the cached
    kernels, once per process); call it where that time should not land in a measurement
    or a latency-sensitive first solve.  It changes no result: which kernel runs depends only on the call.
    Loads the serial build, and the multi-threaded one when torch uses several threads.  Returns 0.0 when
    the kernels are unavailable.
    """
    import time

    if not available() or _OFF.get():
        return 0.0
    t0 = time.perf_counter()
    builds = [False] + ([True] if torch.get_num_threads() > 1 and _parallel_ok() else [])
    try:
        _load(dtypes, builds)
    except _compile_errors() as exc:
        _give_up(exc)
        return 0.0
    return time.perf_counter() - t0


def _load(dtypes, builds) -> None:
    """Run every kernel once on tiny arrays (loads them from numba's cache, or compiles them)."""
    for dtype in dtypes:
        u = torch.zeros(1, 3, 3, dtype=dtype)
        big = torch.zeros(2, 8, dtype=dtype)
        one = torch.zeros(2, dtype=torch.float64).numpy()
        for parallel in builds:
            k = _kernels(parallel)
            k[0](u.numpy().reshape(1, 1, 3, 3), u.clone().numpy().reshape(1, 1, 3, 3), 4.0, 0.0, 1.0, 1.0,
                 _codes((("dirichlet", "dirichlet"),) * 2), one[:1].copy())
            k[1](big.numpy(), big.clone().numpy(), one, one.copy())
            k[2](big.numpy(), big.clone().numpy(), big.clone().numpy(), one, one)
            d, ws, codes, _ = prepare_weights(torch.ones(3, 3, dtype=dtype), torch.zeros(2, 3, 3, dtype=dtype), [False, False])
            k[0](u.numpy().reshape(1, 1, 3, 3), u.clone().numpy().reshape(1, 1, 3, 3), d, *ws, codes, one[:1].copy())


_FIRST_PID = os.getpid()


def _parallel_ok() -> bool:
    """May a multi-threaded kernel be launched from here?

    Only from the main thread of the process that imported this module: numba's OpenMP threading layer
    (GNU OpenMP) is not safe to use in a process forked after it started, and its workqueue layer is not
    thread-safe (and, measured, far slower: it is never used).
    """
    return (os.getpid() == _FIRST_PID and threading.current_thread() is threading.main_thread()
            and _threading_layer() not in (None, "workqueue"))


@functools.lru_cache(maxsize=1)
def _threading_layer():
    """The numba threading layer a parallel kernel runs on (found by launching a tiny one), or None."""
    if not available():
        return None
    try:
        import numba as nb

        _kernels(True)[1](torch.zeros(1, 8, dtype=torch.float64).numpy(), torch.zeros(1, 8, dtype=torch.float64).numpy(),
                          torch.zeros(1, dtype=torch.float64).numpy(), torch.zeros(1, dtype=torch.float64).numpy())
        return nb.threading_layer()
    except Exception:  # pragma: no cover - depends on the numba build
        return None


#: disabled() blocks open in this thread / task (a context variable: another thread's block never changes
#: the kernel a solve running here takes)
_OFF: contextvars.ContextVar = contextvars.ContextVar("krylon_fused_off", default=0)


@contextlib.contextmanager
def disabled():
    """Run the block on the eager path (as with ``KRYLON_NUMBA=0``), e.g. to compare the two.

    Nestable, and local to the thread (or asyncio task) that opens it.
    """
    token = _OFF.set(_OFF.get() + 1)
    try:
        yield
    finally:
        _OFF.reset(token)


class Unavailable(RuntimeError):
    """The kernels could not be compiled here; the caller takes the eager path (nothing was modified)."""


def _launch(index: int, numel: int, *args):
    """Run kernel ``index`` (0 stencil, 1 residual, 2 advance) on torch's thread count where safe."""
    threads = torch.get_num_threads()
    parallel = threads > 1 and numel >= _TORCH_GRAIN and _parallel_ok()
    try:
        if parallel:
            import numba as nb

            nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
        return _kernels(parallel)[index](*args)
    except _compile_errors() as exc:
        # compilation fails before any array is touched (broken llvmlite, unreadable cache)
        _give_up(exc)
        raise Unavailable(str(exc)) from exc


def _give_up(exc: BaseException) -> None:
    """Turn the kernels off for this process (the callers run the eager passes), with a warning.

    Only this process: a child process tries (and warns) again rather than inherit an edited environment.
    """
    import warnings

    warnings.warn(f"krylon: numba could not compile the fused CPU kernels ({type(exc).__name__}: {exc}); "
                  "using the eager path", RuntimeWarning, stacklevel=4)
    _failed.append(f"{type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=1)
def _compile_errors() -> tuple:
    import numba as nb

    return (nb.core.errors.NumbaError, OSError, ImportError)


@functools.lru_cache(maxsize=2)
def _kernels(parallel: bool):
    """The three kernels, compiled serial or multi-threaded (see :mod:`krylon.kernels._fused_cpu_loops`)."""
    from . import _fused_cpu_loops

    return _fused_cpu_loops.build(parallel)


def _per_system(c, nb: int):
    """Per-system coefficients as a contiguous float64 numpy array of length nb (a view when possible)."""
    import numpy as np

    if isinstance(c, torch.Tensor):
        c = c.detach()
        if c.dtype != torch.float64:
            c = c.to(torch.float64)
        a = c.reshape(-1).numpy()
    else:
        a = np.asarray(c, dtype=np.float64).reshape(-1)
    if a.size == nb:
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)
    if a.size == 1:
        return np.full(nb, a[0])
    raise ValueError(f"expected one coefficient per system ({nb}), got {a.size}")


def _flat(t: torch.Tensor, nb: int):
    """A contiguous field batch as a (nb, N) numpy view (no copy)."""
    return t.detach().numpy().reshape(nb, -1)


def _systems(t: torch.Tensor, ndim: int) -> tuple[tuple[int, ...], int]:
    batch = tuple(t.shape[: t.dim() - ndim])
    nb = 1
    for s in batch:
        nb *= s
    return batch, nb


def stencil_dot(u: torch.Tensor, out: torch.Tensor, spacing, sides) -> torch.Tensor:
    """``out = A u`` (constant-coefficient Laplacian, no obstacles) and ``u . A u`` per system.

    ``sides`` holds one ``(low, high)`` boundary-condition pair per grid axis (2 or 3 axes).  The weights are
    the floats of :func:`krylon.kernels.stencil.constant_weights`, kept in registers (no weight arrays are
    read).  Returns the dots, shape ``batch``, in ``u``'s dtype.
    """
    from . import stencil

    ndim = len(spacing)
    if ndim not in (2, 3):
        raise ValueError(f"fused stencil supports 2-D and 3-D grids, got {ndim}-D")
    w = stencil.constant_weights(spacing, sides)
    if w.fused is None:  # the description is cached per (spacing, sides): so are its operands
        w.fused = (w.diag, (0.0,) * (3 - ndim) + tuple(w.faces), _codes(w.sides))
    return _stencil(u, out, ndim, *w.fused)


def _codes(sides):
    """Boundary codes of the kernel, (low, high) per axis, padded to 3 axes (a dummy axis has code 0)."""
    import numpy as np

    codes = np.asarray([0, 0] * (3 - len(sides)) + [_BC_CODE[s] for pair in sides for s in pair], dtype=np.int64)
    codes.flags.writeable = False
    return codes


def _stencil(u, out, ndim, diag, weights, codes):
    batch, nb = _systems(u, ndim)
    shape4 = (nb,) + (1,) * (3 - ndim) + tuple(u.shape[u.dim() - ndim:])
    dots = torch.empty(batch, dtype=torch.float64)
    _launch(0, u.numel(), u.detach().numpy().reshape(shape4), out.detach().numpy().reshape(shape4), diag, *weights,
            codes, dots.numpy().reshape(nb))
    return dots if u.dtype == torch.float64 else dots.to(u.dtype)


def prepare_weights(diag: torch.Tensor, lower: torch.Tensor, periodic) -> tuple:
    """The weighted kernel's operands for one grid: views of ``diag`` (grid) and ``lower`` (d, *grid).

    ``lower[a]`` holds, for every cell, the weight of the face to its lower neighbour on axis ``a`` (at the
    first cell of the axis the periodic wrap's weight, else 0); see :func:`krylon.kernels.stencil.lower_face_weights`.
    Nothing is copied (both must be contiguous), so the operands follow in-place changes of the weights they
    view.  Pass to :func:`weighted_stencil_dot`.
    """
    ndim = lower.shape[0]
    grid = tuple(diag.shape)
    pad = (1,) * (3 - ndim)
    if not (diag.is_contiguous() and lower.is_contiguous()):
        raise ValueError("prepare_weights needs contiguous diag and lower weights")
    d = diag.detach().reshape(pad + grid).numpy()
    ws = [lower[a].detach().reshape(pad + grid).numpy() for a in range(ndim)]
    ws = [d] * (3 - ndim) + ws  # a dummy axis is never read (its codes are 0)
    # a non-periodic side is a zero ghost here: its boundary term is in the diagonal
    return d, tuple(ws), _codes([("periodic",) * 2 if p else ("dirichlet",) * 2 for p in periodic]), ndim


def weighted_stencil_dot(u: torch.Tensor, out: torch.Tensor, prepared: tuple) -> torch.Tensor:
    """``out = A u`` for a general stencil (operands from :func:`prepare_weights`) and ``u . A u`` per system."""
    diag, weights, codes, ndim = prepared
    return _stencil(u, out, ndim, diag, weights, codes)


def residual_update(r: torch.Tensor, ap: torch.Tensor, alpha, ndim: int) -> torch.Tensor:
    """In place ``r -= alpha Ap`` (alpha one value per system); returns ``||r||^2`` per system."""
    batch, nb = _systems(r, ndim)
    rr = torch.empty(batch, dtype=torch.float64)
    _launch(1, r.numel(), _flat(r, nb), _flat(ap, nb), _per_system(alpha, nb), rr.numpy().reshape(nb))
    return rr if r.dtype == torch.float64 else rr.to(r.dtype)


def advance(x: torch.Tensor, p: torch.Tensor, z: torch.Tensor, alpha, beta, ndim: int) -> None:
    """In place ``x += alpha p`` and ``p = z + beta p`` (alpha, beta one value per system)."""
    _, nb = _systems(x, ndim)
    _launch(2, x.numel(), _flat(x, nb), _flat(p, nb), _flat(z, nb), _per_system(alpha, nb), _per_system(beta, nb))

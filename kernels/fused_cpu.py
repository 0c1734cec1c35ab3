"""Fused CPU kernels for the conjugate-gradient hot loop, compiled with numba (optional).

Eager PyTorch moves every field through memory once per elementary operation:
one CG iteration with the 5/7-point Laplacian is about 26 full passes
(the stencil alone is 2d + 1).  On a CPU those passes run at memory bandwidth,
so their count *is* the cost.  These kernels do the same arithmetic in three
passes, about 10 field streams in all:

* :func:`stencil_dot`      ``Ap = A p`` and ``p . Ap`` per system, reading ``p`` once
  (constant-coefficient Laplacian, any boundary conditions)
* :func:`weighted_stencil_dot`  the same for a general stencil (obstacles, ``-div(k grad u)``) from
  the diagonal and one array of face weights per axis (:func:`prepare_weights`)
* :func:`residual_update`  ``r -= alpha Ap`` and ``||r||^2``
* :func:`advance`          ``x += alpha p`` and ``p = z + beta p`` (the x update
  is deferred to here, where ``p`` is read anyway)

They are used only where they apply (a real float32/float64 contiguous CPU
tensor, no overlapping outputs, big enough that the call overhead does not
matter; see :func:`usable`) and only when numba can be imported; everything
else takes the eager path in :mod:`krylon.kernels.linalg` and
:mod:`krylon.kernels.stencil`, which stays the reference the tests compare
against.  ``KRYLON_NUMBA=0`` turns them off.  With several torch threads a
large field runs on a multi-threaded build of the same kernels (numba's
``prange``, as many threads as torch uses) when that is safe: from the main
thread of the process that imported krylon, on a threading layer other than
numba's slow workqueue; otherwise the eager (multi-threaded) passes run.

numba is an optional dependency (the ``fast`` extra): it is the well-kept tool
for compiled loops over numpy buffers, and ``torch.compile``'s CPU code was
measured slower than eager here (see BENCHMARKS.md).  Kernels are compiled on
first use (about a second per dtype) and cached on disk.

Accumulations (dots, norms) are done in float64 whatever the field dtype.
Floating-point reassociation is allowed (so the reductions vectorise), but
not the "no NaN/Inf" assumptions, so a NaN still propagates to the solver's
breakdown checks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

__all__ = ["available", "usable", "disabled", "stencil_dot", "prepare_weights", "weighted_stencil_dot", "residual_update", "advance",
           "Unavailable", "MIN_ELEMENTS"]

#: below this many field values per call the eager path is as fast (call overhead dominates)
MIN_ELEMENTS = 4096

#: torch parallelises an elementwise pass only above this many values (at::internal::GRAIN_SIZE)
_TORCH_GRAIN = 32768

_BC_CODE = {"dirichlet": 0, "neumann": 1, "periodic": 2}
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when numba can be imported and ``KRYLON_NUMBA`` is not ``0``."""
    if os.environ.get("KRYLON_NUMBA", "1") == "0":
        return False
    try:
        import numba  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def usable(*tensors: torch.Tensor) -> bool:
    """Can the fused kernels run on these tensors (and are they worth it)?"""
    t = tensors[0]
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or t.requires_grad:
        return False
    if t.numel() < MIN_ELEMENTS:
        return False
    spans = []
    for s in tensors:
        if s.dtype != t.dtype or s.device != t.device or not s.is_contiguous() or s.requires_grad:
            return False
        start = s.data_ptr()
        spans.append((start, start + s.numel() * s.element_size()))
    spans.sort()
    if any(nxt[0] < prev[1] for prev, nxt in zip(spans, spans[1:])):
        return False  # overlapping memory (an output aliasing an input): the eager path raises a clear error
    if t.numel() >= _TORCH_GRAIN and torch.get_num_threads() > 1 and not _parallel_ok():
        # eager torch would split this pass across its threads; serial kernels would lose to it
        return False
    return available()


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


@contextlib.contextmanager
def disabled():
    """Run the block on the eager path (as with ``KRYLON_NUMBA=0``), e.g. to compare the two."""
    before = os.environ.get("KRYLON_NUMBA")
    os.environ["KRYLON_NUMBA"] = "0"
    available.cache_clear()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("KRYLON_NUMBA", None)
        else:
            os.environ["KRYLON_NUMBA"] = before
        available.cache_clear()


class Unavailable(RuntimeError):
    """The kernels could not be compiled here; the caller takes the eager path (nothing was modified)."""


def _launch(index: int, numel: int, *args):
    """Run kernel ``index`` (0 stencil, 1 residual, 2 advance, 3 weighted stencil) on torch's thread count where safe."""
    import numba as nb

    threads = torch.get_num_threads()
    parallel = threads > 1 and numel >= _TORCH_GRAIN and _parallel_ok()
    try:
        if parallel:
            nb.set_num_threads(min(threads, nb.config.NUMBA_NUM_THREADS))
        return _kernels(parallel)[index](*args)
    except (nb.core.errors.NumbaError, OSError, ImportError) as exc:
        # compilation fails before any array is touched (broken llvmlite, unreadable cache): turn the
        # kernels off for this process and let the caller run the eager passes
        import warnings

        warnings.warn(f"krylon: numba could not compile the fused CPU kernels ({type(exc).__name__}: {exc}); "
                      "using the eager path", RuntimeWarning, stacklevel=3)
        os.environ["KRYLON_NUMBA"] = "0"
        available.cache_clear()
        raise Unavailable(str(exc)) from exc


#: values per work item of the parallel update kernels, and grid rows per work item of the stencil
_CHUNK = 16384
_ROWS = 8


@functools.lru_cache(maxsize=2)
def _kernels(parallel: bool):
    """The three kernels, compiled serial or multi-threaded (``prange`` is ``range`` in the serial build)."""
    import numba as nb
    import numpy as np
    from numba import prange

    # numba's on-disk cache keys a function by its bytecode and closure, not by its compile options: the
    # kernels name `build` so that the serial and the parallel builds are cached apart
    build = "parallel" if parallel else "serial"

    def jit(fn, par=parallel):
        opts = dict(fastmath=_FASTMATH, nogil=True, boundscheck=False, parallel=par)
        try:
            return nb.njit(cache=True, **opts)(fn)  # compiled once, then loaded from numba's on-disk cache
        except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
            return nb.njit(**opts)(fn)

    @functools.partial(jit, par=False)
    def _neighbour(n, i, lo_code, hi_code, inv, lower):
        """(index, weight) of the lower/upper neighbour of index i on an axis of length n."""
        if lower:
            if i > 0:
                return i - 1, inv
            code = lo_code
            wrap = n - 1
        else:
            if i < n - 1:
                return i + 1, inv
            code = hi_code
            wrap = 0
        if code == 2:  # periodic
            return wrap, inv
        if code == 1:  # neumann: the ghost equals the cell itself
            return i, inv
        return i, 0.0  # dirichlet: the ghost is zero

    @functools.partial(jit, par=False)
    def _row_blocks(n0, n1):
        """Work items of the stencils per system: blocks of _ROWS grid rows (i, j0..j0+_ROWS)."""
        return n0 * ((n1 + _ROWS - 1) // _ROWS)

    @functools.partial(jit, par=False)
    def _work_item(t, n0, n1):
        """(system b, plane i, first row j0) of work item t."""
        items = _row_blocks(n0, n1)
        nj = (n1 + _ROWS - 1) // _ROWS
        return t // items, (t % items) // nj, (t % nj) * _ROWS

    @functools.partial(jit, par=False)
    def _sum_parts(part, per_system, out):
        """out[b] = sum of the partial sums part[b * per_system:(b + 1) * per_system] (a fixed order)."""
        for b in range(out.shape[0]):
            s = 0.0
            for t in range(b * per_system, (b + 1) * per_system):
                s += part[t]
            out[b] = s

    @jit
    def stencil_dot_kernel(u, out, inv, bc, dots):
        build  # noqa: B018 - a closure variable, see above
        # u, out: (B, n0, n1, n2); inv: (3,) weights 1/h^2 (0 for a dummy axis); bc: (6,) codes, (lo, hi) per axis.
        # One work item per block of _ROWS grid rows (b, i, j0..j0+_ROWS); each leaves its share of u . A u in part[].
        B, n0, n1, n2 = u.shape
        c = 2.0 * (inv[0] + inv[1] + inv[2])
        w2 = inv[2]
        items = _row_blocks(n0, n1)
        part = np.empty(B * items)
        for t in prange(B * items):
            b, i, j0 = _work_item(t, n0, n1)
            im, ci_m = _neighbour(n0, i, bc[0], bc[1], inv[0], True)
            ip, ci_p = _neighbour(n0, i, bc[0], bc[1], inv[0], False)
            acc = 0.0
            for j in range(j0, min(j0 + _ROWS, n1)):
                jm, cj_m = _neighbour(n1, j, bc[2], bc[3], inv[1], True)
                jp, cj_p = _neighbour(n1, j, bc[2], bc[3], inv[1], False)
                ur = u[b, i, j]
                a0 = u[b, im, j]
                a1 = u[b, ip, j]
                a2 = u[b, i, jm]
                a3 = u[b, i, jp]
                o = out[b, i, j]
                if ci_m == 0.0 and ci_p == 0.0:
                    # a 2-D grid (axis 0 is a dummy of length 1 with zero weight): two rows fewer
                    for k in range(1, n2 - 1):
                        v = c * ur[k] - cj_m * a2[k] - cj_p * a3[k] - w2 * (ur[k - 1] + ur[k + 1])
                        o[k] = v
                        acc += ur[k] * v
                else:
                    for k in range(1, n2 - 1):
                        v = (c * ur[k] - ci_m * a0[k] - ci_p * a1[k] - cj_m * a2[k] - cj_p * a3[k]
                             - w2 * (ur[k - 1] + ur[k + 1]))
                        o[k] = v
                        acc += ur[k] * v
                # the two ends of the row (one when n2 == 1) follow the last axis' boundary conditions
                last = n2 - 1
                for e in range(2 if last > 0 else 1):
                    k = e * last
                    km, ck_m = _neighbour(n2, k, bc[4], bc[5], w2, True)
                    kp, ck_p = _neighbour(n2, k, bc[4], bc[5], w2, False)
                    v = (c * ur[k] - ci_m * a0[k] - ci_p * a1[k] - cj_m * a2[k] - cj_p * a3[k]
                         - ck_m * ur[km] - ck_p * ur[kp])
                    o[k] = v
                    acc += ur[k] * v
            part[t] = acc
        _sum_parts(part, items, dots)

    @jit
    def weighted_dot_kernel(u, out, diag, lower, per, dots):
        build  # noqa: B018 - a closure variable, see above
        # -div(k grad u) with precomputed weights: u, out (B, n0, n1, n2); diag (n0, n1, n2);
        # lower[a] (n0, n1, n2) = weight of the face between a cell and its lower neighbour on axis a (at the
        # first cell: the periodic wrap's weight, or 0); per (3,) = 1 for a periodic axis.  Boundary and
        # obstacle terms are in diag and in zero face weights, so no boundary codes are needed here.
        B, n0, n1, n2 = u.shape
        items = _row_blocks(n0, n1)
        part = np.empty(B * items)
        for t in prange(B * items):
            b, i, j0 = _work_item(t, n0, n1)
            # the upper neighbour's face weight is the lower weight of the next cell (of cell 0 when wrapping)
            im = i - 1 if i > 0 else n0 - 1
            ip = i + 1 if i < n0 - 1 else 0
            m_ip = 1.0 if (i < n0 - 1 or per[0] == 1) else 0.0
            axis0 = n0 > 1 or per[0] == 1
            acc = 0.0
            for j in range(j0, min(j0 + _ROWS, n1)):
                jm = j - 1 if j > 0 else n1 - 1
                jp = j + 1 if j < n1 - 1 else 0
                m_jp = 1.0 if (j < n1 - 1 or per[1] == 1) else 0.0
                ur = u[b, i, j]
                um1 = u[b, i, jm]
                up1 = u[b, i, jp]
                d = diag[i, j]
                l1 = lower[1, i, j]
                h1 = lower[1, i, jp]
                l2 = lower[2, i, j]
                o = out[b, i, j]
                if axis0:
                    um0 = u[b, im, j]
                    up0 = u[b, ip, j]
                    l0 = lower[0, i, j]
                    h0 = lower[0, ip, j]
                    for k in range(1, n2 - 1):
                        v = (d[k] * ur[k] - l0[k] * um0[k] - m_ip * h0[k] * up0[k] - l1[k] * um1[k]
                             - m_jp * h1[k] * up1[k] - l2[k] * ur[k - 1] - l2[k + 1] * ur[k + 1])
                        o[k] = v
                        acc += ur[k] * v
                else:  # a 2-D grid: axis 0 is a dummy of length 1
                    for k in range(1, n2 - 1):
                        v = (d[k] * ur[k] - l1[k] * um1[k] - m_jp * h1[k] * up1[k]
                             - l2[k] * ur[k - 1] - l2[k + 1] * ur[k + 1])
                        o[k] = v
                        acc += ur[k] * v
                last = n2 - 1
                for e in range(2 if last > 0 else 1):
                    k = e * last
                    v = d[k] * ur[k] - l1[k] * um1[k] - m_jp * h1[k] * up1[k]
                    if axis0:
                        v -= lower[0, i, j, k] * u[b, im, j, k] + m_ip * lower[0, ip, j, k] * u[b, ip, j, k]
                    v -= l2[k] * ur[k - 1 if k > 0 else last]  # at k = 0: the wrap weight (0 unless periodic)
                    if k < last:
                        v -= l2[k + 1] * ur[k + 1]
                    elif per[2] == 1:
                        v -= l2[0] * ur[0]
                    o[k] = v
                    acc += ur[k] * v
            part[t] = acc
        _sum_parts(part, items, dots)

    @jit
    def residual_kernel(r, ap, alpha, rr):
        build  # noqa: B018 - a closure variable, see above
        # r, ap: (B, N); r -= alpha[b] ap; rr[b] = ||r[b]||^2, in chunks of _CHUNK values
        B, N = r.shape
        nch = (N + _CHUNK - 1) // _CHUNK
        part = np.empty(B * nch)
        for t in prange(B * nch):
            b = t // nch
            c0 = (t % nch) * _CHUNK
            a = alpha[b]
            rb = r[b, c0:c0 + _CHUNK]
            ab = ap[b, c0:c0 + _CHUNK]
            acc = 0.0
            for k in range(rb.shape[0]):
                v = rb[k] - a * ab[k]
                rb[k] = v
                acc += v * v
            part[t] = acc
        _sum_parts(part, nch, rr)

    @jit
    def advance_kernel(x, p, z, alpha, beta):
        build  # noqa: B018 - a closure variable, see above
        # x += alpha p; p = z + beta p (both from the old p)
        B, N = x.shape
        nch = (N + _CHUNK - 1) // _CHUNK
        for t in prange(B * nch):
            b = t // nch
            c0 = (t % nch) * _CHUNK
            a = alpha[b]
            be = beta[b]
            xb = x[b, c0:c0 + _CHUNK]
            pb = p[b, c0:c0 + _CHUNK]
            zb = z[b, c0:c0 + _CHUNK]
            for k in range(xb.shape[0]):
                pk = pb[k]
                xb[k] += a * pk
                pb[k] = zb[k] + be * pk

    return stencil_dot_kernel, residual_kernel, advance_kernel, weighted_dot_kernel


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

    ``sides`` holds one ``(low, high)`` boundary-condition pair per grid axis (2 or 3 axes).
    Returns the dots, shape ``batch``, in ``u``'s dtype.
    """
    ndim = len(spacing)
    if ndim not in (2, 3):
        raise ValueError(f"fused stencil supports 2-D and 3-D grids, got {ndim}-D")
    batch, nb = _systems(u, ndim)
    shape4 = (nb,) + (1,) * (3 - ndim) + tuple(u.shape[u.dim() - ndim:])
    inv, codes = _stencil_constants(tuple(float(h) for h in spacing), tuple(tuple(p) for p in sides))
    dots = torch.empty(batch, dtype=torch.float64)
    _launch(0, u.numel(), u.detach().numpy().reshape(shape4), out.detach().numpy().reshape(shape4), inv, codes,
            dots.numpy().reshape(nb))
    return dots if u.dtype == torch.float64 else dots.to(u.dtype)


def prepare_weights(diag: torch.Tensor, lower: torch.Tensor, periodic) -> tuple:
    """The weighted kernel's operands for one grid: ``diag`` (grid) and ``lower`` (d, *grid) padded to 3 axes.

    ``lower[a]`` holds, for every cell, the weight of the face to its lower neighbour on axis ``a`` (at the
    first cell of the axis the periodic wrap's weight, else 0); see :func:`krylon.kernels.stencil.lower_face_weights`.
    Build once per operator and pass to :func:`weighted_stencil_dot`.
    """
    import numpy as np

    ndim = lower.shape[0]
    grid = tuple(diag.shape)
    pad = (1,) * (3 - ndim)
    lo = torch.zeros((3,) + pad + grid, dtype=diag.dtype)
    lo[3 - ndim:] = lower.detach().reshape((ndim,) + pad + grid)
    per = np.asarray([0] * (3 - ndim) + [1 if p else 0 for p in periodic], dtype=np.int64)
    return diag.detach().contiguous().reshape(pad + grid), lo, per, ndim


def weighted_stencil_dot(u: torch.Tensor, out: torch.Tensor, prepared: tuple) -> torch.Tensor:
    """``out = A u`` for a general stencil (operands from :func:`prepare_weights`) and ``u . A u`` per system."""
    diag, lo, per, ndim = prepared
    batch, nb = _systems(u, ndim)
    shape4 = (nb,) + tuple(diag.shape)
    dots = torch.empty(batch, dtype=torch.float64)
    _launch(3, u.numel(), u.detach().numpy().reshape(shape4), out.detach().numpy().reshape(shape4), diag.numpy(),
            lo.numpy(), per, dots.numpy().reshape(nb))
    return dots if u.dtype == torch.float64 else dots.to(u.dtype)


@functools.lru_cache(maxsize=64)
def _stencil_constants(spacing: tuple, sides: tuple):
    import numpy as np

    ndim = len(spacing)
    inv = np.zeros(3)
    inv[3 - ndim:] = [1.0 / h ** 2 for h in spacing]
    codes = np.asarray([0, 0] * (3 - ndim) + [_BC_CODE[s] for pair in sides for s in pair], dtype=np.int64)
    inv.flags.writeable = False
    codes.flags.writeable = False
    return inv, codes


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

"""The numba loops behind :mod:`krylon.kernels.fused_cpu` (imported only when numba is present).

Helpers are module-level functions, and :func:`build` makes the kernels with nothing in their closure but a
string.  numba's on-disk cache keys a function by its bytecode and the pickled contents of its closure; a
closure holding other jitted functions pickles differently in every process, which would mean a cache miss
(a recompilation, about a second) and one more cache entry on disk for every process.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import prange, types
from numba.extending import overload

#: reassociation lets the reductions vectorise; no "no NaN / no Inf" assumptions, so NaN still propagates
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: values per work item of the parallel update kernels, and grid rows per work item of the stencils
_CHUNK = 16384
_ROWS = 8


def _jit(fn, parallel: bool = False):
    opts = dict(fastmath=_FASTMATH, nogil=True, boundscheck=False, parallel=parallel)
    try:
        return nb.njit(cache=True, **opts)(fn)  # compiled once, then loaded from numba's on-disk cache
    except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
        return nb.njit(**opts)(fn)


def _at(w, k):
    """Weight ``k`` of a row of weights: ``w[k]`` for an array, ``w`` itself for a constant (scalar) weight."""


@overload(_at, inline="always")
def _at_impl(w, k):
    if isinstance(w, types.Array):
        return lambda w, k: w[k]
    return lambda w, k: w


def _row(w, i, j):
    """Row ``(i, j)`` of a weight field: ``w[i, j]`` for a 3-D array, the scalar itself for a constant weight."""


@overload(_row, inline="always")
def _row_impl(w, i, j):
    if isinstance(w, types.Array):
        return lambda w, i, j: w[i, j]
    return lambda w, i, j: w


@_jit
def _neighbour(n, i, lo_code, hi_code, lower):
    """(index, on) of the lower/upper neighbour of index i on an axis of length n.

    ``on`` is 1.0 when the neighbour enters the stencil and 0.0 for a Dirichlet ghost (zero).  Codes: 0 ghost
    zero (Dirichlet; also any side whose boundary term lives in the diagonal), 1 ghost = the cell itself
    (Neumann), 2 periodic wrap.
    """
    if lower:
        if i > 0:
            return i - 1, 1.0
        code = lo_code
        wrap = n - 1
    else:
        if i < n - 1:
            return i + 1, 1.0
        code = hi_code
        wrap = 0
    if code == 2:
        return wrap, 1.0
    if code == 1:
        return i, 1.0
    return i, 0.0


@_jit
def _row_blocks(n0, n1):
    """Work items of the stencils per system: blocks of _ROWS grid rows (i, j0..j0+_ROWS)."""
    return n0 * ((n1 + _ROWS - 1) // _ROWS)


@_jit
def _work_item(t, n0, n1):
    """(system b, plane i, first row j0) of work item t."""
    items = _row_blocks(n0, n1)
    nj = (n1 + _ROWS - 1) // _ROWS
    return t // items, (t % items) // nj, (t % nj) * _ROWS


@_jit
def _sum_parts(part, per_system, out):
    """out[b] = sum of the partial sums part[b * per_system:(b + 1) * per_system] (a fixed order)."""
    for b in range(out.shape[0]):
        s = 0.0
        for t in range(b * per_system, (b + 1) * per_system):
            s += part[t]
        out[b] = s


def build(parallel: bool):
    """The kernels (stencil, residual, advance), serial or multi-threaded.

    ``prange`` is a plain ``range`` in the serial build.
    """
    build_tag = "parallel" if parallel else "serial"

    def stencil_dot_kernel(u, out, diag, w0, w1, w2, bc, dots):
        build_tag  # noqa: B018 - the closure that keeps the two builds apart in numba's cache
        # out = A u and dots[b] = u[b] . A u[b] for the stencil
        #   (A u)_c = diag_c u_c - sum_a [ on * lower_a(c) u_{c - e_a} + on * lower_a(c + e_a) u_{c + e_a} ]
        # u, out: (B, n0, n1, n2) (a 2-D grid has a dummy axis 0 of length 1 whose codes are 0);
        # diag, w0, w1, w2: either constants (the constant-coefficient Laplacian: 2 sum 1/h^2 and 1/h_a^2, read
        # from registers, no weight streams) or (n0, n1, n2) arrays (w_a[c] = weight of the face between c and its
        # lower neighbour on axis a; at the first cell the periodic wrap's weight, else unused); numba compiles
        # one specialisation per kind.  bc: (6,) codes, (lo, hi) per axis (see _neighbour).  One work item per
        # block of _ROWS grid rows (b, i, j0..j0+_ROWS); each leaves its share of u . A u in part[].
        B, n0, n1, n2 = u.shape
        items = _row_blocks(n0, n1)
        part = np.empty(B * items)
        for t in prange(B * items):
            b, i, j0 = _work_item(t, n0, n1)
            im, on_im = _neighbour(n0, i, bc[0], bc[1], True)
            ip, on_ip = _neighbour(n0, i, bc[0], bc[1], False)
            axis0 = on_im != 0.0 or on_ip != 0.0  # else a 2-D grid (dummy axis 0) or a lone Dirichlet plane
            acc = 0.0
            for j in range(j0, min(j0 + _ROWS, n1)):
                jm, on_jm = _neighbour(n1, j, bc[2], bc[3], True)
                jp, on_jp = _neighbour(n1, j, bc[2], bc[3], False)
                ur = u[b, i, j]
                um0 = u[b, im, j]
                up0 = u[b, ip, j]
                um1 = u[b, i, jm]
                up1 = u[b, i, jp]
                d = _row(diag, i, j)
                l0 = _row(w0, i, j)
                h0 = _row(w0, ip, j)
                l1 = _row(w1, i, j)
                h1 = _row(w1, i, jp)
                l2 = _row(w2, i, j)
                o = out[b, i, j]
                if axis0:
                    for k in range(1, n2 - 1):
                        v = (_at(d, k) * ur[k] - on_im * _at(l0, k) * um0[k] - on_ip * _at(h0, k) * up0[k]
                             - on_jm * _at(l1, k) * um1[k] - on_jp * _at(h1, k) * up1[k]
                             - _at(l2, k) * ur[k - 1] - _at(l2, k + 1) * ur[k + 1])
                        o[k] = v
                        acc += ur[k] * v
                else:  # two rows fewer
                    for k in range(1, n2 - 1):
                        v = (_at(d, k) * ur[k] - on_jm * _at(l1, k) * um1[k] - on_jp * _at(h1, k) * up1[k]
                             - _at(l2, k) * ur[k - 1] - _at(l2, k + 1) * ur[k + 1])
                        o[k] = v
                        acc += ur[k] * v
                # the two ends of the row (one when n2 == 1) follow the last axis' boundary conditions
                last = n2 - 1
                for e in range(2 if last > 0 else 1):
                    k = e * last
                    km, on_km = _neighbour(n2, k, bc[4], bc[5], True)
                    kp, on_kp = _neighbour(n2, k, bc[4], bc[5], False)
                    v = (_at(d, k) * ur[k] - on_jm * _at(l1, k) * um1[k] - on_jp * _at(h1, k) * up1[k]
                         - on_km * _at(l2, k) * ur[km] - on_kp * _at(l2, kp) * ur[kp])
                    if axis0:
                        v -= on_im * _at(l0, k) * um0[k] + on_ip * _at(h0, k) * up0[k]
                    o[k] = v
                    acc += ur[k] * v
            part[t] = acc
        _sum_parts(part, items, dots)

    def residual_kernel(r, ap, alpha, rr):
        build_tag  # noqa: B018 - the closure that keeps the two builds apart in numba's cache
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

    def advance_kernel(x, p, z, alpha, beta):
        build_tag  # noqa: B018 - the closure that keeps the two builds apart in numba's cache
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

    return tuple(_jit(f, parallel) for f in (stencil_dot_kernel, residual_kernel, advance_kernel))

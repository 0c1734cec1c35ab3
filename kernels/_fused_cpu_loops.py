"""The numba loops behind :mod:`krylon.kernels.fused_cpu` (imported only when numba is present).

Helpers are module-level functions, and :func:`build` makes the kernels with nothing in their closure but a
string.  numba's on-disk cache keys a function by its bytecode and the pickled contents of its closure; a
closure holding other jitted functions pickles differently in every process, which would mean a cache miss
(a recompilation, about a second) and one more cache entry on disk for every process.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import prange

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


@_jit
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
    """The kernels (stencil, residual, advance, weighted stencil), serial or multi-threaded.

    ``prange`` is a plain ``range`` in the serial build.
    """
    build_tag = "parallel" if parallel else "serial"

    def stencil_dot_kernel(u, out, inv, bc, dots):
        build_tag  # noqa: B018 - the closure that keeps the two builds apart in numba's cache
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

    def weighted_dot_kernel(u, out, diag, lower, per, dots):
        build_tag  # noqa: B018 - the closure that keeps the two builds apart in numba's cache
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

    return tuple(_jit(f, parallel) for f in (stencil_dot_kernel, residual_kernel, advance_kernel, weighted_dot_kernel))

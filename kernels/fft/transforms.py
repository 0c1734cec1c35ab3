r"""FFT transforms: wavenumbers, spectral derivatives, gradient and Laplacian, dealiasing, DST-I/DCT-II.

Conventions
-----------
* A field is a tensor of shape ``(*batch, *grid)``.  A function on a
  ``d``-dimensional grid acts on the **last** ``d`` dimensions; every leading
  dimension is an independent batch member.  ``d`` is the length of
  ``lengths`` (box lengths) or ``spacing`` (grid spacings); a single number
  for ``lengths``/``spacing`` is accepted only together with ``ndim=`` (or
  where a ``shape`` or a per-axis ``bc`` already fixes ``d``), so a 2-D grid
  is never mistaken for a batch of 1-D grids.
* The periodic box ``[0, L_1) x ... x [0, L_d)`` carries ``n_a`` equispaced
  points ``x_j = j L_a / n_a`` on axis ``a``; angular wavenumbers are
  ``k = 2 pi m / L_a`` with the integer index ``m`` in FFT order.
* Real input gives real output wherever the result is mathematically real
  (``rfftn``/``irfftn`` are used for it); complex input uses ``fftn``.
  float32, float64, complex64 and complex128 are supported, on any device:
  only :mod:`torch.fft` is used.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import torch

from .. import backend, validate

__all__ = [
    "wavenumbers",
    "wavenumber_grid",
    "derivative",
    "gradient",
    "laplacian_spectral",
    "dealias_mask",
    "dealias",
    "dst1",
    "idst1",
    "dct2",
    "idct2",
]

_SUPPORTED = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_NORMS = (None, "backward", "ortho", "forward")
#: grids whose multipliers/weights the solves and norms keep
_CACHE_SIZE = 16


# =============================================================================== argument checking
def _ndim(ndim) -> int | None:
    return None if ndim is None else validate.integer(ndim, "ndim")


def _field(u, d: int, name: str = "u") -> torch.Tensor:
    """``u`` as a tensor with at least ``d`` dimensions and a dtype torch.fft handles."""
    if not isinstance(u, torch.Tensor):
        u = backend.as_tensor(u, name=name)
    elif not (u.is_floating_point() or u.is_complex()):
        u = u.to(torch.float64)  # integers and booleans: the same promotion as scipy
    if u.dtype not in _SUPPORTED:
        raise TypeError(f"{name} has dtype {u.dtype}; supported are float32, float64, complex64 and complex128")
    if u.dim() < d:
        raise ValueError(f"{name} has shape {tuple(u.shape)} ({u.dim()} dimensions) but the grid has {d} dimensions")
    if any(n == 0 for n in u.shape[u.dim() - d:]):
        raise ValueError(f"{name} has an empty grid axis: shape {tuple(u.shape)}")
    return u


def _grid_dims(d: int) -> tuple[int, ...]:
    return tuple(range(-d, 0))


def _along(t: torch.Tensor, axis: int, d: int) -> torch.Tensor:
    """Reshape a 1-D tensor so that it broadcasts along grid axis ``axis`` of a d-dimensional grid."""
    return t.reshape((1,) * axis + (-1,) + (1,) * (d - 1 - axis))


def _tensor_dims(x: torch.Tensor, axes, name: str = "axes") -> tuple[int, ...]:
    """Normalise tensor dimensions (negative allowed) and check them."""
    axes = (axes,) if isinstance(axes, numbers.Integral) else tuple(axes)
    out = []
    for a in axes:
        if x.dim() == 0:
            raise ValueError(f"{name}: a 0-dimensional tensor has no dimension {a} to transform")
        a = validate.integer(a, name, minimum=-x.dim())
        if a >= x.dim():
            raise ValueError(f"{name}: dimension {a} is out of range for a tensor of shape {tuple(x.shape)}")
        if x.shape[a] == 0:
            raise ValueError(f"{name}: dimension {a} of a tensor of shape {tuple(x.shape)} is empty")
        out.append(a % x.dim())
    if len(set(out)) != len(out):
        raise ValueError(f"{name} repeats a dimension: {axes}")
    return tuple(out)



# =============================================================================== wavenumbers
def _fft_indices(n: int, real: bool) -> torch.Tensor:
    """Integer frequency indices in FFT order (``0, 1, ..., -2, -1``) or rfft order (``0..n//2``)."""
    if real:
        return torch.arange(n // 2 + 1, dtype=torch.float64)
    m = torch.arange(n, dtype=torch.float64)
    return torch.where(m >= (n + 1) // 2, m - n, m)


def _real_float_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def wavenumbers(n: int, length: float = 2 * math.pi, *, real: bool = False, dtype=torch.float64,
                device=None) -> torch.Tensor:
    r"""Angular wavenumbers of an ``n``-point periodic grid of length ``length``.

    Parameters
    ----------
    n : int
        Number of grid points.
    length : float, optional
        Period of the box (default ``2 pi``, giving integer wavenumbers).
    real : bool, optional
        Return the ``n // 2 + 1`` non-negative wavenumbers of :func:`torch.fft.rfft`
        instead of the ``n`` wavenumbers of :func:`torch.fft.fft`.
    dtype : torch.dtype, optional
        ``torch.float32`` or ``torch.float64`` (default).
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor
        Shape ``(n,)`` (or ``(n // 2 + 1,)`` when ``real``).

    Notes
    -----
    :math:`k_m = 2\pi m / L` with :math:`m = 0, 1, \dots, \lceil n/2 \rceil - 1,
    -\lfloor n/2 \rfloor, \dots, -1` (FFT order; for even ``n`` the Nyquist index is
    :math:`-n/2`), or :math:`m = 0, \dots, \lfloor n/2 \rfloor` for ``real=True``
    (for even ``n`` the Nyquist index is then :math:`+n/2`).  This is
    ``2 pi * numpy.fft.fftfreq(n, d=L/n)``.

    Examples
    --------
    >>> import math, torch
    >>> wavenumbers(4).tolist()
    [0.0, 1.0, -2.0, -1.0]
    >>> wavenumbers(5, 2 * math.pi, real=True).tolist()
    [0.0, 1.0, 2.0]
    >>> wavenumbers(4, math.pi)[1].item()
    2.0
    """
    n = validate.integer(n, "n")
    length = validate.real_number(length, "length")
    if not length > 0:
        raise ValueError(f"length must be positive, got {length}")
    dtype = _real_float_dtype(dtype)
    k = _fft_indices(n, bool(real)) * (2 * math.pi / length)
    return k.to(dtype=dtype, device=backend.resolve_device(device))


def wavenumber_grid(shape: Sequence[int], lengths, *, real: bool = True, dtype=torch.float64,
                    device=None) -> list[torch.Tensor]:
    """Per-axis angular wavenumbers, each shaped to broadcast against the spectral grid.

    Parameters
    ----------
    shape : sequence of int
        Physical grid shape ``(n_1, ..., n_d)``.
    lengths : float or sequence of float
        Box length per axis (one number: the same on every axis).
    real : bool, optional
        Lay the last axis out as :func:`torch.fft.rfftn` does (``n_d // 2 + 1``
        entries).  Default True.
    dtype : torch.dtype, optional
        ``torch.float32`` or ``torch.float64`` (default).
    device : torch.device or str, optional

    Returns
    -------
    list of torch.Tensor
        ``d`` tensors; entry ``a`` has shape ``(1, ..., m_a, ..., 1)`` with ``m_a``
        the spectral size of axis ``a``.

    Notes
    -----
    :math:`|k|^2` on the spectral grid is ``sum(k ** 2 for k in wavenumber_grid(...))``.

    Examples
    --------
    >>> kx, ky = wavenumber_grid((4, 6), (2.0, 3.0))
    >>> tuple(kx.shape), tuple(ky.shape)
    ((4, 1), (1, 4))
    >>> tuple((kx ** 2 + ky ** 2).shape)
    (4, 4)
    """
    shape = validate.shape(shape)
    d = len(shape)
    lengths = validate.per_axis(lengths, d, "lengths")
    return [
        _along(wavenumbers(n, L, real=bool(real) and a == d - 1, dtype=dtype, device=device), a, d)
        for a, (n, L) in enumerate(zip(shape, lengths))
    ]


# =============================================================================== spectral differentiation
def _forward(u: torch.Tensor, d: int) -> tuple[torch.Tensor, bool]:
    if u.is_complex():
        return torch.fft.fftn(u, dim=_grid_dims(d)), False
    return torch.fft.rfftn(u, dim=_grid_dims(d)), True


def _backward(uh: torch.Tensor, d: int, real: bool, grid: Sequence[int]) -> torch.Tensor:
    if real:
        return torch.fft.irfftn(uh, s=tuple(grid), dim=_grid_dims(d))
    return torch.fft.ifftn(uh, dim=_grid_dims(d))


def _grid_axes(axes, d: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(d))
    axes = (axes,) if isinstance(axes, numbers.Integral) else tuple(axes)
    out = []
    for a in axes:
        a = validate.integer(a, "axes entry", minimum=-d)
        if a >= d:
            raise ValueError(f"axis {a} is not a grid axis of a {d}-dimensional grid (use 0..{d - 1} or -{d}..-1)")
        out.append(a % d)
    if len(set(out)) != len(out):
        raise ValueError(f"axes repeats a grid axis: {axes}")
    return tuple(out)


def derivative(u: torch.Tensor, order, lengths, *, axes=None, ndim: int | None = None) -> torch.Tensor:
    r"""Spectral derivative of a periodic field.

    Parameters
    ----------
    u : torch.Tensor
        Field of shape ``(*batch, *grid)`` on the periodic box, sampled at
        ``x_j = j L / n`` on each axis.  Real or complex.
    order : int or sequence of int
        Derivative order, the same on every differentiated axis (int) or one
        per entry of ``axes`` (mixed derivatives).  Orders are ``>= 0``.
    lengths : sequence of float
        Box length per grid axis; ``d = len(lengths)`` grid axes.
    axes : int or sequence of int, optional
        Grid axes (``0..d-1``, or ``-d..-1``) to differentiate; default all.
    ndim : int, optional
        Number of grid dimensions, needed only when ``lengths`` is one number.

    Returns
    -------
    torch.Tensor
        Same shape as ``u``; real when ``u`` is real.

    Notes
    -----
    .. math:: \partial_{x_{a_1}}^{o_1}\cdots\partial_{x_{a_r}}^{o_r} u
              = \mathcal F^{-1}\Big[\prod_j (i k_{a_j})^{o_j}\, \mathcal F u\Big].

    On an axis of even length ``n`` where the order is odd, the Nyquist mode
    (index ``n/2``) is set to zero: the trigonometric interpolant of real data
    carries that mode as ``cos(n pi x / L)``, whose odd derivatives vanish at
    the grid points, so this is the exact derivative of the interpolant and
    keeps real data real.  Even orders keep the Nyquist mode.

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16
    >>> du = derivative(torch.sin(3 * x), 1, (2 * math.pi,))
    >>> torch.allclose(du, 3 * torch.cos(3 * x))
    True
    >>> X, Y = torch.meshgrid(x, x, indexing="ij")
    >>> d2 = derivative(torch.sin(X) * torch.sin(2 * Y), (1, 1), (2 * math.pi, 2 * math.pi), axes=(0, 1))
    >>> torch.allclose(d2, 2 * torch.cos(X) * torch.cos(2 * Y))
    True
    """
    lengths = validate.per_axis(lengths, _ndim(ndim), "lengths")
    d = len(lengths)
    u = _field(u, d)
    axes = _grid_axes(axes, d)
    if isinstance(order, numbers.Integral) or not isinstance(order, Sequence):
        orders = (order,) * len(axes)  # a non-integer scalar is refused by validate.integer below
    else:
        orders = tuple(order)
        if len(orders) != len(axes):
            raise ValueError(f"order has {len(orders)} entries ({order!r}) for {len(axes)} differentiated axes")
    orders = tuple(validate.integer(o, "order", minimum=0) for o in orders)
    if sum(orders) == 0:
        return u.clone()
    grid = tuple(u.shape[u.dim() - d:])
    uh, real = _forward(u, d)
    rdt = backend.real_dtype(u.dtype)
    # multiplier prod_j (i k_j)^{o_j} = i^{sum o} prod_j k_j^{o_j}, built from 1-D factors
    symbol = None
    for a, o in zip(axes, orders):
        if o == 0:
            continue
        n = grid[a]
        m = _fft_indices(n, real and a == d - 1)
        k = m * (2 * math.pi / lengths[a])
        factor = k ** o
        if o % 2 == 1 and n % 2 == 0:
            factor = torch.where(m.abs() == n // 2, torch.zeros_like(factor), factor)
        factor = _along(factor.to(dtype=rdt, device=u.device), a, d)
        symbol = factor if symbol is None else symbol * factor
    power = sum(orders) % 4  # i^power
    if power == 1:
        uh = uh * (1j * symbol)
    elif power == 2:
        uh = uh * (-symbol)
    elif power == 3:
        uh = uh * (-1j * symbol)
    else:
        uh = uh * symbol
    return _backward(uh, d, real, grid)


def gradient(u: torch.Tensor, lengths, *, ndim: int | None = None) -> tuple[torch.Tensor, ...]:
    r"""Spectral gradient ``(du/dx_1, ..., du/dx_d)`` of a periodic field.

    Parameters
    ----------
    u : torch.Tensor
        Field of shape ``(*batch, *grid)``.
    lengths : sequence of float
        Box length per grid axis.
    ndim : int, optional
        Number of grid dimensions, needed only when ``lengths`` is one number.

    Returns
    -------
    tuple of torch.Tensor
        ``d`` tensors shaped like ``u`` (one forward FFT, ``d`` inverse FFTs).

    Notes
    -----
    Component ``a`` is :math:`\mathcal F^{-1}[i k_a \hat u]` with the Nyquist
    mode of an even-length axis ``a`` zeroed, as in :func:`derivative`.

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    >>> X, Y = torch.meshgrid(x, x, indexing="ij")
    >>> gx, gy = gradient(torch.sin(X + 2 * Y), (2 * math.pi, 2 * math.pi))
    >>> torch.allclose(gy, 2 * torch.cos(X + 2 * Y))
    True
    """
    lengths = validate.per_axis(lengths, _ndim(ndim), "lengths")
    d = len(lengths)
    u = _field(u, d)
    grid = tuple(u.shape[u.dim() - d:])
    uh, real = _forward(u, d)
    rdt = backend.real_dtype(u.dtype)
    out = []
    for a in range(d):
        n = grid[a]
        m = _fft_indices(n, real and a == d - 1)
        k = m * (2 * math.pi / lengths[a])
        if n % 2 == 0:
            k = torch.where(m.abs() == n // 2, torch.zeros_like(k), k)
        out.append(_backward(uh * (1j * _along(k.to(dtype=rdt, device=u.device), a, d)), d, real, grid))
    return tuple(out)


def laplacian_spectral(u: torch.Tensor, lengths, *, ndim: int | None = None) -> torch.Tensor:
    r"""Spectral Laplacian :math:`\sum_a \partial^2 u / \partial x_a^2` of a periodic field.

    Parameters
    ----------
    u : torch.Tensor
        Field of shape ``(*batch, *grid)``.
    lengths : sequence of float
        Box length per grid axis.
    ndim : int, optional
        Number of grid dimensions, needed only when ``lengths`` is one number.

    Returns
    -------
    torch.Tensor
        Shaped like ``u``.

    Notes
    -----
    :math:`\Delta u = \mathcal F^{-1}[-|k|^2 \hat u]` (the Laplacian itself, not
    the SPD negative used by the solvers).

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(16, dtype=torch.float64) * 2.0 / 16
    >>> u = torch.cos(2 * math.pi * 3 * x / 2.0)
    >>> torch.allclose(laplacian_spectral(u, (2.0,)), -(3 * math.pi) ** 2 * u)
    True
    """
    lengths = validate.per_axis(lengths, _ndim(ndim), "lengths")
    d = len(lengths)
    u = _field(u, d)
    grid = tuple(u.shape[u.dim() - d:])
    uh, real = _forward(u, d)
    ks = wavenumber_grid(grid, lengths, real=real, dtype=backend.real_dtype(u.dtype), device=u.device)
    return _backward(uh * (-sum(k * k for k in ks)), d, real, grid)


# =============================================================================== dealiasing
def _rule(rule) -> float:
    rule = validate.real_number(rule, "rule")
    if not 0 < rule <= 1:
        raise ValueError(f"rule must be in (0, 1], got {rule}")
    return rule


def dealias_mask(shape: Sequence[int], rule: float = 2 / 3, *, real: bool = True, device=None) -> torch.Tensor:
    r"""Boolean mask of the Fourier modes kept by the dealiasing rule.

    Parameters
    ----------
    shape : sequence of int
        Physical grid shape ``(n_1, ..., n_d)``.
    rule : float, optional
        Fraction of the resolved band kept, in ``(0, 1]``; default ``2/3``
        (Orszag's rule for quadratic nonlinearities).
    real : bool, optional
        Lay the last axis out as :func:`torch.fft.rfftn` does (default) rather
        than :func:`torch.fft.fftn`.
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor
        ``bool`` tensor of the spectral shape (``(n_1, ..., n_d // 2 + 1)`` when
        ``real``), True where a mode is kept.

    Notes
    -----
    A mode with integer index vector :math:`m` (FFT order) is kept iff
    :math:`|m_a| \le \mathrm{rule}\cdot n_a / 2` on every axis ``a`` (the
    comparison tolerates rounding of ``rule``, so ``2/3`` with ``n = 12`` keeps
    :math:`|m| \le 4`).  For ``rule < 1`` the Nyquist mode of an even axis is
    always removed.  Apply it as ``spectrum * mask``.

    Examples
    --------
    >>> mask = dealias_mask((6, 6))
    >>> tuple(mask.shape)
    (6, 4)
    >>> mask[:, 0].tolist()
    [True, True, True, False, True, True]
    """
    shape = validate.shape(shape)
    rule = _rule(rule)
    d = len(shape)
    device = backend.resolve_device(device)
    mask = None
    for a, n in enumerate(shape):
        m = _fft_indices(n, bool(real) and a == d - 1)
        keep = _along(m.abs() <= rule * n / 2 * (1 + 1e-12), a, d)
        mask = keep if mask is None else mask & keep
    spectral = shape[:-1] + ((shape[-1] // 2 + 1) if real else shape[-1],)
    mask = mask.expand(spectral).contiguous()
    return mask if device is None else mask.to(device)


def dealias(u: torch.Tensor, rule: float = 2 / 3, *, ndim: int | None = None, lengths=None) -> torch.Tensor:
    r"""Remove the Fourier modes of ``u`` outside the dealiasing band.

    Parameters
    ----------
    u : torch.Tensor
        Field of shape ``(*batch, *grid)``, real or complex.
    rule : float, optional
        Fraction of the band kept, default ``2/3`` (see :func:`dealias_mask`).
    ndim : int, optional
        Number of grid dimensions ``d``.
    lengths : sequence of float, optional
        Box lengths; only their number is used (an alternative to ``ndim``).

    Returns
    -------
    torch.Tensor
        Shaped like ``u``; real when ``u`` is real.

    Notes
    -----
    :math:`\mathcal F^{-1}[\chi \hat u]` with :math:`\chi` the mask of
    :func:`dealias_mask`: modes with :math:`|m_a| > \mathrm{rule}\, n_a/2` on
    any of the last ``d`` axes are zeroed.

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(12, dtype=torch.float64) * 2 * math.pi / 12
    >>> u = torch.cos(2 * x) + torch.cos(5 * x)
    >>> torch.allclose(dealias(u, ndim=1), torch.cos(2 * x))
    True
    """
    if ndim is None and lengths is None:
        raise ValueError("dealias needs ndim= or lengths= to know how many trailing dimensions are the grid")
    d = _ndim(ndim)
    if lengths is not None:
        d = len(validate.per_axis(lengths, d, "lengths"))
    u = _field(u, d)
    grid = tuple(u.shape[u.dim() - d:])
    uh, real = _forward(u, d)
    return _backward(uh * dealias_mask(grid, rule, real=real, device=u.device), d, real, grid)


# =============================================================================== trigonometric transforms
def _norm(norm) -> str:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    return "backward" if norm is None else norm


def _dst1_raw(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unnormalised DST-I along ``dim``: ``y_k = 2 sum_j x_j sin(pi (j+1)(k+1) / (n+1))``.

    The odd extension ``e = [0, -x, 0, reverse(x)]`` of length ``2(n+1)`` has DFT
    ``F_m = 2i sum_j x_j sin(pi (j+1) m / (n+1))``, so ``y_{m-1} = -i F_m``, which
    is ``Im F_m`` for real ``x`` (a real FFT suffices).
    """
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = 2 * (n + 1)
    ext = x.new_empty(shape)
    ext.narrow(dim, 0, 1).zero_()
    ext.narrow(dim, n + 1, 1).zero_()
    ext.narrow(dim, 1, n).copy_(x).neg_()
    ext.narrow(dim, n + 2, n).copy_(x.flip(dim))
    if x.is_complex():
        return -1j * torch.fft.fft(ext, dim=dim).narrow(dim, 1, n)
    return torch.fft.rfft(ext, dim=dim).narrow(dim, 1, n).imag


@functools.lru_cache(maxsize=64)
def _dct_tables(n: int, dtype: torch.dtype, device: torch.device):
    """Even/odd reordering of Makhoul's algorithm, its inverse, and the twiddles ``w_k = exp(-i pi k / 2n)``."""
    with torch.inference_mode(False):
        perm = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)])
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(n)
        k = torch.arange(n, dtype=torch.float64)
        tw = torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))
        return perm.to(device), inv.to(device), tw.to(dtype=backend.complex_dtype(dtype), device=device)


def _bcast(t: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """Reshape a 1-D tensor to broadcast along tensor dimension ``dim`` (non-negative) of an ``ndim``-tensor."""
    return t.reshape((-1,) + (1,) * (ndim - 1 - dim))


def _dct2_raw(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unnormalised DCT-II along ``dim``: ``y_k = 2 sum_j x_j cos(pi k (2j+1) / (2n))`` (Makhoul, one length-n FFT).

    With ``v = x[perm]`` and ``V = fft(v)``: ``y_k = 2 Re(w_k V_k)``.  For real
    data ``V_{n-k} = conj(V_k)`` gives ``y_{n-k} = -2 Im(w_k V_k)``, so the half
    spectrum of ``rfft`` yields every ``y``.
    """
    n = x.shape[dim]
    perm, _, tw = _dct_tables(n, x.dtype, x.device)
    v = x.index_select(dim, perm)
    if x.is_complex():
        V = torch.fft.fft(v, dim=dim)
        w = _bcast(tw, dim, x.dim())
        # y_k = w_k V_k + conj(w_k) V_{-k}: complex-linear, equals 2 Re(w_k V_k) for real data
        V_neg = torch.roll(V.flip(dim), 1, dims=dim)
        return w * V + w.conj() * V_neg
    m = n // 2 + 1
    W = torch.fft.rfft(v, dim=dim) * _bcast(2 * tw[:m], dim, x.dim())
    return torch.cat([W.real, -W.imag.narrow(dim, 1, n - m).flip(dim)], dim=dim)


def _idct2_raw(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact inverse of :func:`_dct2_raw` (a DCT-III divided by ``2n``).

    From ``y_k = 2 Re(w_k V_k)`` and ``y_{n-k} = -2 Im(w_k V_k)``:
    ``V_k = conj(w_k) (y_k - i y_{n-k}) / 2`` with ``y_n = 0``; then ``v = ifft(V)``
    and the even/odd reordering is undone.
    """
    n = y.shape[dim]
    _, inv, tw = _dct_tables(n, y.dtype, y.device)
    zero = torch.zeros_like(y.narrow(dim, 0, 1))
    if y.is_complex():
        y_rev = torch.cat([zero, y.flip(dim).narrow(dim, 0, n - 1)], dim=dim)
        v = torch.fft.ifft(_bcast(tw.conj(), dim, y.dim()) * (y - 1j * y_rev) / 2, dim=dim)
    else:
        m = n // 2 + 1
        y_rev = torch.cat([zero, y.flip(dim).narrow(dim, 0, m - 1)], dim=dim)
        V = _bcast(tw[:m].conj(), dim, y.dim()) * torch.complex(y.narrow(dim, 0, m), -y_rev) / 2
        v = torch.fft.irfft(V, n=n, dim=dim)
    return v.index_select(dim, inv)


def _scaled(y: torch.Tensor, dim: int, scale: torch.Tensor | float) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        return y * _bcast(scale.to(dtype=backend.real_dtype(y.dtype), device=y.device), dim, y.dim())
    return y * scale


def _dct_ortho_scale(n: int) -> torch.Tensor:
    s = torch.full((n,), math.sqrt(1.0 / (2 * n)), dtype=torch.float64)
    s[0] = math.sqrt(1.0 / (4 * n))
    return s


def _check_transform_input(x, name: str = "x") -> torch.Tensor:
    return _field(x, 0, name)


def dst1(x: torch.Tensor, axes=-1, *, norm: str | None = None) -> torch.Tensor:
    r"""Type-I discrete sine transform along ``axes`` (scipy's ``dst(type=1)``).

    Parameters
    ----------
    x : torch.Tensor
        Real or complex input.
    axes : int or sequence of int, optional
        Tensor dimensions to transform (default ``-1``); applied one after the other.
    norm : {None, "backward", "ortho", "forward"}, optional
        Scaling, as in :func:`scipy.fft.dst`.  ``"ortho"`` makes the transform
        orthogonal and its own inverse.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    Along one dimension of length ``n``:

    .. math:: y_k = 2 \sum_{j=0}^{n-1} x_j \sin\frac{\pi (j+1)(k+1)}{n+1},

    multiplied by :math:`1/\sqrt{2(n+1)}` for ``"ortho"`` and by :math:`1/(2(n+1))`
    for ``"forward"``.  Computed with one FFT of the odd extension
    :math:`(0, x, 0, -\tilde x)` of length :math:`2(n+1)`, whose DFT is
    :math:`F_m = -i\,y_{m-1}`.  The vectors :math:`\sin(\pi (j+1)(k+1)/(n+1))` are the
    eigenvectors of the Dirichlet second difference (see :func:`solve_stencil`).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> dst1(x).round(decimals=6).tolist()
    [9.656854, -4.0, 1.656854]
    >>> torch.allclose(dst1(dst1(x, norm="ortho"), norm="ortho"), x)
    True
    """
    x = _check_transform_input(x)
    mode = _norm(norm)
    y = x
    for dim in _tensor_dims(x, axes):
        n = y.shape[dim]
        y = _dst1_raw(y, dim)
        if mode == "ortho":
            y = y * (1.0 / math.sqrt(2 * (n + 1)))
        elif mode == "forward":
            y = y * (1.0 / (2 * (n + 1)))
    return y


def idst1(x: torch.Tensor, axes=-1, *, norm: str | None = None) -> torch.Tensor:
    r"""Inverse of :func:`dst1` with the same ``norm`` (scipy's ``idst(type=1)``).

    Parameters
    ----------
    x : torch.Tensor
        Real or complex input.
    axes : int or sequence of int, optional
        Tensor dimensions to transform (default ``-1``).
    norm : {None, "backward", "ortho", "forward"}, optional
        The ``norm`` the forward transform used.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    DST-I is an involution up to scale: :math:`\mathrm{DST}(\mathrm{DST}(x)) = 2(n+1)\,x`,
    so the inverse is the forward transform divided by :math:`2(n+1)` per
    dimension (``"backward"``), itself (``"ortho"``) or the unscaled transform
    (``"forward"``).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(4, 5, dtype=torch.float64)
    >>> torch.allclose(idst1(dst1(x, (0, 1)), (0, 1)), x)
    True
    """
    # the inverse is the forward transform with the scaling moved to the other side
    return dst1(x, axes, norm={"backward": "forward", "forward": "backward", "ortho": "ortho"}[_norm(norm)])


def dct2(x: torch.Tensor, axes=-1, *, norm: str | None = None) -> torch.Tensor:
    r"""Type-II discrete cosine transform along ``axes`` (scipy's ``dct(type=2)``).

    Parameters
    ----------
    x : torch.Tensor
        Real or complex input.
    axes : int or sequence of int, optional
        Tensor dimensions to transform (default ``-1``).
    norm : {None, "backward", "ortho", "forward"}, optional
        Scaling, as in :func:`scipy.fft.dct` (``"ortho"``: orthogonal matrix).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    Along one dimension of length ``n``:

    .. math:: y_k = 2 \sum_{j=0}^{n-1} x_j \cos\frac{\pi k (2j+1)}{2n},

    times :math:`\sqrt{1/(4n)}` (``k = 0``) or :math:`\sqrt{1/(2n)}` (``k > 0``) for
    ``"ortho"`` and :math:`1/(2n)` for ``"forward"``.  Computed with Makhoul's
    algorithm: one FFT of length ``n`` of the reordered sequence
    :math:`v = (x_0, x_2, x_4, \dots, x_5, x_3, x_1)` and
    :math:`y_k = 2\,\mathrm{Re}(e^{-i\pi k/(2n)} V_k)`.  The vectors
    :math:`\cos(\pi k (2j+1)/(2n))` are the eigenvectors of the cell-centred
    Neumann second difference.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> [round(v, 6) + 0.0 for v in dct2(x).tolist()]
    [12.0, -3.464102, 0.0]
    """
    x = _check_transform_input(x)
    mode = _norm(norm)
    y = x
    for dim in _tensor_dims(x, axes):
        n = y.shape[dim]
        y = _dct2_raw(y, dim)
        if mode == "ortho":
            y = _scaled(y, dim, _dct_ortho_scale(n))
        elif mode == "forward":
            y = y * (1.0 / (2 * n))
    return y


def idct2(x: torch.Tensor, axes=-1, *, norm: str | None = None) -> torch.Tensor:
    r"""Inverse of :func:`dct2` (a scaled DCT-III), scipy's ``idct(type=2)``.

    Parameters
    ----------
    x : torch.Tensor
        Real or complex input.
    axes : int or sequence of int, optional
        Tensor dimensions to transform (default ``-1``).
    norm : {None, "backward", "ortho", "forward"}, optional
        The ``norm`` the forward transform used.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    For ``norm=None``:

    .. math:: x_j = \frac{1}{2n}\Big[y_0 + 2\sum_{k=1}^{n-1} y_k \cos\frac{\pi k (2j+1)}{2n}\Big],

    computed by inverting Makhoul's algorithm (one inverse FFT of length ``n``).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(3, 6, dtype=torch.float64)
    >>> torch.allclose(idct2(dct2(x, norm="ortho"), norm="ortho"), x)
    True
    """
    x = _check_transform_input(x)
    mode = _norm(norm)
    y = x
    for dim in _tensor_dims(x, axes):
        n = y.shape[dim]
        if mode == "ortho":
            y = _scaled(y, dim, 1.0 / _dct_ortho_scale(n))
        elif mode == "forward":
            y = y * float(2 * n)
        y = _idct2_raw(y, dim)
    return y

r"""FFT kernels: wavenumbers, spectral derivatives, dealiasing, fast Poisson/Helmholtz solves, Sobolev norms.

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

The stencil Laplacian
---------------------
:func:`solve_stencil` inverts exactly the SPD ("negative") Laplacian that
:mod:`krylon.kernels.stencil` applies, on a grid with spacing ``h_a``:

.. math:: (A u)_i = \sum_a \frac{2 u_i - u_{i-e_a} - u_{i+e_a}}{h_a^2},

where a neighbour outside the grid is a ghost value set by the boundary
condition of that axis:

=============  =====================  ==========  ===========================================
``bc``         ghost value            transform   eigenvalues, ``k`` = transform index
=============  =====================  ==========  ===========================================
"dirichlet"    ``0``                  DST-I       ``4/h^2 sin^2(pi (k+1) / (2(n+1)))``, k=0..n-1
"neumann"      ``u_i`` (mirror)       DCT-II      ``4/h^2 sin^2(pi k / (2n))``, k=0..n-1
"periodic"     wrap-around            DFT         ``4/h^2 sin^2(pi k / n)``, k=0..n-1
=============  =====================  ==========  ===========================================

With a Dirichlet condition the grid points are interior nodes (the boundary
node sits one spacing beyond the first/last point); with a Neumann condition
the grid is cell centred and no flux crosses the boundary face.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from typing import Sequence

import torch

from . import backend

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
    "stencil_eigenvalues",
    "solve_stencil",
    "solve_dirichlet",
    "solve_periodic",
    "sobolev_inner",
    "sobolev_norm",
]

_BOUNDARY_CONDITIONS = ("dirichlet", "neumann", "periodic")
_SUPPORTED = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_NORMS = (None, "backward", "ortho", "forward")
_CACHE_SIZE = 16


# =============================================================================== argument checking
def _real_number(value, name: str) -> float:
    """``value`` as a finite Python float, or TypeError/ValueError naming it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _count(value, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _per_axis(values, ndim: int | None, name: str) -> tuple[float, ...]:
    """Positive finite box lengths / spacings, one per grid axis.

    A single number is repeated ``ndim`` times; without ``ndim`` it is refused,
    because the number of grid dimensions would be a guess.
    """
    if isinstance(values, torch.Tensor):
        values = values.item() if values.dim() == 0 else values.tolist()
    elif hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy arrays and scalars
        values = values.tolist()
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        if ndim is None:
            raise ValueError(
                f"{name}={values!r} is a single number, which does not say how many grid dimensions there are: "
                f"pass one value per axis, e.g. ({values!r},) for a 1-D grid, or give ndim="
            )
        values = (values,) * ndim
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {values!r}")
    out = tuple(_real_number(v, f"{name} entry") for v in values)
    if not out:
        raise ValueError(f"{name} is empty: need at least one grid dimension")
    if ndim is not None and len(out) != ndim:
        raise ValueError(f"{name} has {len(out)} entries but ndim={ndim}")
    for v in out:
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {out}")
    return out


def _ndim(ndim) -> int | None:
    return None if ndim is None else _count(ndim, "ndim")


def _shape(shape, name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{name} must be a sequence of grid sizes, got {shape!r}")
    out = tuple(_count(n, f"{name} entry") for n in shape)
    if not out:
        raise ValueError(f"{name} is empty: need at least one grid dimension")
    return out


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


def _parse_bc(bc, ndim: int) -> tuple[str, ...]:
    """One boundary condition per axis; a ``(low, high)`` pair is accepted when both sides agree."""
    if isinstance(bc, str):
        bc = (bc,) * ndim
    if not isinstance(bc, Sequence):
        raise TypeError(f"bc must be a string or a sequence of {ndim} strings, got {bc!r}")
    bc = tuple(bc)
    if len(bc) != ndim:
        raise ValueError(f"bc has {len(bc)} entries ({bc!r}) but the grid has {ndim} dimensions")
    out = []
    for axis, b in enumerate(bc):
        if not isinstance(b, str):
            pair = tuple(b) if isinstance(b, Sequence) else (b,)
            if len(pair) != 2 or pair[0] != pair[1]:
                raise ValueError(
                    f"bc for axis {axis} is {b!r}: the fast solvers need the same condition on both sides of an axis"
                )
            b = pair[0]
        if b not in _BOUNDARY_CONDITIONS:
            raise ValueError(f"unknown boundary condition {b!r} on axis {axis}; expected one of {_BOUNDARY_CONDITIONS}")
        out.append(b)
    return tuple(out)


def _shift(shift) -> float:
    shift = _real_number(shift, "shift")
    if shift < 0:
        raise ValueError(
            f"shift must be >= 0, got {shift}: with a negative shift the operator -Laplace + shift is indefinite, "
            "and singular whenever -shift equals one of its eigenvalues"
        )
    return shift


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
        a = _count(a, name, minimum=-x.dim())
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
    n = _count(n, "n")
    length = _real_number(length, "length")
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
    shape = _shape(shape)
    d = len(shape)
    lengths = _per_axis(lengths, d, "lengths")
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
        a = _count(a, "axes entry", minimum=-d)
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
    lengths = _per_axis(lengths, _ndim(ndim), "lengths")
    d = len(lengths)
    u = _field(u, d)
    axes = _grid_axes(axes, d)
    if isinstance(order, numbers.Integral) or not isinstance(order, Sequence):
        orders = (order,) * len(axes)  # a non-integer scalar is refused by _count below
    else:
        orders = tuple(order)
        if len(orders) != len(axes):
            raise ValueError(f"order has {len(orders)} entries ({order!r}) for {len(axes)} differentiated axes")
    orders = tuple(_count(o, "order", minimum=0) for o in orders)
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
    lengths = _per_axis(lengths, _ndim(ndim), "lengths")
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
    lengths = _per_axis(lengths, _ndim(ndim), "lengths")
    d = len(lengths)
    u = _field(u, d)
    grid = tuple(u.shape[u.dim() - d:])
    uh, real = _forward(u, d)
    ks = wavenumber_grid(grid, lengths, real=real, dtype=backend.real_dtype(u.dtype), device=u.device)
    return _backward(uh * (-sum(k * k for k in ks)), d, real, grid)


# =============================================================================== dealiasing
def _rule(rule) -> float:
    rule = _real_number(rule, "rule")
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
    shape = _shape(shape)
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
        d = len(_per_axis(lengths, d, "lengths"))
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


# =============================================================================== stencil eigenvalues and fast solves
def _eigs_1d(n: int, h: float, bc: str) -> torch.Tensor:
    """Eigenvalues (float64, CPU) of the 1-D second difference in transform order."""
    k = torch.arange(n, dtype=torch.float64)
    if bc == "dirichlet":
        theta = math.pi * (k + 1) / (2 * (n + 1))
    elif bc == "neumann":
        theta = math.pi * k / (2 * n)
    else:
        theta = math.pi * k / n
    return (4.0 / (h * h)) * torch.sin(theta) ** 2


def _grid_count(spacing, bc, ndim) -> int | None:
    """The number of grid dimensions fixed by ``ndim``, or by a per-axis ``bc`` when ``spacing`` is one number."""
    ndim = _ndim(ndim)
    if ndim is not None:
        return ndim
    scalar = isinstance(spacing, numbers.Real) or (isinstance(spacing, torch.Tensor) and spacing.dim() == 0)
    if scalar and not isinstance(bc, str) and isinstance(bc, Sequence):
        return len(bc)
    return None  # a sequence of spacings fixes it (a lone number is refused by _per_axis)


def stencil_eigenvalues(shape: Sequence[int], spacing, bc, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""Eigenvalues of the stencil Laplacian with per-axis boundary conditions, in transform layout.

    Parameters
    ----------
    shape : sequence of int
        Grid shape ``(n_1, ..., n_d)``.
    spacing : float or sequence of float
        Grid spacing per axis (one number: the same on every axis).
    bc : str or sequence of str
        ``"dirichlet"``, ``"neumann"`` or ``"periodic"``, for all axes or per axis.
    dtype : torch.dtype, optional
        ``torch.float32`` or ``torch.float64`` (default).
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor
        Shape ``shape``; entry ``(k_1, ..., k_d)`` is :math:`\sum_a \lambda_a(k_a)`.

    Notes
    -----
    With :math:`\theta` per axis

    * Dirichlet: :math:`\lambda(k) = \frac{4}{h^2}\sin^2\frac{\pi (k+1)}{2(n+1)}`
      (DST-I index ``k``, mode ``k+1``),
    * Neumann: :math:`\lambda(k) = \frac{4}{h^2}\sin^2\frac{\pi k}{2n}` (DCT-II index ``k``),
    * periodic: :math:`\lambda(k) = \frac{4}{h^2}\sin^2\frac{\pi k}{n}` (DFT index ``k``,
      FFT order).

    The eigenvalues of a Kronecker sum are the sums of the 1-D eigenvalues.

    Examples
    --------
    >>> lam = stencil_eigenvalues((3, 4), 1.0, ("dirichlet", "periodic"))
    >>> tuple(lam.shape)
    (3, 4)
    >>> round(float(lam.min()), 12)  # 4 sin^2(pi/8)
    0.585786437627
    """
    shape = _shape(shape)
    d = len(shape)
    h = _per_axis(spacing, d, "spacing")
    bcs = _parse_bc(bc, d)
    dtype = _real_float_dtype(dtype)
    total = None
    for a in range(d):
        lam = _along(_eigs_1d(shape[a], h[a], bcs[a]), a, d)
        total = lam if total is None else total + lam
    return total.expand(shape).to(dtype=dtype, device=backend.resolve_device(device)).contiguous()


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _stencil_multiplier(shape: tuple, spacing: tuple, bcs: tuple, shift: float, half_axis, dtype, device):
    """``1 / (lambda + shift)`` (0 on the null space) times the DST-I normalisation, in solve layout.

    ``half_axis`` is the periodic grid axis stored in rfft layout (or None).
    """
    with torch.inference_mode(False):
        d = len(shape)
        total = None
        scale = 1.0
        for a in range(d):
            lam = _eigs_1d(shape[a], spacing[a], bcs[a])
            if a == half_axis:
                lam = lam[: shape[a] // 2 + 1]
            if bcs[a] == "dirichlet":
                scale /= 2 * (shape[a] + 1)  # the inverse DST-I is the DST-I divided by 2(n+1)
            lam = _along(lam, a, d)
            total = lam if total is None else total + lam
        total = total + shift
        inv = torch.where(total == 0, torch.zeros_like(total), scale / torch.where(total == 0, 1.0, total))
        return inv.to(dtype=dtype, device=device)


def solve_stencil(f: torch.Tensor, spacing, bc, *, shift: float = 0.0, ndim: int | None = None) -> torch.Tensor:
    r"""Exact solve of ``(A + shift I) u = f`` for the stencil Laplacian, by fast transforms.

    This is the spectral Poisson preconditioner: one forward and one inverse
    transform per axis (DST-I, DCT-II or DFT by boundary condition), batched
    over the leading dimensions.

    Parameters
    ----------
    f : torch.Tensor
        Right-hand side of shape ``(*batch, *grid)``, real or complex.
    spacing : float or sequence of float
        Grid spacing per axis; ``d = len(spacing)``.  One number needs ``ndim=``
        or a per-axis ``bc``.
    bc : str or sequence of str
        ``"dirichlet"``, ``"neumann"`` or ``"periodic"``, for all axes or one per
        axis (a ``(low, high)`` pair with equal sides is accepted).
    shift : float, optional
        Non-negative diagonal shift (Helmholtz / implicit time step); default 0.
    ndim : int, optional
        Number of grid dimensions, when neither ``spacing`` nor ``bc`` says.

    Returns
    -------
    torch.Tensor
        ``u``, shaped like ``f``; real when ``f`` is real.

    Raises
    ------
    ValueError
        Unknown boundary condition, negative shift, or ``f`` with fewer than
        ``d`` dimensions.

    Notes
    -----
    ``A`` is the Kronecker sum of the 1-D second differences described in the
    module docstring, so with :math:`T = T_1 \otimes \dots \otimes T_d` the per-axis
    transforms, :math:`u = T^{-1} (\Lambda + \sigma)^{-1} T f` where
    :math:`\Lambda` is :func:`stencil_eigenvalues`.

    Singular case: with no Dirichlet axis and ``shift == 0``, ``A`` has the
    constants as null space.  The result is then the pseudo-inverse solution:
    the ``k = 0`` coefficient is set to zero, so ``u`` has zero mean and
    solves ``A u = f - mean(f)`` (the mean of ``f`` is ignored, nothing is raised).

    The multiplier :math:`(\Lambda + \sigma)^{-1}` is cached per (shape, spacing,
    bc, shift, dtype, device); at most a few grids are kept.

    Examples
    --------
    >>> import torch
    >>> from krylon.kernels.stencil import apply_constant
    >>> f = torch.randn(2, 16, 12, dtype=torch.float64)
    >>> u = solve_stencil(f, (1.0, 0.5), "dirichlet")
    >>> torch.allclose(apply_constant(u, (1.0, 0.5), "dirichlet"), f)
    True
    >>> u = solve_stencil(f, (1.0, 0.5), ("neumann", "periodic"))
    >>> torch.allclose(apply_constant(u, (1.0, 0.5), ("neumann", "periodic")), f - f.mean((-2, -1), keepdim=True))
    True
    """
    h = _per_axis(spacing, _grid_count(spacing, bc, ndim), "spacing")
    d = len(h)
    bcs = _parse_bc(bc, d)
    shift = _shift(shift)
    f = _field(f, d, "f")
    nb = f.dim() - d
    grid = tuple(f.shape[nb:])
    real = not f.is_complex()
    periodic = [a for a in range(d) if bcs[a] == "periodic"]
    half_axis = periodic[-1] if (real and periodic) else None
    mult = _stencil_multiplier(grid, h, bcs, shift, half_axis, backend.real_dtype(f.dtype), f.device)

    g = f
    for a in range(d):
        if bcs[a] == "dirichlet":
            g = _dst1_raw(g, nb + a)
        elif bcs[a] == "neumann":
            g = _dct2_raw(g, nb + a)
    if periodic:
        pdims = [nb + a for a in periodic]
        g = torch.fft.rfftn(g, dim=pdims) if real else torch.fft.fftn(g, dim=pdims)
        g = g * mult
        if real:
            g = torch.fft.irfftn(g, s=[grid[a] for a in periodic], dim=pdims)
        else:
            g = torch.fft.ifftn(g, dim=pdims)
    else:
        g = g * mult
    for a in range(d):
        if bcs[a] == "dirichlet":
            g = _dst1_raw(g, nb + a)  # normalisation is folded into mult
        elif bcs[a] == "neumann":
            g = _idct2_raw(g, nb + a)
    return g


def solve_dirichlet(f: torch.Tensor, spacing, *, shift: float = 0.0, ndim: int | None = None) -> torch.Tensor:
    r"""Exact solve of the Dirichlet stencil Poisson/Helmholtz problem by DST-I on every axis.

    Parameters
    ----------
    f : torch.Tensor
        Right-hand side of shape ``(*batch, *grid)`` (values at the interior nodes).
    spacing : float or sequence of float
        Grid spacing per axis; one number needs ``ndim=``.
    shift : float, optional
        Non-negative diagonal shift; default 0.
    ndim : int, optional
        Number of grid dimensions when ``spacing`` is one number.

    Returns
    -------
    torch.Tensor
        ``u`` with ``(A + shift I) u = f``, shaped like ``f``.

    Notes
    -----
    Same as ``solve_stencil(f, spacing, "dirichlet", shift=shift)``:
    :math:`u = S^{-1}(\Lambda + \sigma)^{-1} S f` with :math:`S` the DST-I on each
    axis and :math:`\Lambda_k = \sum_a \frac{4}{h_a^2}\sin^2\frac{\pi (k_a+1)}{2(n_a+1)}`.
    The operator is SPD, so this is never singular.

    Examples
    --------
    >>> import math, torch
    >>> n = 31
    >>> h = 1.0 / (n + 1)
    >>> x = torch.arange(1, n + 1, dtype=torch.float64) * h
    >>> mode = torch.sin(math.pi * x)          # a DST-I eigenvector
    >>> lam = 4 / h ** 2 * math.sin(math.pi * h / 2) ** 2
    >>> torch.allclose(solve_dirichlet(mode, (h,)), mode / lam)
    True
    """
    return solve_stencil(f, spacing, "dirichlet", shift=shift, ndim=ndim)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _periodic_multiplier(shape: tuple, lengths: tuple, shift: float, real: bool, dtype, device):
    """``1 / (|k|^2 + shift)`` in (r)fft layout, 0 for the singular ``k = 0`` mode."""
    with torch.inference_mode(False):
        total = sum(k * k for k in wavenumber_grid(shape, lengths, real=real, dtype=torch.float64)) + shift
        inv = torch.where(total == 0, torch.zeros_like(total), 1.0 / torch.where(total == 0, 1.0, total))
        return inv.to(dtype=dtype, device=device)


def solve_periodic(f: torch.Tensor, lengths, *, shift: float = 0.0, symbol: str = "spectral",
                   ndim: int | None = None) -> torch.Tensor:
    r"""Solve ``(-Laplace + shift) u = f`` on a periodic box by FFT.

    Parameters
    ----------
    f : torch.Tensor
        Right-hand side of shape ``(*batch, *grid)`` sampled at ``x_j = j L / n``.
    lengths : sequence of float
        Box length per axis; ``d = len(lengths)``.  One number needs ``ndim=``.
    shift : float, optional
        Non-negative shift (Helmholtz); default 0.
    symbol : {"spectral", "stencil"}, optional
        ``"spectral"``: the exact symbol :math:`|k|^2` of :math:`-\Delta` (spectral
        accuracy).  ``"stencil"``: the eigenvalues of the periodic 3/5/7-point
        stencil with spacing ``h_a = L_a / n_a`` (the exact inverse of
        :func:`krylon.kernels.stencil.apply_constant` with periodic ``bc``).
    ndim : int, optional
        Number of grid dimensions when ``lengths`` is one number.

    Returns
    -------
    torch.Tensor
        ``u``, shaped like ``f``; real when ``f`` is real.

    Raises
    ------
    ValueError
        ``shift < 0``: the operator would be indefinite (and singular whenever
        ``-shift`` is an eigenvalue); unknown ``symbol``.

    Notes
    -----
    :math:`\hat u_k = \hat f_k / (\lambda_k + \sigma)` with :math:`\lambda_k = |k|^2`
    (angular wavenumbers :math:`k_a = 2\pi m_a / L_a`) or
    :math:`\lambda_k = \sum_a \frac{4}{h_a^2}\sin^2\frac{\pi m_a}{n_a}`.
    When ``shift == 0`` the ``k = 0`` mode is singular: it is set to zero, so
    the solution has zero mean and the mean of ``f`` is ignored (the equation
    is solved for ``f - mean(f)``; nothing is raised).

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(32, dtype=torch.float64) * 2 * math.pi / 32
    >>> u = solve_periodic(torch.sin(3 * x) + 5.0, (2 * math.pi,))
    >>> torch.allclose(u, torch.sin(3 * x) / 9)
    True
    """
    lengths = _per_axis(lengths, _ndim(ndim), "lengths")
    d = len(lengths)
    shift = _shift(shift)
    if symbol not in ("spectral", "stencil"):
        raise ValueError(f"symbol must be 'spectral' or 'stencil', got {symbol!r}")
    f = _field(f, d, "f")
    grid = tuple(f.shape[f.dim() - d:])
    if symbol == "stencil":
        return solve_stencil(f, tuple(L / n for L, n in zip(lengths, grid)), "periodic", shift=shift)
    fh, real = _forward(f, d)
    mult = _periodic_multiplier(grid, lengths, shift, real, backend.real_dtype(f.dtype), f.device)
    return _backward(fh * mult, d, real, grid)


# =============================================================================== Sobolev norms
def _sobolev_params(s, alpha) -> tuple[float, float]:
    s = _real_number(s, "s")
    alpha = _real_number(alpha, "alpha")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if s < 0 and alpha == 0:
        raise ValueError(
            f"alpha must be > 0 for a negative Sobolev index (s={s}, alpha={alpha}): "
            "the weight (alpha + |k|^2)^s of the k = 0 mode would be infinite"
        )
    return s, alpha


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _sobolev_weights(shape: tuple, lengths: tuple, s: float, alpha: float, real: bool, dtype, device):
    """``V / N^2 (alpha + |k|^2)^s``, times 2 for the rfft columns that stand for a +-k pair."""
    with torch.inference_mode(False):
        d = len(shape)
        k2 = sum(k * k for k in wavenumber_grid(shape, lengths, real=real, dtype=torch.float64))
        w = (alpha + k2) ** s
        if real:
            n = shape[-1]
            m = torch.arange(n // 2 + 1)
            pair = ((m >= 1) & (m <= (n - 1) // 2)).to(torch.float64)
            w = w * _along(1.0 + pair, d - 1, d)
        w = w * (math.prod(lengths) / float(math.prod(shape)) ** 2)
        return w.to(dtype=dtype, device=device)


def _sobolev_setup(u, s, lengths, alpha, ndim, name="u"):
    lengths = _per_axis(lengths, _ndim(ndim), "lengths")
    s, alpha = _sobolev_params(s, alpha)
    d = len(lengths)
    u = _field(u, d, name)
    return u, s, alpha, lengths, d


def sobolev_inner(u: torch.Tensor, v: torch.Tensor, s: float, lengths, *, alpha: float = 1.0,
                  ndim: int | None = None) -> torch.Tensor:
    r"""Sobolev inner product :math:`(u, v)_{H^s}` on a periodic box, by Parseval.

    Parameters
    ----------
    u, v : torch.Tensor
        Fields of shape ``(*batch, *grid)`` with the same grid (batch shapes broadcast).
    s : float
        Sobolev index, any real number.
    lengths : sequence of float
        Box length per axis; one number needs ``ndim=``.
    alpha : float, optional
        Weight offset, ``>= 0`` and ``> 0`` when ``s < 0``; default 1.
    ndim : int, optional
        Number of grid dimensions when ``lengths`` is one number.

    Returns
    -------
    torch.Tensor
        One value per batch member (shape ``batch``): real for real ``u, v``,
        complex (conjugate-linear in ``u``) otherwise.  Differentiable.

    Notes
    -----
    .. math:: (u, v)_{H^s} = V \sum_k (\alpha + |k|^2)^s\, \overline{c_k(u)}\, c_k(v),
              \qquad c_k = \mathrm{fftn}(\cdot)_k / N,

    with ``N`` grid points, box volume :math:`V = \prod_a L_a` and angular
    wavenumbers :math:`k`.  See :func:`sobolev_norm`.

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16
    >>> round(float(sobolev_inner(torch.sin(x), torch.sin(x) + torch.cos(x), 0.0, (2 * math.pi,))), 12)  # pi
    3.14159265359
    """
    u, s, alpha, lengths, d = _sobolev_setup(u, s, lengths, alpha, ndim, "u")
    v = _field(v, d, "v")
    grid = tuple(u.shape[u.dim() - d:])
    if tuple(v.shape[v.dim() - d:]) != grid:
        raise ValueError(f"u and v live on different grids: shapes {tuple(u.shape)} and {tuple(v.shape)}")
    dims = _grid_dims(d)
    real = not (u.is_complex() or v.is_complex())
    if real:
        cu, cv = torch.fft.rfftn(u, dim=dims), torch.fft.rfftn(v, dim=dims)
        prod = cu.real * cv.real + cu.imag * cv.imag  # Re(conj(cu) cv); the +-k pairs add up to a real sum
    else:
        cu, cv = torch.fft.fftn(u, dim=dims), torch.fft.fftn(v, dim=dims)
        prod = cu.conj() * cv
    w = _sobolev_weights(grid, lengths, s, alpha, real, backend.real_dtype(prod.dtype), u.device)
    return (w * prod).sum(dim=dims)


def sobolev_norm(u: torch.Tensor, s: float, lengths, *, alpha: float = 1.0, squared: bool = False,
                 ndim: int | None = None) -> torch.Tensor:
    r"""Sobolev norm :math:`\|u\|_{H^s}` of a periodic field, by Parseval, for any real ``s``.

    Parameters
    ----------
    u : torch.Tensor
        Field of shape ``(*batch, *grid)`` sampled at ``x_j = j L / n``, real or complex.
    s : float
        Sobolev index, any real number (negative: dual norms, e.g. ``H^{-1}``).
    lengths : sequence of float
        Box length per axis; one number needs ``ndim=``.
    alpha : float, optional
        Weight offset :math:`\alpha \ge 0`; must be ``> 0`` when ``s < 0``
        (the ``k = 0`` weight).  Default 1.
    squared : bool, optional
        Return :math:`\|u\|_{H^s}^2` (smooth everywhere; preferable as a loss).
    ndim : int, optional
        Number of grid dimensions when ``lengths`` is one number.

    Returns
    -------
    torch.Tensor
        Real, shape ``batch`` (one value per batch member).  Differentiable
        with autograd.

    Raises
    ------
    ValueError
        ``alpha < 0``, or ``alpha == 0`` with ``s < 0``.

    Notes
    -----
    With Fourier coefficients :math:`c_k = \mathrm{fftn}(u)_k / N` (``N`` grid
    points), box volume :math:`V = \prod_a L_a` and angular wavenumber vectors
    :math:`k` (:math:`k_a = 2\pi m_a / L_a`), this module **defines**

    .. math:: \|u\|_{H^s}^2 = V \sum_k (\alpha + |k|^2)^{s}\, |c_k|^2 .

    The weight is :math:`1` for ``s = 0`` whatever ``alpha`` (:math:`0^0 = 1`).
    The exponent ``s`` acts on the *squared* norm: :math:`s = 1, \alpha = 1` gives
    :math:`\int |u|^2 + |\nabla u|^2`, and :math:`s = -1` gives
    :math:`\langle u, (\alpha - \Delta)^{-1} u \rangle`.  (The reference code of the
    Spectral-Refiner paper is ambiguous by a factor 2 in ``s``: a weight
    :math:`(\alpha + |k|^2)^{s/2}` applied to the coefficients is the same norm,
    one applied to their squares is the norm of index ``s/2``.)  For
    ``s = 0, alpha = 1`` it is :math:`(V/N)\sum_j |u_j|^2`, the quadrature value
    of :math:`\int |u|^2 dx`.  For real ``u`` the half spectrum of
    :func:`torch.fft.rfftn` is used, each ``+-k`` pair counted twice.

    Examples
    --------
    >>> import math, torch
    >>> x = torch.arange(32, dtype=torch.float64) * 2 * math.pi / 32
    >>> u = torch.sin(3 * x)
    >>> round(float(sobolev_norm(u, 1.0, (2 * math.pi,), squared=True)), 12)  # V/2 * (1 + 9) = 10 pi
    31.415926535898
    >>> round(float(sobolev_norm(u, 0.0, (2 * math.pi,)) ** 2), 12)  # int_0^{2pi} sin^2 = pi
    3.14159265359
    """
    u, s, alpha, lengths, d = _sobolev_setup(u, s, lengths, alpha, ndim, "u")
    grid = tuple(u.shape[u.dim() - d:])
    dims = _grid_dims(d)
    real = not u.is_complex()
    c = torch.fft.rfftn(u, dim=dims) if real else torch.fft.fftn(u, dim=dims)
    power = c.real.square() + c.imag.square()  # |c|^2 without abs(): smooth at c = 0
    w = _sobolev_weights(grid, lengths, s, alpha, real, power.dtype, u.device)
    n2 = (w * power).sum(dim=dims)
    return n2 if squared else torch.sqrt(n2)

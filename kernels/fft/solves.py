r"""Fast exact solves: periodic FFT Poisson/Helmholtz, the stencil Laplacian by DST-I/DCT-II/DFT per axis.

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

Fields follow the conventions of :mod:`krylon.kernels.fft.transforms`.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import torch

from .. import backend, validate
from ..stencil import parse_bc
from .transforms import _CACHE_SIZE, _along, _backward, _dct2_raw, _dst1_raw, _field, _forward, _idct2_raw, _ndim, _real_float_dtype, wavenumber_grid

__all__ = ["stencil_eigenvalues", "solve_stencil", "solve_dirichlet", "solve_periodic"]


def _axis_bc(bc, ndim: int) -> tuple[str, ...]:
    """One boundary condition per axis (:func:`krylon.kernels.stencil.parse_bc`, both sides of an axis equal)."""
    out = []
    for axis, pair in enumerate(parse_bc(bc, ndim)):
        if pair[0] != pair[1]:
            raise ValueError(f"bc for axis {axis} is {pair!r}: the fast solvers need the same condition on both sides of an axis")
        out.append(pair[0])
    return tuple(out)


def _shift(shift) -> float:
    shift = validate.real_number(shift, "shift")
    if shift < 0:
        raise ValueError(
            f"shift must be >= 0, got {shift}: with a negative shift the operator -Laplace + shift is indefinite, "
            "and singular whenever -shift equals one of its eigenvalues"
        )
    return shift


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
    return None  # a sequence of spacings fixes it (a lone number is refused by validate.per_axis)


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
    shape = validate.shape(shape)
    d = len(shape)
    h = validate.per_axis(spacing, d, "spacing")
    bcs = _axis_bc(bc, d)
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
    h = validate.per_axis(spacing, _grid_count(spacing, bc, ndim), "spacing")
    d = len(h)
    bcs = _axis_bc(bc, d)
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
    lengths = validate.per_axis(lengths, _ndim(ndim), "lengths")
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

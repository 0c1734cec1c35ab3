"""2-D incompressible Navier–Stokes in vorticity form on the periodic box, pseudo-spectral.

``w_t + u . grad w = nu Laplace w - drag w + f``,  ``u = (psi_y, -psi_x)``,  ``-Laplace psi = w``

on ``[0, Lx) x [0, Ly)``; the first grid axis is ``x``, the last is ``y``.  The state of the time integrators is
the rfft2 of the vorticity, ``(*batch, X, Y // 2 + 1)``; the stiff part ``-nu |k|^2 - drag`` is a diagonal symbol
(:meth:`NavierStokes2D.linear`) and the advection plus forcing is :meth:`NavierStokes2D.nonlinear`, evaluated
pseudo-spectrally with the 2/3 rule, so the integrators of :mod:`krylon.solvers.timestepping` step it
(:func:`krylon.datasets.navier_stokes.simulate` drives them: an operator may not import a solver).  This is
the equation and forcing of the FNO and Spectral-Refiner data sets (``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``).
:meth:`NavierStokes2D.crank_nicolson_residual` is the Spectral-Refiner loss's residual of one implicit step.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from ...kernels import validate
from ...kernels.fft import dealias_mask, wavenumber_grid

__all__ = ["NavierStokes2D", "kolmogorov_diagonal_forcing", "spectral_resample"]


def kolmogorov_diagonal_forcing(x: torch.Tensor, y: torch.Tensor, lengths=(1.0, 1.0)) -> torch.Tensor:
    """``0.1 (sin 2 pi (x/Lx + y/Ly) + cos 2 pi (x/Lx + y/Ly))``: the FNO / Spectral-Refiner forcing.

    On the unit torus this is ``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``; on another box the phase is scaled
    so the forcing stays periodic.
    """
    phase = 2 * math.pi * (x / lengths[0] + y / lengths[1])
    return 0.1 * (torch.sin(phase) + torch.cos(phase))


def spectral_resample(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample real periodic fields ``(*batch, X, Y)`` to ``shape`` by Fourier truncation or zero padding.

    The modes both grids resolve are kept (the Nyquist modes of the smaller grid are dropped, so a real field
    stays real and the operation is the L2 projection on coarsening, exact band-limited interpolation on
    refinement); point values are preserved for band-limited fields.
    """
    X, Y = int(shape[0]), int(shape[1])
    x0, y0 = w.shape[-2], w.shape[-1]
    if (X, Y) == (x0, y0):
        return w
    wh = torch.fft.rfft2(w)
    out = wh.new_zeros(wh.shape[:-2] + (X, Y // 2 + 1))
    # modes |m| < min(n)/2 on each axis: strictly below both grids' Nyquist
    kx = (min(X, x0) + 1) // 2
    ky = (min(Y, y0) + 1) // 2
    out[..., :kx, :ky] = wh[..., :kx, :ky]
    if kx > 1:
        out[..., -(kx - 1):, :ky] = wh[..., -(kx - 1):, :ky]
    return torch.fft.irfft2(out, s=(X, Y)) * (X * Y / (x0 * y0))


class NavierStokes2D:
    """The 2-D Navier–Stokes vorticity equation on a periodic box, ready for the spectral integrators.

    Parameters
    ----------
    viscosity : float
        Kinematic viscosity ``nu > 0`` (default 1e-3, the Spectral-Refiner data).
    forcing : "kolmogorov-diagonal", callable, tensor or None
        ``"kolmogorov-diagonal"``: :func:`kolmogorov_diagonal_forcing`.  A callable ``f(x, y)`` of the
        broadcasting coordinate tensors ``x (X, 1)``, ``y (1, Y)`` returns the field; a tensor ``(X, Y)`` is a
        sampled field, resampled spectrally to any other grid; None: unforced.
    lengths : float or (float, float)
        Box side lengths (default the unit torus).
    dealias : float
        Fraction of the band kept in the nonlinear term (default 2/3, Orszag's rule; 1 = none).
    drag : float
        Linear (Rayleigh) drag coefficient ``>= 0`` (default 0).

    Examples
    --------
    >>> import torch
    >>> ns = NavierStokes2D(viscosity=1e-3)
    >>> w_hat = ns.spectral(torch.zeros(2, 32, 32, dtype=torch.float64))
    >>> ns.linear((32, 32)).shape, ns.nonlinear(w_hat).shape
    (torch.Size([32, 17]), torch.Size([2, 32, 17]))
    """

    def __init__(self, viscosity: float = 1e-3, forcing="kolmogorov-diagonal", lengths=1.0, dealias: float = 2 / 3,
                 drag: float = 0.0):
        self.viscosity = validate.real_number(viscosity, "viscosity")
        if not self.viscosity > 0:
            raise ValueError(f"viscosity must be positive, got {viscosity!r}")
        self.drag = validate.real_number(drag, "drag")
        if self.drag < 0:
            raise ValueError(f"drag must be >= 0, got {drag!r}")
        self.lengths = validate.per_axis(lengths, 2, "lengths")
        if any(L <= 0 for L in self.lengths):
            raise ValueError(f"lengths must be positive, got {lengths!r}")
        self.dealias = validate.real_number(dealias, "dealias")
        if not 0 < self.dealias <= 1:
            raise ValueError(f"dealias must be in (0, 1], got {dealias!r}")
        if isinstance(forcing, str):
            if forcing != "kolmogorov-diagonal":
                raise ValueError(f"forcing must be 'kolmogorov-diagonal', a callable, a tensor or None, got {forcing!r}")
            self.forcing_name = forcing
            forcing = functools.partial(kolmogorov_diagonal_forcing, lengths=self.lengths)  # periodic on this box
        elif forcing is None:
            self.forcing_name = "none"
        elif callable(forcing):
            self.forcing_name = getattr(forcing, "__name__", "callable")
        elif isinstance(forcing, torch.Tensor):
            if forcing.dim() != 2 or forcing.is_complex() or not forcing.is_floating_point():
                raise ValueError(f"a forcing tensor must be one real field (X, Y), got {forcing.dtype} "
                                 f"of shape {tuple(forcing.shape)}")
            validate.finite(forcing, "forcing")
            self.forcing_name = "tensor"
            forcing = forcing.detach()
        else:
            raise TypeError(f"forcing must be 'kolmogorov-diagonal', a callable, a tensor or None, got {type(forcing).__name__}")
        self.forcing = forcing
        self._cache: dict = {}

    def __repr__(self):
        return (f"NavierStokes2D(viscosity={self.viscosity:g}, forcing={self.forcing_name!r}, lengths={self.lengths}, "
                f"dealias={self.dealias:.4g}, drag={self.drag:g})")

    @property
    def config(self) -> dict:
        """JSON-able description (data-set attributes)."""
        return {"viscosity": self.viscosity, "forcing": self.forcing_name, "lengths": list(self.lengths),
                "dealias": self.dealias, "drag": self.drag}

    # ------------------------------------------------------------------ grids
    @staticmethod
    def _grid_of(w_hat: torch.Tensor) -> tuple[int, int]:
        """Physical grid of an rfft2 state (even last axis assumed: the spectral grids krylon uses)."""
        return int(w_hat.shape[-2]), 2 * (int(w_hat.shape[-1]) - 1)

    def _check_grid(self, shape) -> tuple[int, int]:
        shape = tuple(int(n) for n in shape)
        if len(shape) != 2 or any(n < 4 or n % 2 for n in shape):
            raise ValueError(f"the grid must be two even sizes >= 4, got {shape}")
        return shape

    def _tables(self, shape, dtype, device):
        """Wavenumbers (Nyquist zeroed for derivatives), |k|^2, inverse Laplacian, dealias mask, forcing."""
        real = dtype if dtype in (torch.float32, torch.float64) else torch.float64
        key = (shape, real, str(device))
        if key not in self._cache:
            kx, ky = wavenumber_grid(shape, self.lengths, real=True, dtype=torch.float64)
            k2 = kx**2 + ky**2
            inv_k2 = torch.where(k2 == 0, torch.zeros_like(k2), 1 / torch.where(k2 == 0, torch.ones_like(k2), k2))
            # odd derivatives of the Nyquist mode are not real: drop it there (the 2/3 rule removes it anyway)
            dx = torch.where(torch.arange(shape[0]).reshape(-1, 1) == shape[0] // 2, 0.0, kx)
            dy = torch.where(torch.arange(shape[1] // 2 + 1).reshape(1, -1) == shape[1] // 2, 0.0, ky)
            mask = dealias_mask(shape, self.dealias).to(torch.float64)
            f_hat = self._forcing_hat(shape)
            tables = [dx, dy, k2, inv_k2, mask] + ([f_hat] if f_hat is not None else [])
            cplx = torch.complex64 if real == torch.float32 else torch.complex128
            tables = [t.to(device=device, dtype=cplx if t.is_complex() else real) for t in tables]
            self._cache[key] = tuple(tables) + ((None,) if f_hat is None else ())
        return self._cache[key]

    def coordinates(self, shape, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid coordinates ``x_i = i Lx / X`` as ``(X, 1)`` and ``y_j = j Ly / Y`` as ``(1, Y)``."""
        X, Y = shape
        x = torch.arange(X, dtype=dtype, device=device).reshape(-1, 1) * (self.lengths[0] / X)
        y = torch.arange(Y, dtype=dtype, device=device).reshape(1, -1) * (self.lengths[1] / Y)
        return x, y

    def forcing_field(self, shape, dtype=torch.float64, device=None) -> torch.Tensor | None:
        """The forcing sampled on a grid ``(X, Y)`` (None when unforced)."""
        shape = self._check_grid(shape)
        if self.forcing is None:
            return None
        if isinstance(self.forcing, torch.Tensor):
            return spectral_resample(self.forcing.to(torch.float64), shape).to(dtype=dtype, device=device)
        x, y = self.coordinates(shape, torch.float64)
        f = torch.as_tensor(self.forcing(x, y), dtype=torch.float64)
        f = torch.broadcast_to(f, shape) if f.dim() <= 2 else f
        if tuple(f.shape) != shape or not torch.isfinite(f).all():
            raise ValueError(f"the forcing callable must return finite values broadcasting to {shape}, "
                             f"got shape {tuple(f.shape)}")
        return f.to(dtype=dtype, device=device)

    def _forcing_hat(self, shape):
        f = self.forcing_field(shape)
        return None if f is None else torch.fft.rfft2(f)

    # ------------------------------------------------------------------ the two parts of the right-hand side
    def linear(self, shape, dtype=torch.float64, device=None) -> torch.Tensor:
        """The diagonal symbol ``-nu |k|^2 - drag`` on the rfft2 grid of a physical grid ``shape = (X, Y)``."""
        shape = self._check_grid(shape)
        _, _, k2, *_ = self._tables(shape, dtype, device)
        return -self.viscosity * k2 - self.drag

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical velocity ``(u, v) = (psi_y, -psi_x)`` of an rfft2 vorticity state."""
        shape = self._check_grid(self._grid_of(w_hat))
        dx, dy, _, inv_k2, *_ = self._tables(shape, w_hat.real.dtype, w_hat.device)
        psi = w_hat * inv_k2
        return torch.fft.irfft2(1j * dy * psi, s=shape), torch.fft.irfft2(-1j * dx * psi, s=shape)

    def advection(self, w_hat: torch.Tensor) -> torch.Tensor:
        """The dealiased transform of ``u . grad w`` (rfft2 layout)."""
        shape = self._check_grid(self._grid_of(w_hat))
        dx, dy, _, _, mask, _ = self._tables(shape, w_hat.real.dtype, w_hat.device)
        u, v = self.velocity(w_hat)
        wx = torch.fft.irfft2(1j * dx * w_hat, s=shape)
        wy = torch.fft.irfft2(1j * dy * w_hat, s=shape)
        return torch.fft.rfft2(u * wx + v * wy) * mask

    def nonlinear(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``N(w) = -(u . grad w) + f`` in rfft2 layout: the explicit part of the integrators."""
        out = -self.advection(w_hat)
        f_hat = self._tables(self._grid_of(w_hat), w_hat.real.dtype, w_hat.device)[5]
        return out if f_hat is None else out + f_hat

    def spectral(self, w: torch.Tensor) -> torch.Tensor:
        """The spectral state ``rfft2(w)`` of physical vorticities ``(*batch, X, Y)`` (what the integrators step)."""
        if not isinstance(w, torch.Tensor) or w.is_complex() or w.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"vorticities must be real float32/float64 tensors (*batch, X, Y), got "
                            f"{getattr(w, 'dtype', type(w).__name__)}")
        if w.dim() < 2:
            raise ValueError(f"vorticities must have shape (*batch, X, Y), got {tuple(w.shape)}")
        self._check_grid(w.shape[-2:])
        return torch.fft.rfft2(validate.finite(w, "the vorticity"))

    def physical(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Physical vorticities of rfft2 states (inverse of :meth:`spectral`)."""
        return torch.fft.irfft2(w_hat, s=self._grid_of(w_hat))

    # ------------------------------------------------------------------ residual of one implicit step
    def crank_nicolson_residual(self, w_now: torch.Tensor, w_next: torch.Tensor, dt: float) -> torch.Tensor:
        """Residual of one Crank–Nicolson step between physical vorticities ``(*batch, X, Y)``.

        ``R = (w_next - w_now)/dt - [nu Laplace w_mid - drag w_mid - (A(w_now) + A(w_next))/2 + f]`` with
        ``w_mid = (w_now + w_next)/2`` and ``A(w) = u . grad w`` (dealiased): the *average of the two advection
        terms* (the trapezoidal rule, second order), not the advection of the midpoint state.  Evaluated
        spectrally on whatever (even) grid the fields come on, so finer-than-data grids work; differentiable in
        both arguments.  A pair of states one step apart of a second-order simulation gives ``R = O(dt^2)``.

        Returns
        -------
        tensor ``(*batch, X, Y)``, the residual in physical space.
        """
        for name, w in (("w_now", w_now), ("w_next", w_next)):
            if not isinstance(w, torch.Tensor) or w.is_complex() or not w.is_floating_point() or w.dim() < 2:
                raise TypeError(f"{name} must be a real floating tensor (*batch, X, Y), got "
                                f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
        if w_now.shape[-2:] != w_next.shape[-2:]:
            raise ValueError(f"w_now and w_next must share the grid, got {tuple(w_now.shape)} and {tuple(w_next.shape)}")
        dt = validate.real_number(dt, "dt")
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        shape = self._check_grid(w_now.shape[-2:])
        rhs = (self._tendency(torch.fft.rfft2(w_now)) + self._tendency(torch.fft.rfft2(w_next))) / 2
        return (w_next - w_now) / dt - torch.fft.irfft2(rhs, s=shape)

    def trajectory_residual(self, w: torch.Tensor, dt: float) -> torch.Tensor:
        """:meth:`crank_nicolson_residual` of every consecutive pair of a trajectory ``(*batch, X, Y, T)``.

        Snapshots ``dt`` apart with time on the last axis (the data sets' layout); returns
        ``(*batch, X, Y, T - 1)``.  Each snapshot's tendency is computed once (half the FFTs of calling
        :meth:`crank_nicolson_residual` pair by pair).
        """
        if not isinstance(w, torch.Tensor) or w.is_complex() or not w.is_floating_point() or w.dim() < 3:
            raise TypeError(f"w must be a real floating tensor (*batch, X, Y, T), got "
                            f"{getattr(w, 'dtype', type(w).__name__)} {tuple(getattr(w, 'shape', ()))}")
        if w.shape[-1] < 2:
            raise ValueError(f"a trajectory needs at least 2 snapshots on its last axis, got shape {tuple(w.shape)}")
        dt = validate.real_number(dt, "dt")
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        wt = w.movedim(-1, -3)  # (*batch, T, X, Y)
        shape = self._check_grid(wt.shape[-2:])
        g = self._tendency(torch.fft.rfft2(wt))
        r = (wt[..., 1:, :, :] - wt[..., :-1, :, :]) / dt - torch.fft.irfft2((g[..., 1:, :, :] + g[..., :-1, :, :]) / 2, s=shape)
        return r.movedim(-3, -1)

    def _tendency(self, w_hat: torch.Tensor) -> torch.Tensor:
        """The full right-hand side ``L w + N(w)`` in rfft2 layout."""
        shape = self._grid_of(w_hat)
        return self.linear(shape, w_hat.real.dtype, w_hat.device) * w_hat + self.nonlinear(w_hat)

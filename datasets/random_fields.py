"""Gaussian random fields on periodic grids: random initial states and coefficients for the generators.

A field with covariance ``sigma^2 (-Laplace + tau^2)^(-alpha)`` on the torus of side lengths ``lengths``
(the FNO data sets' initial vorticity uses alpha 2.5, tau 7 on the unit torus, with twice the default amplitude's
variance; Darcy's permeability thresholds alpha 2, tau 3).  Samples are white noise filtered in Fourier space, so they are real and
exactly periodic at every resolution, and one sample at two resolutions shares its low modes only
through the filter (draws are per grid, not nested).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..kernels.fft import wavenumber_grid

__all__ = ["gaussian_random_field"]


def gaussian_random_field(shape: Sequence[int], *, alpha: float = 2.5, tau: float = 7.0, sigma: float | None = None,
                          lengths=1.0, batch: int | Sequence[int] = (), generator: torch.Generator | None = None,
                          mean_zero: bool = True, dtype=torch.float64, device=None) -> torch.Tensor:
    """Draw real fields of shape ``(*batch, *shape)`` with covariance ``sigma^2 (-Laplace + tau^2 I)^(-alpha)``.

    Parameters
    ----------
    shape : sequence of int
        Grid points per axis (1, 2 or 3 axes).
    alpha, tau : float
        Smoothness (alpha > d/2 gives continuous fields) and inverse length scale.
    sigma : float, optional
        Amplitude; default ``tau^(alpha - d/2)``, which makes the field's variance of order one whatever tau
        is.  The covariance is exactly ``sigma^2 (-Laplace + tau^2)^(-alpha)`` (pointwise variance
        ``sigma^2 sum_k lambda_k`` over the grid's modes).  FNO's ``GaussianRF`` with the same exponent has twice
        this covariance (it keeps the real part of complex iid coefficients and multiplies by ``sqrt(2)``): pass
        ``sigma = sqrt(2) tau^(alpha - d/2)`` for its fields, as
        :func:`krylon.datasets.navier_stokes.initial_vorticity` does.
    lengths : float or sequence of float
        Side lengths of the periodic box (default the unit torus).
    mean_zero : bool
        Drop the constant mode (default), as the vorticity of a periodic flow requires.

    Examples
    --------
    >>> w0 = gaussian_random_field((64, 64), alpha=2.5, tau=7.0, batch=4, generator=torch.Generator().manual_seed(0))
    >>> w0.shape
    torch.Size([4, 64, 64])
    """
    shape = tuple(int(n) for n in shape)
    d = len(shape)
    if not 1 <= d <= 3 or any(n < 2 for n in shape):
        raise ValueError(f"shape must have 1-3 axes of at least 2 points, got {shape}")
    for name, value in (("alpha", alpha), ("tau", tau)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not mean_zero and tau == 0:
        raise ValueError("tau = 0 has an infinite constant-mode variance; use mean_zero=True")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    batch = (int(batch),) if isinstance(batch, int) else tuple(int(b) for b in batch)
    if sigma is None:
        sigma = tau ** (alpha - d / 2)
    ks = wavenumber_grid(shape, lengths, real=True, dtype=torch.float64, device=device)  # angular 2 pi k / L
    k2 = sum(k**2 for k in ks)
    # unit-variance white noise has unit-variance ortho coefficients; the field's pointwise variance is
    # sum_k lambda_k, so each coefficient is scaled by sqrt(n lambda_k)
    n = math.prod(shape)
    scale = sigma * math.sqrt(n) * (k2 + tau**2) ** (-alpha / 2)
    if mean_zero:
        scale.reshape(-1)[0] = 0.0
    noise = torch.randn(*batch, *shape, generator=generator, dtype=torch.float64, device=device)
    coeffs = torch.fft.rfftn(noise, dim=tuple(range(-d, 0)), norm="ortho") * scale
    field = torch.fft.irfftn(coeffs, s=shape, dim=tuple(range(-d, 0)), norm="ortho")
    return field.to(dtype)

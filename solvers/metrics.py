"""Image quality metrics for reconstructions: PSNR and SSIM on magnitude images, one scaling convention.

Convention (every method is scored the same way): both images are taken in magnitude (``|x|`` for complex
images) and divided by the reference's maximum magnitude, per image, so the reference spans ``[0, 1]``; the
data range is then 1.  SSIM is that of Wang et al. (2004) as ``skimage.metrics.structural_similarity``
computes it by default (a 7x7 uniform window, sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, the mean over
the pixels whose window lies inside the image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import validate

__all__ = ["psnr", "ssim", "normalized_pair"]


def normalized_pair(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|x| / s, |ref| / s)`` in float64 with ``s`` the per-image maximum of ``|ref|`` (the metrics' convention).

    ``x`` and ``ref`` are ``(*batch, H, W)`` images of the same shape (``ref`` may omit leading batch dimensions);
    a blank reference (maximum 0) raises ``ValueError``.
    """
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must be an image (*batch, H, W), got shape {tuple(t.shape)}")
        validate.finite(t, name)
    if tuple(x.shape[-2:]) != tuple(ref.shape[-2:]):
        raise ValueError(f"image sizes differ: x is {tuple(x.shape[-2:])}, ref is {tuple(ref.shape[-2:])}")
    try:
        torch.broadcast_shapes(x.shape, ref.shape)
    except RuntimeError:
        raise ValueError(f"batch shapes of x {tuple(x.shape)} and ref {tuple(ref.shape)} do not broadcast") from None
    a, r = x.abs().to(torch.float64), ref.abs().to(torch.float64)
    s = r.amax(dim=(-2, -1), keepdim=True)
    if bool((s == 0).any()):
        raise ValueError("the reference image is blank (maximum magnitude 0): PSNR/SSIM relative to it are undefined")
    a, r = torch.broadcast_tensors(a / s, r / s)
    return a, r


def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image: ``10 log10(1 / mean((|x| - |ref|)^2))`` after normalisation.

    Returns a float64 tensor of the batch shape (``inf`` for identical images).

    Examples
    --------
    >>> ref = torch.ones(8, 8, dtype=torch.float64)
    >>> round(float(psnr(ref + 0.1, ref)), 6)
    20.0
    """
    a, r = normalized_pair(x, ref)
    mse = ((a - r) ** 2).mean(dim=(-2, -1))
    return 10 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, *, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image (float64 tensor of the batch shape), after normalisation.

    Parameters
    ----------
    win_size : odd int
        Side of the uniform window (skimage's default 7); the image must be at least that large.

    Examples
    --------
    >>> ref = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    >>> float(ssim(ref, ref))
    1.0
    """
    w = validate.integer(win_size, "win_size", minimum=3)
    if w % 2 == 0:
        raise ValueError(f"win_size must be odd, got {w}")
    a, r = normalized_pair(x, ref)
    H, W = a.shape[-2:]
    if min(H, W) < w:
        raise ValueError(f"images of size {(H, W)} are smaller than the SSIM window {w}x{w}")
    batch = a.shape[:-2]
    a, r = a.reshape(-1, 1, H, W), r.reshape(-1, 1, H, W)

    def mean(t):  # the window mean over windows inside the image (skimage crops the rest)
        return F.avg_pool2d(t, w, stride=1)

    ux, uy = mean(a), mean(r)
    cov_norm = w * w / (w * w - 1)  # sample covariance, as skimage's default
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(r * r) - uy * uy)
    vxy = cov_norm * (mean(a * r) - ux * uy)
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2  # data range 1
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(batch)

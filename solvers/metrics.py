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

__all__ = ["psnr", "ssim", "normalized_pair", "save_comparison"]


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


def save_comparison(path, truth: torch.Tensor, recs: dict, *, magnitude: bool = True, error: str | None = None,
                    title: str | None = None, panel_width: float = 2.6) -> None:
    """A PNG of ``truth`` and each reconstruction of ``recs`` (name -> image), titled with its :func:`psnr`.

    Images are shown in grey over ``[0, 1]``: magnitudes with ``magnitude`` (the metrics' convention), else as
    they are (negative values black).  ``error`` adds a last panel of that name: ``||last| - truth|`` of the last
    reconstruction over ``[0, 0.2]``.  ``title`` goes above the panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def shown(im):
        return im.abs() if magnitude else im

    panels = [("truth", shown(truth), 1.0)]
    panels += [(f"{name}\n{float(psnr(im, truth)):.2f} dB", shown(im), 1.0) for name, im in recs.items()]
    if error is not None:
        panels.append((error, (list(recs.values())[-1].abs() - truth).abs(), 0.2))
    fig, ax = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), 2.8))
    for a, (name, im, top) in zip(ax, panels):
        a.imshow(im.detach().cpu().numpy(), cmap="gray", vmin=0, vmax=top)
        a.set_title(name, fontsize=8)
        a.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


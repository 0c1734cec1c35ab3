"""Image phantoms for imaging inverse problems: Shepp–Logan and random families for training a diffusion prior.

Coordinates span ``[-1, 1]^2`` with ``x`` to the right and ``y`` up (row 0 is the top, ``y = 1``); pixels are
sampled at their centres, averaged over ``supersample^2`` sub-pixels to soften edges.  Every random phantom
is non-negative with maximum magnitude 1.  Families:

``ellipses``     a body ellipse and 3-10 inner ellipses of random contrast (some darker, some brighter)
``shepp_logan``  the modified Shepp–Logan phantom with every ellipse perturbed (position, axes, angle,
                 intensity) and a random rotation and scale
``polygons``     a body ellipse holding 2-6 random convex polygons
``blobs``        smooth Gaussian bumps, or the level sets of a smooth random field (sharp-edged blobs)

and two families of natural-image statistics rather than phantoms (not in the default ``PHANTOM_FAMILIES``):

``dead_leaves``  occluding disks, ellipses, polygons and rectangles of power-law sizes (``p(r) ~ r^-3``, the
                 scale-invariant "dead leaves" model of natural images), each with its own shade, gradient and
                 a share of a rough texture
``textures``     rough random fields of power-law spectrum (``|k|^-2`` to ``|k|^-4``), some sharpened into
                 edges, some carrying oriented gratings
``photos``       random crops of real photographs and micrographs shipped with scikit-image (:data:`PHOTO_SOURCES`;
                 never the images ``krylon bench dds`` tests on), resized, flipped, turned, with a random gamma

All families carry a smooth multiplicative texture drawn from a Gaussian random field
(:func:`krylon.datasets.random_fields.gaussian_random_field`); complex variants multiply by ``exp(i phi)`` with a
smooth random phase ``phi`` (a random field plus a linear ramp).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..kernels import backend, validate
from .hdf5 import DatasetWriter
from .random_fields import gaussian_random_field

__all__ = ["FAMILIES", "PHANTOM_FAMILIES", "PHOTO_SOURCES", "skimage_grey", "shepp_logan",
           "random_phantom", "random_phantoms", "generate_phantoms", "phantom_generator"]

PHANTOM_FAMILIES = ("ellipses", "shepp_logan", "polygons", "blobs")
FAMILIES = PHANTOM_FAMILIES + ("dead_leaves", "textures", "photos")
# the skimage.data images the "photos" family crops (all stored inside scikit-image, no download): a whitelist, so
# the bench's test images (camera, coins, Shepp-Logan) and held-out ones (astronaut, chelsea = cat, clock, moon,
# cell, coffee) stay unseen; stereo_motorcycle gives its left and right views
PHOTO_SOURCES = ("brick", "grass", "gravel", "horse", "immunohistochemistry", "microaneurysms", "retina", "rocket",
                 "hubble_deep_field", "text", "page", "logo", "stereo_motorcycle")

# (intensity, semi-axis a along x', semi-axis b along y', centre x0, centre y0, angle in degrees): the
# Shepp–Logan table; "modified" (Toft) raises the contrast of the inner ellipses so they are visible
_SL = torch.tensor([
    (2.00, .6900, .9200, 0.00, 0.0000, 0.0),
    (-.98, .6624, .8740, 0.00, -.0184, 0.0),
    (-.02, .1100, .3100, 0.22, 0.0000, -18.),
    (-.02, .1600, .4100, -.22, 0.0000, 18.),
    (0.01, .2100, .2500, 0.00, 0.3500, 0.0),
    (0.01, .0460, .0460, 0.00, 0.1000, 0.0),
    (0.01, .0460, .0460, 0.00, -.1000, 0.0),
    (0.01, .0460, .0230, -.08, -.6050, 0.0),
    (0.01, .0230, .0230, 0.00, -.6060, 0.0),
    (0.01, .0230, .0460, 0.06, -.6050, 0.0),
], dtype=torch.float64)
_SL_MODIFIED_INTENSITY = torch.tensor([1.0, -0.8, -0.2, -0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)


def _grid(shape, supersample: int):
    """Sub-pixel centre coordinates ``(X, Y)`` of shape ``(H s, W s)`` on ``[-1, 1]^2``, ``y`` up."""
    H, W = shape
    s = supersample
    x = -1 + (2 * torch.arange(W * s, dtype=torch.float64) + 1) / (W * s)
    y = 1 - (2 * torch.arange(H * s, dtype=torch.float64) + 1) / (H * s)
    Y, X = torch.meshgrid(y, x, indexing="ij")
    return X, Y


def _pool(img: torch.Tensor, supersample: int) -> torch.Tensor:
    if supersample == 1:
        return img
    return torch.nn.functional.avg_pool2d(img[None, None], supersample)[0, 0]


def _local(X, Y, x0, y0, t):
    """Coordinates in the frame centred at (x0, y0) and turned by ``t`` radians."""
    c, s = math.cos(t), math.sin(t)
    return (X - x0) * c + (Y - y0) * s, -(X - x0) * s + (Y - y0) * c


def _ellipses(params: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Sum of ``intensity * indicator`` over the ellipses ``params`` (rows of the table's layout)."""
    img = torch.zeros_like(X)
    for A, a, b, x0, y0, phi in params.tolist():
        xr, yr = _local(X, Y, x0, y0, math.radians(phi))
        img = img + A * ((xr / a) ** 2 + (yr / b) ** 2 <= 1).to(img.dtype)
    return img


def shepp_logan(n: int | Sequence[int], *, modified: bool = True, supersample: int = 4, dtype=torch.float64) -> torch.Tensor:
    """The Shepp–Logan head phantom, ``(H, W)``, deterministic.

    Parameters
    ----------
    n : int or (int, int)
        Image size.
    modified : bool
        Toft's higher-contrast version (default; values in ``[0, 1]``, that of ``skimage.data.shepp_logan_phantom``)
        or the original (values in ``[0, 2]``, inner contrasts of 1-2 %).
    supersample : int
        Sub-pixels per axis averaged into each pixel.

    Examples
    --------
    >>> x = shepp_logan(64)
    >>> x.shape, float(x.max()) == 1.0
    (torch.Size([64, 64]), True)
    """
    shape = _shape(n)
    s = validate.integer(supersample, "supersample", minimum=1)
    validate.boolean(modified, "modified")
    params = _SL.clone()
    if modified:
        params[:, 0] = _SL_MODIFIED_INTENSITY
    X, Y = _grid(shape, s)
    return _pool(_ellipses(params, X, Y), s).to(dtype)


def _shape(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    shape = validate.shape(size, "size")
    if len(shape) != 2 or min(shape) < 4:
        raise ValueError(f"phantoms are 2-D images of at least 4x4 pixels: size must be n or (H, W), got {size!r}")
    return shape


# ---------------------------------------------------------------------------------------------------- random
def _u(g, lo, hi, n=None):
    """Uniform draws in ``[lo, hi)``: a float, or a float64 tensor of ``n`` values."""
    r = torch.rand(() if n is None else (n,), dtype=torch.float64, generator=g)
    r = lo + (hi - lo) * r
    return float(r) if n is None else r


def _randint(g, lo, hi) -> int:
    """An integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _unit_field(shape, g, *, alpha=3.0, tau=4.0) -> torch.Tensor:
    """A smooth random field of zero mean and unit standard deviation."""
    f = gaussian_random_field(shape, alpha=alpha, tau=tau, generator=g, dtype=torch.float64)
    return f / f.std().clamp_min(1e-12)


def _body(X, Y, g) -> tuple[torch.Tensor, tuple]:
    """A random body ellipse (indicator) and its parameters ``(a, b, x0, y0, phi)``."""
    a, b = _u(g, 0.55, 0.9), _u(g, 0.6, 0.92)
    x0, y0, phi = _u(g, -0.05, 0.05), _u(g, -0.05, 0.05), _u(g, -30, 30)
    return _ellipses(torch.tensor([[1.0, a, b, x0, y0, phi]]), X, Y), (a, b, x0, y0, phi)


def _family_ellipses(X, Y, g):
    img, (a, b, x0, y0, _) = _body(X, Y, g)
    img = img * _u(g, 0.3, 0.8)
    rows = []
    for _ in range(_randint(g, 3, 10)):
        r = math.sqrt(_u(g, 0, 0.6))  # inner ellipses inside the body
        t = _u(g, 0, 2 * math.pi)
        rows.append((_u(g, -0.5, 0.6), _u(g, 0.04, 0.35) * a, _u(g, 0.04, 0.35) * b,
                     x0 + r * a * math.cos(t), y0 + r * b * math.sin(t), _u(g, 0, 180)))
    return img + _ellipses(torch.tensor(rows), X, Y)


def _family_shepp_logan(X, Y, g):
    n = _SL.shape[0]
    p = _SL.clone()
    p[:, 0] = _SL_MODIFIED_INTENSITY
    p[2:, 0] = p[2:, 0] * _u(g, 0.3, 3.0, n - 2) * torch.where(_u(g, 0, 1, n - 2) < 0.2, -1.0, 1.0)
    p[0, 0] = _u(g, 0.7, 1.0)
    p[1, 0] = -p[0, 0] * _u(g, 0.6, 0.85)
    p[:, 1:3] = p[:, 1:3] * (1 + 0.15 * (2 * torch.rand((n, 2), dtype=torch.float64, generator=g) - 1))
    p[2:, 3:5] = p[2:, 3:5] + 0.04 * (2 * torch.rand((n - 2, 2), dtype=torch.float64, generator=g) - 1)
    p[:, 5] = p[:, 5] + _u(g, -10, 10, n)
    # a global rotation and scale: rotate every centre and angle by the same amount
    rot, scale = _u(g, -25, 25), _u(g, 0.8, 1.0)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    xc, yc = p[:, 3].clone(), p[:, 4].clone()
    p[:, 3], p[:, 4] = scale * (c * xc - s * yc), scale * (s * xc + c * yc)
    p[:, 1:3] = p[:, 1:3] * scale
    p[:, 5] = p[:, 5] + rot
    return _ellipses(p, X, Y)


def _convex_polygon(X, Y, g, cx, cy, r):
    """Indicator of a random convex polygon inscribed in the circle of centre (cx, cy), radius r."""
    k = _randint(g, 3, 8)
    t, _ = torch.sort(_u(g, 0, 2 * math.pi, k))
    px, py = cx + r * torch.cos(t), cy + r * torch.sin(t)
    inside = torch.ones_like(X, dtype=torch.bool)
    for i in range(k):  # counter-clockwise vertices: inside is to the left of every edge
        x1, y1, x2, y2 = float(px[i]), float(py[i]), float(px[(i + 1) % k]), float(py[(i + 1) % k])
        inside &= (x2 - x1) * (Y - y1) - (y2 - y1) * (X - x1) >= 0
    return inside.to(X.dtype)


def _family_polygons(X, Y, g):
    img, (a, b, x0, y0, _) = _body(X, Y, g)
    img = img * _u(g, 0.2, 0.6)
    for _ in range(_randint(g, 2, 6)):
        r = _u(g, 0.12, 0.45)
        cx, cy = x0 + _u(g, -0.5, 0.5) * a, y0 + _u(g, -0.5, 0.5) * b
        img = img + _u(g, -0.3, 0.6) * _convex_polygon(X, Y, g, cx, cy, r)
    return img


def _family_blobs(X, Y, g):
    if _u(g, 0, 1) < 0.5:  # smooth bumps
        img = torch.zeros_like(X)
        for _ in range(_randint(g, 5, 20)):
            w = _u(g, 0.05, 0.25)
            img = img + _u(g, 0.2, 1.0) * torch.exp(-((X - _u(g, -0.7, 0.7)) ** 2 + (Y - _u(g, -0.7, 0.7)) ** 2) / (2 * w * w))
        return img
    # level sets of a smooth field: sharp-edged blobs of two or three grey levels inside a disk
    f = _unit_field(X.shape, g, alpha=3.5, tau=_u(g, 3, 8))
    levels = torch.sigmoid((f - _u(g, -0.5, 0.8)) * 40) * _u(g, 0.4, 1.0) + torch.sigmoid((f - _u(g, 0.9, 1.8)) * 40) * _u(g, -0.3, 0.5)
    disk = ((X / _u(g, 0.7, 0.95)) ** 2 + (Y / _u(g, 0.7, 0.95)) ** 2 <= 1).to(X.dtype)
    return levels * disk + 0.15 * disk


def _rotated_box(X, Y, cx, cy, a, b, t):
    """Indicator of the rectangle of half-sides ``a``, ``b`` centred at (cx, cy), turned by ``t`` radians."""
    xr, yr = _local(X, Y, cx, cy, t)
    return (xr.abs() <= a) & (yr.abs() <= b)


def _family_dead_leaves(X, Y, g):
    img = _u(g, 0.0, 1.0) + 0.15 * _unit_field(X.shape, g)
    rough = _unit_field(X.shape, g, alpha=_u(g, 1.1, 1.6), tau=_u(g, 2, 10))
    rmin, rmax = 0.05, _u(g, 0.4, 1.0)
    for _ in range(_randint(g, 60, 200)):
        # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]: many small leaves, a few large ones
        r = (rmin ** -2 - _u(g, 0, 1) * (rmin ** -2 - rmax ** -2)) ** -0.5
        cx, cy, t = _u(g, -1.1, 1.1), _u(g, -1.1, 1.1), _u(g, 0, math.pi)
        kind = _randint(g, 0, 2)
        if kind == 0:
            e = torch.tensor([[1.0, r, r * _u(g, 0.4, 1.0), cx, cy, math.degrees(t)]])
            mask = _ellipses(e, X, Y) > 0.5
        elif kind == 1:
            mask = _convex_polygon(X, Y, g, cx, cy, r) > 0.5
        else:
            mask = _rotated_box(X, Y, cx, cy, r, r * _u(g, 0.2, 1.0), t)
        # a shade, a linear gradient across the leaf and a share of the rough texture
        shade = _u(g, 0, 1) + _u(g, -0.3, 0.3) * ((X - cx) * math.cos(t) + (Y - cy) * math.sin(t)) / r \
            + _u(g, 0, 0.15) * rough
        img = torch.where(mask, shade, img)
    return img - img.min()


def _family_textures(X, Y, g):
    f = _unit_field(X.shape, g, alpha=_u(g, 1.0, 2.0), tau=_u(g, 1, 8))
    if _u(g, 0, 1) < 0.5:  # sharpened into edges: a smooth step of random steepness
        f = torch.tanh(_u(g, 0.5, 4.0) * (f - _u(g, -0.8, 0.8)))
    if _u(g, 0, 1) < 0.4:  # oriented gratings under a smooth envelope
        env = torch.sigmoid(2 * _unit_field(X.shape, g, alpha=3.0, tau=3.0))
        for _ in range(_randint(g, 1, 3)):
            t, k = _u(g, 0, math.pi), _u(g, 3, 14) * math.pi
            f = f + _u(g, 0.3, 1.0) * env * torch.sin(k * (X * math.cos(t) + Y * math.sin(t)) + _u(g, 0, 2 * math.pi))
    f = (f - f.min()) / (f.max() - f.min()).clamp_min(1e-12)
    return _u(g, 0.0, 0.4) + f


def skimage_grey(name: str, *, why: str = "this") -> list[np.ndarray]:
    """scikit-image's sample image ``name`` (``skimage.data.<name>()``) in grey, float64 in [0, 1] (colour by
    luminance, uint8 divided by 255); a list, since a few are pairs (``stereo_motorcycle``: the left and right views,
    not its disparity).  ``why`` names the caller in the error raised without scikit-image."""
    try:
        from skimage import data
        from skimage.color import rgb2gray
    except ImportError as e:
        raise ValueError(f"{why} needs scikit-image's sample images: pip install scikit-image") from e
    imgs = getattr(data, name)()
    out = []
    for a in imgs[:2] if isinstance(imgs, tuple) else (imgs,):
        a = np.asarray(a)
        a = rgb2gray(a[..., :3]) if a.ndim == 3 else a.astype(np.float64) / (255.0 if a.dtype == np.uint8 else 1.0)
        out.append(np.ascontiguousarray(a))
    return out


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    """The grey images of :data:`PHOTO_SOURCES` in [0, 1] (float32), loaded once."""
    return tuple(torch.from_numpy(a).float() for name in PHOTO_SOURCES
                 for a in skimage_grey(name, why="the 'photos' family"))


def _family_photos(X, Y, g):
    photos = _photos()
    src = photos[_randint(g, 0, len(photos) - 1)]
    h, w = src.shape
    lo, hi = min(48, h, w), min(h, w)  # crop side in source pixels, log-uniform: close-ups to the whole image
    c = min(hi, int(round(lo * (hi / lo) ** _u(g, 0, 1))))
    i, j = _randint(g, 0, h - c), _randint(g, 0, w - c)
    crop = src[i:i + c, j:j + c]
    if _u(g, 0, 1) < 0.5:
        crop = crop.flip(1)
    crop = torch.rot90(crop, _randint(g, 0, 3))
    img = torch.nn.functional.interpolate(crop[None, None].double(), size=tuple(X.shape), mode="bilinear",
                                          antialias=c > X.shape[0], align_corners=False)[0, 0]
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    if _u(g, 0, 1) < 0.2:  # negatives too: MRI and CT images are mostly dark backgrounds with bright objects
        img = 1 - img
    return img ** _u(g, 0.7, 1.4)


_FAMILY_FUNCS = {"ellipses": _family_ellipses, "shepp_logan": _family_shepp_logan, "polygons": _family_polygons,
                 "blobs": _family_blobs, "dead_leaves": _family_dead_leaves, "textures": _family_textures,
                 "photos": _family_photos}


def random_phantom(size, family: str = "ellipses", *, complex: bool = False, generator: torch.Generator | None = None,
                   supersample: int = 2, dtype=None) -> torch.Tensor:
    """One random phantom of ``family``: real ``(H, W)`` in ``[0, 1]`` with maximum 1, or complex with ``|x|`` so.

    Parameters
    ----------
    size : int or (int, int)
    family : one of :data:`FAMILIES`
    complex : bool
        Multiply by ``exp(i phi)``, ``phi`` a smooth random phase (a random field of standard deviation up to
        ``pi/2`` plus a linear ramp).
    generator : torch.Generator, optional
        The only source of randomness (global state is untouched when given).
    dtype : default float64 (complex128 for complex phantoms).  A complex phantom needs a complex dtype (a real one
        would drop its phase: ``TypeError``).

    Examples
    --------
    >>> x = random_phantom(32, "polygons", generator=torch.Generator().manual_seed(0))
    >>> x.shape, float(x.min()) >= 0, float(x.max())
    (torch.Size([32, 32]), True, 1.0)
    """
    shape = _shape(size)
    family = validate.choice(family, "family", FAMILIES)
    complex = validate.boolean(complex, "complex")
    dtype = _phantom_dtype(dtype, complex)
    s = validate.integer(supersample, "supersample", minimum=1)
    g = generator
    X, Y = _grid(shape, s)
    img = _pool(_FAMILY_FUNCS[family](X, Y, g), s).clamp_min(0)
    texture = 1 + _u(g, 0.05, 0.25) * _unit_field(shape, g)
    img = (img * texture).clamp_min(0)
    img = img / img.max().clamp_min(1e-12)
    if complex:
        Xp, Yp = _grid(shape, 1)
        phase = _u(g, 0.1, 0.5) * math.pi * _unit_field(shape, g, alpha=4.0, tau=3.0) \
            + _u(g, -1, 1) * Xp + _u(g, -1, 1) * Yp + _u(g, -math.pi, math.pi)
        return torch.polar(img, phase).to(dtype)
    return img.to(dtype)


def _phantom_dtype(dtype, complex: bool) -> torch.dtype:
    """The dtype of a phantom: the default for its kind, or ``dtype`` checked to hold it."""
    if dtype is None:
        return torch.complex128 if complex else torch.float64
    dtype = backend._parse_dtype(dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(f"dtype must be a floating or complex dtype, got {dtype}")
    if complex and not dtype.is_complex:
        raise TypeError(f"complex=True phantoms need a complex dtype, got {dtype} (it would drop the phase)")
    return dtype


def phantom_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index`` of a data set with ``seed``: samples are independent of batching and resumes."""
    state = np.random.SeedSequence([validate.integer(seed, "seed", minimum=0), validate.integer(index, "index", minimum=0)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))


def random_phantoms(n: int, size, *, seed: int = 0, start: int = 0, complex: bool = False,
                    families: Sequence[str] = PHANTOM_FAMILIES, dtype=None) -> torch.Tensor:
    """Phantoms ``start .. start + n - 1`` of the sequence with ``seed``: a ``(n, H, W)`` tensor.

    Sample ``i`` is of family ``families[i % len(families)]`` and drawn from :func:`phantom_generator` ``(seed, i)``,
    so any sample can be regenerated on its own.

    Examples
    --------
    >>> a = random_phantoms(4, 32, seed=1)
    >>> b = random_phantoms(2, 32, seed=1, start=2)
    >>> a.shape, bool(torch.equal(a[2:], b))
    (torch.Size([4, 32, 32]), True)
    """
    n = validate.integer(n, "n", minimum=0)
    start = validate.integer(start, "start", minimum=0)
    families = _families(families)
    dtype = _phantom_dtype(dtype, validate.boolean(complex, "complex"))
    out = [random_phantom(size, families[i % len(families)], complex=complex, generator=phantom_generator(seed, i), dtype=dtype)
           for i in range(start, start + n)]
    if not out:
        H, W = _shape(size)
        return torch.zeros((0, H, W), dtype=dtype)
    return torch.stack(out)


def _families(families) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    families = tuple(families)
    if not families:
        raise ValueError("families is empty: give at least one of " + ", ".join(FAMILIES))
    for f in families:
        validate.choice(f, "families entry", FAMILIES)
    return families


def generate_phantoms(path, n: int, size=64, *, seed: int = 0, complex: bool = False, families: Sequence[str] = PHANTOM_FAMILIES,
                      progress: bool = False, part=None) -> Path:
    """Write ``n`` random phantoms to a krylon HDF5 data set (atomic; an interrupted run resumes).

    Field ``"x"``: float32 of shape ``(1, H, W)`` (magnitude phantoms) or ``(2, H, W)`` (complex phantoms as
    real and imaginary channels).  Sample ``i`` is ``random_phantoms(1, size, seed=seed, start=i, ...)``.
    ``part=(index, count)`` writes only that part of the samples to its part file (one rank of
    :func:`krylon.datasets.parts.generate_sharded`).

    Examples
    --------
    >>> import os, tempfile
    >>> from krylon.datasets import open_dataset
    >>> p = generate_phantoms(os.path.join(tempfile.mkdtemp(), "ph.h5"), 3, 16, complex=True)
    >>> tuple(open_dataset(p)[0]["x"].shape)
    (2, 16, 16)
    """
    n = validate.integer(n, "n", minimum=1)
    H, W = _shape(size)
    complex = validate.boolean(complex, "complex")
    families = _families(families)
    seed = validate.integer(seed, "seed", minimum=0)
    channels = 2 if complex else 1
    params = {"size": [H, W], "complex": complex, "families": list(families), "layout": "x: (2, H, W) real/imag" if complex
              else "x: (1, H, W) magnitude"}
    bar = None
    with DatasetWriter(path, n, {"x": ((channels, H, W), "float32")}, generator="krylon.datasets.phantoms.generate_phantoms",
                       parameters=params, seed=seed, part=part) as w:
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=w.stop - w.start, initial=w.n_written - w.start, desc="phantoms")
        for i in range(w.n_written, w.stop):
            x = random_phantoms(1, (H, W), seed=seed, start=i, complex=complex, families=families)[0]
            arr = torch.stack([x.real, x.imag]) if complex else x[None]
            w.write(i, {"x": arr.to(torch.float32).numpy()})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Path(path)

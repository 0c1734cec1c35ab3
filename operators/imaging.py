"""Imaging forward operators: multi-coil Cartesian MRI and parallel-beam CT (Radon), with exact adjoints.

:class:`MRI` is ``A = M F S``: coil sensitivities ``S``, the centred orthonormal 2-D FFT ``F``
(``ifftshift -> fft2(norm="ortho") -> fftshift``, the fastMRI/deepinv convention) and a sampling mask ``M``
(1 = sampled).  :class:`Radon` is the parallel-beam X-ray transform as an explicit sparse interpolation matrix,
so its adjoint is the matrix transpose (a dot test holds to rounding) and ``Radon.fbp`` is the classical
filtered back-projection.  Mask and coil-map generators (:func:`mri_mask`, :func:`coil_maps`) and the one way
to add measurement noise (:func:`add_noise`) live here too: noise is always explicit and seeded, never part of
an operator.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..kernels import backend, validate
from .base import LinearOperator

__all__ = ["MRI", "Radon", "ImageGradient", "mri_mask", "coil_maps", "add_noise", "noise_std", "fft2c", "ifft2c", "MASK_KINDS", "FBP_FILTERS"]

MASK_KINDS = ("uniform1d", "gaussian1d", "gaussian2d", "equispaced")
FBP_FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


# ---------------------------------------------------------------------------------------------------- MRI
def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions (k-space centre at index ``n // 2``)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (and its adjoint: the transform is unitary)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def _image_shape(shape, what: str) -> tuple[int, int]:
    """A validated 2-D image shape ``(H, W)``."""
    shape = validate.shape(shape, "shape")
    if len(shape) != 2:
        raise ValueError(f"{what} is 2-D: shape must be (H, W), got {shape}")
    return shape


def _centre_lines(n: int, center_fraction: float) -> np.ndarray:
    """Indices of the ``round(n * center_fraction)`` lines around the k-space centre ``n // 2``."""
    nc = int(round(n * center_fraction))
    start = n // 2 - nc // 2
    return np.arange(start, start + nc)


def mri_mask(shape: Sequence[int], kind: str = "uniform1d", acceleration: float = 4, center_fraction: float = 0.08,
             *, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A Cartesian k-space sampling mask (1 = sampled) of shape ``(H, W)``, in the centred layout of :func:`fft2c`.

    Parameters
    ----------
    shape : (int, int)
        Image (and k-space) size ``(H, W)``.
    kind : {"uniform1d", "gaussian1d", "gaussian2d", "equispaced"}
        ``uniform1d``: whole phase-encode lines (columns, the last axis) drawn uniformly at random;
        ``gaussian1d``: lines drawn without replacement with a Gaussian density around the centre (std ``W/4``);
        ``gaussian2d``: single k-space points with a 2-D Gaussian density (std a quarter of each side);
        ``equispaced``: lines at equal spacing over the non-centre lines (deterministic).
    acceleration : float
        ``R >= 1``: ``round(W / R)`` lines (``round(H W / R)`` points for ``gaussian2d``) are sampled in all,
        the fully sampled centre included, so the sampled fraction is ``1/R`` up to rounding.
    center_fraction : float
        Fraction of lines (for ``gaussian2d``: of each side, a centred rectangle) always sampled; in ``[0, 1/R]``.
    seed : int
        Seeds the random kinds (a private ``numpy`` generator; global state is untouched).

    Examples
    --------
    >>> m = mri_mask((64, 64), kind="uniform1d", acceleration=4, center_fraction=0.08, seed=0)
    >>> m.shape, int(m[0].sum()), bool(m[:, 30:34].all())
    (torch.Size([64, 64]), 16, True)
    """
    H, W = _image_shape(shape, "mri_mask")
    kind = validate.choice(kind, "kind", MASK_KINDS)
    R = validate.real_number(acceleration, "acceleration", minimum=1.0)
    cf = validate.real_number(center_fraction, "center_fraction", minimum=0.0)
    if cf > 1.0 / R + 1e-12:
        raise ValueError(f"center_fraction={cf} samples more than the 1/acceleration = {1 / R:.4g} of k-space the mask may hold")
    seed = validate.integer(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    if kind == "gaussian2d":
        mask = np.zeros((H, W), dtype=bool)
        rows, cols = _centre_lines(H, cf), _centre_lines(W, cf)
        mask[np.ix_(rows, cols)] = True
        n_rest = int(round(H * W / R)) - int(mask.sum())
        if n_rest > 0:
            ky, kx = np.meshgrid(np.arange(H) - H // 2, np.arange(W) - W // 2, indexing="ij")
            p = np.exp(-0.5 * ((ky / (H / 4)) ** 2 + (kx / (W / 4)) ** 2))
            p[mask] = 0.0
            idx = rng.choice(H * W, size=n_rest, replace=False, p=(p / p.sum()).ravel())
            mask.ravel()[idx] = True
    else:
        lines = np.zeros(W, dtype=bool)
        lines[_centre_lines(W, cf)] = True
        rest = np.flatnonzero(~lines)
        n_rest = min(max(int(round(W / R)) - int(lines.sum()), 0), rest.size)
        if kind == "uniform1d":
            chosen = rng.choice(rest, size=n_rest, replace=False)
        elif kind == "gaussian1d":
            p = np.exp(-0.5 * ((rest - W // 2) / (W / 4)) ** 2)
            chosen = rng.choice(rest, size=n_rest, replace=False, p=p / p.sum())
        else:  # equispaced over the lines outside the centre, so the total is exactly round(W / R)
            chosen = rest[np.round(np.linspace(0, rest.size - 1, n_rest)).astype(int)] if n_rest else rest[:0]
        lines[chosen] = True
        mask = np.broadcast_to(lines, (H, W))
    return torch.as_tensor(np.ascontiguousarray(mask), device=backend.resolve_device(device)).to(dtype)


def coil_maps(shape: Sequence[int], n_coils: int = 4, *, dtype: torch.dtype = torch.complex64, device=None) -> torch.Tensor:
    """Smooth complex coil sensitivities of shape ``(n_coils, H, W)`` with ``sum_c |S_c|^2 = 1`` at every pixel.

    Coil ``c`` sits on a circle of radius 1.5 (the image spans ``[-1, 1]^2``) at angle ``2 pi c / n_coils``; its
    magnitude decays as a Gaussian of the distance (width 1.2) and its phase is a smooth linear ramp plus a
    coil offset.  Deterministic: the same arguments give the same maps.

    Examples
    --------
    >>> S = coil_maps((32, 32), n_coils=4)
    >>> S.shape, bool(torch.allclose((S.abs() ** 2).sum(0), torch.ones(32, 32)))
    (torch.Size([4, 32, 32]), True)
    """
    H, W = _image_shape(shape, "coil_maps")
    nc = validate.integer(n_coils, "n_coils", minimum=1)
    dtype = backend._parse_dtype(dtype)
    if dtype is None or not dtype.is_complex:
        raise TypeError(f"coil maps are complex: dtype must be a complex dtype, got {dtype}")
    y, x = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64), torch.linspace(-1, 1, W, dtype=torch.float64), indexing="ij")
    a = 2 * math.pi * torch.arange(nc, dtype=torch.float64) / nc
    cx, cy = (1.5 * torch.cos(a))[:, None, None], (1.5 * torch.sin(a))[:, None, None]
    mag = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 1.2 ** 2))
    phase = a[:, None, None] + 0.5 * (torch.cos(a)[:, None, None] * x + torch.sin(a)[:, None, None] * y)
    S = torch.polar(mag, phase)
    S = S / torch.sqrt((S.abs() ** 2).sum(0, keepdim=True))
    return S.to(dtype=dtype, device=backend.resolve_device(device))


class MRI(LinearOperator):
    """Cartesian (multi-coil) MRI: ``A x = M F (S x)``; single coil (``coil_maps=None``): ``A x = M F x``.

    Parameters
    ----------
    mask : tensor of shape (H, W)
        Sampling mask in the centred k-space layout, 1 = sampled (0/1 values; e.g. :func:`mri_mask`).
    coil_maps : complex tensor of shape (C, H, W), optional
        Coil sensitivities (e.g. :func:`coil_maps`).  Not renormalised: ``A^H A = S^H F^H M F S`` is what you give.
    dtype : complex dtype, optional
        Working precision (default: that of ``coil_maps``, else the complex type of a floating ``mask``, else
        complex64).  Inputs must match its precision.

    Notes
    -----
    Images are complex ``(*batch, H, W)``; a real image is accepted and treated as complex.  k-space is complex
    ``(*batch, C, H, W)`` (multi-coil) or ``(*batch, H, W)`` (single coil); a real k-space raises ``TypeError``.
    The adjoint is ``A^H y = sum_c conj(S_c) F^H (M y_c)``, so ``A.H @ A`` is tagged symmetric and positive
    semidefinite (what CG requires) and ``A^H y`` is the zero-filled reconstruction.  Mask and maps are buffers:
    ``.to(device)`` moves them, ``state_dict``/``load_state_dict`` carry them, and edits to them (in place or by
    loading) take effect at the next application.

    Examples
    --------
    >>> A = MRI(mri_mask((32, 32), acceleration=4, seed=0), coil_maps((32, 32), n_coils=4))
    >>> x = torch.randn(2, 32, 32, dtype=torch.complex64)
    >>> A.matvec(x).shape, A.rmatvec(A.matvec(x)).shape
    (torch.Size([2, 4, 32, 32]), torch.Size([2, 32, 32]))
    """

    def __init__(self, mask: torch.Tensor, coil_maps: torch.Tensor | None = None, *, dtype: torch.dtype | None = None):
        if not isinstance(mask, torch.Tensor):
            mask = backend.as_tensor(mask, name="mask", promote=False)
        if mask.dim() != 2:
            raise ValueError(f"mask must be a 2-D (H, W) tensor, got shape {tuple(mask.shape)}")
        if mask.is_complex():
            raise TypeError(f"mask must be real (0/1), got dtype {mask.dtype}")
        if coil_maps is not None:
            if not isinstance(coil_maps, torch.Tensor):
                coil_maps = backend.as_tensor(coil_maps, name="coil_maps", promote=False)
            if not coil_maps.is_complex():
                raise TypeError(f"coil_maps must be complex (C, H, W), got dtype {coil_maps.dtype}")
            if coil_maps.dim() != 3 or tuple(coil_maps.shape[-2:]) != tuple(mask.shape):
                raise ValueError(f"coil_maps of shape {tuple(coil_maps.shape)} do not match the mask: "
                                 f"expected (n_coils, {mask.shape[0]}, {mask.shape[1]})")
        dtype = backend._parse_dtype(dtype) or (coil_maps.dtype if coil_maps is not None else
                                                backend.complex_dtype(mask.dtype) if mask.is_floating_point() else torch.complex64)
        if not dtype.is_complex:
            raise TypeError(f"MRI works on complex images: dtype must be complex, got {dtype}")
        rdt = backend.real_dtype(dtype)
        m = mask.detach().to(rdt)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must hold only 0 (not sampled) and 1 (sampled)")
        shape = tuple(mask.shape)
        shape_out = shape if coil_maps is None else (coil_maps.shape[0],) + shape
        super().__init__(shape, shape_out)
        self.register_buffer("mask", m)
        # maps kept as a real (C, H, W, 2) view so Module.to(float64) keeps them complex at the new precision
        maps = None if coil_maps is None else coil_maps.detach().to(dtype=dtype, device=m.device)
        self.register_buffer("_maps", None if maps is None else torch.view_as_real(maps).clone())
        # For even H and W the centring shifts are modulations: fft2c(x) = s c * fft2(c * x) with the checkerboard
        # c = (-1)^(i+j) and s = (-1)^(H/2 + W/2).  Folding c into the maps and s c into the mask removes every
        # shift (a copy of the whole coil stack each) from the hot loop; odd sizes keep the shifts.
        self._modulated = shape[0] % 2 == 0 and shape[1] % 2 == 0
        self._folded_cache = None

    def _apply(self, fn, recurse=True):
        # Module.to(complex128) would turn the real-stored mask and maps complex: keep them real at its precision
        out = super()._apply(fn, recurse)
        for name in ("mask", "_maps"):
            t = getattr(self, name, None)
            if t is not None and t.is_complex():
                setattr(self, name, t.real.contiguous())
        return out

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s c M, c S)`` (or ``c`` for a single coil) for even sizes, derived from the current ``mask`` and maps.

        Cached under the buffers' identity, storage, dtype, device and version counter, so ``load_state_dict``,
        ``.to()``, reassignment and in-place edits (``A.mask.zero_()``) are all seen; never saved.
        """
        m, maps = self.mask, self._maps
        key = tuple(None if t is None else (id(t), t.data_ptr(), t.dtype, t.device, _version(t)) for t in (m, maps))
        cacheable = all(k is None or k[-1] is not None for k in key)
        if cacheable and self._folded_cache is not None and self._folded_cache[0] == key:
            return self._folded_cache[1]
        H, W = m.shape
        i, j = torch.arange(H, device=m.device)[:, None], torch.arange(W, device=m.device)[None, :]
        c = (1 - 2 * ((i + j) % 2)).to(m.dtype)
        sign = -1.0 if (H // 2 + W // 2) % 2 else 1.0
        with torch.no_grad():
            kmask = sign * c * m
            xmod = c if maps is None else torch.view_as_complex(maps) * c
        self._folded_cache = (key, (kmask, xmod)) if cacheable else None
        return kmask, xmod

    @property
    def n_coils(self) -> int:
        """Number of coils (1 for a single-coil operator)."""
        return 1 if self._maps is None else self._maps.shape[0]

    @property
    def coil_maps(self) -> torch.Tensor | None:
        """The complex coil sensitivities ``(C, H, W)``, or None for a single coil."""
        return None if self._maps is None else torch.view_as_complex(self._maps)

    @property
    def dtype(self) -> torch.dtype:
        return backend.complex_dtype(self.mask.dtype)

    @property
    def measured(self) -> torch.Tensor:
        """Which entries of ``A x`` are measurements: the sampled k-space, a bool ``(H, W)`` tensor that broadcasts
        over the coils (the ``support`` to give :func:`add_noise` and :func:`noise_std`)."""
        return self.mask != 0

    @property
    def acceleration(self) -> float:
        """``H W / (number of sampled k-space points)``."""
        return self.mask.numel() / max(float(self.mask.sum()), 1.0)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        if isinstance(y, torch.Tensor) and not y.is_complex():
            raise TypeError(f"MRI.rmatvec: k-space must be complex, got dtype {y.dtype} (use torch.view_as_complex for (..., 2) real pairs)")
        return super().rmatvec(y)

    def _matvec(self, x):
        x = x.to(self.dtype)
        if self._modulated:
            kmask, xm = self._folded()
            x = x.unsqueeze(-3) * xm if self._maps is not None else x * xm
            return torch.fft.fft2(x, norm="ortho") * kmask
        S = self.coil_maps
        if S is not None:
            x = x.unsqueeze(-3) * S
        return fft2c(x) * self.mask

    def _rmatvec(self, y):
        if not y.is_complex():
            raise TypeError(f"MRI adjoint: k-space must be complex, got dtype {y.dtype}")
        if self._modulated:
            kmask, xm = self._folded()
            x = torch.fft.ifft2(y * kmask, norm="ortho")
            return (x * xm.conj()).sum(-3) if self._maps is not None else x * xm
        x = ifft2c(y * self.mask)
        S = self.coil_maps
        if S is not None:
            x = (x * S.conj()).sum(-3)
        return x

    def extra_repr(self) -> str:
        return f"shape={self.shape_in}, n_coils={self.n_coils}, acceleration={self.acceleration:.2f}"


def _version(t: torch.Tensor):
    """``t``'s in-place version counter, or None for an inference tensor (which has none: never cached)."""
    try:
        return t._version
    except RuntimeError:
        return None


# ---------------------------------------------------------------------------------------------------- CT
def _radon_matrix(shape, angles: torch.Tensor, circle: bool, chunk: int = 16):
    """The parallel-beam projection and its transpose as sparse CSR matrices (float64), and the detector count.

    Geometry (that of ``skimage.transform.radon``): the image is rotated about pixel ``(H // 2, W // 2)`` and
    summed along rows with bilinear interpolation on a unit grid of ``P`` rays x ``P`` samples, ``P`` the detector
    count (``ceil(sqrt(2) max(H, W))``, or ``H`` with ``circle=True``).  Sample ``s`` of ray ``t`` (both centred at
    ``P // 2``) at angle ``a`` lies at ``col = W//2 + t cos a + s sin a``, ``row = H//2 - t sin a + s cos a``.
    Entries are keyed ``ray * H W + pixel``; merging repeated keys per block of angles keeps every key sorted,
    so the CSR arrays come without a global sort (the transpose needs one).
    """
    H, W = shape
    n_in = H * W
    P = H if circle else int(math.ceil(math.sqrt(2) * max(H, W)))
    n_out = angles.numel() * P
    u = torch.arange(P, dtype=torch.float64) - P // 2
    t, s = u[:, None], u[None, :]  # (detector, sample)
    keys, vals = [], []
    for a0 in range(0, angles.numel(), chunk):
        a = angles[a0:a0 + chunk, None, None]
        c, sn = torch.cos(a), torch.sin(a)
        col = W // 2 + c * t + sn * s
        row = H // 2 - sn * t + c * s
        r0, c0 = torch.floor(row), torch.floor(col)
        fr, fc = row - r0, col - c0
        r0, c0 = r0.long(), c0.long()
        ray = (a0 + torch.arange(a.shape[0]))[:, None, None] * P + torch.arange(P)[None, :, None]
        ks, vs = [], []
        for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W) & (w > 0)
            ks.append((ray * n_in + rr * W + cc)[ok])
            vs.append(w[ok])
        k, inv = torch.unique(torch.cat(ks), return_inverse=True)  # sorted, repeated (ray, pixel) pairs summed
        keys.append(k)
        vals.append(torch.zeros(k.numel(), dtype=torch.float64).index_add_(0, inv, torch.cat(vs)))
    keys, vals = torch.cat(keys), torch.cat(vals)
    rows, cols = keys // n_in, keys % n_in
    crow = torch.zeros(n_out + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_out), 0)
    M = torch.sparse_csr_tensor(crow, cols, vals, (n_out, n_in), check_invariants=False)  # valid by construction
    order = torch.argsort(cols * n_out + rows)
    ccol = torch.zeros(n_in + 1, dtype=torch.int64)
    ccol[1:] = torch.cumsum(torch.bincount(cols, minlength=n_in), 0)
    MT = torch.sparse_csr_tensor(ccol, rows[order], vals[order], (n_in, n_out), check_invariants=False)
    return M, MT, P


class _SparseApply(torch.autograd.Function):
    """``M @ X`` for a sparse CSR ``M`` whose transpose ``MT`` is stored too: the backward is ``MT @ G``."""

    @staticmethod
    def forward(ctx, X, M, MT):
        ctx.MT = MT
        return torch.sparse.mm(M, X)

    @staticmethod
    def backward(ctx, G):
        return torch.sparse.mm(ctx.MT, G.contiguous()), None, None


def _apply_sparse(M, MT, x, ndim_in, shape_out):
    """Apply ``M`` to fields ``x`` of shape ``(*batch, *field)``; complex fields as their real and imaginary parts."""
    batch = x.shape[: x.dim() - ndim_in]
    X = x.reshape(-1, M.shape[1])
    if x.is_complex():
        X = torch.view_as_real(X)  # (B, n, 2)
        Y = _SparseApply.apply(X.permute(1, 0, 2).reshape(M.shape[1], -1), M, MT)
        Y = torch.view_as_complex(Y.reshape(M.shape[0], -1, 2).permute(1, 0, 2).contiguous())
    else:
        Y = _SparseApply.apply(X.transpose(0, 1).contiguous(), M, MT).transpose(0, 1)
    return Y.reshape(batch + tuple(shape_out))


class Radon(LinearOperator):
    """Parallel-beam CT: line integrals of a ``(*batch, H, W)`` image at any set of angles.

    Parameters
    ----------
    shape : (int, int)
        Image size ``(H, W)``.
    angles : 1-D tensor or sequence of float, optional
        Projection angles in radians, within ``[-2 pi, 2 pi]`` (larger values are refused: degrees by mistake;
        default: 180 angles uniform over ``[0, pi)``).  Sparse view: a few angles over ``[0, pi)`` (or ``[0, 2 pi)``);
        limited angle: e.g. angles over ``[0, 2 pi / 3)``, reconstructed with ``fbp(..., arc=2 * pi / 3)``.
    circle : bool
        False (default): ``ceil(sqrt(2) max(H, W))`` detectors, so every pixel is seen at every angle.
        True: ``H`` detectors for a square image assumed zero outside its inscribed circle.
    dtype, device : the real working precision and device (default float32 on the CPU).

    Notes
    -----
    The forward is an explicit sparse matrix (bilinear interpolation at unit steps along each ray) applied
    matrix-free to the batch, and ``rmatvec`` is its exact transpose.  The geometry and scaling are those of
    ``skimage.transform.radon(image, theta=degrees(angles), circle=circle)``:
    ``R.matvec(x)[..., i, :] == radon(x)[:, i]`` to rounding (the rotation centre is pixel ``(H//2, W//2)``,
    detector ``j`` sits at offset ``j - P//2``, one unit per pixel).  Complex images are projected part by part.
    The matrix and its transpose are built once (about ``4 P^2`` entries per angle at most).

    Examples
    --------
    >>> R = Radon((32, 32), angles=torch.linspace(0, math.pi, 9)[:-1])
    >>> R.matvec(torch.ones(32, 32)).shape
    torch.Size([8, 46])
    """

    def __init__(self, shape: Sequence[int], angles=None, *, circle: bool = False, dtype: torch.dtype = torch.float32, device=None):
        shape = validate.shape(shape, "shape")
        if len(shape) != 2:
            raise ValueError(f"Radon is 2-D: shape must be (H, W), got {shape}")
        circle = validate.boolean(circle, "circle")
        if circle and shape[0] != shape[1]:
            raise ValueError(f"circle=True needs a square image, got shape {shape}")
        dtype = backend._parse_dtype(dtype)
        if dtype is None or dtype.is_complex or not dtype.is_floating_point:
            raise TypeError(f"Radon's dtype is its real working precision, got {dtype}")
        if angles is None:
            angles = torch.arange(180, dtype=torch.float64) * math.pi / 180
        angles = torch.as_tensor(angles.tolist() if isinstance(angles, torch.Tensor) else angles, dtype=torch.float64)
        if angles.dim() != 1 or angles.numel() == 0:
            raise ValueError(f"angles must be a non-empty 1-D sequence of radians, got shape {tuple(angles.shape)}")
        validate.finite(angles, "angles")
        if float(angles.abs().max()) > 2 * math.pi + 1e-9:
            raise ValueError(f"angles are in radians, within [-2 pi, 2 pi]; got values up to {float(angles.abs().max()):g} "
                             "(degrees? convert with numpy.deg2rad)")
        M, MT, P = _radon_matrix(shape, angles, circle)
        dev = backend.resolve_device(device)
        super().__init__(shape, (angles.numel(), P))
        self.circle = circle
        self.angles = angles  # geometry metadata (float64, CPU); a buffer would make composite operators report float64
        # derived from (shape, angles, circle): rebuilt, never saved
        # the CSR arrays as plain buffers (a sparse tensor cannot be deep-copied or pickled; .to() converts
        # the values and leaves the indices): the sparse views are rebuilt per application, which copies nothing
        for name, mat in (("_M", M), ("_MT", MT)):
            # int32 indices: a third less memory traffic in the (memory-bound) products, ~30% faster on a CPU
            idx = torch.int32 if mat.values().numel() < 2 ** 31 - 1 else torch.int64
            self.register_buffer(name + "_crow", mat.crow_indices().to(device=dev, dtype=idx), persistent=False)
            self.register_buffer(name + "_col", mat.col_indices().to(device=dev, dtype=idx), persistent=False)
            self.register_buffer(name + "_val", mat.values().to(dtype=dtype, device=dev), persistent=False)

    def _csr(self, name: str, size) -> torch.Tensor:
        t = getattr(self, name + "_crow"), getattr(self, name + "_col"), getattr(self, name + "_val")
        return torch.sparse_csr_tensor(*t, size, check_invariants=False)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward matrix and its transpose as sparse CSR tensors (``(n_angles P, H W)`` and its transpose)."""
        n_out, n_in = math.prod(self.shape_out), math.prod(self.shape_in)
        return self._csr("_M", (n_out, n_in)), self._csr("_MT", (n_in, n_out))

    @property
    def n_angles(self) -> int:
        return self.shape_out[0]

    @property
    def n_detectors(self) -> int:
        return self.shape_out[1]

    @property
    def measured(self) -> torch.Tensor:
        """Which sinogram bins are measurements: all of them, rays that miss the object too (a bool scalar that
        broadcasts; the ``support`` to give :func:`add_noise` and :func:`noise_std`)."""
        return torch.ones((), dtype=torch.bool, device=self.device)

    @property
    def dtype(self) -> torch.dtype:
        return self._M_val.dtype

    @property
    def device(self) -> torch.device:
        return self._M_val.device

    def _matvec(self, x):
        M, MT = self.matrices()
        return _apply_sparse(M, MT, x, 2, self.shape_out)

    def _rmatvec(self, y):
        M, MT = self.matrices()
        return _apply_sparse(MT, M, y, 2, self.shape_in)

    def angle_weights(self, *, arc: float | None = None) -> torch.Tensor:
        """Quadrature weights of the angles for back-projection (radians; they sum to ``pi``, or to ``arc``).

        Parallel-beam views at ``a`` and ``a + pi`` see the same lines, so angles are taken modulo ``pi`` and views
        that coincide there (within 1e-9) are one direction that shares its weight equally.  Each direction gets
        half the gaps to its two neighbours, cyclically over ``[0, pi)``: uniform views get ``pi / n``, a full
        ``[0, 2 pi)`` scan ``pi / n`` per view too, and sparse or irregular views their share of the half-circle.

        Parameters
        ----------
        arc : float, optional
            A limited-angle scan: the directions cover only an arc of this length in ``(0, pi]`` (e.g. ``2 pi / 3``
            for views over ``[0, 2 pi / 3)``).  The widest gap between directions is then the missing wedge:
            it counts as ``arc`` minus the directions' span, split between the two end views, so the weights sum
            to ``arc`` and the wedge is not filled by the end views.  Default: the views sample all of ``[0, pi)``.
        """
        if arc is not None:
            arc = validate.real_number(arc, "arc")
            if not 0 < arc <= math.pi + 1e-12:
                raise ValueError(f"arc is the angular range a limited-angle scan covers, in (0, pi]; got {arc!r}")
        a = torch.remainder(self.angles, math.pi)
        order = torch.argsort(a)
        s = a[order]
        # directions: sorted angles closer than tol are one; the last joins the first when it sits just below pi
        tol = 1e-9
        group = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((torch.diff(s) > tol).long(), 0)])
        if group[-1] > 0 and float(s[0] + math.pi - s[-1]) <= tol:
            group[group == group[-1]] = 0
        n_dir = int(group.max()) + 1
        first = torch.full((n_dir,), s.numel(), dtype=torch.long).scatter_reduce(
            0, group, torch.arange(s.numel()), reduce="amin")
        u = s[first]  # one angle per direction, ascending
        count = torch.bincount(group, minlength=n_dir).to(torch.float64)
        total = math.pi if arc is None else arc
        if n_dir == 1:
            w_dir = torch.full((1,), total, dtype=torch.float64)
        else:
            gaps = torch.diff(torch.cat([u, u[:1] + math.pi]))  # gap after each direction, cyclic
            if arc is not None:
                wedge = int(torch.argmax(gaps))
                span = math.pi - float(gaps[wedge])
                if span > arc + 1e-9:
                    raise ValueError(f"the views span {span:.6g} rad modulo pi, more than arc={arc:.6g}")
                gaps[wedge] = arc - span
            w_dir = 0.5 * (gaps + torch.roll(gaps, 1))
        w = torch.empty(s.numel(), dtype=torch.float64)
        w[order] = (w_dir / count)[group]
        return w

    def fbp(self, sinogram: torch.Tensor, *, filter: str = "ramp", arc: float | None = None) -> torch.Tensor:
        """Filtered back-projection: ``R^T (weights * (h * sinogram))`` with a ramp filter ``h``.

        Parameters
        ----------
        sinogram : tensor of shape (*batch, n_angles, n_detectors)
        filter : {"ramp", "shepp-logan", "cosine", "hamming", "hann"}
            The band-limited ramp (its exact discrete kernel ``h[0] = 1/4``, ``h[odd n] = -1/(pi n)^2``), times
            an optional window in frequency.
        arc : float, optional
            For a limited-angle scan, the arc its views cover (see :meth:`angle_weights`).

        Notes
        -----
        The sinogram is zero-padded to ``max(64, 2^ceil(log2(2 P)))`` detectors before filtering; angles are
        weighted by :meth:`angle_weights` (``pi / n`` each for uniform views), which gives the scale of
        ``skimage.transform.iradon``.  The back-projector is the exact adjoint :meth:`rmatvec`.
        """
        filter = validate.choice(filter, "filter", FBP_FILTERS)
        self._check(sinogram, self.shape_out, "fbp")
        weights = self.angle_weights(arc=arc)
        P = self.n_detectors
        n_pad = max(64, 2 ** int(math.ceil(math.log2(2 * P))))
        H = _ramp_response(n_pad, filter, torch.float64).to(device=sinogram.device)

        def filtered(s):  # the ramp is real and even: filter real and imaginary parts alike
            return torch.fft.irfft(torch.fft.rfft(s.to(torch.float64), n=n_pad, dim=-1) * H, n=n_pad, dim=-1)[..., :P]

        q = torch.complex(filtered(sinogram.real), filtered(sinogram.imag)) if sinogram.is_complex() else filtered(sinogram)
        q = q * weights.to(device=sinogram.device)[:, None]
        return self._rmatvec(q.to(sinogram.dtype))

    def extra_repr(self) -> str:
        return f"shape={self.shape_in}, n_angles={self.n_angles}, n_detectors={self.n_detectors}, circle={self.circle}"


def _ramp_response(n: int, window: str, dtype) -> torch.Tensor:
    """The band-limited ramp's frequency response on the ``n // 2 + 1`` rfft frequencies, windowed."""
    k = torch.arange(n, dtype=dtype)
    k = torch.where(k > n // 2, k - n, k)  # signed lag of each tap, circularly
    h = torch.zeros(n, dtype=dtype)
    h[k == 0] = 0.25
    odd = (k.remainder(2) == 1)
    h[odd] = -1.0 / (math.pi * k[odd]) ** 2
    Hf = torch.fft.rfft(h).real  # h is even, so its transform is real
    f = torch.fft.rfftfreq(n, dtype=dtype)  # cycles per sample in [0, 1/2]
    if window == "shepp-logan":
        w = torch.where(f == 0, torch.ones_like(f), torch.sin(math.pi * f) / (math.pi * f).clamp_min(1e-300))
    elif window == "cosine":
        w = torch.cos(math.pi * f)
    elif window == "hamming":
        w = 0.54 + 0.46 * torch.cos(2 * math.pi * f)
    elif window == "hann":
        w = 0.5 + 0.5 * torch.cos(2 * math.pi * f)
    else:
        w = torch.ones_like(f)
    return Hf * w


# ---------------------------------------------------------------------------------------------------- TV
class ImageGradient(LinearOperator):
    """Forward differences of a ``(*batch, H, W)`` image: ``(*batch, 2, H, W)`` holding ``d/drow`` and ``d/dcol``.

    ``(D x)[0, i, j] = x[i+1, j] - x[i, j]`` and ``(D x)[1, i, j] = x[i, j+1] - x[i, j]``, zero on the last row /
    column (Neumann); the adjoint is minus the matching backward-difference divergence.  Real coefficients, so
    complex images are differenced part by part.  Total variation is ``sum |D x|`` over the two components.

    Examples
    --------
    >>> D = ImageGradient((3, 3))
    >>> D.matvec(torch.arange(9.0).reshape(3, 3))[1]
    tensor([[1., 1., 0.],
            [1., 1., 0.],
            [1., 1., 0.]])
    """

    def __init__(self, shape: Sequence[int]):
        shape = validate.shape(shape, "shape")
        if len(shape) != 2:
            raise ValueError(f"ImageGradient is 2-D: shape must be (H, W), got {shape}")
        super().__init__(shape, (2,) + shape)

    def _matvec(self, x):
        pad = torch.nn.functional.pad
        dr = pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
        dc = pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
        return torch.stack([dr, dc], dim=-3)

    def _rmatvec(self, p):
        pad = torch.nn.functional.pad
        pr, pc = p[..., 0, :-1, :], p[..., 1, :, :-1]  # the last row / column of differences is identically zero
        return pad(pr, (0, 0, 1, 0)) - pad(pr, (0, 0, 0, 1)) + pad(pc, (1, 0)) - pad(pc, (0, 1))


# ---------------------------------------------------------------------------------------------------- noise
def noise_std(y: torch.Tensor, sigma: float, *, relative: bool = True, ndim: int | None = None,
              support: torch.Tensor | str | None = None) -> torch.Tensor:
    """The absolute standard deviation :func:`add_noise` gives ``y``'s noise with the same arguments, per item: a
    tensor broadcastable against ``y`` (keeping the reduced dimensions; a scalar for ``relative=False``).

    Samplers that weigh the data by the noise (``DDS.solve(noise_std=...)``) take it per image:
    ``noise_std(k, 0.03, ndim=3).flatten()`` for multi-coil k-space ``(B, C, H, W)``.

    >>> noise_std(torch.full((4,), 2.0, dtype=torch.float64), 0.1)
    tensor([0.2000], dtype=torch.float64)
    """
    return _noise_support_and_std(y, sigma, relative, ndim, support)[1]


def _noise_support_and_std(y, sigma, relative, ndim, support):
    if not isinstance(y, torch.Tensor) or not backend.is_floating(y.dtype):
        raise TypeError(f"y must be a floating or complex torch.Tensor, got {type(y).__name__}")
    sigma = validate.real_number(sigma, "sigma", minimum=0.0)
    relative = validate.boolean(relative, "relative")
    if support is None:
        support = y != 0
    elif isinstance(support, str):
        validate.choice(support, "support", ("all",))
        support = torch.ones((), dtype=torch.bool, device=y.device)
    elif not isinstance(support, torch.Tensor) or support.dtype != torch.bool:
        raise TypeError(f"support must be a bool tensor, 'all' or None, got {support!r}")
    else:
        try:
            torch.broadcast_shapes(support.shape, y.shape)
        except RuntimeError:
            raise ValueError(f"support of shape {tuple(support.shape)} does not broadcast to y's {tuple(y.shape)}") from None
        support = support.to(y.device)
    support = support.expand(y.shape)
    scale = torch.as_tensor(sigma, dtype=backend.real_dtype(y.dtype), device=y.device)
    if relative:
        if ndim is None:
            dims = tuple(range(y.dim()))
        else:
            nd = validate.integer(ndim, "ndim", minimum=1)
            if nd > y.dim():
                raise ValueError(f"ndim={nd} exceeds the dimensions of y (shape {tuple(y.shape)})")
            dims = tuple(range(y.dim() - nd, y.dim()))
        power = (y.abs() ** 2 * support).sum(dim=dims, keepdim=True)
        count = support.sum(dim=dims, keepdim=True).clamp_min(1)
        scale = scale * torch.sqrt(power / count)
    return support, scale


def add_noise(y: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None, relative: bool = True,
              ndim: int | None = None, support: torch.Tensor | str | None = None) -> torch.Tensor:
    """``y`` plus white Gaussian noise (complex Gaussian for complex ``y``) on its measured entries; a new tensor.

    Parameters
    ----------
    sigma : float
        Noise level: the standard deviation (``E|n|^2 = sigma^2`` per measured entry), absolute, or with
        ``relative=True`` as a fraction of the RMS of the measured entries of ``y``.
    generator : torch.Generator, optional
        Seeds the noise (it must live on ``y``'s device).
    ndim : int, optional
        With ``relative=True``: the RMS is taken per item over the last ``ndim`` dimensions (e.g. 3 for multi-coil
        k-space ``(*batch, C, H, W)``); default: over the whole tensor.
    support : bool tensor or "all", optional
        The measured entries, which get noise; the others stay exactly as they are.  Default ``y != 0``: k-space
        an MRI mask never samples stays zero, so noisy data stay in the range of the mask (and ``||y - A x||``
        measures only noise that was measured).  A bool tensor broadcastable to ``y`` names them explicitly;
        ``"all"`` puts noise everywhere (e.g. a CT sinogram whose zeros, rays missing the object, are measured).
        ``A.measured`` of a krylon :class:`MRI` or :class:`Radon` is the right one for its data.

    Examples
    --------
    >>> y = torch.ones(1000, dtype=torch.float64)
    >>> n = add_noise(y, 0.1, generator=torch.Generator().manual_seed(0)) - y
    >>> round(float(n.std()), 1)
    0.1
    >>> k = torch.tensor([1.0, 0.0, 2.0], dtype=torch.complex64)
    >>> bool(add_noise(k, 0.1, generator=torch.Generator().manual_seed(0))[1] == 0)
    True
    """
    support, scale = _noise_support_and_std(y, sigma, relative, ndim, support)
    # for a complex dtype torch.randn draws real and imaginary parts of variance 1/2 each: E|n|^2 = 1
    noise = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
    return y + scale * noise * support

"""DCDM training data: Ritz vectors by Lanczos, right-hand sides weighted to the low spectrum, random geometries.

Following Kaneda et al. (ICML 2023): Lanczos with full reorthogonalisation on
the training matrix gives Ritz pairs; a right-hand side is ``b = sum_i c_i v_i``
with the lowest half of the (Ritz) spectrum weighted ``low_weight`` (9) times
more, normalised to unit norm.  krylon draws a new random obstacle geometry
every ``rhs_per_geometry`` samples so one network learns many scenes.

Samples are written with :class:`~krylon.datasets.DatasetWriter`: an
interrupted generation resumes at the next sample, and every geometry is a
pure function of ``(seed, geometry index)`` so a resumed run is bit-identical.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..kernels import stencil as st
from ..operators.learned.dcdm import dirichlet_marker  # a network input: defined with the network, re-exported here
from .geometry import random_obstacles
from .hdf5 import DatasetWriter

__all__ = ["lanczos_ritz", "ritz_rhs", "scene", "dirichlet_marker", "generate", "GENERATOR"]

GENERATOR = "krylon.datasets.dcdm.generate"


def lanczos_ritz(apply, n_shape, m: int, *, generator=None, dtype=torch.float64, mask=None, tol: float = 1e-8):
    """Ritz values and vectors of a symmetric operator from ``m`` Lanczos steps with full reorthogonalisation.

    Parameters
    ----------
    apply : callable mapping a field ``n_shape`` to a field (the operator)
    m : number of Lanczos vectors
    mask : optional boolean field; the start vector is zero outside it (solid cells)

    Returns ``(values, vectors)`` sorted ascending, vectors of shape ``(k, *n_shape)``;
    Ritz values below ``tol * max`` (a null space) are dropped.
    """
    g = generator
    v = torch.randn(n_shape, generator=g, dtype=dtype)
    if mask is not None:
        v = v * mask
    v = apply(v)  # start from A * randn, as the reference code does
    V = torch.zeros((m,) + tuple(n_shape), dtype=dtype)
    alpha = torch.zeros(m, dtype=dtype)
    beta = torch.zeros(m, dtype=dtype)
    v = v / v.norm()
    k_used = m
    for j in range(m):
        V[j] = v
        w = apply(v)
        alpha[j] = torch.sum(w * v)
        flatV = V[: j + 1].reshape(j + 1, -1)
        wf = w.reshape(-1)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            wf = wf - flatV.T @ (flatV @ wf)
        b = wf.norm()
        if j + 1 < m:
            if b <= 1e-12 * max(float(alpha[: j + 1].abs().max()), 1e-300):
                k_used = j + 1
                break
            beta[j] = b
            v = (wf / b).reshape(n_shape)
    T = torch.diag(alpha[:k_used]) + torch.diag(beta[: k_used - 1], 1) + torch.diag(beta[: k_used - 1], -1)
    vals, vecs = torch.linalg.eigh(T)
    Y = (vecs.T @ V[:k_used].reshape(k_used, -1)).reshape((k_used,) + tuple(n_shape))
    keep = vals > tol * vals.abs().max()
    return vals[keep], Y[keep]


def ritz_rhs(vectors: torch.Tensor, count: int, *, generator=None, low_fraction: float = 0.5, low_weight: float = 9.0) -> torch.Tensor:
    """``count`` unit-norm right-hand sides ``sum_i c_i v_i``; the lowest ``low_fraction`` of modes get ``low_weight`` x N(0,1)."""
    k = vectors.shape[0]
    c = torch.randn(count, k, generator=generator, dtype=vectors.dtype)
    c[:, : int(math.ceil(low_fraction * k))] *= low_weight
    b = torch.einsum("ck,k...->c...", c, vectors)
    flat = b.reshape(count, -1)
    return (flat / flat.norm(dim=1, keepdim=True)).reshape(b.shape)


def smooth_rhs(count: int, shape, *, generator=None, slopes=(1.0, 5.0), offset_probability: float = 0.5,
               dtype=torch.float64) -> torch.Tensor:
    """``count`` unit-norm random fields with power-law spectra, some on top of a constant offset.

    Each field is white noise filtered by ``(1 + |k|^2)^(-s/2)`` (``k``: integer wavenumbers of the periodic
    box over the grid) with a slope ``s`` uniform in ``slopes`` -- from rough (``s ~ 1``) to very smooth
    (``s = 5``); with probability ``offset_probability`` a constant of random size (N(0, 2^2) times the
    field's RMS) is added.  These cover what Ritz combinations of a few hundred Lanczos vectors leave out:
    residuals whose energy sits in the few lowest modes with coherent signs (a constant source, a
    smooth divergence field) -- inputs a network that only saw Ritz data answers with a near-useless direction.
    """
    from ..kernels import fft

    shape = tuple(int(n) for n in shape)
    k2 = sum(k ** 2 for k in fft.wavenumber_grid(shape, [float(n) for n in shape], real=True, dtype=dtype))
    s = slopes[0] + (slopes[1] - slopes[0]) * torch.rand(count, generator=generator, dtype=dtype)
    filt = (1.0 + k2)[None] ** (-s.reshape((-1,) + (1,) * len(shape)) / 2)
    white = torch.randn((count,) + shape, generator=generator, dtype=dtype)
    dims = tuple(range(1, len(shape) + 1))
    u = torch.fft.irfftn(torch.fft.rfftn(white, dim=dims) * filt, s=shape, dim=dims)
    u = u - u.mean(dim=dims, keepdim=True)
    rms = u.pow(2).mean(dim=dims, keepdim=True).sqrt()
    use = (torch.rand(count, generator=generator, dtype=dtype) < offset_probability).to(dtype)
    c = 2.0 * torch.randn(count, generator=generator, dtype=dtype) * use
    return u + c.reshape((-1,) + (1,) * len(shape)) * rms


def scene(shape, seed: int, index: int, *, max_obstacles: int = 8, bc_choices=("dirichlet", "smoke")):
    """The geometry of training scene ``index``: an obstacle mask and boundary conditions (deterministic)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))
    count = int(torch.randint(0, max_obstacles + 1, (), generator=g))
    kind = ["boxes", "spheres", "mixed"][int(torch.randint(0, 3, (), generator=g))]
    mask = random_obstacles(shape, count, kind=kind, seed=g, min_size=0.05, max_size=0.3)
    choice = bc_choices[int(torch.randint(0, len(bc_choices), (), generator=g))]
    if choice == "smoke":  # closed walls, open top (the last axis' high side), as in a smoke simulation
        bc = [("neumann", "neumann")] * (len(shape) - 1) + [("neumann", "dirichlet")]
    else:
        bc = "dirichlet"
    return mask, bc


def generate(path, *, shape=(64, 64), n_geometries: int = 64, rhs_per_geometry: int = 16, lanczos: int = 200,
             seed: int = 0, max_obstacles: int = 8, white_fraction: float = 0.0, smooth_fraction: float = 0.0,
             progress: bool = False, part=None):
    """Generate (or resume) a DCDM training set at ``path``.

    ``white_fraction`` of each scene's right-hand sides are white noise on the fluid cells instead of Ritz
    combinations (0 = the paper's data).  The Ritz vectors of ``lanczos`` steps span a small Krylov
    subspace, and the 9x low-mode weighting leaves ~1 % of the energy to the upper half of the spectrum;
    the residuals a DCDM or flexible-PCG iteration feeds the network after its first steps are mostly
    high-frequency, which such data never shows.  ``smooth_fraction`` of them (taken after the white ones) are
    random smooth fields with power-law spectra, some with a constant offset (:func:`smooth_rhs`): Ritz
    combinations give every low mode a random sign, so a network trained on them alone fails on a coherent
    smooth source such as a constant.  The rest are Ritz combinations.

    Fields: ``b`` (unit-norm right-hand sides), ``fluid`` (mask), ``dirichlet`` (marker of cells next to a
    Dirichlet face, a network input), ``bc_dirichlet`` (per side, low/high of each axis: Dirichlet or Neumann).
    ``part=(index, count)`` writes only that part's whole geometries to its part file (one rank of
    :func:`krylon.datasets.parts.generate_sharded`).
    """
    shape = tuple(int(n) for n in shape)
    n = n_geometries * rhs_per_geometry
    fields = {"b": (shape, "float32"), "fluid": (shape, "bool"), "dirichlet": (shape, "bool"),
              "bc_dirichlet": ((2 * len(shape),), "bool")}
    params = {"shape": list(shape), "n_geometries": n_geometries, "rhs_per_geometry": rhs_per_geometry,
              "lanczos": lanczos, "max_obstacles": max_obstacles, "low_fraction": 0.5, "low_weight": 9.0,
              "white_fraction": float(white_fraction)}
    if smooth_fraction:  # recorded only when used, so data sets written before it existed still resume
        params["smooth_fraction"] = float(smooth_fraction)
    for name, v in (("white_fraction", white_fraction), ("smooth_fraction", smooth_fraction)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if white_fraction + smooth_fraction > 1.0 + 1e-12:
        raise ValueError(f"white_fraction + smooth_fraction must be <= 1, got {white_fraction} + {smooth_fraction}")
    with DatasetWriter(path, n, fields, generator=GENERATOR, parameters=params, seed=seed, part=part,
                       granule=rhs_per_geometry) as w:
        start_geo, stop_geo = w.n_written // rhs_per_geometry, w.stop // rhs_per_geometry
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop_geo - w.start // rhs_per_geometry, initial=start_geo - w.start // rhs_per_geometry,
                       desc="DCDM data (geometries)")
        for gi in range(start_geo, stop_geo):
            mask, bc = scene(shape, seed, gi, max_obstacles=max_obstacles)
            W = st.stencil_weights(shape, 1.0, bc, solid=mask)
            fluid = ~mask
            g = torch.Generator().manual_seed(int(seed) * 7919 + gi)
            vals, vecs = lanczos_ritz(lambda u: st.apply_weights(u, W) * fluid, shape, min(lanczos, int(fluid.sum())),
                                      generator=g, mask=fluid.double())
            rhs = ritz_rhs(vecs * fluid, rhs_per_geometry, generator=g)
            n_white = int(round(white_fraction * rhs_per_geometry))
            n_smooth = min(int(round(smooth_fraction * rhs_per_geometry)), rhs_per_geometry - n_white)
            unit = lambda z: z / z.reshape(len(z), -1).norm(dim=1).clamp_min(1e-300).reshape((-1,) + (1,) * len(shape))  # noqa: E731
            if n_white:
                z = torch.randn((n_white,) + shape, generator=g, dtype=rhs.dtype) * fluid
                rhs[rhs_per_geometry - n_white:] = unit(z)
            if n_smooth:
                z = smooth_rhs(n_smooth, shape, generator=g, dtype=rhs.dtype) * fluid
                rhs[rhs_per_geometry - n_white - n_smooth: rhs_per_geometry - n_white] = unit(z)
            marker = dirichlet_marker(shape, bc).bool() & fluid
            sides = np.array([side == "dirichlet" for pair in st.parse_bc(bc, len(shape)) for side in pair])
            for j in range(rhs_per_geometry):
                i = gi * rhs_per_geometry + j
                if i < w.n_written:
                    continue  # resumed mid-geometry: these are on disk already
                w.write(i, {"b": rhs[j].float().numpy(), "fluid": fluid.numpy(), "dirichlet": marker.numpy(),
                            "bc_dirichlet": sides})
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return path

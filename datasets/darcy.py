"""2-D Darcy flow data sets: ``-div(a grad u) = 1`` on the unit square, ``u = 0`` on its boundary.

The FNO data sets' problem (the same equation, coefficient law and grid layout), not their MATLAB
finite-difference solver: here the faces get harmonic means of ``a`` and the boundary nodes' ``a`` plays no part
(see below), so a solution differs from theirs for the same ``a`` by a discretisation error.

The permeability is piecewise constant, ``a = 12`` where a Gaussian random field (covariance
``(-Laplace + 9)^(-2)``: alpha 2, tau 3) is ``>= 0`` and ``3`` elsewhere.  The field is drawn periodic on the
box ``[0, 2)^2`` and restricted to ``[0, 1]^2``, so opposite sides of the square are not correlated the way a
periodic field on the unit box would make them.

Grid: ``s x s`` nodes ``x_j = j / (s - 1)`` including the boundary (the layout of the FNO files: ``u`` is
stored with its zero boundary rows).  The ``(s-2)^2`` interior unknowns are solved with krylon's CG on the
5-point :class:`~krylon.operators.Diffusion` operator (harmonic means of ``a`` on the faces between interior
nodes, ``a`` of the node itself on a face to the boundary), a batch of coefficients as one tensor, preconditioned
by the fast (DST) Poisson solve :class:`~krylon.solvers.SpectralPoisson`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..kernels import backend, validate
from ..operators import Diffusion
from ..solvers import CG, SpectralPoisson
from .hdf5 import DatasetWriter
from .navier_stokes import _sample_generator
from .random_fields import gaussian_random_field

__all__ = ["permeability", "solve_darcy", "generate", "GENERATOR"]

GENERATOR = "krylon.datasets.darcy.generate"


def permeability(seed: int, indices: Sequence[int], resolution: int, *, alpha: float = 2.0, tau: float = 3.0,
                 high: float = 12.0, low: float = 3.0) -> torch.Tensor:
    """Thresholded-GRF coefficients ``(len(indices), s, s)`` (float64, CPU) of the given samples of a data set."""
    s = validate.integer(resolution, "resolution", minimum=3)
    m = 2 * (s - 1)  # period-2 box with the unit square's spacing 1/(s-1)
    fields = [gaussian_random_field((m, m), alpha=alpha, tau=tau, lengths=2.0, generator=_sample_generator(seed, i))[:s, :s]
              for i in indices]
    g = torch.stack(fields)
    return torch.where(g >= 0, torch.full_like(g, high), torch.full_like(g, low))


def solve_darcy(a: torch.Tensor, *, rtol: float = 1e-10, maxiter: int | None = None, forcing: float = 1.0):
    """Solve ``-div(a grad u) = forcing``, ``u = 0`` on the boundary, for coefficients ``a (*batch, s, s)``.

    Returns ``(u, result)``: ``u (*batch, s, s)`` with zero boundary rows and columns, and the CG result
    (``result.converged`` per system).  The coefficient's dtype and device are the solve's.
    """
    if not isinstance(a, torch.Tensor) or a.dim() < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 3:
        raise ValueError(f"a must be a tensor (*batch, s, s) with s >= 3, got {tuple(getattr(a, 'shape', ()))}")
    validate.finite(a, "a")
    if not bool((a > 0).all()):
        raise ValueError(f"the permeability must be positive, got min {float(a.min()):.3g}")
    s = a.shape[-1]
    batch = a.shape[:-2]
    inner = a[..., 1:-1, 1:-1].reshape(-1, s - 2, s - 2)
    A = Diffusion(inner[0], spacing=1.0 / (s - 1), bc="dirichlet")
    # a batch of coefficients: the stencil weights broadcast over a leading batch axis (one operator, B systems)
    A.coefficient = inner
    b = torch.full_like(inner, float(forcing))
    # preconditioned by the fast Dirichlet Poisson solve: the coefficient's 4x contrast bounds the condition
    # number, so ~25 iterations whatever s (unpreconditioned: ~475 at s = 64, ~1000 at s = 128)
    res = CG(rtol=rtol, maxiter=maxiter, M=SpectralPoisson(A)).solve(A, b)
    u = torch.zeros(inner.shape[0], s, s, dtype=a.dtype, device=a.device)
    u[:, 1:-1, 1:-1] = res.x
    return u.reshape(*batch, s, s), res


def generate(path, n: int, *, resolution: int = 64, batch_size: int = 32, seed: int = 0, device=None,
             rtol: float = 1e-10, store_dtype: str = "float32", progress: bool = False, part=None) -> str:
    """Generate (or resume) ``n`` Darcy samples at ``path``: fields ``x`` = a ``(1, s, s)``, ``y`` = u ``(1, s, s)``.

    Sample ``i``'s coefficient is a pure function of ``(seed, i)``; batches start at multiples of ``batch_size``
    (bit-identical resumes).  The solve runs in float64 on ``device`` (``"auto"``: CUDA when present) to ``rtol``;
    a system that does not converge raises instead of writing a wrong sample.  ``part=(index, count)`` writes
    only that part's whole batches to its part file (one rank of :func:`krylon.datasets.parts.generate_sharded`).
    """
    n = validate.integer(n, "n")
    s = validate.integer(resolution, "resolution", minimum=3)
    batch_size = validate.integer(batch_size, "batch_size")
    rtol = validate.tolerance(rtol, "rtol")
    validate.choice(store_dtype, "store_dtype", ("float32", "float64"))
    dev = backend.resolve_device(device) or torch.device("cpu")
    params = {"n": n, "resolution": s, "rtol": rtol, "alpha": 2.0, "tau": 3.0, "high": 12.0, "low": 3.0,
              "forcing": 1.0, "store_dtype": store_dtype, "grid": "nodes j/(s-1) incl. boundary"}
    fields = {"x": ((1, s, s), store_dtype), "y": ((1, s, s), store_dtype)}
    with DatasetWriter(path, n, fields, generator=GENERATOR, parameters=params, seed=seed, part=part,
                       granule=batch_size) as w:
        w.f.attrs["resolution"] = s
        w.f.attrs["lengths"] = np.array([1.0, 1.0])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=w.stop - w.start, initial=w.n_written - w.start, desc=f"darcy {s}^2", unit="sample")
        for indices in w.pending_batches(batch_size):
            a = permeability(seed, indices, s).to(dev)
            u, res = solve_darcy(a, rtol=rtol)
            if not res.all_converged:
                raise RuntimeError(f"CG did not converge for samples {list(indices)}: {res.reason}")
            a_np, u_np = a.cpu().numpy().astype(store_dtype), u.cpu().numpy().astype(store_dtype)
            for j, i in enumerate(indices):
                if i >= w.n_written:
                    w.write(i, {"x": a_np[j][None], "y": u_np[j][None]})
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
    return str(path)

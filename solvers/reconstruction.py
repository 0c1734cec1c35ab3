"""Classical reconstructions for imaging inverse problems ``y = A x + noise``: the baselines DDS is measured against.

``zero_filled``  ``A^H y`` (for MRI: the inverse FFT of zero-filled k-space, coil-combined with the maps)
``cg_sense``     Tikhonov-damped least squares ``(A^H A + lam L I) x = A^H y`` by krylon's CG (CG-SENSE for MRI;
                 the same solve serves CT); ``return_result=True`` gives CG's :class:`SolveResult` (convergence)
``fbp``          filtered back-projection (:meth:`krylon.operators.Radon.fbp`)
``tv_reconstruction``  ``min 1/2 ||A x - y||^2 + lam L TV(x)`` (isotropic TV) by ADMM with warm-started CG
                 inner solves

Real images
-----------
``real=True`` (every function) solves over real images only: the normal operator ``Re(A^H A)`` and right-hand side
``Re(A^H y)``, the exact least-squares problem restricted to real ``x`` (what DDS does with a real, magnitude
prior).  Use it whenever the images are known to be real, so a classical baseline gets the same constraint as the
prior; for CT (a real operator) it changes nothing.

Regularisation weights are relative: ``L`` is the largest eigenvalue of ``A^H A`` (:func:`normal_norm`, by
power iteration), so one ``lam`` means the same for an orthonormal MRI operator (``L = 1``) and a Radon
transform (``L`` in the hundreds).  Every function takes batched measurements and returns images
``(*batch, H, W)``.
"""

from __future__ import annotations

import torch

from ..kernels import validate
from ..operators.base import IdentityOperator, LinearOperator
from ..operators.imaging import ImageGradient, Radon
from .cg import CG

__all__ = ["zero_filled", "cg_sense", "fbp", "tv_reconstruction", "normal_norm"]


def _check(A, y):
    if not isinstance(A, LinearOperator):
        raise TypeError(f"A must be a krylon LinearOperator, got {type(A).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    validate.finite(y, "y")


class _Normal(LinearOperator):
    """``c I + gamma A^H A`` on the domain of ``A``; over real images (``Re`` of the result) with ``real=True``.

    Hermitian positive semi-definite (definite when ``c > 0``): the operator of CG-SENSE, TV's ``x`` step and
    DDS's data-consistency CG.
    """

    def __init__(self, A: LinearOperator, gamma: float, c: float, real: bool):
        tags = ("symmetric", "positive_definite" if c > 0 else "positive_semidefinite")
        super().__init__(A.shape_in, dtype=None, tags=tags)
        self.A, self.gamma, self.c, self.real = A, gamma, c, real

    def _matvec(self, x):
        y = self.A.rmatvec(self.A.matvec(x))
        if self.real:
            y = y.real
        y = self.gamma * y
        return y + self.c * x if self.c else y


def _back(A: LinearOperator, y: torch.Tensor, real: bool) -> torch.Tensor:
    """``A^H y``, or its real part over real images."""
    b = A.rmatvec(y)
    return b.real if real and b.is_complex() else b


def zero_filled(A: LinearOperator, y: torch.Tensor, *, real: bool = False) -> torch.Tensor:
    """``A^H y``: the zero-filled reconstruction of MRI data (a plain back-projection for CT); ``real=True``: its
    real part (the images are known to be real)."""
    _check(A, y)
    return _back(A, y, validate.boolean(real, "real"))


def normal_norm(A: LinearOperator, *, iters: int = 30, seed: int = 0) -> float:
    """The largest eigenvalue of ``A^H A`` (``||A||_2^2``) by power iteration from a seeded random start.

    Examples
    --------
    >>> from krylon.operators import aslinearoperator
    >>> round(normal_norm(aslinearoperator(torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)))), 6)
    9.0
    """
    iters = validate.integer(iters, "iters", minimum=1)
    dtype = A.dtype or torch.float64
    # drawn on the CPU so the start (and the estimate) is the same on every device
    v = torch.randn(A.shape_in, dtype=dtype, generator=torch.Generator().manual_seed(seed)).to(A.device)
    lam = 0.0
    for _ in range(iters):
        v = v / torch.linalg.vector_norm(v)
        w = A.rmatvec(A.matvec(v))
        lam = float(torch.linalg.vector_norm(w))
        if lam == 0:
            return 0.0
        v = w
    return lam


def cg_sense(A: LinearOperator, y: torch.Tensor, *, lam: float = 1e-2, maxiter: int = 30, rtol: float = 1e-6,
             x0: torch.Tensor | None = None, L: float | None = None, real: bool = False,
             return_result: bool = False):
    """Tikhonov-damped least squares by CG on ``(A^H A + lam L I) x = A^H y`` (CG-SENSE for multi-coil MRI).

    Parameters
    ----------
    lam : float
        Damping relative to ``L = ||A^H A||`` (``lam = 0``: plain least squares, where ``maxiter`` regularises
        by early stopping).
    maxiter, rtol : CG's iteration cap and relative tolerance.
    x0 : optional start (default 0).
    L : the scale ``||A^H A||`` if already known (default: :func:`normal_norm`).
    real : bool
        Solve over real images: ``(Re(A^H A) + lam L I) x = Re(A^H y)`` (see the module notes).
    return_result : bool
        Return CG's :class:`~krylon.solvers.result.SolveResult` (``.x``, ``.converged`` per system, ``.iterations``,
        ``.info``) instead of the image alone: with ``lam = 0`` stopping at ``maxiter`` is the regulariser, with
        ``lam > 0`` a solve that did not converge is worth knowing.

    Returns
    -------
    tensor of shape (*batch, H, W), or SolveResult with ``return_result=True``

    Examples
    --------
    >>> from krylon.operators import MRI
    >>> from krylon.operators.imaging import mri_mask
    >>> A = MRI(mri_mask((16, 16), acceleration=2, seed=0))
    >>> x = torch.randn(16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    >>> cg_sense(A, A.matvec(x), lam=1e-2).shape
    torch.Size([16, 16])
    >>> res = cg_sense(A, A.matvec(x), lam=1e-2, return_result=True)
    >>> bool(res.converged.all()), res.x.shape
    (True, torch.Size([16, 16]))
    """
    _check(A, y)
    return_result = validate.boolean(return_result, "return_result")
    lam = validate.real_number(lam, "lam", minimum=0.0)
    real = validate.boolean(real, "real")
    L = normal_norm(A) if L is None else validate.real_number(L, "L", minimum=0.0)
    if real:
        N = _Normal(A, 1.0, lam * L, True)
        x0 = x0.real if x0 is not None and x0.is_complex() else x0
    else:
        N = A.adjoint() @ A
        if lam > 0:
            N = N + (lam * L) * IdentityOperator(A.shape_in)
    res = CG(rtol=rtol, maxiter=maxiter).solve(N, _back(A, y, real), x0=x0)
    return res if return_result else res.x


def fbp(R: Radon, sinogram: torch.Tensor, *, filter: str = "ramp", arc: float | None = None) -> torch.Tensor:
    """Filtered back-projection of a parallel-beam sinogram (:meth:`krylon.operators.Radon.fbp`; ``arc`` for a
    limited-angle scan)."""
    if not isinstance(R, Radon):
        raise TypeError(f"fbp needs a krylon Radon operator, got {type(R).__name__}")
    _check(R, sinogram)
    return R.fbp(sinogram, filter=filter, arc=arc)


def _shrink(z: torch.Tensor, t: float) -> torch.Tensor:
    """Isotropic soft thresholding of the gradient field ``z`` (components on axis -3), phase kept for complex."""
    mag = torch.sqrt((z.abs() ** 2).sum(dim=-3, keepdim=True))
    return z * torch.clamp(1 - t / mag.clamp_min(1e-30), min=0)


def tv_reconstruction(A: LinearOperator, y: torch.Tensor, *, lam: float = 3e-3, iters: int = 100, cg_iters: int = 5,
                      rho: float | None = None, x0: torch.Tensor | None = None, L: float | None = None,
                      real: bool = False) -> torch.Tensor:
    """Isotropic-TV regularised least squares ``min 1/2 ||A x - y||^2 + lam L sum |D x|`` by ADMM.

    ADMM on ``z = D x`` (forward differences, :class:`krylon.operators.imaging.ImageGradient`): the ``x`` step
    solves ``(A^H A + rho D^H D) x = A^H y + rho D^H (z - u)`` with ``cg_iters`` CG iterations warm-started at the
    previous ``x``; the ``z`` step is isotropic soft thresholding at ``lam L / rho``.

    Parameters
    ----------
    lam : float
        TV weight relative to ``L = ||A^H A||``.
    iters : ADMM iterations.
    rho : penalty relative to ``L`` (default ``max(10 lam, 0.05)``).
    x0 : start (default: ``cg_sense`` with the same ``lam``, 20 iterations).
    real : bool
        Over real images: ``Re(A^H A)`` and ``Re(A^H y)`` in the ``x`` step (see the module notes).

    Examples
    --------
    >>> from krylon.operators import MRI
    >>> from krylon.operators.imaging import mri_mask
    >>> A = MRI(mri_mask((16, 16), acceleration=2, seed=0))
    >>> tv_reconstruction(A, A.matvec(torch.ones(16, 16, dtype=torch.complex64)), iters=5).shape
    torch.Size([16, 16])
    """
    _check(A, y)
    if len(A.shape_in) != 2:
        raise ValueError(f"tv_reconstruction works on 2-D images; the operator takes fields of shape {A.shape_in}")
    lam = validate.real_number(lam, "lam", minimum=0.0)
    iters = validate.integer(iters, "iters", minimum=1)
    cg_iters = validate.integer(cg_iters, "cg_iters", minimum=1)
    real = validate.boolean(real, "real")
    L = normal_norm(A) if L is None else validate.real_number(L, "L", minimum=0.0)
    rho = (max(10 * lam, 0.05) if rho is None else validate.real_number(rho, "rho", minimum=0.0)) * L
    if rho <= 0:
        raise ValueError("rho must be positive (and ||A^H A|| non-zero)")
    D = ImageGradient(A.shape_in)
    K = (_Normal(A, 1.0, 0.0, True) if real else A.adjoint() @ A) + rho * (D.adjoint() @ D)
    b0 = _back(A, y, real)
    x = cg_sense(A, y, lam=lam, maxiter=20, L=L, real=real) if x0 is None else x0
    if real and x.is_complex():
        x = x.real
    z = D.matvec(x)
    u = torch.zeros_like(z)
    cg = CG(rtol=0.0, atol=0.0, maxiter=cg_iters)
    for _ in range(iters):
        x = cg.solve(K, b0 + rho * D.rmatvec(z - u), x0=x).x
        Dx = D.matvec(x)
        z = _shrink(Dx + u, lam * L / rho)
        u = u + Dx - z
    return x

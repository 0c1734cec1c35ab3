"""CGLS: conjugate gradients on the normal equations without forming them (Hestenes & Stiefel 1952)."""

from __future__ import annotations

import math

import torch

from ..kernels import linalg, validate
from ..operators.base import IdentityOperator
from .base import IterativeSolver, Problem, refused
from .cg import CG
from .driver import Driver, Step
from .result import SolveResult, Status

__all__ = ["CGLS"]


def _damp(value, name):
    return validate.real_number(value, name, minimum=0.0)


class CGLS(IterativeSolver):
    """CGLS for damped least squares ``min ||A x - b||^2 + damp^2 ||x||^2`` (any shape of ``A``).

    Equivalent to CG on the normal equations ``(A^H A + damp^2 I) x = A^H b``
    without forming them.  A system stops when the normal-equation residual
    ``s = A^H (b - A x) - damp^2 x`` satisfies ``||s|| <= max(atol, rtol ||A^H b||)``;
    ``residual_norms`` records ``||s||`` and ``extras["data_residual_norms"]`` the data
    misfit ``||b - A x||``.

    Extra parameter
    ---------------
    damp : float
        Tikhonov damping (>= 0).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import aslinearoperator
    >>> from krylon.solvers import CGLS
    >>> A = aslinearoperator(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64))
    >>> b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    >>> x_ls = torch.linalg.lstsq(A.matrix, b).solution
    >>> bool(torch.allclose(CGLS(rtol=1e-12).solve(A, b).x, x_ls))
    True
    """

    name = "CGLS"
    needs_square = False
    OPTIONS = {**IterativeSolver.OPTIONS, "damp": (0.0, _damp),
               "M": refused("CGLS does not take a preconditioner M; scale the columns of A instead")}

    def _run(self, prob: Problem, opts: dict) -> SolveResult:
        return Driver(self.name, prob, opts).run(_CGLSStep(opts["damp"] ** 2))

    def _adjoint_solve(self, prob, opts, g):
        # N = A^H A + damp^2 I is Hermitian: solve N lam = g with CG
        A, damp2 = prob.A, opts["damp"] ** 2
        if not damp2 and math.prod(A.shape_out) < math.prod(A.shape_in):
            raise ValueError("gradients of an undamped CGLS solve with fewer equations than unknowns (a minimum-norm "
                             "solution) are not supported: A^H A is singular; use damp > 0")
        N = A.adjoint() @ A
        if damp2:
            N = N + damp2 * IdentityOperator(A.shape_in)
        o = {k: opts[k] for k in ("rtol", "atol", "maxiter", "check_every", "sync_every")}
        return CG(**o).solve(N, g, differentiable=False).x

    def _implicit_residual(self, prob, x, b, opts):
        A, damp2 = prob.A, opts["damp"] ** 2
        res = A.adjoint().matvec(b - A.matvec(x))
        return res - damp2 * x if damp2 else res


class _CGLSStep(Step):
    """One CG step on the normal equations: ``q = A p``, ``x += alpha p``, ``r -= alpha q``, ``s = A^H r - damp^2 x``.

    The residual the driver tracks is ``s`` (in the domain of ``A``); ``r = b - A x`` (in its range) is
    kept alongside and its norm recorded in ``extras["data_residual_norms"]``.
    """

    def __init__(self, damp2: float):
        self.damp2 = damp2

    def _normal_residual(self, drv, r, x):
        """``A^H r - damp^2 x``: the residual of the normal equations."""
        s = drv.apply(self.AH, r)
        return s - self.damp2 * x if self.damp2 else s

    def init(self, drv, x):
        A, b = drv.A, drv.b
        self.AH = A.adjoint()
        if x is None:
            self.x, self.r = torch.zeros(drv.batch + A.shape_in, dtype=b.dtype, device=b.device), b.clone()
        else:
            self.x, self.r = x.to(b.dtype), b - drv.apply(A, x)
        self.s = self._normal_residual(drv, self.r, self.x)
        c = drv.apply(self.AH, b) if x is not None else self.s
        self.reference = drv.norm(c, drv.nd_in)  # rtol is relative to ||A^H b||
        self.data = [drv.norm(self.r, drv.nd_out)]
        return drv.norm(self.s, drv.nd_in)

    def start(self, drv):
        self.p = self.s.clone()
        self.gamma = drv.rnorm ** 2

    def step(self, drv, k):
        nd_in, nd_out = drv.nd_in, drv.nd_out
        q = drv.apply(drv.A, self.p)
        delta = drv.norm(q, nd_out) ** 2
        if self.damp2:
            delta = delta + self.damp2 * drv.norm(self.p, nd_in) ** 2
        drv.stop(drv.active & ~torch.isfinite(delta), Status.NAN)
        # q = A p = 0 with s = 0 (so p = 0) is an exact solution met between host syncs, not a breakdown
        drv.stop(drv.active & (delta <= 0) & (self.gamma != 0), Status.BREAKDOWN)
        step = drv.active & (delta > 0)
        alpha = torch.where(step, self.gamma / torch.where(step, delta, torch.ones_like(delta)), torch.zeros_like(self.gamma))
        self.x = self.x + linalg.expand(alpha, nd_in).to(self.x.dtype) * self.p
        self.r = self.r - linalg.expand(alpha, nd_out).to(self.r.dtype) * q
        self.s = self._normal_residual(drv, self.r, self.x)
        self.gamma_new = drv.norm(self.s, nd_in) ** 2
        return torch.sqrt(self.gamma_new)

    def true_residual(self, drv):
        rt = drv.b - drv.apply(drv.A, self.x)
        st = self._normal_residual(drv, rt, self.x)
        return (rt, st), drv.norm(st, drv.nd_in)

    def replace(self, drv, mask, rst, tnorm):
        rt, st = rst
        self.r = torch.where(linalg.expand(mask, drv.nd_out), rt, self.r)
        self.s = torch.where(linalg.expand(mask, drv.nd_in), st, self.s)
        self.gamma_new = torch.where(mask, tnorm ** 2, self.gamma_new)

    def advance(self, drv, k):
        active, gamma, nd_in = drv.active, self.gamma, drv.nd_in
        beta = torch.where(active & (gamma > 0), self.gamma_new / torch.where(gamma > 0, gamma, torch.ones_like(gamma)),
                           torch.zeros_like(gamma))
        self.p = torch.where(linalg.expand(active, nd_in), self.s + linalg.expand(beta, nd_in).to(self.s.dtype) * self.p, self.p)
        self.gamma = torch.where(active, self.gamma_new, gamma)
        self.data.append(drv.norm(self.r, drv.nd_out))

    def extras(self, drv, rows):
        return {"data_residual_norms": torch.stack(self.data[:rows])}

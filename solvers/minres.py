"""MINRES for symmetric (Hermitian), possibly indefinite systems (Paige & Saunders 1975)."""

from __future__ import annotations

import torch

from ..kernels import backend, linalg, validate
from .base import IterativeSolver, Problem
from .driver import Driver, Step
from .preconditioners import as_preconditioner
from .result import SolveResult, Status

__all__ = ["MINRES"]


class MINRES(IterativeSolver):
    """MINRES for symmetric (Hermitian), possibly indefinite systems (Paige & Saunders).

    A preconditioner ``M`` must be symmetric positive definite.  Convergence is
    declared on the true residual ``||b - A x||``.

    Extra parameter
    ---------------
    shift : float
        Solve ``(A - shift I) x = b`` (scipy's convention).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import aslinearoperator
    >>> from krylon.solvers import MINRES
    >>> A = aslinearoperator(torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64)), tags=("symmetric",))
    >>> res = MINRES(rtol=1e-12).solve(A, torch.ones(3, dtype=torch.float64))
    >>> [round(v, 6) for v in res.x.tolist()]
    [-0.5, 1.0, 0.333333]
    """

    name = "MINRES"
    OPTIONS = {**IterativeSolver.OPTIONS, "shift": (0.0, validate.real_number)}

    def _run(self, prob: Problem, opts: dict) -> SolveResult:
        M = as_preconditioner(opts["M"], prob.A)
        return Driver(self.name, prob, opts).run(_MINRESStep(M, opts["shift"]))

    def _implicit_residual(self, prob, x, b, opts):
        return b - _shifted(prob.A, x, opts["shift"])


def _shifted(A, v, shift):
    y = A.matvec(v)
    return y - shift * v if shift else y


class _MINRESStep(Step):
    """One Lanczos step and the QR update of the tridiagonal matrix (scipy's ``minres`` recurrences).

    The estimate ``phibar`` of a preconditioned run is ``||r||_{M^{-1}}``, scaled to ``||r||`` units at the
    start.  A failed convergence check halves the threshold below which the next check is made; a lucky
    breakdown (``beta = 0``) whose true residual is still large stops at once.
    """

    def __init__(self, M, shift: float):
        self.M, self.shift = M, shift

    def init(self, drv, x):
        self.x, self.r1 = drv.initial(x, lambda v: _shifted(drv.A, v, self.shift))
        return drv.norm(self.r1)

    def start(self, drv):
        nd, r1 = drv.nd_in, self.r1
        rdt = backend.real_dtype(drv.b.dtype)
        self.y = self.M(r1) if self.M is not None else r1
        beta1sq = drv.dot(r1, self.y, nd).real
        drv.stop(drv.active & (beta1sq < 0), Status.PRECONDITIONER)
        beta1 = torch.sqrt(torch.clamp(beta1sq, min=0))
        zero = torch.zeros(drv.batch, dtype=rdt, device=drv.b.device)
        self.oldb, self.beta = zero, beta1
        self.dbar, self.epsln, self.phibar = zero, zero, beta1
        self.cs, self.sn = -torch.ones_like(zero), zero
        self.r2 = r1.clone()
        self.w = torch.zeros_like(drv.b)
        self.w2 = torch.zeros_like(drv.b)
        self.verify_below = drv.tol.clone()
        self.scale = torch.where(beta1 > 0, drv.rnorm / self._safe(beta1), torch.ones_like(beta1))

    @staticmethod
    def _safe(t):
        return torch.where(t == 0, torch.ones_like(t), t)

    def step(self, drv, k):
        nd, safe = drv.nd_in, self._safe
        E = lambda t: linalg.expand(t, nd)  # noqa: E731
        y, beta = self.y, self.beta
        v = y * E(1.0 / safe(beta)).to(y.dtype)
        y = self._op(drv, v)
        if k >= 2:
            y = y - E(beta / safe(self.oldb)).to(y.dtype) * self.r1
        alfa = drv.dot(v, y, nd).real
        y = y - E(alfa / safe(beta)).to(y.dtype) * self.r2
        self.r1, self.r2 = self.r2, y
        self.y = self.M(y) if self.M is not None else y
        self.oldb = beta
        bsq = drv.dot(self.r2, self.y, nd).real
        drv.stop(drv.active & (bsq < 0), Status.PRECONDITIONER)
        self.beta = beta = torch.sqrt(torch.clamp(bsq, min=0))
        cs, sn, dbar = self.cs, self.sn, self.dbar
        oldeps = self.epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        self.epsln = sn * beta
        self.dbar = -cs * beta
        gamma = torch.clamp(torch.sqrt(gbar ** 2 + beta ** 2), min=torch.finfo(beta.dtype).tiny)
        cs_new, sn_new = gbar / gamma, beta / gamma
        phi = cs_new * self.phibar
        w1, self.w2 = self.w2, self.w
        self.w = (v - E(oldeps).to(v.dtype) * w1 - E(delta).to(v.dtype) * self.w2) * E(1.0 / gamma).to(v.dtype)
        active = drv.active
        self.x = self.x + E(torch.where(active, phi, torch.zeros_like(phi))).to(self.x.dtype) * self.w
        self.cs = torch.where(active, cs_new, cs)
        self.sn = torch.where(active, sn_new, sn)
        self.phibar = torch.where(active, sn_new * self.phibar, self.phibar)
        self.est = self.phibar * self.scale
        return self.est

    def candidates(self, drv):
        return (self.est <= self.verify_below) | (self.beta == 0)

    def give_up(self, drv, failed):
        # a lucky breakdown whose true residual is still large: the Krylov space holds nothing better
        return self.beta == 0

    def _op(self, drv, v):
        """``(A - shift I) v``, counted."""
        drv.n_matvec += 1
        return _shifted(drv.A, v, self.shift)

    def true_residual(self, drv):
        rt = drv.b - self._op(drv, self.x)
        return rt, drv.norm(rt)

    def replace(self, drv, mask, rt, tnorm):
        # MINRES's recurrences cannot take a new residual: check again only once the estimate has halved
        self.verify_below = torch.where(mask, 0.5 * self.est, self.verify_below)

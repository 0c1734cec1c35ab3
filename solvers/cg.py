"""Preconditioned conjugate gradients (Hestenes--Stiefel), flexible variant (Notay 2000)."""

from __future__ import annotations

import torch

from ..kernels import linalg, validate
from .base import IterativeSolver, Problem
from .driver import Driver, Step
from .preconditioners import as_preconditioner
from .result import SolveResult, Status

__all__ = ["CG"]


class CG(IterativeSolver):
    """Preconditioned conjugate gradients for symmetric (Hermitian) positive (semi-)definite systems.

    CG checks ``p^H A p > 0`` every iteration and stops a system with status ``indefinite`` otherwise.
    Operators tagged ``negative_definite`` or ``indefinite`` are refused up front; an untagged one is
    accepted (scipy's behaviour) unless ``strict=True``.

    Extra parameters
    ----------------
    strict : bool
        Refuse operators not tagged symmetric (``ValueError``) up front.
    flexible : bool
        Flexible CG (Notay 2000): ``beta = z_new^H (r_new - r_old) / z_old^H r_old`` (Polak--Ribiere) instead
        of ``z_new^H r_new / z_old^H r_old``, so that a preconditioner that changes from one iteration to the
        next -- a neural network, an inner iterative solve -- does not destroy convergence.  Costs one vector
        copy and one inner product per iteration; identical to plain PCG for a fixed linear ``M``.

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Laplacian
    >>> from krylon.solvers import CG
    >>> A = Laplacian((32, 32))
    >>> b = torch.ones(32, 32, dtype=torch.float64)
    >>> res = CG(rtol=1e-10).solve(A, b)
    >>> bool(res.converged), bool(torch.linalg.norm(b - A @ res.x) <= 1e-10 * torch.linalg.norm(b))
    (True, True)
    """

    name = "CG"
    OPTIONS = {**IterativeSolver.OPTIONS, "strict": (False, validate.boolean), "flexible": (False, validate.boolean)}

    def _run(self, prob: Problem, opts: dict) -> SolveResult:
        A = prob.A
        bad_tags = A.tags & {"negative_definite", "indefinite"}
        if bad_tags:
            raise ValueError(f"CG needs a positive (semi-)definite operator, but {type(A).__name__} is tagged {sorted(bad_tags)}; "
                             "use MINRES for symmetric indefinite systems")
        if opts["strict"] and not A.is_symmetric:
            raise ValueError(f"CG(strict=True) needs an operator tagged 'symmetric'; {type(A).__name__} has tags {sorted(A.tags)}")
        M = as_preconditioner(opts["M"], A)
        return Driver(self.name, prob, opts).run(_CGStep(M, opts["flexible"] and M is not None))


class _CGStep(Step):
    """One CG iteration: ``alpha = r^H z / p^H A p``, ``x += alpha p``, ``r -= alpha A p``, ``p = z + beta p``.

    On the fast path ``x += alpha p`` is deferred (``self.behind``) to the direction update, which reads
    ``p`` anyway (:func:`~krylon.kernels.linalg.advance_`): one pass over the fields less per iteration.
    Anything that needs ``x`` first catches it up (:meth:`flush`).
    """

    fast = replaces = freezes = True

    def __init__(self, M, flexible: bool):
        self.M, self.flexible = M, flexible
        self.behind = None

    def init(self, drv, x):
        self.nd = drv.nd_in
        self.x, self.r = drv.initial(x)  # dense row-major whatever b's layout: the fused CPU kernels need it
        return drv.norm(self.r)

    def start(self, drv):
        nd, r = drv.nd_in, self.r
        self.rr = drv.rnorm ** 2
        z = self.M(r) if self.M is not None else r
        self.rz = drv.dot(r, z, nd).real if self.M is not None else self.rr
        self.p = z.clone(memory_format=torch.contiguous_format)
        self.Ap = torch.empty_like(self.p)  # reused every iteration: no allocation in the hot loop
        self.r_old = torch.empty_like(r) if self.flexible else None

    def step(self, drv, k):
        nd, x = drv.nd_in, self.x
        drv.n_matvec += 1
        self.Ap, pAp = drv.A.matvec_dot(self.p, out=self.Ap)  # one fused pass where the operator has one
        pAp = drv.total(pAp)  # the fused kernels' inner products are partial sums on distributed fields
        if self.r_old is not None:
            self.r_old.copy_(self.r)
        if drv.fast:
            if bool((pAp > 0).all()):
                alpha = self.rz / pAp
                self.behind = alpha.to(x.dtype) if x.is_complex() else alpha
                self.rr = drv.total(linalg.residual_update_(self.r, self.Ap, self.behind, nd))
                return torch.sqrt(self.rr)
            drv.leave_fast()
        drv.stop(drv.active & ~torch.isfinite(pAp), Status.NAN)
        # p^H A p <= 0 with a nonzero residual is a breakdown; with r = 0 (so p = 0) the system is solved
        # exactly and the convergence check confirms it
        drv.stop(drv.active & (pAp <= 0) & (self.rz != 0), Status.INDEFINITE)
        # frozen systems get alpha = 0, so their x and r do not change
        step = drv.active & (pAp > 0)
        alpha = torch.where(step, self.rz / torch.where(step, pAp, 1.0), torch.zeros_like(self.rz))
        self.x, self.r, rr = linalg.cg_step(x, self.r, self.p, self.Ap, alpha.to(x.dtype) if x.is_complex() else alpha, nd)
        self.rr = drv.total(rr)
        return torch.sqrt(self.rr)

    def flush(self):
        """Catch up the deferred ``x += alpha p``."""
        if self.behind is not None:
            linalg.axpy_(self.x, self.behind, self.p, self.nd)
            self.behind = None

    def true_residual(self, drv):
        self.flush()
        return super().true_residual(drv)

    def replace(self, drv, mask, rt, tnorm):
        super().replace(drv, mask, rt, tnorm)
        self.rr = torch.where(mask, tnorm ** 2, self.rr)

    def refresh(self, drv):
        self.rr = super().refresh(drv) ** 2
        return torch.sqrt(self.rr)

    def advance(self, drv, k):
        nd, r = drv.nd_in, self.r
        if self.M is not None:
            z = self.M(r)
            rz_new = drv.dot(r, z, nd).real
            if drv.fast and not bool((rz_new > 0).all()):
                drv.leave_fast()
            if not drv.fast:
                drv.stop(drv.active & ~(rz_new > 0) & (drv.rnorm > 0), Status.PRECONDITIONER)
        else:
            z, rz_new = r, self.rr
        num = rz_new - drv.dot(self.r_old, z, nd).real if self.flexible else rz_new
        if drv.fast:
            if self.behind is not None:
                linalg.advance_(self.x, self.p, z, self.behind, num / self.rz, nd)
                self.behind = None
            else:
                linalg.xpby_(self.p, z, num / self.rz, nd)
            self.rz = rz_new
            return
        self.flush()
        rz, active = self.rz, drv.active
        beta = torch.where(active & (rz != 0), num / torch.where(rz == 0, 1.0, rz), torch.zeros_like(rz))
        # p = z + beta p in place; frozen systems have alpha = 0, so p's value does not matter for them
        # (unless it is not finite: :meth:`freeze`)
        linalg.xpby_(self.p, z, beta, nd)
        self.rz = torch.where(active, rz_new, rz)

    def freeze(self, drv, broken):
        # 0 * NaN = NaN would reach x: a system stopped by a NaN keeps a zero direction, so its x stays
        # the last finite iterate
        self.p.masked_fill_(linalg.expand(broken, drv.nd_in), 0)

    def solution(self):
        self.flush()
        return self.x

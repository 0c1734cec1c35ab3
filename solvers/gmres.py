"""Restarted GMRES(m) with right preconditioning (Saad & Schultz 1986)."""

from __future__ import annotations

import torch

from ..kernels import backend, linalg, validate
from .base import IterativeSolver, Problem
from .driver import Driver, Step
from .preconditioners import adjoint_preconditioner, as_preconditioner
from .result import SolveResult, Status

__all__ = ["GMRES"]


def _restart(value, name):
    # a non-integer restart has always been a ValueError here (scipy's wording: "must be a positive integer")
    try:
        return validate.integer(value, name)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class GMRES(IterativeSolver):
    """Restarted GMRES(m) for general square systems, with right preconditioning.

    Right preconditioning keeps the minimised residual the true residual
    ``b - A x``, so the stopping test means what it says.  ``callback`` is
    called after every inner (Arnoldi) step; ``state.x`` forms the current
    iterate on demand.  A system's convergence is decided on the true residual at the end
    of a restart cycle; a cycle that does not reduce it stops the system (``stagnation``).

    Extra parameter
    ---------------
    restart : int
        Krylov subspace dimension between restarts (default 20, as scipy).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import aslinearoperator
    >>> from krylon.solvers import GMRES
    >>> A = aslinearoperator(torch.tensor([[4.0, 1.0], [-2.0, 3.0]], dtype=torch.float64))
    >>> res = GMRES(rtol=1e-12).solve(A, torch.tensor([1.0, 2.0], dtype=torch.float64))
    >>> bool(res.converged)
    True
    """

    name = "GMRES"
    OPTIONS = {**IterativeSolver.OPTIONS, "restart": (20, _restart)}

    def _run(self, prob: Problem, opts: dict) -> SolveResult:
        M = as_preconditioner(opts["M"], prob.A)
        drv = Driver(self.name, prob, opts)
        # capped by the whole field's size, not this rank's slab: every rank must run the same cycles
        return drv.run(_GMRESStep(M, min(opts["restart"], max(drv.n_global, 1))))

    def _adjoint_options(self, opts):
        # A x = b solved as A M u = b: the adjoint system A^H lam = g is preconditioned on the right by M^H
        return {**super()._adjoint_options(opts), "M": adjoint_preconditioner(opts["M"])}


class _GMRESStep(Step):
    """One Arnoldi step (modified Gram--Schmidt, Givens rotations); a restart cycle closes in :meth:`advance`.

    Within a cycle a system whose estimate ``|g_{j+1}|`` reaches the tolerance, or whose Krylov space is
    exhausted (lucky breakdown), pauses; at the end of the cycle ``x`` is formed and the statuses are decided
    on the true residual.
    """

    verifies = False

    def __init__(self, M, restart: int):
        self.M, self.restart = M, restart
        self.j = self.m = 0  # the step within the cycle and the cycle's length (j == m: no cycle open)

    def init(self, drv, x):
        self.nd = drv.nd_in
        self.x, self.r = drv.initial(x)
        self.beta = self.prev = drv.norm(self.r, drv.nd_in)
        return self.beta

    def _open(self, drv, k):
        b, dt, dev, batch = drv.b, drv.b.dtype, drv.b.device, drv.batch
        m = self.m = min(self.restart, drv.maxiter - (k - 1))
        self.V = torch.zeros((m + 1,) + tuple(b.shape), dtype=dt, device=dev)
        self.Z = torch.zeros((m,) + tuple(b.shape), dtype=dt, device=dev) if self.M is not None else None
        self.H = torch.zeros(batch + (m + 1, m), dtype=dt, device=dev)
        self.cs = torch.zeros(batch + (m,), dtype=dt, device=dev)
        self.sn = torch.zeros(batch + (m,), dtype=dt, device=dev)
        self.g = torch.zeros(batch + (m + 1,), dtype=dt, device=dev)
        self.g[..., 0] = self.beta.to(dt)
        beta = self.beta
        self.V[0] = self.r / linalg.expand(torch.where(beta == 0, torch.ones_like(beta), beta), drv.nd_in).to(dt)
        self.steps = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.j = 0

    def step(self, drv, k):
        if self.j == self.m:
            self._open(drv, k)
        nd, j, dt = drv.nd_in, self.j, drv.b.dtype
        E = lambda t: linalg.expand(t, nd)  # noqa: E731
        V, H, cs, sn, g = self.V, self.H, self.cs, self.sn, self.g
        zj = self.M(V[j]) if self.M is not None else V[j]
        if self.Z is not None:
            self.Z[j] = zj
        w = drv.apply(drv.A, zj)
        h0 = drv.norm(w, nd)
        for i in range(j + 1):  # modified Gram-Schmidt
            hij = drv.dot(V[i], w, nd)
            H[..., i, j] = hij
            w = w - E(hij) * V[i]
        hn = drv.norm(w, nd)
        # lucky breakdown: what is left after orthogonalisation is rounding noise (scipy's h1 <= eps * h0
        # test); the Krylov space is exhausted for that system
        hn = torch.where(hn <= backend.eps(dt) * h0, torch.zeros_like(hn), hn)
        H[..., j + 1, j] = hn.to(dt)
        V[j + 1] = w / E(torch.where(hn == 0, torch.ones_like(hn), hn)).to(dt)
        col = H[..., :, j].clone()  # apply the previous rotations to column j
        for i in range(j):
            t = cs[..., i].conj() * col[..., i] + sn[..., i].conj() * col[..., i + 1]
            col[..., i + 1] = -sn[..., i] * col[..., i] + cs[..., i] * col[..., i + 1]
            col[..., i] = t
        a_, b_ = col[..., j], col[..., j + 1]
        den = torch.sqrt(a_.abs() ** 2 + b_.abs() ** 2)
        den_safe = torch.where(den == 0, torch.ones_like(den), den).to(dt)
        c_ = torch.where(den == 0, torch.ones_like(a_), a_ / den_safe)
        s_ = torch.where(den == 0, torch.zeros_like(b_), b_ / den_safe)
        cs[..., j], sn[..., j] = c_, s_
        col[..., j] = c_.conj() * a_ + s_.conj() * b_
        col[..., j + 1] = 0
        H[..., :, j] = col
        gj = g[..., j].clone()
        g[..., j] = c_.conj() * gj
        g[..., j + 1] = -s_ * gj
        self.steps = self.steps + drv.active.to(self.steps.dtype)
        self.j, self.hn = j + 1, hn
        self.est = g[..., j + 1].abs().to(backend.real_dtype(dt))
        return self.est

    def advance(self, drv, k):
        drv.active = drv.active & ~(self.est <= drv.tol) & ~(self.hn == 0)  # paused until the cycle ends
        if self.j == self.m or (k % drv.sync_every == 0 and not bool(drv.active.any())):
            self._close(drv)

    def _close(self, drv):
        """Form ``x`` and decide every running system's status on its true residual."""
        self.x = _combine(self.x, self.V, self.Z, self.H, self.g, self.steps, self.j, self.nd)
        self.r = drv.b - drv.apply(drv.A, self.x)
        beta = self.beta = drv.norm(self.r, drv.nd_in)
        drv.rnorm = beta
        running = lambda: drv.status == Status.RUNNING  # noqa: E731
        drv.stop(running() & ~torch.isfinite(beta), Status.NAN)
        drv.stop(running() & (beta <= drv.tol), Status.CONVERGED)
        # a restart cycle that did not reduce the residual at all will never do so
        drv.stop(running() & (beta >= self.prev * (1 - 10 * backend.eps(drv.b.dtype))), Status.STAGNATION)
        self.prev = beta
        drv.active = running()
        self.j = self.m  # the next step opens a new cycle
        drv.sync_now = True

    def iterate(self):
        if self.j == self.m:
            return super().iterate()
        snap = (self.x, self.V, self.Z, self.H, self.g, self.steps, self.j)
        return lambda: _combine(*snap, self.nd)


def _combine(x, V, Z, H, g, steps, m, nd):
    """``x + (M) V[:, :k_s] y_s`` with ``y_s`` from each system's own ``k_s x k_s`` triangle."""
    if m == 0:
        return x
    R = H[..., :m, :m]
    rhs = g[..., :m]
    idx = torch.arange(m, device=x.device)
    used = idx < steps.unsqueeze(-1)  # (*batch, m): the steps each system took this cycle
    keep = used.unsqueeze(-1) & used.unsqueeze(-2)
    R = torch.where(keep, R, torch.zeros_like(R))
    hscale = H.abs().amax(dim=(-2, -1), keepdim=True).squeeze(-1)
    tiny = torch.diagonal(R, dim1=-2, dim2=-1).abs() <= backend.eps(R.dtype) * hscale
    R = R * ~(tiny.unsqueeze(-1) | tiny.unsqueeze(-2))  # a numerically singular step contributes y_j = 0
    pad = ~used | tiny  # unused steps solve to y = 0
    R = R + torch.diag_embed(pad.to(R.dtype))
    rhs = torch.where(used & ~tiny, rhs, torch.zeros_like(rhs))
    y = torch.linalg.solve_triangular(R, rhs.unsqueeze(-1), upper=True).squeeze(-1)
    basis = Z if Z is not None else V
    upd = torch.zeros_like(x)
    for i in range(m):
        upd = upd + linalg.expand(y[..., i], nd).to(x.dtype) * basis[i]
    return x + upd

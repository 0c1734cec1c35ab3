"""Krylov subspace solvers: CG, MINRES, GMRES(restart), CGLS.

All of them

* take any :class:`~krylon.operators.LinearOperator` (or anything
  :func:`~krylon.operators.aslinearoperator` accepts) and right-hand sides of
  shape ``(*batch, *shape_out)``, solving every batch member independently;
* stop each system when its residual satisfies
  ``||b - A x|| <= max(atol, rtol ||b||)`` -- checked on the *true* residual before
  convergence is reported, so a float32 run never claims a convergence it did
  not reach -- and freeze converged systems (their ``x`` stops changing);
* detect breakdown (indefinite operator or preconditioner, NaN) per system and
  report it in :class:`~krylon.solvers.SolveResult` ``status``/``reason``;
* are differentiable: when ``b`` or the operator's tensors require grad, the
  backward pass solves one adjoint system (implicit differentiation) instead
  of unrolling the iterations.

Host synchronisation (a GPU stall) happens every ``sync_every`` iterations
only; between syncs convergence masks are tracked on the device.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from ..kernels import backend, linalg
from ..operators import LinearOperator, aslinearoperator
from .result import IterationState, SolveResult, Status, summarize

__all__ = ["IterativeSolver", "CG", "MINRES", "GMRES", "CGLS"]


# ----------------------------------------------------------------------------- helpers
def _as_operator(A) -> LinearOperator:
    if isinstance(A, LinearOperator):
        return A
    return aslinearoperator(A)


def _as_preconditioner(M, A: LinearOperator):
    """Return a function ``z = M(r)`` or None."""
    if M is None:
        return None
    from .preconditioners import as_preconditioner

    return as_preconditioner(M, A)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, a, b)


class _Problem:
    """Validated inputs of a solve."""

    def __init__(self, A: LinearOperator, b: torch.Tensor, x0, nd_in: int, nd_out: int):
        self.A, self.b, self.x0 = A, b, x0
        self.nd_in, self.nd_out = nd_in, nd_out
        self.batch = tuple(b.shape[: b.dim() - nd_out])


class IterativeSolver:
    """Base class: options, validation, the differentiable wrapper and result assembly.

    Parameters
    ----------
    rtol, atol : float
        Stop when ``||r|| <= max(atol, rtol * ||b||)`` (scipy's convention).
    maxiter : int, optional
        Iteration limit (default ``10 * n``, as scipy).
    M : preconditioner, optional
        Approximates ``A^{-1}``: a LinearOperator, a callable on fields, a scipy
        LinearOperator/sparse matrix, or a :mod:`krylon.solvers.preconditioners` object.
    callback : callable, optional
        Called as ``callback(state)`` after every iteration with an
        :class:`~krylon.solvers.result.IterationState` (``state.x``, ``state.iteration``,
        ``state.residual_norms``).
    progress : bool
        Show a tqdm progress bar.
    check_every : int
        Recompute the true residual every ``check_every`` iterations (residual replacement).
    sync_every : int, optional
        Host synchronisations (convergence checks that can end the loop) every this many
        iterations; default 1 on the CPU, 10 on CUDA.
    """

    name = "solver"
    needs_square = True

    def __init__(self, *, rtol: float = 1e-5, atol: float = 0.0, maxiter: int | None = None, M=None,
                 callback: Callable | None = None, progress: bool = False, check_every: int = 50,
                 sync_every: int | None = None, differentiable: bool = True):
        self.options = dict(rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback, progress=progress,
                            check_every=check_every, sync_every=sync_every, differentiable=differentiable)
        self._validate_options(self.options)

    _extra_options: tuple[str, ...] = ()

    def _validate_options(self, o: dict) -> None:
        for key in ("rtol", "atol"):
            v = o[key]
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise TypeError(f"{key} must be a real number, got {v!r}")
            if not (v >= 0) or math.isinf(v):
                raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
        if o["maxiter"] is not None:
            if not isinstance(o["maxiter"], numbers.Integral) or isinstance(o["maxiter"], bool):
                raise TypeError(f"maxiter must be an integer, got {o['maxiter']!r}")
            if o["maxiter"] < 1:
                raise ValueError(f"maxiter must be >= 1, got {o['maxiter']}")
        for key in ("check_every", "sync_every"):
            v = o.get(key)
            if v is not None and (not isinstance(v, numbers.Integral) or v < 1):
                raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
        if o["callback"] is not None and not callable(o["callback"]):
            raise TypeError("callback must be callable")

    # ------------------------------------------------------------------ public entry
    def solve(self, A, b, x0=None, **overrides) -> SolveResult:
        """Solve ``A x = b`` (every leading dimension of ``b`` is an independent system).

        Options given here override the constructor's for this call only.
        """
        unknown = set(overrides) - set(self.options)
        if unknown:
            raise TypeError(f"{type(self).__name__}.solve() got unknown option(s) {sorted(unknown)}; known: {sorted(self.options)}")
        opts = dict(self.options)
        opts.update(overrides)
        self._validate_options(opts)
        A = _as_operator(A)
        prob = self._validate(A, b, x0)
        params = A.differentiable_tensors()
        needs_grad = opts["differentiable"] and torch.is_grad_enabled() and (
            prob.b.requires_grad or any(p.requires_grad for p in params))
        with torch.no_grad():
            res = self._run(prob, opts)
        if needs_grad:
            res.x = _ImplicitSolve.apply(res.x, self, prob, opts, prob.b, *params)
        return res

    __call__ = solve

    def _validate(self, A: LinearOperator, b, x0) -> _Problem:
        if self.needs_square and not A.is_square:
            raise ValueError(f"{self.name} needs a square operator, got shape_in={A.shape_in}, shape_out={A.shape_out}")
        if not isinstance(b, torch.Tensor):
            b = backend.as_tensor(b, name="b", device=A.device)
        if not backend.is_floating(b.dtype):
            b = b.to(torch.float64)
        nd_in, nd_out = A.ndim_in, A.ndim_out
        if b.dim() < nd_out or tuple(b.shape[b.dim() - nd_out:]) != A.shape_out:
            raise ValueError(f"b has shape {tuple(b.shape)}, which does not end in the operator's output shape {A.shape_out}")
        if A.device is not None and b.device != A.device:
            raise ValueError(f"b is on {b.device} but the operator is on {A.device}; move one of them with .to()")
        if A.dtype is not None and backend.real_dtype(b.dtype) != backend.real_dtype(A.dtype):
            raise ValueError(f"b has dtype {b.dtype} but the operator has dtype {A.dtype}; convert b (e.g. b.to({A.dtype}))")
        if A.dtype is not None and A.dtype.is_complex and not b.is_complex():
            b = b.to(A.dtype)
        backend.check_finite(b.detach(), "b")
        batch = tuple(b.shape[: b.dim() - nd_out])
        if x0 is not None:
            if not isinstance(x0, torch.Tensor):
                x0 = backend.as_tensor(x0, name="x0", device=b.device)
            if tuple(x0.shape[x0.dim() - nd_in:]) != A.shape_in or x0.dim() < nd_in:
                raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected (*batch, {A.shape_in})")
            if x0.device != b.device:
                raise ValueError(f"x0 is on {x0.device} but b is on {b.device}")
            if backend.real_dtype(x0.dtype) != backend.real_dtype(b.dtype) and backend.is_floating(x0.dtype):
                raise ValueError(f"x0 has dtype {x0.dtype} but b has dtype {b.dtype}")
            backend.check_finite(x0.detach(), "x0")
            x0 = x0.detach().to(torch.promote_types(b.dtype, x0.dtype) if backend.is_floating(x0.dtype) else b.dtype)
            x0 = torch.broadcast_to(x0, batch + A.shape_in).clone()
        return _Problem(A, b, x0, nd_in, nd_out)

    def _run(self, prob: _Problem, opts: dict) -> SolveResult:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ adjoint solve for gradients
    def _adjoint_solve(self, prob: _Problem, opts: dict, g: torch.Tensor) -> torch.Tensor:
        """Solve ``N^H lam = g`` where ``x = N^{-1} c`` is the system this solver solves."""
        A = prob.A
        AH = A.adjoint()
        project = getattr(A, "project_range", None)
        if project is not None:
            g = project(g)  # a singular stencil: the adjoint system is consistent only on the range
        sub = _Problem(AH, g, None, prob.nd_out, prob.nd_in)
        o = dict(opts)
        o.update(callback=None, progress=False)
        lam = self._run(sub, o).x
        return project(lam) if project is not None else lam

    def _implicit_residual(self, prob: _Problem, x: torch.Tensor, b: torch.Tensor, opts: dict) -> torch.Tensor:
        """``c(b) - N x``: its derivative, contracted with ``lam``, gives the gradients."""
        return b - prob.A.matvec(x)

    # ------------------------------------------------------------------ shared pieces
    def _setup(self, prob: _Problem, opts: dict):
        A, b = prob.A, prob.b.detach()
        n = math.prod(A.shape_in)
        maxiter = opts["maxiter"] if opts["maxiter"] is not None else 10 * max(n, 1)
        sync_every = opts["sync_every"] or (10 if b.device.type == "cuda" else 1)
        bnorm = linalg.norm(b, prob.nd_out)
        tol = torch.clamp(opts["rtol"] * bnorm, min=opts["atol"])
        return A, b, maxiter, sync_every, bnorm, tol

    def _finish(self, x, status, iterations, history, n_matvec, tol, opts, maxiter, final_norm, extras=None) -> SolveResult:
        status = _where(status == Status.RUNNING, torch.full_like(status, Status.MAXITER), status)
        info, reason = summarize(status, iterations, final_norm, tol, self.name, opts["rtol"], opts["atol"], maxiter)
        hist = torch.stack(history) if history else final_norm.unsqueeze(0)
        if iterations.numel():
            hist = hist[: int(iterations.max()) + 1]  # no row for an iteration aborted by a breakdown
        return SolveResult(x=x, converged=status == Status.CONVERGED, iterations=iterations, residual_norms=hist,
                           n_matvec=n_matvec, info=info, reason=reason, status=status, tolerance=tol, extras=extras or {})


STALL_CHECKS = 10  # residual replacements without a new minimum of the true residual before "stagnation"
STALL_ITERATIONS = 500  # ... and at least this many iterations


def _track_stall(tnorm: torch.Tensor, best: torch.Tensor, since: torch.Tensor):
    """Per system: the smallest true residual seen at replacement points, and checks since it fell."""
    improved = tnorm < best
    return torch.where(improved, tnorm, best), torch.where(improved, torch.zeros_like(since), since + 1)


class _Progress:
    def __init__(self, enabled: bool, total: int, name: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, leave=False)
        self.n = 0

    def update(self, k: int, rel: float | None = None):
        if self.bar is not None:
            self.bar.update(k - self.n)
            self.n = k
            if rel is not None:
                self.bar.set_postfix(rel_res=f"{rel:.2e}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _ImplicitSolve(torch.autograd.Function):
    """Attach implicit-function gradients to a solution computed without autograd."""

    @staticmethod
    def forward(ctx, x, solver, prob, opts, b, *params):
        ctx.solver, ctx.prob, ctx.opts = solver, prob, opts
        ctx.n_params = len(params)
        ctx.save_for_backward(x.detach(), b.detach() if isinstance(b, torch.Tensor) else b)
        ctx.b_ref = b
        return x.detach().clone()

    @staticmethod
    def backward(ctx, g):
        x, _ = ctx.saved_tensors
        solver, prob, opts = ctx.solver, ctx.prob, ctx.opts
        with torch.no_grad():
            lam = solver._adjoint_solve(prob, opts, g.detach())
        params = [p for p in prob.A.differentiable_tensors()]
        b_in = ctx.b_ref.detach().requires_grad_(True)
        with torch.enable_grad():
            res = solver._implicit_residual(prob, x, b_in, opts)
            inner = torch.sum((torch.conj(lam) * res).real) if res.is_complex() else torch.sum(lam * res)
            grads = torch.autograd.grad(inner, [b_in] + params, allow_unused=True, retain_graph=False)
        gb = grads[0]
        gp = tuple(grads[1:])
        if len(gp) < ctx.n_params:  # pragma: no cover - defensive
            gp = gp + (None,) * (ctx.n_params - len(gp))
        return (None, None, None, None, gb) + gp


# ============================================================================= CG
class CG(IterativeSolver):
    """Preconditioned conjugate gradients for symmetric (Hermitian) positive (semi-)definite systems.

    Extra parameter
    ---------------
    assume : {None, "spd"}
        CG checks ``p^H A p > 0`` every iteration and stops a system with
        status ``indefinite`` otherwise.  An operator that carries the tag
        ``symmetric`` is trusted; an untagged one is accepted (scipy's behaviour)
        unless ``strict=True``.
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

    def __init__(self, *, strict: bool = False, flexible: bool = False, **kw):
        super().__init__(**kw)
        self.options["strict"] = strict
        self.options["flexible"] = bool(flexible)

    def _run(self, prob: _Problem, opts: dict) -> SolveResult:
        A, b, maxiter, sync_every, bnorm, tol = self._setup(prob, opts)
        bad_tags = A.tags & {"negative_definite", "indefinite"}
        if bad_tags:
            raise ValueError(f"CG needs a positive (semi-)definite operator, but {type(A).__name__} is tagged {sorted(bad_tags)}; "
                             "use MINRES for symmetric indefinite systems")
        if opts.get("strict") and not A.is_symmetric:
            raise ValueError(f"CG(strict=True) needs an operator tagged 'symmetric'; {type(A).__name__} has tags {sorted(A.tags)}")
        nd = prob.nd_in
        M = _as_preconditioner(opts["M"], A)
        callback = opts["callback"]
        batch = prob.batch
        dev = b.device
        E = lambda t: linalg.expand(t, nd)  # noqa: E731
        n_matvec = 0
        # dense row-major work vectors whatever the layout of b and x0 (the fused CPU kernels need them)
        dense = torch.contiguous_format
        if prob.x0 is None:
            x = torch.zeros_like(b, memory_format=dense)
            r = b.clone(memory_format=dense)
        else:
            x = prob.x0.clone(memory_format=dense)
            r = (b - A.matvec(x)).contiguous()
            n_matvec += 1
        rnorm = linalg.norm(r, nd)
        status = torch.full(batch, Status.RUNNING, dtype=torch.int8, device=dev)
        iterations = torch.zeros(batch, dtype=torch.int64, device=dev)
        # b = 0: x = 0 at once (scipy's behaviour), whatever x0 was
        zero_b = bnorm == 0
        if bool(zero_b.any()):
            x[zero_b] = 0
            r[zero_b] = 0
            rnorm = _where(zero_b, torch.zeros_like(rnorm), rnorm)
        status = _where(rnorm <= tol, torch.full_like(status, Status.CONVERGED), status)
        active = status == Status.RUNNING
        history = [rnorm.clone()]
        z = M(r) if M is not None else r
        rz = linalg.dot(r, z, nd).real if M is not None else rnorm ** 2
        p = z.clone(memory_format=dense)
        Ap = torch.empty_like(p)  # reused every iteration: no allocation in the hot loop
        flexible = bool(opts.get("flexible")) and M is not None
        r_old = torch.empty_like(r) if flexible else None
        fail_count = torch.zeros(batch, dtype=torch.int64, device=dev)
        best_true = torch.full(batch, float("inf"), dtype=rnorm.dtype, device=dev)
        prog = _Progress(opts["progress"], maxiter, self.name)
        check_every = opts["check_every"]
        # CG's residual is not monotone: call it stagnation only after a long window without a new minimum
        stall_checks = max(STALL_CHECKS, math.ceil(STALL_ITERATIONS / check_every))
        full = lambda code: torch.full_like(status, code)  # noqa: E731
        # Fast path: while every system is running and nothing unusual happens, the per-iteration
        # bookkeeping is a handful of scalar operations (this matters on the CPU, where each small
        # tensor operation costs microseconds).  It needs a host sync per iteration, so it is used
        # only when sync_every == 1 (the CPU default).  The first sign of convergence, breakdown or
        # NaN switches to the general masked path below for the rest of the solve.
        best_check = torch.full(batch, float("inf"), dtype=rnorm.dtype, device=dev)
        since_best = torch.zeros(batch, dtype=torch.int64, device=dev)
        fast = sync_every == 1 and bool(active.all())
        fast_iters = 0
        k = 0
        try:
            while k < maxiter:
                if not fast and k % sync_every == 0 and not bool(active.any()):
                    break
                k += 1
                Ap, pAp = A.matvec_dot(p, out=Ap)  # one fused pass where the operator has one
                n_matvec += 1
                if flexible:
                    r_old.copy_(r)
                updated = False
                if fast and not bool((pAp > 0).all()):
                    fast = False
                    iterations += fast_iters
                if fast:
                    alpha = rz / pAp
                    a = alpha.to(x.dtype) if x.is_complex() else alpha
                    rr = linalg.residual_update_(r, Ap, a, nd)
                    # x += alpha p is deferred to the p update below (linalg.advance_), which reads p anyway
                    x_behind = True
                    fast_iters += 1
                    updated = True
                    stalled = False
                    if k % check_every == 0:
                        linalg.axpy_(x, a, p, nd)
                        x_behind = False
                        r = torch.sub(b, A.matvec(x), out=r)
                        n_matvec += 1
                        rr = linalg.norm(r, nd) ** 2
                        best_check, since_best = _track_stall(torch.sqrt(rr), best_check, since_best)
                        stalled = bool((since_best >= stall_checks).any())
                    rnorm_fast = torch.sqrt(rr)
                    if not stalled and bool((rnorm_fast > tol).all()):  # nobody converged, no NaN: stay fast
                        if M is not None:
                            z = M(r)
                            rz_new = linalg.dot(r, z, nd).real
                        else:
                            z, rz_new = r, rr
                        if M is None or bool((rz_new > 0).all()):
                            rnorm = rnorm_fast
                            history.append(rnorm)
                            num = rz_new - linalg.dot(r_old, z, nd).real if flexible else rz_new
                            if x_behind:
                                linalg.advance_(x, p, z, a, num / rz, nd)
                            else:
                                linalg.xpby_(p, z, num / rz, nd)
                            rz = rz_new
                            if callback is not None:
                                callback(IterationState(iteration=k, residual_norms=rnorm.clone(), _x=x))
                            prog.update(k, float((rnorm / torch.clamp(bnorm, min=1e-300)).max()) if opts["progress"] else None)
                            continue
                    # something happened this iteration: finish it on the general path
                    if x_behind:
                        linalg.axpy_(x, a, p, nd)
                    fast = False
                    iterations += fast_iters
                if not updated:
                    bad_nan = active & ~torch.isfinite(pAp)
                    # p^H A p <= 0 with a nonzero residual is a breakdown; with r = 0 (so p = 0) the system is
                    # solved exactly and the convergence check below confirms it
                    bad_indef = active & torch.isfinite(pAp) & (pAp <= 0) & (rz != 0)
                    status = _where(bad_nan, full(Status.NAN), status)
                    status = _where(bad_indef, full(Status.INDEFINITE), status)
                    active = active & ~bad_nan & ~bad_indef
                    # frozen systems get alpha = 0, so their x and r do not change
                    step = active & (pAp > 0)
                    alpha = _where(step, rz / _where(step, pAp, torch.ones_like(pAp)), torch.zeros_like(rz))
                    x, r, rr = linalg.cg_step(x, r, p, Ap, alpha.to(x.dtype) if x.is_complex() else alpha, nd)
                    iterations += active.to(iterations.dtype)
                    if k % check_every == 0:
                        # residual replacement: the recursive residual drifts from b - A x in finite precision
                        rt = b - A.matvec(x)
                        n_matvec += 1
                        r = torch.where(E(active), rt, r)
                        rr = linalg.norm(r, nd) ** 2
                        best_check, since_best = _track_stall(torch.sqrt(rr), best_check, since_best)
                rnorm = _where(active, torch.sqrt(rr), rnorm)
                nanr = active & ~torch.isfinite(rnorm)
                status = _where(nanr, full(Status.NAN), status)
                active = active & ~nanr
                if k % check_every == 0:
                    # no new minimum of the true residual in STALL_CHECKS replacements: the rounding floor
                    stag = active & (since_best >= stall_checks)
                    status = _where(stag, full(Status.STAGNATION), status)
                    active = active & ~stag
                if k % sync_every == 0 or k == maxiter:
                    cand = active & (rnorm <= tol)
                    if bool(cand.any()):
                        # verify on the true residual before reporting convergence
                        rt = b - A.matvec(x)
                        n_matvec += 1
                        tnorm = linalg.norm(rt, nd)
                        ok = cand & (tnorm <= tol)
                        status = _where(ok, full(Status.CONVERGED), status)
                        failed = cand & ~ok
                        improved = tnorm < 0.5 * best_true
                        fail_count = _where(failed, _where(improved, torch.ones_like(fail_count), fail_count + 1), fail_count)
                        best_true = _where(failed, torch.minimum(best_true, tnorm), best_true)
                        stag = failed & (fail_count > 3)
                        status = _where(stag, full(Status.STAGNATION), status)
                        if bool(failed.any()):
                            r = torch.where(E(failed), rt, r)
                            rr = _where(failed, tnorm ** 2, rr)
                        rnorm = _where(cand, tnorm, rnorm)
                        active = active & ~ok & ~stag
                history.append(rnorm.clone())
                if M is not None:
                    z = M(r)
                    rz_new = linalg.dot(r, z, nd).real
                    badM = active & ~(rz_new > 0) & (rnorm > 0)
                    status = _where(badM, full(Status.PRECONDITIONER), status)
                    active = active & ~badM
                else:
                    z, rz_new = r, rr
                num = rz_new - linalg.dot(r_old, z, nd).real if flexible else rz_new
                beta = _where(active & (rz != 0), num / _where(rz == 0, torch.ones_like(rz), rz), torch.zeros_like(rz))
                # p = z + beta p in place; frozen systems have alpha = 0, so p's value does not matter for them ...
                linalg.xpby_(p, z, beta, nd)
                if k % sync_every == 0:
                    # ... unless it is not finite: 0 * NaN = NaN would reach x.  A system stopped by a NaN keeps a
                    # zero direction, so its x stays the last finite iterate (checked where the host syncs anyway)
                    broken = (status == Status.NAN) | (status == Status.PRECONDITIONER) | (status == Status.INDEFINITE)
                    if bool(broken.any()):
                        p.masked_fill_(E(broken), 0)
                rz = _where(active, rz_new, rz)
                if callback is not None:
                    callback(IterationState(iteration=k, residual_norms=rnorm.clone(), _x=x))
                if k % sync_every == 0:
                    prog.update(k, float((rnorm / torch.clamp(bnorm, min=1e-300)).max()) if opts["progress"] else None)
            if fast:
                iterations += fast_iters
        finally:
            prog.close()
        return self._finish(x, status, iterations, history, n_matvec, tol, opts, maxiter, rnorm)


# ============================================================================= MINRES
class MINRES(IterativeSolver):
    """MINRES for symmetric (Hermitian), possibly indefinite systems (Paige & Saunders).

    A preconditioner ``M`` must be symmetric positive definite.  Convergence is
    declared on the true residual ``||b - A x||``.

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

    def __init__(self, *, shift: float = 0.0, **kw):
        super().__init__(**kw)
        self.options["shift"] = shift

    def _run(self, prob: _Problem, opts: dict) -> SolveResult:
        A, b, maxiter, sync_every, bnorm, tol = self._setup(prob, opts)
        nd = prob.nd_in
        M = _as_preconditioner(opts["M"], A)
        shift = opts.get("shift", 0.0)
        callback = opts["callback"]
        batch, dev = prob.batch, b.device
        rdt = backend.real_dtype(b.dtype)
        n_matvec = 0

        def Aop(v):
            y = A.matvec(v)
            return y - shift * v if shift else y

        if prob.x0 is None:
            x = torch.zeros_like(b)
            r1 = b.clone()
        else:
            x = prob.x0.clone()
            r1 = b - Aop(x)
            n_matvec += 1
        status = torch.full(batch, Status.RUNNING, dtype=torch.int8, device=dev)
        iterations = torch.zeros(batch, dtype=torch.int64, device=dev)
        rnorm = linalg.norm(r1, nd)
        zero_b = bnorm == 0
        if bool(zero_b.any()):
            x[zero_b] = 0
            r1[zero_b] = 0
            rnorm = _where(zero_b, torch.zeros_like(rnorm), rnorm)
        status = _where(rnorm <= tol, torch.full_like(status, Status.CONVERGED), status)
        active = status == Status.RUNNING
        history = [rnorm.clone()]

        y = M(r1) if M is not None else r1
        beta1sq = linalg.dot(r1, y, nd).real
        badM = active & (beta1sq < 0)
        status = _where(badM, torch.full_like(status, Status.PRECONDITIONER), status)
        active = active & ~badM
        beta1 = torch.sqrt(torch.clamp(beta1sq, min=0))
        one = torch.ones(batch, dtype=rdt, device=dev)
        zero = torch.zeros(batch, dtype=rdt, device=dev)
        safe = lambda t: _where(t == 0, one, t)  # noqa: E731
        E = lambda t: linalg.expand(t, nd)  # noqa: E731

        oldb, beta = zero.clone(), beta1.clone()
        dbar, epsln, phibar = zero.clone(), zero.clone(), beta1.clone()
        cs, sn = -one, zero.clone()
        r2 = r1.clone()
        w = torch.zeros_like(b)
        w2 = torch.zeros_like(b)
        verify_below = tol.clone()
        fails = torch.zeros(batch, dtype=torch.int64, device=dev)
        best_true = torch.full(batch, float("inf"), dtype=rdt, device=dev)
        # the preconditioned MINRES estimate phibar is ||r||_{M^{-1}}: scale it to ||r|| units at start
        scale = _where(beta1 > 0, rnorm / safe(beta1), one)
        prog = _Progress(opts["progress"], maxiter, self.name)
        k = 0
        try:
            while k < maxiter:
                if k % sync_every == 0 and not bool(active.any()):
                    break
                k += 1
                s = 1.0 / safe(beta)
                v = y * E(s).to(y.dtype)
                y = Aop(v)
                n_matvec += 1
                if k >= 2:
                    y = y - E(beta / safe(oldb)).to(y.dtype) * r1
                alfa = linalg.dot(v, y, nd).real
                y = y - E(alfa / safe(beta)).to(y.dtype) * r2
                r1, r2 = r2, y
                y = M(r2) if M is not None else r2
                oldb = beta
                bsq = linalg.dot(r2, y, nd).real
                badM = active & (bsq < 0)
                status = _where(badM, torch.full_like(status, Status.PRECONDITIONER), status)
                active = active & ~badM
                beta = torch.sqrt(torch.clamp(bsq, min=0))
                oldeps = epsln
                delta = cs * dbar + sn * alfa
                gbar = sn * dbar - cs * alfa
                epsln = sn * beta
                dbar = -cs * beta
                gamma = torch.sqrt(gbar ** 2 + beta ** 2)
                gamma = torch.clamp(gamma, min=torch.finfo(rdt).tiny)
                cs_new = gbar / gamma
                sn_new = beta / gamma
                phi = cs_new * phibar
                phibar_new = sn_new * phibar
                denom = 1.0 / gamma
                w1 = w2
                w2 = w
                w = (v - E(oldeps).to(v.dtype) * w1 - E(delta).to(v.dtype) * w2) * E(denom).to(v.dtype)
                step = _where(active, phi, zero)
                x = x + E(step).to(x.dtype) * w
                cs = _where(active, cs_new, cs)
                sn = _where(active, sn_new, sn)
                phibar = _where(active, phibar_new, phibar)
                iterations += active.to(iterations.dtype)
                est = phibar * scale
                nan = active & ~torch.isfinite(est)
                status = _where(nan, torch.full_like(status, Status.NAN), status)
                active = active & ~nan
                rnorm = _where(active, est, rnorm)
                lucky = active & (beta == 0)
                cand = active & ((est <= verify_below) | lucky)
                if k % sync_every == 0 or k == maxiter:
                    if bool(cand.any()):
                        rt = b - Aop(x)
                        n_matvec += 1
                        tnorm = linalg.norm(rt, nd)
                        ok = cand & (tnorm <= tol)
                        status = _where(ok, torch.full_like(status, Status.CONVERGED), status)
                        failed = cand & ~ok
                        # a lucky breakdown whose true residual is still large, or repeated failed
                        # verifications without a 2x improvement: the rounding floor of the dtype
                        improved = tnorm < 0.5 * best_true
                        fails = _where(failed, _where(improved, torch.ones_like(fails), fails + 1), fails)
                        best_true = _where(failed, torch.minimum(best_true, tnorm), best_true)
                        stuck = failed & (lucky | (fails > 3))
                        status = _where(stuck, torch.full_like(status, Status.STAGNATION), status)
                        verify_below = _where(failed, 0.5 * est, verify_below)
                        rnorm = _where(cand, tnorm, rnorm)
                        active = active & ~ok & ~stuck
                history.append(rnorm.clone())
                if callback is not None:
                    callback(IterationState(iteration=k, residual_norms=rnorm.clone(), _x=x))
                if k % sync_every == 0:
                    prog.update(k, float((rnorm / torch.clamp(bnorm, min=1e-300)).max()) if opts["progress"] else None)
        finally:
            prog.close()
        return self._finish(x, status, iterations, history, n_matvec, tol, opts, maxiter, rnorm)

    def _implicit_residual(self, prob, x, b, opts):
        shift = opts.get("shift", 0.0)
        y = prob.A.matvec(x)
        return b - (y - shift * x if shift else y)


# ============================================================================= GMRES
class GMRES(IterativeSolver):
    """Restarted GMRES(m) for general square systems, with right preconditioning.

    Right preconditioning keeps the minimised residual the true residual
    ``b - A x``, so the stopping test means what it says.  ``callback`` is
    called after every inner (Arnoldi) step; ``state.x`` forms the current
    iterate on demand.

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

    def __init__(self, *, restart: int = 20, **kw):
        super().__init__(**kw)
        if not isinstance(restart, numbers.Integral) or restart < 1:
            raise ValueError(f"restart must be an integer >= 1, got {restart!r}")
        self.options["restart"] = restart

    def _validate_options(self, o):
        super()._validate_options(o)
        if "restart" in o and (not isinstance(o["restart"], numbers.Integral) or o["restart"] < 1):
            raise ValueError(f"restart must be an integer >= 1, got {o['restart']!r}")

    def _run(self, prob: _Problem, opts: dict) -> SolveResult:
        A, b, maxiter, sync_every, bnorm, tol = self._setup(prob, opts)
        nd = prob.nd_in
        M = _as_preconditioner(opts["M"], A)
        restart = min(opts.get("restart", 20), max(math.prod(A.shape_in), 1))
        callback = opts["callback"]
        batch, dev, dt = prob.batch, b.device, b.dtype
        rdt = backend.real_dtype(dt)
        E = lambda t: linalg.expand(t, nd)  # noqa: E731
        n_matvec = 0
        x = torch.zeros_like(b) if prob.x0 is None else prob.x0.clone()
        status = torch.full(batch, Status.RUNNING, dtype=torch.int8, device=dev)
        iterations = torch.zeros(batch, dtype=torch.int64, device=dev)
        zero_b = bnorm == 0
        if bool(zero_b.any()):
            x[zero_b] = 0
        history = []
        rnorm = None
        prog = _Progress(opts["progress"], maxiter, self.name)
        total = 0
        nb = int(math.prod(batch))
        prev_cycle_norm = None
        try:
            while True:
                r = b - A.matvec(x) if (prob.x0 is not None or total > 0) else b.clone()
                if prob.x0 is not None or total > 0:
                    n_matvec += 1
                beta = linalg.norm(r, nd)
                if rnorm is None:
                    history.append(beta.clone())
                rnorm = beta
                nanr = (status == Status.RUNNING) & ~torch.isfinite(beta)
                status = _where(nanr, torch.full_like(status, Status.NAN), status)
                conv = (status == Status.RUNNING) & (beta <= tol)
                status = _where(conv, torch.full_like(status, Status.CONVERGED), status)
                if prev_cycle_norm is not None:
                    # a restart cycle that did not reduce the residual at all will never do so
                    stag = (status == Status.RUNNING) & (beta >= prev_cycle_norm * (1 - 10 * backend.eps(dt)))
                    status = _where(stag, torch.full_like(status, Status.STAGNATION), status)
                prev_cycle_norm = beta.clone()
                active = status == Status.RUNNING
                if not bool(active.any()) or total >= maxiter:
                    break
                m = min(restart, maxiter - total)
                V = torch.zeros((m + 1,) + tuple(b.shape), dtype=dt, device=dev)
                Z = torch.zeros((m,) + tuple(b.shape), dtype=dt, device=dev) if M is not None else None
                H = torch.zeros(batch + (m + 1, m), dtype=dt, device=dev)
                cs = torch.zeros(batch + (m,), dtype=dt, device=dev)
                sn = torch.zeros(batch + (m,), dtype=dt, device=dev)
                g = torch.zeros(batch + (m + 1,), dtype=dt, device=dev)
                g[..., 0] = beta.to(dt)
                V[0] = r / E(torch.where(beta == 0, torch.ones_like(beta), beta)).to(dt)
                steps = torch.zeros(batch, dtype=torch.int64, device=dev)
                inner_active = active.clone()
                j_done = 0
                for j in range(m):
                    zj = M(V[j]) if M is not None else V[j]
                    if Z is not None:
                        Z[j] = zj
                    w = A.matvec(zj)
                    n_matvec += 1
                    h0 = linalg.norm(w, nd)
                    for i in range(j + 1):  # modified Gram-Schmidt
                        hij = linalg.dot(V[i], w, nd)
                        H[..., i, j] = hij
                        w = w - E(hij) * V[i]
                    hn = linalg.norm(w, nd)
                    # lucky breakdown: what is left after orthogonalisation is rounding noise
                    # (scipy's h1 <= eps * h0 test); the Krylov space is exhausted for that system
                    hn = torch.where(hn <= backend.eps(dt) * h0, torch.zeros_like(hn), hn)
                    H[..., j + 1, j] = hn.to(dt)
                    V[j + 1] = w / E(torch.where(hn == 0, torch.ones_like(hn), hn)).to(dt)
                    # apply previous rotations to column j
                    col = H[..., :, j].clone()
                    for i in range(j):
                        t = cs[..., i].conj() * col[..., i] + sn[..., i].conj() * col[..., i + 1]
                        col[..., i + 1] = -sn[..., i] * col[..., i] + cs[..., i] * col[..., i + 1]
                        col[..., i] = t
                    a_, b_ = col[..., j], col[..., j + 1]
                    den = torch.sqrt(a_.abs() ** 2 + b_.abs() ** 2)
                    den_safe = torch.where(den == 0, torch.ones_like(den), den)
                    c_ = torch.where(den == 0, torch.ones_like(a_), a_ / den_safe.to(dt))
                    s_ = torch.where(den == 0, torch.zeros_like(b_), b_ / den_safe.to(dt))
                    cs[..., j], sn[..., j] = c_, s_
                    col[..., j] = c_.conj() * a_ + s_.conj() * b_
                    col[..., j + 1] = 0
                    H[..., :, j] = col
                    gj = g[..., j].clone()
                    g[..., j] = c_.conj() * gj
                    g[..., j + 1] = -s_ * gj
                    est = g[..., j + 1].abs()
                    steps = steps + inner_active.to(steps.dtype)
                    iterations += inner_active.to(iterations.dtype)
                    rnorm = _where(inner_active, est.to(rdt), rnorm)
                    history.append(rnorm.clone())
                    total += 1
                    j_done = j + 1
                    nan = inner_active & ~torch.isfinite(est)
                    status = _where(nan, torch.full_like(status, Status.NAN), status)
                    inner_active = inner_active & ~nan & ~(est <= tol) & ~(hn == 0)
                    if callback is not None:
                        snap = (x, V, Z, H, g, steps, j + 1)
                        callback(IterationState(iteration=total, residual_norms=rnorm.clone(),
                                                _x_fn=lambda snap=snap: self._update(*snap, nd, M, batch)))
                    if (j + 1) % sync_every == 0 and not bool(inner_active.any()):
                        break
                prog.update(total, float((rnorm / torch.clamp(bnorm, min=1e-300)).max()) if opts["progress"] else None)
                x = self._update(x, V, Z, H, g, steps, j_done, nd, M, batch)
        finally:
            prog.close()
        return self._finish(x, status, iterations, history, n_matvec, tol, opts, maxiter, rnorm)

    @staticmethod
    def _update(x, V, Z, H, g, steps, m, nd, M, batch):
        """x + (M) V[:, :k_s] y_s with y_s from each system's own k_s x k_s triangle."""
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

    def _adjoint_solve(self, prob, opts, g):
        A = prob.A
        sub = _Problem(A.adjoint(), g, None, prob.nd_out, prob.nd_in)
        o = dict(opts)
        o.update(callback=None, progress=False, M=None)
        return self._run(sub, o).x


# ============================================================================= CGLS
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

    def __init__(self, *, damp: float = 0.0, **kw):
        super().__init__(**kw)
        self.options["damp"] = damp
        self._validate_options(self.options)

    def _validate_options(self, o):
        super()._validate_options(o)
        damp = o.get("damp", 0.0)
        if not isinstance(damp, numbers.Real) or isinstance(damp, bool) or not damp >= 0 or math.isinf(damp):
            raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")

    def _run(self, prob: _Problem, opts: dict) -> SolveResult:
        A, b = prob.A, prob.b.detach()
        nd_in, nd_out = prob.nd_in, prob.nd_out
        n = math.prod(A.shape_in)
        maxiter = opts["maxiter"] if opts["maxiter"] is not None else 10 * max(n, 1)
        sync_every = opts["sync_every"] or (10 if b.device.type == "cuda" else 1)
        damp2 = float(opts.get("damp", 0.0)) ** 2
        if opts["M"] is not None:
            raise ValueError("CGLS does not take a preconditioner M; scale the columns of A instead")
        callback = opts["callback"]
        batch, dev = prob.batch, b.device
        AH = A.adjoint()
        n_matvec = 0
        if prob.x0 is None:
            x = torch.zeros(batch + A.shape_in, dtype=b.dtype, device=dev)
            r = b.clone()
        else:
            x = prob.x0.clone().to(b.dtype)
            r = b - A.matvec(x)
            n_matvec += 1
        s = AH.matvec(r)
        n_matvec += 1
        if damp2:
            s = s - damp2 * x
        c = AH.matvec(b) if prob.x0 is not None else s.clone()
        if prob.x0 is not None:
            n_matvec += 1
        cnorm = linalg.norm(c, nd_in)
        tol = torch.clamp(opts["rtol"] * cnorm, min=opts["atol"])
        snorm = linalg.norm(s, nd_in)
        status = torch.full(batch, Status.RUNNING, dtype=torch.int8, device=dev)
        iterations = torch.zeros(batch, dtype=torch.int64, device=dev)
        # b = 0 (and no damping bias): x = 0 at once, whatever x0 was
        zero_b = linalg.norm(b, nd_out) == 0
        if bool(zero_b.any()):
            x[zero_b] = 0
            r[zero_b] = 0
            s[zero_b] = 0
            snorm = _where(zero_b, torch.zeros_like(snorm), snorm)
        status = _where(snorm <= tol, torch.full_like(status, Status.CONVERGED), status)
        active = status == Status.RUNNING
        history = [snorm.clone()]
        data_hist = [linalg.norm(r, nd_out)]
        fails = torch.zeros(batch, dtype=torch.int64, device=dev)
        best = torch.full(batch, float("inf"), dtype=snorm.dtype, device=dev)
        p = s.clone()
        gamma = snorm ** 2
        E_in = lambda t: linalg.expand(t, nd_in)  # noqa: E731
        E_out = lambda t: linalg.expand(t, nd_out)  # noqa: E731
        prog = _Progress(opts["progress"], maxiter, self.name)
        k = 0
        try:
            while k < maxiter:
                if k % sync_every == 0 and not bool(active.any()):
                    break
                k += 1
                q = A.matvec(p)
                n_matvec += 1
                delta = linalg.norm(q, nd_out) ** 2
                if damp2:
                    delta = delta + damp2 * linalg.norm(p, nd_in) ** 2
                bad = active & ~torch.isfinite(delta)
                status = _where(bad, torch.full_like(status, Status.NAN), status)
                brk = active & torch.isfinite(delta) & (delta <= 0)
                status = _where(brk, torch.full_like(status, Status.BREAKDOWN), status)
                active = active & ~bad & ~brk
                alpha = _where(active, gamma / _where(active, delta, torch.ones_like(delta)), torch.zeros_like(gamma))
                x = x + E_in(alpha).to(x.dtype) * p
                r = r - E_out(alpha).to(r.dtype) * q
                s = AH.matvec(r)
                n_matvec += 1
                if damp2:
                    s = s - damp2 * x
                iterations += active.to(iterations.dtype)
                gamma_new = linalg.norm(s, nd_in) ** 2
                snorm = _where(active, torch.sqrt(gamma_new), snorm)
                nan = active & ~torch.isfinite(snorm)
                status = _where(nan, torch.full_like(status, Status.NAN), status)
                active = active & ~nan
                cand = active & (snorm <= tol)
                if bool(cand.any()):
                    # verify on the true normal-equation residual before reporting convergence
                    rt = b - A.matvec(x)
                    st_ = AH.matvec(rt)
                    n_matvec += 2
                    if damp2:
                        st_ = st_ - damp2 * x
                    tn = linalg.norm(st_, nd_in)
                    ok = cand & (tn <= tol)
                    status = _where(ok, torch.full_like(status, Status.CONVERGED), status)
                    failed = cand & ~ok
                    improved = tn < 0.5 * best
                    fails = _where(failed, _where(improved, torch.ones_like(fails), fails + 1), fails)
                    best = _where(failed, torch.minimum(best, tn), best)
                    stag = failed & (fails > 3)
                    status = _where(stag, torch.full_like(status, Status.STAGNATION), status)
                    if bool(failed.any()):  # residual replacement for the systems that go on
                        r = torch.where(E_out(failed), rt, r)
                        s = torch.where(E_in(failed), st_, s)
                        gamma_new = _where(failed, tn ** 2, gamma_new)
                    snorm = _where(cand, tn, snorm)
                    active = active & ~ok & ~stag
                beta = _where(active & (gamma > 0), gamma_new / _where(gamma > 0, gamma, torch.ones_like(gamma)), torch.zeros_like(gamma))
                p = _where(E_in(active), s + E_in(beta).to(s.dtype) * p, p)
                gamma = _where(active, gamma_new, gamma)
                history.append(snorm.clone())
                data_hist.append(linalg.norm(r, nd_out))
                if callback is not None:
                    callback(IterationState(iteration=k, residual_norms=snorm.clone(), _x=x))
                if k % sync_every == 0:
                    prog.update(k)
        finally:
            prog.close()
        res = self._finish(x, status, iterations, history, n_matvec, tol, opts, maxiter, snorm,
                           extras={"data_residual_norms": torch.stack(data_hist)})
        return res

    def _normal(self, prob, opts):
        A = prob.A
        damp2 = float(opts.get("damp", 0.0)) ** 2
        return A, damp2

    def _adjoint_solve(self, prob, opts, g):
        # N = A^H A + damp^2 I is Hermitian: solve N lam = g with CG
        A, damp2 = self._normal(prob, opts)
        if not damp2 and math.prod(A.shape_out) < math.prod(A.shape_in):
            raise ValueError("gradients of an undamped CGLS solve with fewer equations than unknowns (a minimum-norm "
                             "solution) are not supported: A^H A is singular; use damp > 0")
        from ..operators.base import IdentityOperator

        N = A.adjoint() @ A
        if damp2:
            N = N + damp2 * IdentityOperator(A.shape_in)
        o = {k: opts[k] for k in ("rtol", "atol", "maxiter", "check_every", "sync_every")}
        return CG(**o).solve(N, g, differentiable=False).x

    def _implicit_residual(self, prob, x, b, opts):
        A, damp2 = self._normal(prob, opts)
        AH = A.adjoint()
        res = AH.matvec(b - A.matvec(x))
        return res - damp2 * x if damp2 else res

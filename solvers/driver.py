"""The one iteration driver every iterative method runs through.

A method supplies a :class:`Step`: how to start (``init``, ``start``), one iteration (``step``, returning
each system's residual-norm estimate, then ``advance``, which may use the checked residual) and, where
convergence is verified, its true residual.  :class:`Driver` owns everything the methods share:

* per-system :class:`~krylon.solvers.result.Status` codes and the ``active`` mask (a stopped system is frozen);
* the ``b = 0`` exit (``x = 0`` at once, whatever ``x0`` was) and systems that start converged;
* convergence declared only after the true residual is below the tolerance; a failed check replaces the
  recursive residual, and repeated failures without a 2x improvement end in ``stagnation``;
* periodic residual replacement (``check_every``) with CG's stagnation window;
* residual history, ``callback(IterationState)``, tqdm progress and the final :class:`SolveResult`;
* the host-sync cadence: masks live on the device and the host looks at them every ``sync_every``
  iterations only (default 1 on the CPU, 10 on CUDA);
* a fast path for methods that have one (CG on the CPU): while every system runs and nothing unusual
  happens, the per-iteration bookkeeping is one comparison with the tolerance;
* the one reduction hook: every inner product and norm a step computes goes through :meth:`Driver.dot`,
  :meth:`Driver.norm` or :meth:`Driver.total`, which sum partial sums over processes when the operator's
  ``reduce`` says its fields are split across them (:class:`~krylon.operators.DistributedLaplacian`), so the
  methods run unchanged on distributed fields.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..kernels import distributed, linalg
from .result import IterationState, SolveResult, Status, summarize

__all__ = ["Driver", "Step", "STALL_CHECKS", "STALL_ITERATIONS", "FAILED_CHECKS"]

STALL_CHECKS = 10  # residual replacements without a new minimum of the true residual before "stagnation"
STALL_ITERATIONS = 500  # ... and at least this many iterations
FAILED_CHECKS = 3  # failed convergence checks without halving the true residual before "stagnation"
BROKEN = (Status.NAN, Status.PRECONDITIONER, Status.INDEFINITE, Status.BREAKDOWN)


class Step:
    """What a method supplies to the :class:`Driver`.

    Attributes the driver reads: ``fast`` (the method can take the driver's fast path: it calls
    :meth:`Driver.leave_fast` when it meets something unusual), ``verifies`` (convergence candidates are
    checked on :meth:`true_residual`), ``replaces`` (:meth:`refresh` every ``check_every`` iterations),
    ``freezes`` (:meth:`freeze` is called for broken systems at sync points), ``reference`` (the norm that
    ``rtol`` multiplies; ``||b||`` when None).  Methods keep their iterate in ``self.x`` and, for the
    default residual checks, their residual ``b - A x`` in ``self.r``.
    """

    fast = False
    verifies = True
    replaces = False
    freezes = False
    reference = None

    def init(self, drv: "Driver", x: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover - abstract
        """Set up from the start ``x`` (None: zero); return each system's initial residual norm."""
        raise NotImplementedError

    def start(self, drv: "Driver") -> None:
        """Finish the setup once the initial statuses are known (``drv.active``, ``drv.rnorm``)."""

    def step(self, drv: "Driver", k: int) -> torch.Tensor:  # pragma: no cover - abstract
        """Iteration ``k`` for the active systems (stopping those that break down); return the new estimates."""
        raise NotImplementedError

    def advance(self, drv: "Driver", k: int) -> None:
        """The rest of iteration ``k``, after the driver's checks (e.g. the next search direction)."""

    def candidates(self, drv: "Driver") -> torch.Tensor:
        """Systems whose estimate says they may have converged (checked on the true residual)."""
        return drv.rnorm <= drv.tol

    def give_up(self, drv: "Driver", failed: torch.Tensor):
        """Systems that failed a check and should stop at once (None: none beyond the driver's rule)."""
        return None

    def true_residual(self, drv: "Driver"):
        """``(residual, its norm)`` recomputed from the iterate."""
        rt = drv.b - drv.apply(drv.A, self.x)
        return rt, drv.norm(rt, drv.nd_out)

    def replace(self, drv: "Driver", mask: torch.Tensor, rt, tnorm: torch.Tensor) -> None:
        """Residual replacement for the systems in ``mask``."""
        self.r = torch.where(linalg.expand(mask, drv.nd_out), rt, self.r)

    def refresh(self, drv: "Driver") -> torch.Tensor:
        """Replace the recursive residual of the active systems by the true one; return the new norms."""
        self.replace(drv, drv.active, *self.true_residual(drv))
        return drv.norm(self.r, drv.nd_out)

    def freeze(self, drv: "Driver", broken: torch.Tensor) -> None:
        """Keep the last finite iterate of systems stopped by a NaN or a breakdown."""

    def iterate(self) -> Callable[[], torch.Tensor]:
        """A function returning the current iterate (for ``IterationState.x``, formed on demand)."""
        x = self.x
        return lambda: x

    def solution(self) -> torch.Tensor:
        return self.x

    def extras(self, drv: "Driver", rows: int) -> dict:
        """Method-specific results; per-iteration records cut to ``rows`` like ``residual_norms``."""
        return {}


class _Progress:
    def __init__(self, enabled: bool, total: int, name: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, leave=False)
        self.n = 0

    def update(self, k: int, rel: float | None = None):
        self.bar.update(k - self.n)
        self.n = k
        if rel is not None:
            self.bar.set_postfix(rel_res=f"{rel:.2e}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _track_stall(tnorm: torch.Tensor, best: torch.Tensor, since: torch.Tensor):
    """Per system: the smallest true residual seen at replacement points, and checks since it fell."""
    improved = tnorm < best
    return torch.where(improved, tnorm, best), torch.where(improved, torch.zeros_like(since), since + 1)


class Driver:
    """Runs a :class:`Step` on a validated problem with a solver's options; see the module docstring.

    What a step may use: ``A``, ``b`` (detached), ``nd_in``/``nd_out``, ``batch``, ``tol``, ``maxiter``,
    ``n_global`` (the unknowns per system over every process: ``prod(A.shape_in)`` summed over the ranks),
    ``sync_every``, ``status``, ``active``, ``rnorm`` (the last recorded norms), ``fast``,
    :meth:`apply` (an operator application, counted), :meth:`stop` and :meth:`leave_fast`.
    """

    def __init__(self, name: str, prob, opts: dict):
        self.name, self.opts = name, opts
        self.A, self.b = prob.A, prob.b.detach()
        self.x0 = prob.x0
        self.nd_in, self.nd_out, self.batch = prob.nd_in, prob.nd_out, prob.batch
        self.reduce = self.A.reduce  # None, or the sum of partial inner products over processes
        n = math.prod(self.A.shape_in)
        if self.reduce is not None:  # the whole field's size: every rank takes the same limits from it
            n = int(self.reduce(torch.tensor(float(n), dtype=torch.float64, device=self.b.device)))
        self.n_global = n
        self.maxiter = opts["maxiter"] if opts["maxiter"] is not None else 10 * max(n, 1)
        self.sync_every = opts["sync_every"] or (10 if self.b.device.type == "cuda" else 1)
        self.n_matvec = 0
        self.fast = False
        self.sync_now = False  # a step that looked at the host anyway may ask for a loop check

    # ------------------------------------------------------------------ inner products (the one reduction hook)
    # Every inner product and norm a step computes goes through dot/norm, or through total for a partial sum a
    # fused kernel computed (CG's p.Ap and ||r||^2): with fields split across processes (A.reduce is an
    # all-reduce) the partial sums are summed over them; otherwise these are linalg's functions, unchanged.
    def total(self, partial: torch.Tensor) -> torch.Tensor:
        """The whole-field value of per-system partial sums computed on this process's part of the fields."""
        return partial if self.reduce is None else self.reduce(partial)

    def dot(self, x: torch.Tensor, y: torch.Tensor, nd: int | None = None) -> torch.Tensor:
        """Per-system ``x^H y`` over the last ``nd`` (default ``nd_in``) dimensions, whole-field."""
        return self.total(linalg.dot(x, y, self.nd_in if nd is None else nd))

    def norm(self, x: torch.Tensor, nd: int | None = None) -> torch.Tensor:
        """Per-system Euclidean norm over the last ``nd`` (default ``nd_in``) dimensions, whole-field."""
        n = linalg.norm(x, self.nd_in if nd is None else nd)
        if self.reduce is None:
            return n
        # squared in float64: a float16/float32 norm above sqrt(its max) would overflow to Inf when squared
        wide = n.to(torch.float64)
        return torch.sqrt(self.reduce(wide * wide)).to(n.dtype)

    # ------------------------------------------------------------------ for the steps
    def apply(self, op, v: torch.Tensor) -> torch.Tensor:
        """``op.matvec(v)``, counted in ``n_matvec``."""
        self.n_matvec += 1
        return op.matvec(v)

    def initial(self, x: torch.Tensor | None, op: Callable | None = None):
        """``(x, b - op(x))`` as dense work fields: zero and ``b`` itself when ``x`` is None; ``op`` is ``A``'s
        (counted) application unless a method iterates on something else (MINRES's shifted operator)."""
        b = self.b
        if x is None:
            return torch.zeros_like(b, memory_format=torch.contiguous_format), b.clone(memory_format=torch.contiguous_format)
        if op is None:
            return x, (b - self.apply(self.A, x)).contiguous()
        self.n_matvec += 1
        return x, (b - op(x)).contiguous()

    def stop(self, mask: torch.Tensor, code: int) -> None:
        """Give the systems in ``mask`` status ``code`` and stop iterating them."""
        self.status = self.status.masked_fill(mask, code)
        self.active = self.active & ~mask

    def leave_fast(self) -> None:
        """Switch to the masked bookkeeping for the rest of the solve."""
        if self.fast:
            self.fast = False
            self.iterations += self._fast_iterations

    # ------------------------------------------------------------------ the loop
    def run(self, method: Step) -> SolveResult:
        b, opts = self.b, self.opts
        dev = b.device
        self.bnorm = self.norm(b, self.nd_out)
        zero_b = self.bnorm == 0
        x = None
        if self.x0 is not None:
            x = self.x0.clone(memory_format=torch.contiguous_format)
            if bool(zero_b.any()):
                x[zero_b] = 0  # b = 0: x = 0 at once (scipy's behaviour), whatever x0 was
        rnorm = method.init(self, x)
        ref = self.bnorm if method.reference is None else method.reference
        self.tol = torch.clamp(opts["rtol"] * ref, min=opts["atol"])
        self.status = torch.full(self.batch, Status.RUNNING, dtype=torch.int8, device=dev)
        self.active = torch.ones(self.batch, dtype=torch.bool, device=dev)
        self.stop(~torch.isfinite(rnorm), Status.NAN)
        self.stop(rnorm <= self.tol, Status.CONVERGED)
        self.rnorm = rnorm
        self.iterations = torch.zeros(self.batch, dtype=torch.int64, device=dev)
        history = [rnorm]
        method.start(self)
        # verified-convergence failures and replacement-point minima, per system
        fails = torch.zeros(self.batch, dtype=torch.int64, device=dev)
        best_true = torch.full(self.batch, float("inf"), dtype=rnorm.dtype, device=dev)
        best_check = torch.full(self.batch, float("inf"), dtype=rnorm.dtype, device=dev)
        since_best = torch.zeros(self.batch, dtype=torch.int64, device=dev)
        check_every, sync_every, maxiter = opts["check_every"], self.sync_every, self.maxiter
        # CG's residual is not monotone: call it stagnation only after a long window without a new minimum
        stall_checks = max(STALL_CHECKS, math.ceil(STALL_ITERATIONS / check_every))
        callback = opts["callback"]
        # fields split across ranks: one progress bar (rank 0's; every rank holds the same norms), not one per rank
        prog = _Progress(opts["progress"] and (self.reduce is None or distributed.rank() == 0), maxiter, self.name)
        # the fast path needs a host look every iteration, so only where the cadence is 1 (the CPU default)
        self.fast = method.fast and sync_every == 1 and self.active.numel() > 0 and bool(self.active.all())
        self._fast_iterations = 0
        k = 0
        try:
            while k < maxiter:
                if not self.fast and (k % sync_every == 0 or self.sync_now) and not bool(self.active.any()):
                    break
                self.sync_now = False
                k += 1
                est = method.step(self, k)
                if self.fast:
                    self._fast_iterations += 1
                else:
                    self.iterations += self.active.to(self.iterations.dtype)
                checked = method.replaces and k % check_every == 0
                if checked:  # residual replacement: the recursive residual drifts from b - A x in finite precision
                    est = method.refresh(self)
                    best_check, since_best = _track_stall(est, best_check, since_best)
                if self.fast:
                    # nobody converged, no NaN, no stall: one comparison is all the bookkeeping
                    if not (checked and bool((since_best >= stall_checks).any())) and bool((est > self.tol).all()):
                        self.rnorm = est
                    else:
                        self.leave_fast()
                if not self.fast:
                    self.rnorm = torch.where(self.active, est, self.rnorm)
                    self.stop(self.active & ~torch.isfinite(self.rnorm), Status.NAN)
                    if checked:  # no new minimum of the true residual in stall_checks replacements: the rounding floor
                        self.stop(self.active & (since_best >= stall_checks), Status.STAGNATION)
                    if method.verifies and (k % sync_every == 0 or k == maxiter):
                        fails, best_true = self._verify(method, fails, best_true)
                history.append(self.rnorm)
                row = self.rnorm
                method.advance(self, k)
                if method.freezes and not self.fast and k % sync_every == 0:
                    broken = torch.isin(self.status, torch.tensor(BROKEN, dtype=self.status.dtype, device=dev))
                    if bool(broken.any()):
                        method.freeze(self, broken)
                if callback is not None:
                    callback(IterationState(iteration=k, residual_norms=row.clone(), _x_fn=method.iterate()))
                if prog.bar is not None and (self.fast or k % sync_every == 0):
                    prog.update(k, float((self.rnorm / torch.clamp(self.bnorm, min=1e-300)).max()))
        finally:
            prog.close()
        self.leave_fast()
        return self._result(method, history)

    def _verify(self, method: Step, fails: torch.Tensor, best: torch.Tensor):
        """Check convergence candidates on the true residual before declaring them converged."""
        cand = self.active & method.candidates(self)
        if not bool(cand.any()):
            return fails, best
        rt, tnorm = method.true_residual(self)
        ok = cand & (tnorm <= self.tol)
        failed = cand & ~ok
        improved = tnorm < 0.5 * best
        fails = torch.where(failed, torch.where(improved, torch.ones_like(fails), fails + 1), fails)
        best = torch.where(failed, torch.minimum(best, tnorm), best)
        stuck = fails > FAILED_CHECKS
        more = method.give_up(self, failed)
        if more is not None:
            stuck = stuck | more
        self.stop(ok, Status.CONVERGED)
        self.stop(failed & stuck, Status.STAGNATION)
        if bool(failed.any()):
            method.replace(self, failed, rt, tnorm)
        self.rnorm = torch.where(cand, tnorm, self.rnorm)
        return fails, best

    def _result(self, method: Step, history: list) -> SolveResult:
        status = self.status.masked_fill(self.status == Status.RUNNING, Status.MAXITER)
        opts, iterations = self.opts, self.iterations
        info, reason = summarize(status, iterations, self.rnorm, self.tol, self.name, opts["rtol"], opts["atol"],
                                 self.maxiter)
        hist = torch.stack(history)
        if iterations.numel():
            hist = hist[: int(iterations.max()) + 1]  # no row for an iteration aborted by a breakdown
        return SolveResult(x=method.solution(), converged=status == Status.CONVERGED, iterations=iterations,
                           residual_norms=hist, n_matvec=self.n_matvec, info=info, reason=reason, status=status,
                           tolerance=self.tol, extras=method.extras(self, hist.shape[0]))

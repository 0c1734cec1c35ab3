"""The base class of krylon's iterative solvers: options, input validation, implicit differentiation.

Every solver declares its options once, as a class-level table ``OPTIONS`` of ``name -> (default, checker)``;
the base class validates the constructor's options and the overrides given to :meth:`IterativeSolver.solve`
with the same checkers (from :mod:`krylon.kernels.validate`), so a bad value is refused up front with a message
that names the option, whichever way it was given.  The iteration itself runs in :mod:`.driver`.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch

from ..kernels import backend, distributed, validate
from ..operators import LinearOperator, aslinearoperator, unchanged
from .preconditioners import check_preconditioner
from .result import SolveResult

__all__ = ["IterativeSolver", "Problem", "OPTIONS", "refused", "with_default"]


def _optional_integer(value: Any, name: str) -> int | None:
    return None if value is None else validate.integer(value, name)


OPTIONS: dict[str, tuple[Any, Callable]] = {
    "rtol": (1e-5, validate.tolerance),
    "atol": (0.0, validate.tolerance),
    "maxiter": (None, _optional_integer),
    "M": (None, check_preconditioner),
    "callback": (None, validate.callable_or_none),
    "progress": (False, validate.boolean),
    "check_every": (50, validate.integer),
    "sync_every": (None, _optional_integer),
    "differentiable": (True, validate.boolean),
}
"""The options every iterative solver takes: ``name -> (default, checker(value, name))``."""


def refused(why: str) -> tuple[Any, Callable]:
    """A shared option a method has no use for (CGLS's and DCDM's ``M``): None only, else ``ValueError(why)``."""
    def check(value: Any, name: str):
        if value is not None:
            raise ValueError(f"{name}={value!r}: {why}")
        return value

    return None, check


def with_default(name: str, default: Any) -> tuple[Any, Callable]:
    """A shared option's table entry with another default (e.g. DCDM's ``maxiter=100``)."""
    return default, OPTIONS[name][1]


class Problem:
    """The validated inputs of a solve: operator, right-hand side, start, field ranks and batch shape."""

    def __init__(self, A: LinearOperator, b: torch.Tensor, x0, nd_in: int, nd_out: int):
        self.A, self.b, self.x0 = A, b, x0
        self.nd_in, self.nd_out = nd_in, nd_out
        self.batch = tuple(b.shape[: b.dim() - nd_out])


class IterativeSolver:
    """Base class: options, validation and the differentiable wrapper.

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
        ``state.residual_norms``).  With fields split across ranks it runs on every rank (``state.x`` is that
        rank's slab; the norms are the whole field's, the same on every rank).
    progress : bool
        Show a tqdm progress bar (with fields split across ranks: on rank 0 only).
    check_every : int
        Recompute the true residual every ``check_every`` iterations (residual replacement).
    sync_every : int, optional
        Host synchronisations (convergence checks that can end the loop) every this many
        iterations; default 1 on the CPU, 10 on CUDA.
    differentiable : bool
        Attach implicit-function gradients when ``b`` or the operator's tensors require grad.

    Notes
    -----
    A subclass declares its options in ``OPTIONS`` (usually ``{**IterativeSolver.OPTIONS, "new": (default,
    checker)}``) and implements ``_run(problem, options)``; unknown options raise ``TypeError`` listing the
    known ones.
    """

    name = "solver"
    needs_square = True
    OPTIONS = OPTIONS

    def __init__(self, **options):
        self.given = self._checked(options, "()")  # what the caller set; the rest are defaults
        # read-only: an option is changed by solve(**overrides) or a new solver, both of which check it
        self.options = types.MappingProxyType(self._resolve(self.given))

    def _resolve(self, given: dict) -> dict:
        """All options: the defaults with ``given`` on top (a subclass may derive some defaults from others)."""
        return {**{key: default for key, (default, _) in self.OPTIONS.items()}, **given}

    def _checked(self, given: dict, where: str) -> dict:
        """``given`` with every value through its option's checker (``TypeError`` for unknown names)."""
        unknown = set(given) - set(self.OPTIONS)
        if unknown:
            raise TypeError(f"{type(self).__name__}{where} got unknown option(s) {sorted(unknown)}; "
                            f"known: {sorted(self.OPTIONS)}")
        return {key: self.OPTIONS[key][1](value, key) for key, value in given.items()}

    # ------------------------------------------------------------------ public entry
    def solve(self, A, b, x0=None, **overrides) -> SolveResult:
        """Solve ``A x = b`` (every leading dimension of ``b`` is an independent system).

        Options given here override the constructor's for this call only.
        """
        opts = self._resolve({**self.given, **self._checked(overrides, ".solve()")})
        A = A if isinstance(A, LinearOperator) else aslinearoperator(A)
        prob = self._validate(A, b, x0)
        params = A.differentiable_tensors()
        needs_grad = opts["differentiable"] and torch.is_grad_enabled() and (
            prob.b.requires_grad or any(p.requires_grad for p in params))
        with torch.no_grad(), unchanged():  # the operator's derived data (Diffusion's weights) checked once
            res = self._run(prob, opts)
        if needs_grad:
            res.x = _ImplicitSolve.apply(res.x, self, prob, opts, prob.b, *params)
        return res

    __call__ = solve

    def _validate(self, A: LinearOperator, b, x0) -> Problem:
        # fields split across ranks: a bad slab on one rank stops every rank at once, not after a timeout
        with distributed.raise_together(f"the input of {self.name}", A.reduce is not None):
            return self._validate_here(A, b, x0)

    def _validate_here(self, A: LinearOperator, b, x0) -> Problem:
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
        validate.finite(b.detach(), "b")
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
            validate.finite(x0.detach(), "x0")
            x0 = x0.detach().to(torch.promote_types(b.dtype, x0.dtype) if backend.is_floating(x0.dtype) else b.dtype)
            x0 = torch.broadcast_to(x0, batch + A.shape_in).clone()
        return Problem(A, b, x0, nd_in, nd_out)

    def _run(self, prob: Problem, opts: dict) -> SolveResult:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ adjoint solve for gradients
    def _adjoint_solve(self, prob: Problem, opts: dict, g: torch.Tensor) -> torch.Tensor:
        """Solve ``N^H lam = g`` where ``x = N^{-1} c`` is the system this solver solves."""
        A = prob.A
        project = getattr(A, "project_range", None)
        if project is not None:
            g = project(g)  # a singular stencil: the adjoint system is consistent only on the range
        with unchanged():
            lam = self._run(Problem(A.adjoint(), g, None, prob.nd_out, prob.nd_in), self._adjoint_options(opts)).x
        return project(lam) if project is not None else lam

    def _adjoint_options(self, opts: dict) -> dict:
        """The options of the adjoint solve: the forward ones, silent."""
        return {**opts, "callback": None, "progress": False}

    def _implicit_residual(self, prob: Problem, x: torch.Tensor, b: torch.Tensor, opts: dict) -> torch.Tensor:
        """``c(b) - N x``: its derivative, contracted with ``lam``, gives the gradients."""
        return b - prob.A.matvec(x)


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
        params = list(prob.A.differentiable_tensors())
        b_in = ctx.b_ref.detach().requires_grad_(True)
        with torch.enable_grad():
            res = solver._implicit_residual(prob, x, b_in, opts)
            inner = torch.sum((torch.conj(lam) * res).real) if res.is_complex() else torch.sum(lam * res)
            grads = torch.autograd.grad(inner, [b_in] + params, allow_unused=True, retain_graph=False)
        gp = tuple(grads[1:])
        if len(gp) < ctx.n_params:  # pragma: no cover - defensive
            gp = gp + (None,) * (ctx.n_params - len(gp))
        return (None, None, None, None, grads[0]) + gp

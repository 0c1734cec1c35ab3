"""The result object every krylon solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["SolveResult", "IterationState", "Status"]


class Status:
    """Per-system status codes stored in :attr:`SolveResult.status`."""

    RUNNING = -1
    CONVERGED = 0
    MAXITER = 1
    INDEFINITE = 2
    NAN = 3
    STAGNATION = 4
    BREAKDOWN = 5
    PRECONDITIONER = 6

    NAMES = {
        -1: "running",
        0: "converged",
        1: "maxiter",
        2: "indefinite",
        3: "nan",
        4: "stagnation",
        5: "breakdown",
        6: "preconditioner",
    }
    HINTS = {
        1: "raise maxiter or use a preconditioner",
        2: "the operator (or preconditioner) is not positive definite: use MINRES for symmetric indefinite systems, GMRES for nonsymmetric ones",
        3: "a NaN/Inf appeared in the iteration: check the operator and preconditioner for non-finite output",
        4: "the true residual stopped decreasing above the tolerance (rounding floor of the dtype): loosen rtol or use float64",
        5: "the Krylov process broke down (zero pivot)",
        6: "the preconditioner is not positive definite (r^H M r <= 0)",
    }


@dataclass
class IterationState:
    """What a ``callback`` receives after each iteration."""

    iteration: int
    residual_norms: torch.Tensor
    _x: Optional[torch.Tensor] = None
    _x_fn: Optional[object] = None

    @property
    def x(self) -> torch.Tensor:
        """The current iterate (formed on demand by solvers that do not keep it, like GMRES)."""
        if self._x is None and self._x_fn is not None:
            self._x = self._x_fn()
        return self._x


@dataclass
class SolveResult:
    """Result of a solve.

    Attributes
    ----------
    x : tensor ``(*batch, *grid)``
        The solution (differentiable when the inputs require grad).
    converged : bool tensor ``batch``
        Per system: did it reach ``||r|| <= max(atol, rtol ||b||)`` (true residual)?
    iterations : int tensor ``batch``
        Iterations each system took.
    residual_norms : tensor ``(n_iterations + 1, *batch)``
        Residual-norm history (``[0]`` is the initial residual).
    n_matvec : int
        Applications of the operator (a batched application counts once).
    info : int
        scipy convention: 0 all converged, > 0 not converged after ``info``
        iterations, < 0 breakdown (indefinite, NaN, ...).
    reason : str
        Human-readable summary: what happened and what to try next.
    status : int tensor ``batch``
        Per-system :class:`Status` code.
    """

    x: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    residual_norms: torch.Tensor
    n_matvec: int
    info: int
    reason: str
    status: torch.Tensor
    tolerance: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def relative_residuals(self) -> torch.Tensor:
        """``residual_norms`` divided by the initial residual norm of each system."""
        r0 = self.residual_norms[0]
        return self.residual_norms / torch.where(r0 == 0, torch.ones_like(r0), r0)

    def __repr__(self) -> str:
        b = tuple(self.converged.shape)
        its = self.iterations
        it_s = str(int(its.max())) if its.numel() else "0"
        return (f"SolveResult(batch={b}, converged={int(self.converged.sum())}/{self.converged.numel()}, "
                f"iterations<={it_s}, n_matvec={self.n_matvec}, info={self.info}, reason={self.reason!r})")


def summarize(status: torch.Tensor, iterations: torch.Tensor, final: torch.Tensor, tol: torch.Tensor, solver: str,
              rtol: float, atol: float, maxiter: int) -> tuple[int, str]:
    """Build ``(info, reason)`` from per-system status codes."""
    st = status.reshape(-1).cpu()
    n = st.numel()
    n_conv = int((st == Status.CONVERGED).sum())
    if n == 0:
        return 0, f"{solver}: empty batch"
    if n_conv == n:
        return 0, (f"{solver}: converged ({n_conv}/{n} systems reached ||r|| <= max(atol={atol:g}, rtol={rtol:g}*||b||) "
                   f"in <= {int(iterations.max())} iterations)")
    codes = sorted(set(st.tolist()) - {Status.CONVERGED})
    worst = max(codes, key=lambda c: (c != Status.MAXITER, c))
    parts = []
    for c in codes:
        k = int((st == c).sum())
        parts.append(f"{k}/{n} {Status.NAMES[c]}")
    ratio = final.reshape(-1).cpu() / torch.clamp(tol.reshape(-1).cpu(), min=torch.finfo(final.dtype).tiny)
    bad = st != Status.CONVERGED
    worst_ratio = float(ratio[bad].max()) if bool(bad.any()) else 0.0
    msg = (f"{solver}: not converged ({', '.join(parts)}; {n_conv}/{n} converged); "
           f"worst residual is {worst_ratio:.3g}x the tolerance. Hint: {Status.HINTS.get(worst, '')}")
    info = int(iterations.max()) if worst == Status.MAXITER or worst == Status.STAGNATION else -int(worst)
    if worst == Status.MAXITER:
        info = int(maxiter)
    return info, msg

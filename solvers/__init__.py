"""Solvers: algorithms that turn a problem into a solution (``krylon.solvers``)."""

from .result import SolveResult, IterationState, Status
from .base import IterativeSolver
from .cg import CG
from .minres import MINRES
from .gmres import GMRES
from .cgls import CGLS
from .preconditioners import Preconditioner, Jacobi, SpectralPoisson, IC0, as_preconditioner
from .compat import cg, minres, gmres
from .dcdm import DCDM

__all__ = [
    "SolveResult", "IterationState", "Status",
    "IterativeSolver", "CG", "MINRES", "GMRES", "CGLS",
    "Preconditioner", "Jacobi", "SpectralPoisson", "IC0", "as_preconditioner",
    "cg", "minres", "gmres", "DCDM",
]

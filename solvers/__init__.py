"""Solvers: algorithms that turn a problem into a solution (``krylon.solvers``)."""

from .base import IterativeSolver
from .cg import CG
from .cgls import CGLS
from .compat import cg, gmres, minres
from .dcdm import DCDM
from .diffusion import DDS, DPS
from .gmres import GMRES
from .medida import MEDIDA, DiscoveredModelError
from .minres import MINRES
from .operator_learning import OperatorLearner
from .preconditioners import IC0, Jacobi, Preconditioner, SpectralPoisson, as_preconditioner
from .result import IterationState, SolveResult, Status

__all__ = [
    "SolveResult", "IterationState", "Status",
    "IterativeSolver", "CG", "MINRES", "GMRES", "CGLS",
    "Preconditioner", "Jacobi", "SpectralPoisson", "IC0", "as_preconditioner",
    "cg", "minres", "gmres", "DCDM",
    "MEDIDA", "DiscoveredModelError", "OperatorLearner",
    "DDS", "DPS",
]

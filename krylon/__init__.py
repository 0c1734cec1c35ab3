"""krylon: solvers for operators and inverse problems on shared PyTorch FFT and linear-algebra kernels.

>>> import krylon
>>> from krylon.operators import Laplacian
>>> from krylon.solvers import CG
"""

__version__ = "0.1.0"

from . import kernels, operators, solvers  # noqa: E402
from .operators import LinearOperator, aslinearoperator, Laplacian, Diffusion  # noqa: E402
from .solvers import CG, MINRES, CGLS, GMRES, SolveResult  # noqa: E402

__all__ = [
    "__version__", "kernels", "operators", "solvers",
    "LinearOperator", "aslinearoperator", "Laplacian", "Diffusion",
    "CG", "MINRES", "CGLS", "GMRES", "SolveResult",
]

"""Nonlinear PDE models stepped in Fourier space (``krylon.operators.pde``), one module per equation.

Each model exposes its stiff linear part as a diagonal symbol and its nonlinear tendency as a function of the
spectral state, so the integrators of :mod:`krylon.solvers.timestepping` step any of them.
"""

from .kuramoto_sivashinsky import KuramotoSivashinsky
from .navier_stokes import NavierStokes2D
from .quasi_geostrophic import QuasiGeostrophic

__all__ = ["KuramotoSivashinsky", "NavierStokes2D", "QuasiGeostrophic"]

"""Operators: things that map fields to fields (``krylon.operators``)."""

from .base import TAGS, IdentityOperator, LinearOperator, aslinearoperator, dottest, unchanged
from .distributed import DistributedLaplacian
from .imaging import MRI, Radon
from .matrix import CallableOperator, DenseMatrix, ScipyOperator, SparseMatrix
from .stencil import Diffusion, Laplacian

__all__ = [
    "LinearOperator", "IdentityOperator", "aslinearoperator", "dottest", "TAGS", "unchanged",
    "DenseMatrix", "SparseMatrix", "ScipyOperator", "CallableOperator",
    "Laplacian", "Diffusion", "DistributedLaplacian",
    "MRI", "Radon",
]

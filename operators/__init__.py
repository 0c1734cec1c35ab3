"""Operators: things that map fields to fields (``krylon.operators``)."""

from .base import LinearOperator, IdentityOperator, aslinearoperator, dottest, TAGS
from .matrix import DenseMatrix, SparseMatrix, ScipyOperator, CallableOperator
from .stencil import Laplacian, Diffusion

__all__ = [
    "LinearOperator", "IdentityOperator", "aslinearoperator", "dottest", "TAGS",
    "DenseMatrix", "SparseMatrix", "ScipyOperator", "CallableOperator",
    "Laplacian", "Diffusion",
]

"""Numerical primitives shared by every solver family (no solver logic here)."""

import importlib

from . import backend, linalg, stencil, validate

__all__ = ["backend", "linalg", "stencil", "validate", "fft", "distributed"]


def __getattr__(name):  # fft and distributed are imported on first use to keep ``import krylon`` light
    if name in ("fft", "distributed"):
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'krylon.kernels' has no attribute {name!r}")

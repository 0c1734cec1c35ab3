"""Numerical primitives shared by every solver family (no solver logic here)."""

import importlib

from . import backend, linalg, stencil, validate

__all__ = ["backend", "linalg", "stencil", "validate", "fft"]


def __getattr__(name):  # fft is imported on first use to keep ``import krylon`` light
    if name == "fft":
        return importlib.import_module(".fft", __name__)
    raise AttributeError(f"module 'krylon.kernels' has no attribute {name!r}")

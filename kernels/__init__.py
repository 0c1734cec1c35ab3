"""Numerical primitives shared by every solver family (no solver logic here)."""

from . import backend, linalg, stencil

__all__ = ["backend", "linalg", "stencil", "fft"]


def __getattr__(name):  # fft is imported on first use to keep ``import krylon`` light
    if name == "fft":
        from . import fft

        return fft
    raise AttributeError(f"module 'krylon.kernels' has no attribute {name!r}")

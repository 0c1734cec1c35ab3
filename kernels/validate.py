"""The one set of argument checkers every layer uses.

Each checker returns the value in its canonical Python form or raises ``TypeError`` (wrong kind of value) /
``ValueError`` (right kind, bad value) with a message that names the argument and shows what was given.
Solvers, operators, kernels and the scipy drop-ins all call these, so the same mistake reads the same
wherever it is made.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "real_number",
    "tolerance",
    "integer",
    "boolean",
    "choice",
    "callable_or_none",
    "per_axis",
    "shape",
    "finite",
]


def real_number(value: Any, name: str, *, minimum: float | None = None, finite: bool = True) -> float:
    """``value`` as a Python float (a one-element real tensor, a 0-d numpy array or a numpy scalar is accepted).

    ``minimum`` is inclusive; ``finite=False`` lets ``inf`` through (NaN never passes).
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    elif type(value).__name__ == "ndarray" and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()  # a 0-d numpy array, as float() takes it (scipy's tolerances)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return value


def tolerance(value: Any, name: str) -> float:
    """A stopping tolerance: a finite real number >= 0 (scipy's ``rtol``/``atol``)."""
    return real_number(value, name, minimum=0.0)


def integer(value: Any, name: str, minimum: int | None = 1) -> int:
    """``value`` as a Python int >= ``minimum`` (bools are refused: ``maxiter=True`` is a mistake)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def boolean(value: Any, name: str) -> bool:
    """A flag: ``True``/``False`` (numpy bools included), nothing that merely converts to one."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_ without importing numpy here
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")


def choice(value: Any, name: str, options: Sequence) -> Any:
    """One of ``options`` (compared with ``==``)."""
    if isinstance(value, (list, dict, set)) or value not in tuple(options):
        raise ValueError(f"{name} must be one of {tuple(options)!r}, got {value!r}")
    return value


def callable_or_none(value: Any, name: str):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r} of type {type(value).__name__}")
    return value


def per_axis(values: Any, ndim: int | None, name: str) -> tuple[float, ...]:
    """Positive finite lengths or spacings, one per grid axis.

    A single number is repeated ``ndim`` times; without ``ndim`` it is refused, because the number of grid
    dimensions would be a guess.
    """
    if isinstance(values, torch.Tensor):
        values = values.item() if values.dim() == 0 else values.tolist()
    elif hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy arrays and scalars
        values = values.tolist()
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        if ndim is None:
            raise ValueError(
                f"{name}={values!r} is a single number, which does not say how many grid dimensions there are: "
                f"pass one value per axis, e.g. ({values!r},) for a 1-D grid, or give ndim="
            )
        values = (values,) * ndim
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {values!r}")
    out = tuple(real_number(v, f"{name} entry") for v in values)
    if not out:
        raise ValueError(f"{name} is empty: need at least one grid dimension")
    if ndim is not None and len(out) != ndim:
        raise ValueError(f"{name} has {len(out)} entries but the grid has ndim={ndim} dimensions")
    if not all(v > 0 for v in out):
        raise ValueError(f"{name} must be positive, got {out}")
    return out


def shape(value: Any, name: str = "shape") -> tuple[int, ...]:
    """A grid shape: a non-empty sequence of positive integers."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of grid sizes, got {value!r}")
    out = tuple(integer(n, f"{name} entry") for n in value)
    if not out:
        raise ValueError(f"{name} is empty: need at least one grid dimension")
    return out


def finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` itself, or ``ValueError`` saying how many of its values are NaN or Inf."""
    ok = torch.isfinite(t)
    if not bool(ok.all()):
        raise ValueError(f"{name} contains {int((~ok).sum())} non-finite value(s) (NaN or Inf)")
    return t

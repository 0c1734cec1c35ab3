"""Candidate-term libraries for model-error discovery: named columns evaluated on states.

A library is anything with ``names`` (a tuple of term names that read as equations) and
``__call__(states) -> Theta`` returning the terms on the grid, shape ``(*batch, *grid, len(names))``.
:class:`krylon.solvers.MEDIDA` regresses the model error on these columns; the term names are the keys of the
discovered coefficients and of a model's own coefficients, so a discovered correction adds to a model by name.
:class:`Library` is the small base class; :class:`PolynomialDerivativeLibrary` is the Kuramoto–Sivashinsky
library ``u^p d^d u / dx^d``; :class:`QuasiGeostrophicLibrary` the two-layer QG library (Laplacians, gradients,
streamfunctions, the jet and the Jacobians of both layers, each in either layer's PV equation).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from ..kernels import validate
from ..operators.pde.kuramoto_sivashinsky import evaluate_term, term_name
from ..operators.pde.quasi_geostrophic import QuasiGeostrophic, library_names

__all__ = ["Library", "PolynomialDerivativeLibrary", "QuasiGeostrophicLibrary"]


class Library:
    """Base class of candidate-term libraries: subclasses set ``names`` and implement :meth:`evaluate`.

    Calling the library checks the result (one column per name, finite values) so a library bug reads as
    a clear error, not a wrong regression.
    """

    names: tuple[str, ...] = ()

    def evaluate(self, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        theta = self.evaluate(states)
        if theta.shape[-1] != len(self.names):
            raise RuntimeError(f"{type(self).__name__} returned {theta.shape[-1]} columns for {len(self.names)} names")
        return validate.finite(theta, f"{type(self).__name__} terms")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.names)})"


class PolynomialDerivativeLibrary(Library):
    r"""The terms ``u^p d^d u / dx^d`` of a periodic 1-D field, derivatives computed spectrally.

    Parameters
    ----------
    length : float
        Period of the grid (the derivatives' scale).
    max_power, max_order : int
        ``p = 0..max_power`` and ``d = 0..max_order`` (default 4 and 4: the 24 terms of the MEDIDA paper,
        the constant ``p = d = 0`` left out).
    n : int, optional
        Grid size, when known up front: a derivative order the grid cannot resolve is then refused at once.
    resolution_tol : float
        When evaluating, a warning is raised if a derivative term keeps more than this fraction of its energy
        in the upper third of the wavenumbers: the grid under-resolves it (aliasing, noise amplification).

    Notes
    -----
    The columns are ordered by derivative order, then power: ``u, u^2, .., u^4, u_x, u*u_x, ..``.  Names come
    from :func:`krylon.operators.pde.kuramoto_sivashinsky.term_name` (``u*u_x``, ``u_xx``, ``u^2*u_x``).

    Examples
    --------
    >>> import math, torch
    >>> lib = PolynomialDerivativeLibrary(2 * math.pi, max_power=1, max_order=2)
    >>> lib.names
    ('u', 'u_x', 'u*u_x', 'u_xx', 'u*u_xx')
    >>> x = torch.arange(32, dtype=torch.float64) * 2 * math.pi / 32
    >>> theta = lib(torch.sin(x))
    >>> torch.allclose(theta[..., 3], -torch.sin(x))
    True
    """

    def __init__(self, length: float, *, max_power: int = 4, max_order: int = 4, n: int | None = None,
                 resolution_tol: float = 1e-3):
        self.length = validate.real_number(length, "length", minimum=0.0)
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.max_power = validate.integer(max_power, "max_power", minimum=0)
        self.max_order = validate.integer(max_order, "max_order", minimum=0)
        self.resolution_tol = validate.real_number(resolution_tol, "resolution_tol", minimum=0.0)
        self.terms = tuple((p, d) for d in range(self.max_order + 1) for p in range(self.max_power + 1) if p or d)
        if not self.terms:
            raise ValueError("max_power = max_order = 0 leaves only the constant: the library would be empty")
        self.names = tuple(term_name(p, d) for p, d in self.terms)
        self.n = None if n is None else self._check_grid(validate.integer(n, "n", minimum=1))

    def _check_grid(self, n: int) -> int:
        # an order-d derivative needs modes beyond the mean and Nyquist to mean anything: 2 d < n
        if 2 * self.max_order >= n:
            raise ValueError(f"the library needs derivatives up to order {self.max_order} ('{term_name(0, self.max_order)}'), "
                             f"which a {n}-point grid cannot resolve (need n > {2 * self.max_order})")
        return n

    def evaluate(self, states: torch.Tensor) -> torch.Tensor:
        if not isinstance(states, torch.Tensor) or not states.is_floating_point():
            raise TypeError(f"states must be a real floating-point tensor, got {type(states).__name__}")
        if states.dim() < 1:
            raise ValueError("states must have shape (*batch, n)")
        n = self._check_grid(states.shape[-1])
        self._check_resolved(states, n)
        return torch.stack([evaluate_term(states, p, d, self.length) for p, d in self.terms], dim=-1)

    def _check_resolved(self, states: torch.Tensor, n: int) -> None:
        if self.max_order == 0 or self.resolution_tol <= 0:
            return
        k = torch.arange(n // 2 + 1, dtype=states.dtype, device=states.device)
        power = torch.fft.rfft(states).abs().square().reshape(-1, n // 2 + 1).sum(0) * k ** (2 * self.max_order)
        tail = float(power[k > n / 3].sum() / power.sum().clamp_min(torch.finfo(states.dtype).tiny))
        if tail > self.resolution_tol:
            warnings.warn(f"the grid does not resolve '{term_name(0, self.max_order)}' of these states: {tail:.1%} of its energy "
                          f"lies in the upper third of the {n}-point grid's wavenumbers (under-resolved or noisy states; "
                          "refine the grid or denoise, e.g. with the EnKF)", RuntimeWarning, stacklevel=3)

    def subset(self, names: Sequence[str]) -> tuple[int, ...]:
        """Column indices of the given term names (a name not in the library is an error)."""
        missing = [nm for nm in names if nm not in self.names]
        if missing:
            raise ValueError(f"terms {missing} are not in the library {self.names}")
        return tuple(self.names.index(nm) for nm in names)


class QuasiGeostrophicLibrary(Library):
    r"""The two-layer QG library: 11 terms, each placed in the ``q_1`` or the ``q_2`` equation (22 columns).

    Terms (:data:`krylon.operators.pde.quasi_geostrophic.LIBRARY_TERMS`): ``lap(psi_i)``, ``psi_i``, ``psi_R``,
    ``dx(psi_i)``, ``dy(psi_i)``, ``J(psi_i,q_i)``; column ``"q2:lap(psi_2)"`` is ``lap(psi_2)`` in the ``q_2``
    equation.  All are computed spectrally on the model's (dealiased) grid.

    Parameters
    ----------
    model : QuasiGeostrophic
        Supplies the grid, the jet ``psi_R`` and the PV inversion.
    space : ``"psi"`` or ``"q"``
        ``"psi"`` (default): the columns mapped through the PV inversion, matching a model error of
        streamfunction states (what :class:`krylon.solvers.MEDIDA` forms from ``psi`` observations); ``"q"``:
        as PV tendencies.

    Examples
    --------
    >>> from krylon.operators.pde import QuasiGeostrophic
    >>> lib = QuasiGeostrophicLibrary(QuasiGeostrophic(shape=(16, 16)))
    >>> len(lib), lib.names[2]
    (22, 'q1:psi_1')
    """

    def __init__(self, model: QuasiGeostrophic, *, space: str = "psi"):
        if not isinstance(model, QuasiGeostrophic):
            raise TypeError(f"model must be a QuasiGeostrophic, got {type(model).__name__}")
        self.model = model
        self.space = validate.choice(space, "space", ("psi", "q"))
        self.names = library_names()

    def evaluate(self, states: torch.Tensor) -> torch.Tensor:
        return self.model.library(states, space=self.space)

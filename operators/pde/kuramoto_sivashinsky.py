"""The Kuramoto–Sivashinsky equation and its polynomial–derivative terms, on a periodic 1-D grid.

The model is written as a sum of named terms ``u_t = sum_j a_j * term_j`` with ``term_j = u^p * d^d u / dx^d``
(names ``u_xx``, ``u*u_x``, ``u^2*u_x``, ...; :func:`term_name`).  The classical equation
``u_t = -l0 u u_x - l1 u_xx - l2 u_xxxx`` is ``a = {"u*u_x": -l0, "u_xx": -l1, "u_xxxx": -l2}``.  Terms with
``p = 0`` are linear and go into the diagonal symbol stepped exactly by the exponential integrators; the others
are evaluated pseudo-spectrally on the rfft grid (real transforms keep conjugate symmetry exactly, so long runs
do not drift off the real axis).  The same term names label the candidate library of
:mod:`krylon.solvers.libraries`, so a discovered model error adds to a model's coefficients by name.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ...kernels import backend, validate
from ...kernels import fft as kfft

__all__ = ["KuramotoSivashinsky", "term_name", "parse_term", "evaluate_term", "initial_condition"]

_ORDERS = {0: "", 1: "u_x", 2: "u_xx", 3: "u_xxx", 4: "u_xxxx"}
_TERM = re.compile(r"^(?:u(?:\^(\d+))?(?:\*(u_x+))?|(u_x+))$")


def term_name(power: int, order: int) -> str:
    """The name of ``u^power * d^order u / dx^order``: ``u``, ``u^2``, ``u_xx``, ``u*u_x``, ``u^3*u_xxxx``.

    ``power = order = 0`` (the constant) has no name and is refused.

    Examples
    --------
    >>> term_name(1, 1), term_name(0, 4), term_name(2, 0), term_name(2, 3)
    ('u*u_x', 'u_xxxx', 'u^2', 'u^2*u_xxx')
    """
    power = validate.integer(power, "power", minimum=0)
    order = validate.integer(order, "order", minimum=0)
    if power == 0 and order == 0:
        raise ValueError("power = order = 0 is the constant term, which has no name in this library")
    deriv = "u_" + "x" * order if order else ""
    if power == 0:
        return deriv
    mono = "u" if power == 1 else f"u^{power}"
    return f"{mono}*{deriv}" if order else mono


def parse_term(name: str) -> tuple[int, int]:
    """``(power, order)`` of a term name made by :func:`term_name` (inverse of it).

    Examples
    --------
    >>> parse_term("u*u_x"), parse_term("u_xxxx"), parse_term("u^2")
    ((1, 1), (0, 4), (2, 0))
    """
    if not isinstance(name, str):
        raise TypeError(f"a term name must be a string, got {name!r}")
    m = _TERM.match(name.replace(" ", ""))
    if m is None or name.strip() in ("",):
        raise ValueError(f"{name!r} is not a term name of the form u^p*u_x...x (e.g. 'u*u_x', 'u_xx', 'u^2*u_x', 'u')")
    power_s, deriv_times, deriv_alone = m.groups()
    if deriv_alone is not None:
        return 0, len(deriv_alone) - 2
    power = int(power_s) if power_s is not None else 1
    order = len(deriv_times) - 2 if deriv_times is not None else 0
    if power < 1:
        raise ValueError(f"{name!r}: a power must be >= 1 (write the derivative alone for power 0)")
    return power, order


def _ik(n: int, length: float, order: int, dtype, device) -> torch.Tensor:
    """The rfft symbol ``(i k)^order`` with the Nyquist mode of odd orders zeroed (keeps real data real)."""
    k = kfft.wavenumbers(n, length, real=True, dtype=torch.float64)
    sym = (1j * k.to(torch.complex128)) ** order
    if order % 2 == 1 and n % 2 == 0:
        sym[-1] = 0
    return sym.to(device=device, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)


def evaluate_term(u: torch.Tensor, power: int, order: int, length: float) -> torch.Tensor:
    """``u^power * d^order u / dx^order`` of real fields ``u`` of shape ``(*batch, n)`` (spectral derivatives)."""
    if order == 0:
        return u ** power
    du = kfft.derivative(u, order, (length,))
    return du if power == 0 else u ** power * du


def initial_condition(n: int = 1024, length: float = 100.0, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The papers' initial state ``u0 = -cos(2 pi x / L) (1 + sin(-2 pi x / L))`` on ``x_j = j L / n``."""
    n = validate.integer(n, "n", minimum=4)
    x = torch.arange(n, dtype=torch.float64) * (validate.real_number(length, "length", minimum=0.0) / n)
    w = 2 * math.pi * x / length
    return (-torch.cos(w) * (1 + torch.sin(-w))).to(dtype=dtype, device=backend.resolve_device(device))


class KuramotoSivashinsky:
    r"""Kuramoto–Sivashinsky ``u_t = -l0 u u_x - l1 u_xx - l2 u_xxxx (+ extra terms)`` on a periodic grid.

    Parameters
    ----------
    coefficients : sequence of 3 floats
        ``(l0, l1, l2)``; ``(1, 1, 1)`` is the classical equation.
    extra : mapping term name -> float, optional
        Further terms added to the right-hand side, ``u_t = ... + c * term`` (e.g. ``{"u_xxx": 0.1}`` or
        ``{"u^2*u_x": 0.15}``); any ``u^p * d^d u`` with ``p, d <= 4``.
    length : float
        Period ``L`` (default 100, the papers').
    n : int
        Grid points (default 1024).
    dtype, device :
        Of the states the model builds (:meth:`grid`, :func:`initial_condition`); stepping follows the state.

    Attributes
    ----------
    terms : dict
        Right-hand-side coefficient per term name, ``u_t = sum terms[name] * name``: the generic form MEDIDA
        uses to build the corrected model.
    linear : torch.Tensor
        The diagonal symbol of the linear terms on the rfft grid (``n // 2 + 1`` entries).

    Notes
    -----
    A nonlinear term ``u^p u_x`` is evaluated in conservative form ``(u^{p+1})_x / (p + 1)`` (the same
    function of the grid values for a resolved state, and it conserves the mean exactly).  The classical
    KS model conserves the mean of ``u``; with ``L = 100`` it is chaotic with a Lyapunov time of about 10.

    Examples
    --------
    >>> ks = KuramotoSivashinsky((1, 1, 1), n=64, length=22.0)
    >>> u = initial_condition(64, 22.0)
    >>> ks.rhs(u).shape
    torch.Size([64])
    """

    def __init__(self, coefficients=(1.0, 1.0, 1.0), *, extra: Mapping[str, float] | None = None,
                 length: float = 100.0, n: int = 1024, dtype=torch.float64, device=None):
        coefficients = tuple(coefficients) if not isinstance(coefficients, Mapping) else coefficients
        terms: dict[str, float] = {}
        if isinstance(coefficients, Mapping):  # already a term -> right-hand-side coefficient map
            for name, c in coefficients.items():
                terms[name] = validate.real_number(c, f"coefficient of {name}")
        else:
            if len(coefficients) != 3:
                raise ValueError(f"coefficients must be (l0, l1, l2) of -l0 u u_x - l1 u_xx - l2 u_xxxx, got {coefficients!r}")
            for name, lam in zip(("u*u_x", "u_xx", "u_xxxx"), coefficients):
                terms[name] = -validate.real_number(lam, f"coefficient of {name}")
        for name, c in (extra or {}).items():
            c = validate.real_number(c, f"coefficient of extra term {name}")
            terms[name] = terms.get(name, 0.0) + c
        self.length = validate.real_number(length, "length", minimum=0.0)
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.n = validate.integer(n, "n", minimum=8)
        self.dtype = dtype
        self.device = backend.resolve_device(device)
        self._parsed = {}
        for name in terms:
            p, d = parse_term(name)
            if p > 4 or d > 4:
                raise ValueError(f"term {name!r}: powers and derivative orders up to 4 are supported")
            if 2 * d >= self.n:
                raise ValueError(f"term {name!r} needs a derivative of order {d}, which a {self.n}-point grid cannot resolve")
            self._parsed[name] = (p, d)
        self.terms = {name: float(c) for name, c in terms.items()}
        # linear symbol sum_d a_d (ik)^d in double precision (rounded by the integrator once)
        sym = torch.zeros(self.n // 2 + 1, dtype=torch.complex128)
        for name, (p, d) in self._parsed.items():
            if p == 0 or (p == 1 and d == 0):
                sym = sym + self.terms[name] * (_ik(self.n, self.length, d, torch.float64, None) if p == 0 else 1.0)
        self.linear = sym.real.clone() if bool((sym.imag == 0).all()) else sym
        self._nonlinear = [(self.terms[name], p, d) for name, (p, d) in self._parsed.items()
                           if not (p == 0 or (p == 1 and d == 0)) and self.terms[name] != 0]
        self._symbols: dict = {}

    @property
    def lambdas(self) -> tuple[float, float, float]:
        """``(l0, l1, l2)`` of ``-l0 u u_x - l1 u_xx - l2 u_xxxx`` (other terms are in :attr:`terms`)."""
        return tuple(-self.terms.get(name, 0.0) + 0.0 for name in ("u*u_x", "u_xx", "u_xxxx"))

    def grid(self) -> torch.Tensor:
        """The grid points ``x_j = j L / n``."""
        return torch.arange(self.n, dtype=self.dtype, device=self.device) * (self.length / self.n)

    def __repr__(self) -> str:
        eq = " ".join(f"{'-' if c < 0 else '+'} {abs(c):g} {name}" for name, c in self.terms.items())
        return f"KuramotoSivashinsky(u_t = {eq.lstrip('+ ')}, L={self.length:g}, n={self.n})"

    # ---------------------------------------------------------------------------------- spectral pieces
    def _ik(self, order: int, like: torch.Tensor) -> torch.Tensor:
        key = (order, like.dtype, like.device)
        if key not in self._symbols:
            real = torch.float64 if like.dtype == torch.complex128 else torch.float32
            self._symbols[key] = _ik(self.n, self.length, order, real, like.device)
        return self._symbols[key]

    def nonlinear(self, v: torch.Tensor) -> torch.Tensor:
        """The nonlinear tendency of the spectral state ``v = rfft(u)``, in spectral space."""
        out = torch.zeros_like(v)
        if not self._nonlinear:
            return out
        u = torch.fft.irfft(v, n=self.n)
        for c, p, d in self._nonlinear:
            if d == 1:  # conservative form (u^{p+1})_x / (p+1)
                out = out + (c / (p + 1)) * self._ik(1, v) * torch.fft.rfft(u ** (p + 1))
            elif d == 0:
                out = out + c * torch.fft.rfft(u ** p)
            else:
                du = torch.fft.irfft(self._ik(d, v) * v, n=self.n)
                out = out + c * torch.fft.rfft(u ** p * du)
        return out

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        """``u_t`` of real states ``u`` of shape ``(*batch, n)`` (grid values)."""
        u = self._state(u)
        v = torch.fft.rfft(u)
        lin = self.linear.to(device=v.device, dtype=v.dtype if self.linear.is_complex() else v.real.dtype)
        return torch.fft.irfft(lin * v + self.nonlinear(v), n=self.n)

    def _state(self, u) -> torch.Tensor:
        u = backend.as_tensor(u) if not isinstance(u, torch.Tensor) else u
        if u.is_complex() or not u.is_floating_point():
            raise TypeError(f"states must be real floating-point tensors, got {u.dtype}")
        if u.dim() < 1 or u.shape[-1] != self.n:
            raise ValueError(f"states must have shape (*batch, {self.n}), got {tuple(u.shape)}")
        return validate.finite(u, "the state")

    grid_dims = 1  # one trailing grid axis

    def linear_symbol(self, shape=None, dtype=torch.float64, device=None) -> torch.Tensor:
        """The diagonal linear symbol on the rfft grid (:attr:`linear`), the stepping interface every model shares
        (:func:`krylon.solvers.timestepping.simulate`); ``shape`` must be ``(n,)`` when given, ``dtype`` is the
        real precision (a symbol with odd-order terms is complex)."""
        if shape is not None and tuple(shape) != (self.n,):
            raise ValueError(f"this model's grid is ({self.n},), got states on {tuple(shape)}")
        complex_ = torch.complex128 if dtype == torch.float64 else torch.complex64
        return self.linear.to(device=device, dtype=complex_ if self.linear.is_complex() else dtype)

    def spectral(self, u: torch.Tensor) -> torch.Tensor:
        """The spectral state ``rfft(u)`` of real grid states ``(*batch, n)`` (what the integrators step)."""
        return torch.fft.rfft(self._state(u))

    def physical(self, v: torch.Tensor) -> torch.Tensor:
        """Grid values of spectral states (inverse of :meth:`spectral`)."""
        return torch.fft.irfft(v, n=self.n)

"""Time integrators for semi-linear evolution equations ``v_t = L v + N(v)`` with a diagonal linear part.

The PDE models in :mod:`krylon.operators.pde` (2-D Navier–Stokes vorticity, Kuramoto–Sivashinsky,
two-layer quasi-geostrophic flow) are stepped in Fourier space, where the stiff linear part (viscosity,
hyperdiffusion) is a symbol ``L`` that multiplies the coefficients elementwise and the nonlinear part
``N`` is evaluated pseudo-spectrally.  An integrator takes the symbol, the nonlinear function and the
step once, precomputes its coefficients, and then advances any batch of states that broadcasts against
the symbol: ensembles and data-set batches run as one tensor.

* :class:`CNAB2` — Crank–Nicolson on ``L``, second-order Adams–Bashforth on ``N`` (IMEX, order 2); the first
  step uses forward Euler on ``N`` (one step of local error O(dt^2) keeps global order 2).
* :class:`ETDRK4` — exponential time differencing RK4 of Cox–Matthews with the coefficients evaluated by
  contour integrals (Kassam–Trefethen 2005), so ``L`` near 0 loses no digits; order 4.
* :class:`Leapfrog` — leapfrog on ``N`` with ``L`` backward over the double step and a Robert–Asselin(–Williams)
  filter (the two-layer QG codes' scheme); its first step is forward Euler.

:func:`integrate` runs an integrator for a number of steps, keeps snapshots and stops with a clear error
when the state stops being finite.  :func:`simulate` is the one time-stepping driver of every model (Navier–Stokes,
Kuramoto–Sivashinsky and QG generators, MEDIDA): physical states in, snapshots out.  A model it steps has
``linear_symbol(shape, dtype, device)`` (the diagonal symbol on the spectral grid of a physical grid ``shape``),
``nonlinear(v)``, ``spectral(u)``, ``physical(v)`` and ``grid_dims`` (its number of trailing grid axes).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..kernels import validate

__all__ = ["CNAB2", "ETDRK4", "Integrator", "Leapfrog", "METHODS", "integrate", "simulate", "whole_steps"]

Nonlinear = Callable[[torch.Tensor], torch.Tensor]


def _check_step(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"the time step must be a positive finite number, got {dt!r}")
    return float(dt)


def _symbol(linear) -> torch.Tensor:
    linear = torch.as_tensor(linear)
    if not torch.isfinite(linear).all():
        raise ValueError("the linear symbol L has non-finite entries")
    return linear


class Integrator:
    """One step of ``v_t = L v + N(v)``: ``v_next, memory = integrator.step(v, memory)``.

    ``memory`` carries what a multistep method needs from earlier steps (``None`` on the first step);
    single-step methods return ``None``.  Coefficients follow the state's dtype and device on first use.
    """

    order: int = 0

    def __init__(self, linear, nonlinear: Nonlinear, dt: float):
        if not callable(nonlinear):
            raise TypeError(f"nonlinear must be callable (spectral state -> spectral tendency), got {type(nonlinear).__name__}")
        self.dt = _check_step(dt)
        self.linear = _symbol(linear)
        self.nonlinear = nonlinear
        self._cache: dict = {}

    def _coefficients(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (v.dtype, v.device)
        if key not in self._cache:
            coeffs = self._compute()  # in double precision, rounded once to the state's precision
            if not v.is_complex() and any(c.is_complex() for c in coeffs):
                raise TypeError("a complex linear symbol needs a complex (spectral) state")
            real = v.real.dtype if v.is_complex() else v.dtype
            self._cache[key] = tuple(c.to(device=v.device, dtype=v.dtype if c.is_complex() else real) for c in coeffs)
        return self._cache[key]

    def _compute(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def step(self, v: torch.Tensor, memory=None):
        raise NotImplementedError


class CNAB2(Integrator):
    """Crank–Nicolson / Adams–Bashforth 2 (IMEX, order 2).

    ``v_{n+1} = [(1 + dt L / 2) v_n + dt (3/2 N_n - 1/2 N_{n-1})] / (1 - dt L / 2)``; ``memory`` is ``N_n``.
    Stable for any ``L <= 0`` (viscosity, hyperdiffusion); the explicit part limits dt by the advective CFL.
    """

    order = 2

    def _compute(self):
        half = 0.5 * self.dt * self.linear.to(torch.complex128 if self.linear.is_complex() else torch.float64)
        if (half == 1).any():
            raise ValueError(f"dt L / 2 = 1 for some mode: Crank–Nicolson is singular at dt = {self.dt}")
        return (1 + half) / (1 - half), self.dt / (1 - half)

    def step(self, v, memory=None):
        explicit, implicit = self._coefficients(v)
        n_now = self.nonlinear(v)
        forcing = n_now if memory is None else 1.5 * n_now - 0.5 * memory
        return explicit * v + implicit * forcing, n_now


class ETDRK4(Integrator):
    """Exponential time differencing RK4 (Cox–Matthews), coefficients by contour integrals (Kassam–Trefethen).

    Parameters
    ----------
    contour_points : int
        Points on the circle of radius 1 around each ``dt L`` used to evaluate the phi-functions
        (default 32, over the full circle so complex symbols such as dispersion ``i k^3`` work too).
    """

    order = 4

    def __init__(self, linear, nonlinear: Nonlinear, dt: float, *, contour_points: int = 32):
        super().__init__(linear, nonlinear, dt)
        if isinstance(contour_points, bool) or not isinstance(contour_points, int) or contour_points < 4:
            raise ValueError(f"contour_points must be an integer >= 4, got {contour_points!r}")
        self.contour_points = contour_points

    def _compute(self):
        h = self.dt
        hl = h * self.linear.to(torch.complex128)
        m = self.contour_points
        roots = torch.exp(2j * math.pi * (torch.arange(1, m + 1, dtype=torch.float64) - 0.5) / m)
        lr = hl.unsqueeze(-1) + roots  # points on a circle around each h L: no cancellation near 0
        e_lr = torch.exp(lr)
        q = h * ((torch.exp(lr / 2) - 1) / lr).mean(-1)
        f1 = h * ((-4 - lr + e_lr * (4 - 3 * lr + lr**2)) / lr**3).mean(-1)
        f2 = h * ((2 + lr + e_lr * (lr - 2)) / lr**3).mean(-1)
        f3 = h * ((-4 - 3 * lr - lr**2 + e_lr * (4 - lr)) / lr**3).mean(-1)
        coeffs = (torch.exp(hl), torch.exp(hl / 2), q, f1, f2, f3)
        if not self.linear.is_complex():  # a real symbol gives real coefficients (imaginary parts are rounding)
            coeffs = tuple(c.real for c in coeffs)
        return coeffs

    def step(self, v, memory=None):
        e, e2, q, f1, f2, f3 = self._coefficients(v)
        nv = self.nonlinear(v)
        a = e2 * v + q * nv
        na = self.nonlinear(a)
        b = e2 * v + q * na
        nb = self.nonlinear(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = self.nonlinear(c)
        return e * v + f1 * nv + 2 * f2 * (na + nb) + f3 * nc, None


def integrate(integrator: Integrator, v0: torch.Tensor, steps: int, *, every: int | None = None, memory=None,
              check_every: int = 50, callback: Callable[[int, torch.Tensor], None] | None = None):
    """Advance ``v0`` by ``steps`` steps of ``integrator``.

    Parameters
    ----------
    every : int, optional
        Keep a snapshot every ``every`` steps (the initial state included); they are stacked on a new last
        axis.  Without it only the final state is returned.
    memory : optional
        A multistep method's memory from an earlier call (continue a run without a restart step).
    check_every : int
        Steps between finiteness checks (each is a host sync on a GPU); a blow-up raises
        ``FloatingPointError`` naming the step.

    Returns
    -------
    (v, memory) or (v, memory, snapshots)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive integer (steps between finiteness checks), got {check_every!r}")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"every must be a positive integer, got {every!r}")
    if not torch.isfinite(v0).all():
        raise ValueError("the initial state has non-finite entries")
    v = v0
    snaps = [v0] if every else None
    for n in range(1, steps + 1):
        v, memory = integrator.step(v, memory)
        if n % check_every == 0 or n == steps:
            if not torch.isfinite(v).all():
                raise FloatingPointError(f"the solution stopped being finite by step {n} (t = {n * integrator.dt:g}); "
                                         "lower the time step or check the model's parameters")
        if every and n % every == 0:
            snaps.append(v)
        if callback is not None:
            callback(n, v)
    if every:
        return v, memory, torch.stack(snaps, dim=-1)
    return v, memory


class Leapfrog(Integrator):
    r"""Leapfrog with a Robert–Asselin–Williams filter; ``L`` implicit (backward) over the double step.

    ``v_{n+1} = (v_{n-1} + 2 dt N(v_n)) / (1 - 2 dt L)``, then with ``d = filter (v_{n-1} - 2 v_n + v_{n+1})``
    the kept ``v_n`` moves by ``alpha d`` and ``v_{n+1}`` by ``(alpha - 1) d``.  ``alpha = 1`` is the classic
    Robert–Asselin filter (the MEDIDA-QG and Phillips-model codes: ``filter = 0.04``); ``alpha`` near 0.53
    (Williams 2009) keeps the scheme's mean and its second order.  The first step (no memory) is forward Euler
    with ``L`` backward, ``v_1 = (v_0 + dt N(v_0)) / (1 - dt L)``, which is also what a one-step forecast from a
    single state uses.  ``memory`` is the filtered ``v_n``.

    Order: 2 on ``N`` with ``filter = 0`` or Williams' ``alpha``; the classic filter and the backward ``L`` are
    first order (the paper's choice: ``L`` is only the hyperviscosity, which it should damp, not resolve).

    Parameters
    ----------
    filter : float
        Filter coefficient in ``[0, 0.5)`` (0: plain leapfrog, whose computational mode is then undamped).
    alpha : float
        Williams' parameter in ``[0.5, 1]``.
    """

    order = 1

    def __init__(self, linear, nonlinear: Nonlinear, dt: float, *, filter: float = 0.04, alpha: float = 1.0):
        super().__init__(linear, nonlinear, dt)
        for name, value, lo, hi in (("filter", filter, 0.0, 0.5), ("alpha", alpha, 0.5, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi or (name == "filter" and value == hi):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}{')' if name == 'filter' else ']'}, got {value!r}")
        self.filter = float(filter)
        self.alpha = float(alpha)

    def _compute(self):
        lin = self.linear.to(torch.complex128 if self.linear.is_complex() else torch.float64)
        if (self.dt * lin == 1).any() or (2 * self.dt * lin == 1).any():
            raise ValueError(f"1 - dt L vanishes for some mode at dt = {self.dt}: the implicit linear step is singular")
        return 1 / (1 - self.dt * lin), 1 / (1 - 2 * self.dt * lin)

    def step(self, v, memory=None):
        single, double = self._coefficients(v)
        if memory is None:
            return single * (v + self.dt * self.nonlinear(v)), v
        new = double * (memory + 2 * self.dt * self.nonlinear(v))
        if self.filter == 0:
            return new, v
        d = self.filter * (memory - 2 * v + new)
        return new + (self.alpha - 1) * d, v + self.alpha * d


METHODS = {"cnab2": CNAB2, "etdrk4": ETDRK4, "leapfrog": Leapfrog}


def whole_steps(t, dt: float, name: str = "t_end") -> int:
    """``t / dt`` as a whole number of steps; ``ValueError`` naming ``name`` when ``t`` is not one (within
    ``1e-9 max(1, |t|)``: the one tolerance of every driver)."""
    t = validate.real_number(t, name, minimum=0.0)
    n = round(t / dt)
    if abs(n * dt - t) > 1e-9 * max(1.0, abs(t)):
        raise ValueError(f"{name} = {t!r} is not a multiple of the time step dt = {dt!r} (not a whole number of steps)")
    return int(n)


def _marks(steps: int, dt: float, times, every) -> list[int] | None:
    """The step numbers at which snapshots are taken (None: only the final state)."""
    if times is not None and every is not None:
        raise ValueError("give times= or every=, not both")
    if every is not None:
        stride = whole_steps(every, dt, "every")
        if stride < 1:
            raise ValueError(f"every = {every!r} must be a positive multiple of dt = {dt!r}")
        if steps % stride:  # the final state would silently be missing
            raise ValueError(f"t_end is {steps} steps, not a multiple of every = {every!r} ({stride} steps)")
        return list(range(0, steps + 1, stride))
    if times is None:
        return None
    if isinstance(times, int) and not isinstance(times, bool):
        if times < 1 or steps % times:
            raise ValueError(f"times={times} must be a positive divisor of the {steps} steps to t_end")
        return [steps * k // times for k in range(1, times + 1)]
    marks = [whole_steps(float(t), dt, "snapshot time") for t in times]
    if not marks or any(b < a for a, b in zip(marks, marks[1:])) or marks[-1] > steps:
        raise ValueError(f"snapshot times must be a non-empty increasing sequence in [0, t_end], got {list(times)}")
    return marks


def simulate(model, u0: torch.Tensor, t_end: float, dt: float, *, method: str = "etdrk4", times=None,
             every: float | None = None, memory=None, callback: Callable[[int, torch.Tensor], None] | None = None,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None, time_axis: str = "grid",
             return_memory: bool = False, options: dict | None = None):
    """Step physical states ``u0`` (``(*batch, *grid)``) of a spectral model from ``t = 0`` to ``t_end``.

    Parameters
    ----------
    model :
        ``linear_symbol(shape, dtype, device)``, ``nonlinear``, ``spectral``, ``physical``, ``grid_dims``
        (see the module docstring).
    t_end, dt : float
        ``t_end`` must be a whole number of steps ``dt > 0`` (:func:`whole_steps`).
    method : ``"etdrk4"`` (default), ``"cnab2"`` or ``"leapfrog"``; ``options`` go to its constructor
        (e.g. ``{"filter": 0.04}`` for the leapfrog's Robert–Asselin filter).
    times : int or sequence of float, optional
        Snapshots: an int ``n`` takes the states at ``t_end k / n``, ``k = 1..n``; a sequence the states at
        those times (increasing, in ``[0, t_end]``, whole steps; ``0`` is the initial state).
    every : float, optional
        Snapshots every ``every`` time units, the initial state first; ``t_end`` must be a multiple of it.
    memory : optional
        A multistep method's memory from an earlier call (``return_memory=True``): continue a run without
        a restart step.
    callback : callable(step, v), optional
        After every step, with the spectral state.
    transform : callable, optional
        Applied to every physical snapshot as it is taken (coarsening, streaming to disk).
    time_axis : ``"grid"`` (default) or ``"last"``
        Snapshots stacked on a new axis just before the grid axes, ``(*batch, T, *grid)``, or last,
        ``(*batch, *grid, T)``.
    return_memory : bool
        Return ``(result, memory)``.

    Returns
    -------
    tensor
        The state at ``t_end`` (no ``times``/``every``) or the stacked snapshots; with ``return_memory``,
        ``(that, memory)``.

    Raises
    ------
    FloatingPointError
        When the state stops being finite (the message names the step).
    """
    dt = _check_step(validate.real_number(dt, "dt"))
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if time_axis not in ("grid", "last"):
        raise ValueError(f"time_axis must be 'grid' or 'last', got {time_axis!r}")
    steps = whole_steps(t_end, dt)
    marks = _marks(steps, dt, times, every)
    dims = int(getattr(model, "grid_dims", 0))
    if dims < 1 or not hasattr(model, "linear_symbol"):
        raise TypeError(f"{type(model).__name__} cannot be stepped here: it needs grid_dims, linear_symbol(shape, dtype, "
                        "device), nonlinear, spectral and physical")
    if u0.dim() < dims:
        raise ValueError(f"u0 must have shape (*batch, *grid) with {dims} grid axes, got {tuple(u0.shape)}")
    grid = tuple(u0.shape[-dims:])
    stepper = METHODS[method](model.linear_symbol(grid, torch.float64, u0.device), model.nonlinear, dt, **(options or {}))
    v = model.spectral(u0)
    done, out = 0, []
    for mark in [steps] if marks is None else marks:
        if mark > done:
            hook = None if callback is None else (lambda n, s, o=done: callback(o + n, s))
            v, memory = integrate(stepper, v, mark - done, memory=memory, callback=hook)
            done = mark
        snap = model.physical(v)
        out.append(snap if transform is None else transform(snap))
    if marks is None:
        result = out[0]
    else:
        result = torch.stack(out, dim=-1 if time_axis == "last" else out[0].dim() - dims)
    return (result, memory) if return_memory else result

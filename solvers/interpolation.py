r"""Fill a grid from sparse sensors: cubic, spectral least-squares or random-Fourier-feature MLP, selectable.

MEDIDA with sparse observations needs the whole state at every observation time.  :func:`interpolate` takes
fields ``(*batch, *channels, *grid)`` with the sensor values in place (anything elsewhere, NaN by convention)
and a sensor ``mask`` of shape ``(*channels, *grid)`` (True where observed), and returns the filled fields.
Grids are periodic boxes (the PDE models') of one axis (Kuramoto–Sivashinsky) or two (QG layers); every method
respects the periodicity.

* ``"cubic"`` -- on a 2-D grid piecewise-cubic (Clough--Tocher) interpolation on the Delaunay triangulation of
  the sensors (:func:`scipy.interpolate.griddata`), the sensors repeated periodically around the box so every
  grid point is inside the triangulation (what the 2024 paper compares against); on a 1-D grid a periodic cubic
  spline through the sensors (:class:`scipy.interpolate.CubicSpline`).
* ``"spectral"`` -- a least-squares fit of the Fourier modes ``|m_a| <= cutoff_a`` to the sensor values (fewer
  modes than sensors); ``cutoff`` defaults to ``0.9 sqrt(p) n_a / 2`` for an observed fraction ``p``.
* ``"rff"`` -- an MLP with a random-Fourier-feature input layer
  (:class:`krylon.operators.learned.rff.RFFMLP`) fitted by Adam to the sensor values, one network for every
  field sharing a sensor layout (the fields are its outputs, so snapshots a step apart share one learned basis
  and their interpolation errors largely cancel in a one-step difference).  The 2024 paper's remedy for the
  spectral bias of plain MLPs.

:class:`SensorInterpolator` packages a method and its options as the ``interpolate(values, mask)`` callable
that :class:`krylon.solvers.MEDIDA` takes.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from ..kernels import backend, validate
from ..operators.learned.rff import RFFMLP

__all__ = ["METHODS", "interpolate", "SensorInterpolator"]

METHODS = ("cubic", "spectral", "rff")


def _inputs(values, mask, d: int | None):
    values = backend.as_tensor(values, name="values")
    if not values.is_floating_point():
        raise TypeError(f"values must be a real floating-point tensor, got {values.dtype}")
    mask = torch.as_tensor(mask, device=values.device)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True where a sensor is), got {mask.dtype}")
    if d is None:  # a 1-D mask is a 1-D grid; otherwise the last two axes are the grid (QG: (layers, ny, nx))
        d = min(mask.dim(), 2)
    d = validate.integer(d, "grid_dims")
    if d not in (1, 2):
        raise ValueError(f"grid_dims must be 1 or 2, got {d}")
    if mask.dim() < d or mask.dim() > values.dim() or tuple(values.shape[values.dim() - mask.dim():]) != tuple(mask.shape):
        raise ValueError(f"the mask's shape {tuple(mask.shape)} must be the trailing (at least {d}-D grid) shape of "
                         f"values {tuple(values.shape)}")
    flat = mask.reshape(-1, *mask.shape[mask.dim() - d:])
    counts = flat.reshape(flat.shape[0], -1).sum(-1)
    if bool((counts < 4).any()):
        raise ValueError(f"every grid needs at least 4 sensors, got {counts.tolist()}")
    observed = values[..., mask]
    validate.finite(observed, "the sensor values")
    return values, mask, d


def _groups(mask: torch.Tensor, d: int):
    """Channels of the mask that share one sensor layout: ``[(channel indices, d-D mask)]``."""
    flat = mask.reshape(-1, *mask.shape[mask.dim() - d:])
    groups: list[tuple[list[int], torch.Tensor]] = []
    for c in range(flat.shape[0]):
        for members, m in groups:
            if torch.equal(m, flat[c]):
                members.append(c)
                break
        else:
            groups.append(([c], flat[c]))
    return groups


def _unit_coords(shape) -> torch.Tensor:
    """Grid points of the unit box ``[0, 1)^d``, shape ``(*shape, d)``."""
    axes = [torch.arange(n, dtype=torch.float64) / n for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _cubic(targets: np.ndarray, m2: np.ndarray, margin: float) -> np.ndarray:
    from scipy.interpolate import griddata  # noqa: PLC0415  (scipy is a dependency; keep import krylon light)

    shape = m2.shape
    if len(shape) == 1:  # a periodic cubic spline: the first sensor repeated one period on closes the curve
        from scipy.interpolate import CubicSpline  # noqa: PLC0415

        x = np.flatnonzero(m2) / shape[0]
        spline = CubicSpline(np.append(x, x[0] + 1.0), np.concatenate((targets, targets[:1])), bc_type="periodic")
        return spline(np.arange(shape[0]) / shape[0])
    grid = _unit_coords(shape).numpy()
    pts, vals = grid[m2], targets  # (s, 2), (s, f)
    tiles_p, tiles_v = [], []
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            p = pts + np.array([a, b], dtype=np.float64)
            keep = np.all((p > -margin) & (p < 1 + margin), axis=1)
            tiles_p.append(p[keep])
            tiles_v.append(vals[keep])
    out = griddata(np.concatenate(tiles_p), np.concatenate(tiles_v), grid.reshape(-1, 2), method="cubic")
    return out.reshape(*shape, -1)


def _spectral(targets: torch.Tensor, m2: torch.Tensor, cutoff, ridge: float) -> torch.Tensor:
    shape = tuple(m2.shape)
    d = len(shape)
    frac = float(m2.double().mean())
    if cutoff is None:  # about 0.9 of the modes the sensors' density resolves per axis
        cutoff = tuple(max(1, int(0.9 * frac ** (1 / d) * n / 2)) for n in shape)
    else:
        cutoff = validate.per_axis(cutoff, d, "cutoff")
        cutoff = tuple(int(c) for c in cutoff)
    if d == 1:
        freqs = torch.arange(0, cutoff[0] + 1, dtype=torch.float64)[:, None]  # (modes, 1)
    else:
        m1 = torch.arange(-cutoff[0], cutoff[0] + 1, dtype=torch.float64)
        m2_ = torch.arange(0, cutoff[1] + 1, dtype=torch.float64)
        f1, f2 = torch.meshgrid(m1, m2_, indexing="ij")
        keep = (f2 > 0) | (f1 >= 0)  # half plane: one of each conjugate pair
        freqs = torch.stack((f1[keep], f2[keep]), dim=-1)  # (modes, 2)
    has_sine = ~(freqs == 0).all(1)  # every mode but (0, 0), wherever it sits in the list

    def basis(x):
        z = 2 * math.pi * x @ freqs.T
        return torch.cat((torch.cos(z), torch.sin(z[:, has_sine])), dim=1)
    coords = _unit_coords(shape)
    a = basis(coords[m2])
    if a.shape[1] >= a.shape[0]:
        raise ValueError(f"the spectral fit has {a.shape[1]} unknowns for {a.shape[0]} sensors; lower cutoff={cutoff}")
    rhs = targets.double()
    if ridge:  # Tikhonov rows appended: least squares without squaring the condition number
        a = torch.cat((a, math.sqrt(ridge * a.shape[0]) * torch.eye(a.shape[1], dtype=a.dtype)))
        rhs = torch.cat((rhs, rhs.new_zeros(a.shape[1], rhs.shape[1])))
    coef = torch.linalg.lstsq(a, rhs, driver="gelsd").solution
    return (basis(coords.reshape(-1, d)) @ coef).reshape(*shape, -1)


def _rff(targets: torch.Tensor, m2: torch.Tensor, opts: dict, device) -> torch.Tensor:
    """Train on ``device`` (the values' own: a GPU trains the paper-size networks), return on the CPU."""
    shape = tuple(m2.shape)
    coords = _unit_coords(shape).to(device=device, dtype=torch.float32)
    mean, std = targets.mean(0), targets.std(0).clamp_min(1e-12)
    t = ((targets - mean) / std).to(device=device, dtype=torch.float32)
    d = len(shape)
    net = RFFMLP(d, t.shape[1], sigma=opts["sigma"], features=opts["features"], width=opts["width"],
                 depth=opts["depth"], periodic=True, seed=opts["seed"]).to(device)
    x = coords[m2.to(device)]
    optim = torch.optim.Adam(net.parameters(), lr=opts["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, opts["epochs"])
    for _ in range(opts["epochs"]):
        optim.zero_grad(set_to_none=True)
        loss = torch.mean((net(x) - t) ** 2)
        loss.backward()
        optim.step()
        sched.step()
    with torch.no_grad():
        out = net(coords.reshape(-1, d)).double().cpu()
    return (out * std + mean).reshape(*shape, -1)


_RFF_DEFAULTS = {"sigma": 5.0, "features": 256, "width": 256, "depth": 4, "epochs": 2000, "lr": 1e-3, "seed": 0}


def interpolate(values, mask, *, method: str = "cubic", window: int = 1, keep_observed: bool = False, cutoff=None,
                ridge: float = 0.0, margin: float = 0.15, grid_dims: int | None = None, **rff) -> torch.Tensor:
    """Fill the unobserved points of periodic 1-D or 2-D fields from their sensors.

    Parameters
    ----------
    values : tensor ``(*batch, *channels, *grid)``
        Sensor values where ``mask`` is True (other entries are ignored; NaN is fine).
    mask : bool tensor ``(*channels, *grid)``
        The sensors; channels (e.g. the two layers of a QG state) may have different layouts.
    grid_dims : int, optional
        Axes of the grid, 1 or 2 (default: 1 for a 1-D mask, else 2: the mask's last two axes).
    method : ``"cubic"``, ``"spectral"`` or ``"rff"``
    window : int
        The batch comes in consecutive groups of ``window`` snapshots of one time window (MEDIDA flattens
        ``(n_samples, n_times)``): the later snapshots of a group are fitted as differences from its first.  For
        the linear methods (cubic, spectral) this changes nothing; the RFF network standardises each output,
        so it then fits the small one-step increments as accurately as the states instead of burying them
        under the states' own interpolation error (what a one-step model error divides by ``dt``).
    keep_observed : bool
        Put the sensor values back at the sensors (default False: the fitted field everywhere, so the result
        is one smooth field; cubic interpolation passes through the sensors anyway).
    cutoff : int or sequence of int, optional
        Spectral method: highest mode index kept per axis.
    ridge : float
        Spectral method: Tikhonov weight (relative, per sensor; default 0, plain least squares).
    margin : float
        Cubic method: width (fraction of the box) of the periodic copies of the sensors around the box.
    **rff
        RFF method: ``sigma`` (5), ``features`` (256), ``width`` (256), ``depth`` (4), ``epochs`` (2000),
        ``lr`` (1e-3), ``seed`` (0).

    Returns
    -------
    torch.Tensor
        The filled fields, shape, dtype and device of ``values``.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(32, dtype=torch.float64) / 32
    >>> u = torch.sin(2 * torch.pi * x)[:, None] * torch.cos(2 * torch.pi * x)[None, :]
    >>> mask = torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) < 0.3
    >>> filled = interpolate(u.masked_fill(~mask, float("nan")), mask, method="spectral")
    >>> float((filled - u).abs().max()) < 1e-8
    True
    """
    method = validate.choice(method, "method", METHODS)
    keep_observed = validate.boolean(keep_observed, "keep_observed")
    ridge = validate.real_number(ridge, "ridge", minimum=0.0)
    margin = validate.real_number(margin, "margin", minimum=0.0)
    unknown = set(rff) - set(_RFF_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown interpolation options {sorted(unknown)}; the rff method takes {sorted(_RFF_DEFAULTS)}")
    if rff and method != "rff":
        raise TypeError(f"options {sorted(rff)} belong to the rff method, not {method!r}")
    opts = {**_RFF_DEFAULTS, **rff}
    for key in ("features", "width", "depth", "epochs"):
        opts[key] = validate.integer(opts[key], key)
    opts["seed"] = validate.integer(opts["seed"], "seed", minimum=0)
    for key in ("sigma", "lr"):
        opts[key] = validate.real_number(opts[key], key, minimum=0.0)
    values, mask, d = _inputs(values, mask, grid_dims)
    window = validate.integer(window, "window")
    nb = values.dim() - mask.dim()
    batch = values.shape[:nb]
    chan = mask.shape[:mask.dim() - d]
    grid = tuple(mask.shape[mask.dim() - d:])
    fields = values.reshape(math.prod(batch), -1, *grid).detach().cpu().to(torch.float64)  # (B, C, *grid)
    if fields.shape[0] % window:
        raise ValueError(f"window = {window} does not divide the {fields.shape[0]} fields of the batch {tuple(batch)}")
    if window > 1:  # later snapshots as differences from the window's first (undone below)
        w = fields.reshape(-1, window, *fields.shape[1:])
        fields = torch.cat((w[:, :1], w[:, 1:] - w[:, :1]), dim=1).reshape(fields.shape)
    out = torch.empty_like(fields)
    for members, m2 in _groups(mask.cpu(), d):
        sel = fields[:, members]                                       # (B, c, *grid)
        targets = sel[..., m2].reshape(-1, int(m2.sum())).T            # (sensors, B * c)
        if method == "cubic":
            filled = torch.from_numpy(_cubic(targets.numpy(), m2.numpy(), margin))
        elif method == "spectral":
            filled = _spectral(targets, m2, cutoff, ridge)
        else:
            filled = _rff(targets, m2, opts, values.device)
        filled = filled.movedim(-1, 0).reshape(sel.shape)
        if keep_observed:
            filled[..., m2] = sel[..., m2]
        out[:, members] = filled
    if window > 1:
        w = out.reshape(-1, window, *out.shape[1:])
        out = torch.cat((w[:, :1], w[:, 1:] + w[:, :1]), dim=1).reshape(out.shape)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"the {method} interpolation produced non-finite values (too few or degenerate sensors?)")
    return out.reshape(*batch, *chan, *grid).to(device=values.device, dtype=values.dtype)


def _content_key(values, mask) -> tuple:
    h = hashlib.sha256()
    for t in (torch.as_tensor(values), torch.as_tensor(mask)):
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return (h.hexdigest(),)


class SensorInterpolator:
    """``interpolate(values, mask)`` with a fixed method and options: the callable MEDIDA takes.

    ``cache=True`` keeps the last fill and returns it again for the same values and mask (by content), so
    several model cases observing one truth train the RFF network once.

    Examples
    --------
    >>> fill = SensorInterpolator("rff", epochs=10, width=16, features=8, depth=1)
    >>> fill.method
    'rff'
    """

    def __init__(self, method: str = "cubic", *, cache: bool = False, **options):
        self.method = validate.choice(method, "method", METHODS)
        self.options = options
        self.cache = validate.boolean(cache, "cache")
        self._last: tuple | None = None
        # refuse bad options now, not at the first call deep inside a run
        probe = {**options, "window": 1, **({"epochs": 1} if self.method == "rff" else {})}
        validate.integer(options.get("window", 1), "window")
        interpolate(torch.zeros(4, 4), torch.ones(4, 4, dtype=torch.bool), method=self.method, **probe)

    def __call__(self, values, mask) -> torch.Tensor:
        if not self.cache:
            return interpolate(values, mask, method=self.method, **self.options)
        # the same observations again (several model cases, one truth): reuse the fill, keyed by content
        key = _content_key(values, mask)
        if self._last is None or self._last[0] != key:
            self._last = (key, interpolate(values, mask, method=self.method, **self.options))
        return self._last[1].clone()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"SensorInterpolator({self.method!r}{', ' + opts if opts else ''})"

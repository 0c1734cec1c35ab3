r"""SFNO: the spatiotemporal Fourier neural operator of Spectral-Refiner (Cao, Brarda, Li, Xi, ICLR 2025).

It maps ``in_steps`` snapshots of a field on a periodic 2-D grid to ``out_steps`` later snapshots:
``(B, C, X, Y, T_in) -> (B, C, X, Y, T_out)``.  The network (krylon's own, on :mod:`torch.fft`):

1. a space-time positional encoding -- ``sin``/``cos`` of ``2 pi x`` and ``2 pi y`` (periodic, the same at every
   resolution) and ``t = j / in_steps`` -- concatenated to the input channels, lifted to ``width`` channels by a
   pointwise linear map;
2. ``n_layers`` Fourier layers ``h <- GELU(M(K h) + W h)``, ``K`` a :class:`~.spectral.SpectralConv` over
   ``(x, y, t)`` keeping ``modes``, ``W`` pointwise linear and ``M`` the identity or, with ``mlp_channels > 0``,
   a pointwise two-layer MLP ``width -> mlp_channels -> width`` (the paper's code uses 128; on a CPU that
   triples the cost of a training step at 64^2 x 10, so it is off by default);
3. a pointwise two-layer projection to ``out_channels``, then the **output spectral layer**: a
   ``SpectralConv`` over ``(x, y, t)`` whose inverse FFT is taken at ``out_steps`` points in time -- the
   prediction is resampled in time spectrally, so ``model(x, out_steps=80)`` samples the same trajectory twice as
   finely as ``out_steps=40``.  The output steps are the first ``out_steps`` of ``(1 + time_padding) out_steps``
   equispaced samples of one period of a trigonometric polynomial in time: with the default ``time_padding=1``
   the prediction is not periodic over its own window.  (``time_padding=0`` is the paper's code and krylon's before
   the option existed: the FFT treats the window as periodic, so the last output step wraps round onto the first,
   which ties the late steps to the early ones -- stage 1 learns around it, but a refinement that pulls the first
   step onto the last input pulls the last steps with it.  Checkpoints without the key load with 0.);
4. when ``in_channels == out_channels``, the last input snapshot is added to every output step (the network
   predicts the change from it).

The output spectral layer is the one Spectral-Refiner fine-tunes: :meth:`SFNO.last_spectral_layer` returns it and
:meth:`SFNO.widen_last_layer` re-creates it with more modes (up to the full grid) keeping its weights; its
``modes`` are recorded as ``last_modes`` in :attr:`SFNO.config` (and its additive spectral bias, when widened
with one, as ``last_bias_modes``), so a refined checkpoint rebuilds itself.

Modes follow the paper (:mod:`.spectral`): ``modes=(12, 12, 5)`` keeps frequencies ``-12..11`` in ``x`` and
``y`` (24 per axis; neuraloperator would write 24) and ``0..4`` of the rfft in time.  Space grids need at least
``2 * modes`` points (any resolution above that: zero-shot super-resolution); the full grid of an ``n x n``
problem with ``T_in`` steps is ``(n // 2, n // 2, T_in // 2 + 1)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import validate
from . import registry
from .registry import register_model
from .spectral import SpectralConv

__all__ = ["SFNO"]

_N_ENCODING = 5  # sin/cos 2 pi x, sin/cos 2 pi y, t


class _Pointwise(nn.Module):
    """A linear map of the channels at every grid point (a 1x1x1 convolution without CPU ``slow_conv3d``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_channels)  # nn.Conv3d's default initialisation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bi...,oi->bo...", x, self.weight.to(x.dtype))
        return y + self.bias.to(y.dtype).reshape(-1, *([1] * (x.dim() - 2)))


def _modes3(value, name):
    modes = validate.shape(value, name)
    if len(modes) != 3:
        raise ValueError(f"{name} must be three integers (x, y, t), got {value!r}")
    return modes


@register_model
class SFNO(registry.Checkpointed, nn.Module):
    """Spatiotemporal FNO: ``(B, C_in, X, Y, in_steps) -> (B, C_out, X, Y, out_steps)``.

    Parameters
    ----------
    modes : (int, int, int)
        Kept modes in ``x``, ``y`` (``-m..m-1``) and ``t`` (rfft ``0..m-1``); the paper's ``(12, 12, 5)``.
    width : int
        Hidden channels (20 in the paper).
    n_layers : int
        Hidden Fourier layers (before the output spectral layer).
    in_steps, out_steps : int
        Input snapshots; default number of output snapshots (override per call).
    in_channels, out_channels : int
    last_modes : (int, int, int), optional
        Modes of the output spectral layer (default ``modes``); set by :meth:`widen_last_layer`.
    projection : int
        Hidden channels of the pointwise projection (default ``4 * width``).
    mlp_channels : int
        Hidden channels of the MLP after each hidden spectral convolution; 0 (default) for none.
    time_padding : float
        The output's time period is ``(1 + time_padding) out_steps`` steps, of which the first ``out_steps`` are
        returned (default 1: not periodic over the window; 0: periodic, the paper's code).  Keep
        ``time_padding * out_steps`` an integer for the ``out_steps=`` resampling to sample one trajectory.
    last_bias_modes : (int, int, int), optional
        Modes of the output layer's additive spectral bias (default none); set by :meth:`widen_last_layer`.

    Examples
    --------
    >>> import torch
    >>> model = SFNO(modes=(4, 4, 3), width=8, n_layers=2, in_steps=6, out_steps=12)
    >>> model(torch.randn(2, 1, 16, 16, 6)).shape
    torch.Size([2, 1, 16, 16, 12])
    >>> model(torch.randn(2, 1, 32, 24, 6), out_steps=30).shape  # another resolution and number of steps
    torch.Size([2, 1, 32, 24, 30])
    """

    def __init__(self, modes=(12, 12, 5), width: int = 20, n_layers: int = 4, in_steps: int = 10, out_steps: int = 40,
                 in_channels: int = 1, out_channels: int = 1, last_modes=None, projection: int | None = None,
                 mlp_channels: int = 0, time_padding: float = 1.0, last_bias_modes=None):
        super().__init__()
        modes = _modes3(modes, "modes")
        last_modes = modes if last_modes is None else _modes3(last_modes, "last_modes")
        width = validate.integer(width, "width")
        n_layers = validate.integer(n_layers, "n_layers", minimum=0)
        in_steps = validate.integer(in_steps, "in_steps")
        out_steps = validate.integer(out_steps, "out_steps")
        in_channels = validate.integer(in_channels, "in_channels")
        out_channels = validate.integer(out_channels, "out_channels")
        projection = 4 * width if projection is None else validate.integer(projection, "projection")
        mlp_channels = validate.integer(mlp_channels, "mlp_channels", minimum=0)
        time_padding = validate.real_number(time_padding, "time_padding")
        if not 0 <= time_padding <= 16:
            raise ValueError(f"time_padding must be in [0, 16] (a multiple of out_steps), got {time_padding!r}")
        if last_bias_modes is not None:
            last_bias_modes = _modes3(last_bias_modes, "last_bias_modes")
        if in_steps // 2 + 1 < max(modes[2], last_modes[2]):
            raise ValueError(f"in_steps={in_steps} input steps hold rfft time modes 0..{in_steps // 2}, "
                             f"fewer than modes {modes} / last_modes {last_modes} keep in time")
        self.config = {"modes": list(modes), "width": width, "n_layers": n_layers, "in_steps": in_steps,
                       "out_steps": out_steps, "in_channels": in_channels, "out_channels": out_channels,
                       "last_modes": list(last_modes), "projection": projection,
                       "mlp_channels": mlp_channels, "time_padding": time_padding,
                       "last_bias_modes": None if last_bias_modes is None else list(last_bias_modes)}
        self.lift = _Pointwise(in_channels + _N_ENCODING, width)
        self.spectral = nn.ModuleList(SpectralConv(width, width, modes) for _ in range(n_layers))
        self.mlp = nn.ModuleList((nn.Sequential(_Pointwise(width, mlp_channels), nn.GELU(), _Pointwise(mlp_channels, width))
                                  if mlp_channels else nn.Identity()) for _ in range(n_layers))
        self.pointwise = nn.ModuleList(_Pointwise(width, width) for _ in range(n_layers))
        self.project = nn.Sequential(_Pointwise(width, projection), nn.GELU(), _Pointwise(projection, out_channels))
        # a widened output layer still runs on grids that hold only the hidden layers' modes (it uses what they resolve)
        self.out = SpectralConv(out_channels, out_channels, last_modes,
                                min_modes=tuple(min(a, b) for a, b in zip(modes, last_modes)), bias_modes=last_bias_modes)

    @classmethod
    def upgrade_config(cls, config: dict) -> dict:
        """A checkpoint's config for this version: one written before ``time_padding`` existed had a periodic
        output window (``time_padding=0``), and keeps it."""
        return {"time_padding": 0.0, **config}

    @property
    def residual(self) -> bool:
        """Whether the last input snapshot is added to the output (``in_channels == out_channels``)."""
        return self.config["in_channels"] == self.config["out_channels"]

    def encoding(self, shape, device, dtype) -> torch.Tensor:
        """The ``(1, 5, X, Y, T)`` positional encoding of a grid ``(X, Y, T)``."""
        nx, ny, nt = shape
        x = torch.arange(nx, device=device, dtype=dtype) * (2 * math.pi / nx)
        y = torch.arange(ny, device=device, dtype=dtype) * (2 * math.pi / ny)
        t = torch.arange(nt, device=device, dtype=dtype) / self.config["in_steps"]
        gx = [f(x)[:, None, None].expand(nx, ny, nt) for f in (torch.sin, torch.cos)]
        gy = [f(y)[None, :, None].expand(nx, ny, nt) for f in (torch.sin, torch.cos)]
        return torch.stack([*gx, *gy, t[None, None, :].expand(nx, ny, nt)])[None]

    def forward(self, x: torch.Tensor, out_steps: int | None = None) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg["in_channels"] or x.shape[-1] != cfg["in_steps"]:
            raise ValueError(f"SFNO expects input of shape (B, {cfg['in_channels']}, X, Y, {cfg['in_steps']}) "
                             f"(batch, channels, x, y, input steps), got {tuple(x.shape)}")
        out_steps = cfg["out_steps"] if out_steps is None else validate.integer(out_steps, "out_steps")
        grid = tuple(x.shape[2:])
        for layer in (*self.spectral[:1], self.out):  # a clear error before any work
            layer.check_grid(grid)
        pe = self.encoding(grid, x.device, x.dtype if x.is_floating_point() else torch.float32)
        h = self.lift(torch.cat([x, pe.expand(x.shape[0], -1, -1, -1, -1)], dim=1))
        for k, m, w in zip(self.spectral, self.mlp, self.pointwise):
            h = F.gelu(m(k(h)) + w(h))
        y = self.out(self.project(h), out_last=out_steps, window=self.window(out_steps))
        if self.residual:
            y = y + x[..., -1:]
        return y

    def window(self, out_steps: int) -> int:
        """The output's time period, in steps, when it returns ``out_steps`` steps: ``(1 + time_padding) out_steps``."""
        return out_steps + round(self.config["time_padding"] * out_steps)

    # ----------------------------------------------------------------------- Spectral-Refiner hook
    def last_spectral_layer(self) -> SpectralConv:
        """The output spectral layer (the one Spectral-Refiner fine-tunes)."""
        return self.out

    def full_modes(self, grid) -> tuple[int, int, int]:
        """The modes of the output layer that cover every mode of a space grid ``grid`` (``(X, Y)``; a trailing
        time length is ignored): ``(X // 2, Y // 2, in_steps // 2 + 1)``, the widest :meth:`widen_last_layer` takes."""
        grid = validate.shape(grid, "grid")
        if len(grid) not in (2, 3):
            raise ValueError(f"grid must be (X, Y) or (X, Y, T), got {grid}")
        return grid[0] // 2, grid[1] // 2, self.config["in_steps"] // 2 + 1

    def widen_last_layer(self, modes, bias_modes=None) -> list[nn.Parameter]:
        """Re-create the output spectral layer with ``modes`` (each >= its current modes), old weights copied in.

        New modes start at zero, so the model's output is unchanged right after; returns the new layer's
        parameters (what a refinement optimises).  ``modes`` up to the full grid: ``(X // 2, Y // 2,
        in_steps // 2 + 1)``.  ``bias_modes=(mx, my, mt)`` adds (or widens) an additive spectral bias of the
        output over the output's (padded) time window, zero at first: ``mx, my`` up to the full space grid, ``mt``
        time modes of the window.  :attr:`config` records them as ``last_modes`` and ``last_bias_modes``.
        """
        modes = _modes3(modes, "modes")
        if modes[2] > self.config["in_steps"] // 2 + 1:
            raise ValueError(f"time modes {modes[2]} exceed the {self.config['in_steps'] // 2 + 1} rfft modes of "
                             f"in_steps={self.config['in_steps']}")
        if bias_modes is not None:
            bias_modes = _modes3(bias_modes, "bias_modes")
        self.out = self.out.widened(modes, bias_modes)
        self.config["last_modes"] = list(modes)
        self.config["last_bias_modes"] = None if self.out.bias_modes is None else list(self.out.bias_modes)
        return list(self.out.parameters())

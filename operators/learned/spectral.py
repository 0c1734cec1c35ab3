r"""The spectral convolution of krylon's own Fourier neural operators, written on :mod:`torch.fft`.

:class:`SpectralConv` multiplies the lowest Fourier modes of a ``(B, C_in, *grid)`` field by learned complex
matrices (one ``C_in x C_out`` matrix per kept mode) and drops the rest.  The last grid axis is the
:func:`torch.fft.rfftn` axis; the output may have a different number of points along it (``out_last=``), which
resamples that axis spectrally (SFNO's output in time).

A layer widened by :meth:`SpectralConv.widened` (Spectral-Refiner) keeps the modes of the layer it came from as
``min_modes``: on a grid coarser than its new modes it uses the modes that grid resolves (never fewer than
``min_modes``), so a model refined at 64^2 still runs at 32^2.  A widened layer can also carry an additive
:class:`SpectralBias` (``bias_modes``): a per-mode correction of the output that does not depend on the input,
zero when created -- the part of Spectral-Refiner's fine-tuned output layer that can move a prediction to where
its physics residual is small (a per-mode multiplier of a 1-channel output can only rescale what is there).

A resampled last axis may be **padded** (``window=``): the output is then the first ``out_last`` of ``window``
equispaced samples of one period, so it is no longer periodic over its own ``out_last`` samples (SFNO's output in
time: without padding its last step wraps round onto its first).

Mode convention (the FNO paper's, and Spectral-Refiner's ``modes=(12, 12, 5)``): ``modes[a]`` for every axis
but the last keeps the frequencies ``0 .. m-1`` and ``-m .. -1`` (``2 m`` in all, so a grid needs at least
``2 m`` points); for the last axis it keeps ``0 .. m-1`` of the rfft half spectrum (needs ``n // 2 + 1 >= m``).
Coefficients are normalised (``norm="forward"``: the mean is the 0 mode), so a band-limited field has the same
coefficients at every resolution and the layer is resolution independent.

The complex weights are stored as real tensors with a trailing dimension 2 and viewed as complex in
``forward``: DDP's gradient all-reduce, AMP's scaler and optimizers that do not handle complex parameters then
all work.  The FFTs run in float32 (or float64) even under autocast: half-precision cuFFT takes only
power-of-two sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from ...kernels import validate

__all__ = ["SpectralConv", "SpectralBias"]


def _pad_between(t: torch.Tensor, dim: int, m: int, n: int) -> torch.Tensor:
    """Grow axis ``dim`` to length ``n`` with zeros inserted after its first ``m`` entries."""
    if n == t.shape[dim]:
        return t
    shape = list(t.shape)
    shape[dim] = n - t.shape[dim]
    return torch.cat([t.narrow(dim, 0, m), t.new_zeros(shape), t.narrow(dim, m, t.shape[dim] - m)], dim=dim)


def _hermitian(c: torch.Tensor, dims) -> torch.Tensor:
    """The part of a spectrum ``c`` over full-FFT axes ``dims`` that is the spectrum of a real field:
    ``(c[k] + conj(c[-k])) / 2`` -- what an inverse real FFT keeps of its zero and Nyquist bins."""
    flipped = c.conj()
    for d in dims:
        flipped = torch.roll(torch.flip(flipped, [d]), 1, d)
    return 0.5 * (c + flipped)


def _resample_half_spectrum(yh: torch.Tensor, n: int, n_out: int, dims) -> torch.Tensor:
    """The rfft half spectrum (last axis) of the length-``n`` signal ``yh`` describes, for ``n_out`` samples.

    ``dims``: the full-FFT axes before the last.  The signal is the trigonometric polynomial that interpolates the
    ``n`` samples ``irfftn(yh)``: an even ``n``'s Nyquist bin enters that inverse once, as its real-field part, so
    in a longer spectrum (where the bin counts twice) it is halved to that part; at an even ``n_out`` the output's
    Nyquist bin is counted once while the polynomial's ``+-n_out/2`` terms coincide on the coarser samples, so it
    is doubled (as ``scipy.signal.resample`` does).  Bins beyond ``n_out // 2`` are dropped, missing ones are zero.
    """
    r = n_out // 2 + 1
    k = yh.shape[-1]
    if n % 2 == 0 and k > n // 2:  # the input's Nyquist bin is present (k == n // 2 + 1)
        yh = torch.cat([yh[..., : n // 2], 0.5 * _hermitian(yh[..., n // 2:], dims)], dim=-1)
    yh = yh[..., :r] if r <= k else _pad_between(yh, yh.dim() - 1, k, r)
    if n_out % 2 == 0 and r <= k:  # the output's Nyquist bin holds a kept frequency
        yh = torch.cat([yh[..., : r - 1], 2 * _hermitian(yh[..., r - 1:], dims)], dim=-1)
    return yh


def _window(n_last: int, window) -> int:
    if window is None:
        return n_last
    window = validate.integer(window, "window")
    if window < n_last:
        raise ValueError(f"window must be >= the {n_last} output points it holds, got {window}")
    return window


class SpectralBias(nn.Module):
    r"""An additive field given by its lowest Fourier coefficients: ``irfftn(c)`` over the kept ``modes``.

    The coefficients (``modes`` in :class:`SpectralConv`'s convention, normalised: resolution independent) start at
    zero.  ``batch=(B,)`` keeps one set per sample: the per-sample correction of a test-time refinement.

    Parameters
    ----------
    channels : int
    modes : sequence of int
        Kept modes per grid axis (``-m..m-1`` on every axis but the last, rfft ``0..m-1`` there).
    batch : tuple of int
        Leading dimensions of independent coefficient sets (default none: one field for every sample).

    Examples
    --------
    >>> import torch
    >>> bias = SpectralBias(1, (4, 4, 3), batch=(2,))
    >>> bias((16, 16, 10), window=20).shape  # the first 10 of 20 samples of one period in time
    torch.Size([2, 1, 16, 16, 10])
    >>> bool(bias((16, 16, 10)).abs().max() == 0)  # zero when created
    True
    """

    def __init__(self, channels: int, modes, *, batch=()):
        super().__init__()
        self.channels = validate.integer(channels, "channels")
        self.modes = validate.shape(modes, "modes")
        self.batch = tuple(validate.shape(batch, "batch")) if len(tuple(batch)) else ()
        kept = tuple(2 * m for m in self.modes[:-1]) + (self.modes[-1],)
        self.coeffs = nn.Parameter(torch.zeros(*self.batch, self.channels, *kept, 2))

    def extra_repr(self) -> str:
        return f"{self.channels}, modes={self.modes}" + (f", batch={self.batch}" if self.batch else "")

    def forward(self, grid, window: int | None = None) -> torch.Tensor:
        """The field ``(*batch, channels, *grid)``; ``window``: the last axis holds the first ``grid[-1]`` of
        ``window`` samples of one period (default ``grid[-1]``: periodic over the grid).  Modes the grid does not
        resolve are left out."""
        grid = tuple(grid)
        d = len(self.modes)
        if len(grid) != d:
            raise ValueError(f"grid must have {d} axes (one per mode entry), got {grid}")
        n_win = _window(grid[-1], window)
        c = torch.view_as_complex(self.coeffs)
        lead = c.dim() - d
        for a, (m, n) in enumerate(zip(self.modes[:-1], grid[:-1])):
            k = min(m, n // 2)
            if k < m:
                c = torch.cat([c.narrow(lead + a, 0, k), c.narrow(lead + a, 2 * m - k, k)], dim=lead + a)
            c = _pad_between(c, lead + a, k, n)
        k = min(self.modes[-1], n_win // 2 + 1)
        c = _pad_between(c[..., :k], c.dim() - 1, k, n_win // 2 + 1)
        f = torch.fft.irfftn(c, s=(*grid[:-1], n_win), dim=tuple(range(lead, lead + d)), norm="forward")
        return f[..., : grid[-1]]


class SpectralConv(nn.Module):
    """Fourier layer ``x -> irfftn(W(k) rfftn(x)(k))`` over the kept modes of the trailing ``len(modes)`` axes.

    Parameters
    ----------
    in_channels, out_channels : int
    modes : sequence of int
        Kept modes per grid axis (module docstring: ``2 m`` frequencies on every axis but the last, ``m`` there).

    Examples
    --------
    >>> import torch
    >>> conv = SpectralConv(3, 2, (4, 4, 3))
    >>> conv(torch.randn(5, 3, 16, 12, 10)).shape
    torch.Size([5, 2, 16, 12, 10])
    >>> conv(torch.randn(5, 3, 16, 12, 10), out_last=40).shape  # resampled along the last axis
    torch.Size([5, 2, 16, 12, 40])
    >>> conv(torch.randn(5, 3, 16, 12, 10), out_last=40, window=80).shape  # the first 40 of 80: not periodic
    torch.Size([5, 2, 16, 12, 40])
    """

    def __init__(self, in_channels: int, out_channels: int, modes, min_modes=None, bias_modes=None):
        super().__init__()
        self.in_channels = validate.integer(in_channels, "in_channels")
        self.out_channels = validate.integer(out_channels, "out_channels")
        self.modes = validate.shape(modes, "modes")
        self.min_modes = self.modes if min_modes is None else validate.shape(min_modes, "min_modes")
        if len(self.min_modes) != len(self.modes) or any(a > b for a, b in zip(self.min_modes, self.modes)):
            raise ValueError(f"min_modes must be one entry per axis, each <= modes {self.modes}, got {self.min_modes}")
        kept = tuple(2 * m for m in self.modes[:-1]) + (self.modes[-1],)
        scale = 1.0 / (self.in_channels * self.out_channels)  # the FNO paper's initialisation
        self.weight = nn.Parameter(scale * torch.rand(self.in_channels, self.out_channels, *kept, 2))
        if bias_modes is not None and len(validate.shape(bias_modes, "bias_modes")) != len(self.modes):
            raise ValueError(f"bias_modes must have {len(self.modes)} entries (one per grid axis), got {bias_modes}")
        self.bias = None if bias_modes is None else SpectralBias(self.out_channels, bias_modes)

    @property
    def bias_modes(self):
        """The modes of the additive :class:`SpectralBias` (``None``: no bias)."""
        return None if self.bias is None else self.bias.modes

    def extra_repr(self) -> str:
        low = "" if self.min_modes == self.modes else f", min_modes={self.min_modes}"
        return f"{self.in_channels}, {self.out_channels}, modes={self.modes}{low}"

    def grid_modes(self, grid) -> tuple[int, ...]:
        """The modes used on a grid ``grid``: ``modes``, cut to what the grid resolves (never below ``min_modes``)."""
        return tuple(min(m, n // 2) for m, n in zip(self.modes[:-1], grid[:-1])) + (min(self.modes[-1],
                                                                                     grid[-1] // 2 + 1),)

    def check_grid(self, grid, what: str = "input") -> None:
        """``ValueError`` unless a grid of shape ``grid`` holds the modes the layer needs (``min_modes``)."""
        for a, (n, m) in enumerate(zip(grid[:-1], self.min_modes[:-1])):
            if n < 2 * m:
                raise ValueError(f"the {what} has {n} points on grid axis {a} but the layer keeps {m} modes there "
                                 f"(frequencies -{m}..{m - 1}): it needs at least {2 * m} points")
        n, m = grid[-1], self.min_modes[-1]
        if n // 2 + 1 < m:
            raise ValueError(f"the {what} has {n} points on the last grid axis but the layer keeps {m} modes there "
                             f"(rfft frequencies 0..{m - 1}): it needs at least {2 * (m - 1)} points")

    def forward(self, x: torch.Tensor, out_last: int | None = None, window: int | None = None) -> torch.Tensor:
        """``(B, C_in, *grid) -> (B, C_out, *grid[:-1], out_last)``; ``window`` (>= ``out_last``, default equal):
        the last axis is resampled to ``window`` points of one period and the first ``out_last`` are kept."""
        d = len(self.modes)
        if x.dim() != d + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (B, {self.in_channels}, <{d} grid axes>), got {tuple(x.shape)}")
        grid = tuple(x.shape[2:])
        self.check_grid(grid)
        n_last = grid[-1] if out_last is None else validate.integer(out_last, "out_last")
        n_win = _window(n_last, window)
        dims = tuple(range(2, d + 2))
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype not in (torch.float32, torch.float64):
                x = x.float()
            xh = torch.fft.rfftn(x, dim=dims, norm="forward")
            modes = self.grid_modes(grid)  # a widened layer on a coarser grid: the modes that grid resolves
            w = torch.view_as_complex(self.weight.to(x.dtype))
            for a, (m, full) in enumerate(zip(modes[:-1], self.modes[:-1])):  # the +-m blocks (slices: cheap)
                xh = torch.cat([xh.narrow(2 + a, 0, m), xh.narrow(2 + a, grid[a] - m, m)], dim=2 + a)
                if m < full:
                    w = torch.cat([w.narrow(2 + a, 0, m), w.narrow(2 + a, 2 * full - m, m)], dim=2 + a)
            xh = xh[..., : modes[-1]]
            yh = torch.einsum("bi...,io...->bo...", xh, w[..., : modes[-1]])
            for a, m in enumerate(modes[:-1]):  # back onto the full spectral grid: zeros between the +-m blocks
                yh = _pad_between(yh, 2 + a, m, grid[a])
            if n_win != grid[-1]:  # resampled along the last axis
                yh = _resample_half_spectrum(yh, grid[-1], n_win, dims[:-1])
            else:
                yh = _pad_between(yh, yh.dim() - 1, yh.shape[-1], n_win // 2 + 1)
            y = torch.fft.irfftn(yh, s=(*grid[:-1], n_win), dim=dims, norm="forward")[..., :n_last]
            if self.bias is not None:
                y = y + self.bias((*grid[:-1], n_last), window=n_win).to(y.dtype)
            return y

    @torch.no_grad()
    def widened(self, modes, bias_modes=None) -> SpectralConv:
        """A new layer keeping ``modes`` (each >= this layer's) with this layer's weights on the matching modes.

        The other modes start at zero, so the new layer computes exactly what this one does on any grid that
        holds the new modes.  ``bias_modes``: give the new layer an additive :class:`SpectralBias` with these
        modes (zero: the output stays bit for bit the same); a bias this layer has is kept (its coefficients
        copied onto the matching modes of the new one, which must keep at least as many).
        """
        modes = validate.shape(modes, "modes")
        if len(modes) != len(self.modes):
            raise ValueError(f"modes must have {len(self.modes)} entries (one per grid axis), got {modes}")
        if any(new < old for new, old in zip(modes, self.modes)):
            raise ValueError(f"widening cannot drop modes: the layer keeps {self.modes}, asked for {modes}")
        if bias_modes is None:
            bias_modes = self.bias_modes
        elif self.bias is not None and any(n < o for n, o in zip(validate.shape(bias_modes, "bias_modes"),
                                                                  self.bias_modes)):
            raise ValueError(f"widening cannot drop bias modes: the layer's bias keeps {self.bias_modes}, "
                             f"asked for {tuple(bias_modes)}")
        new = SpectralConv(self.in_channels, self.out_channels, modes, min_modes=self.min_modes, bias_modes=bias_modes)
        new = new.to(self.weight.device, self.weight.dtype)
        if self.bias is not None:
            b, old = self.bias.coeffs.detach(), self.bias.modes
            for a, (m, big) in enumerate(zip(old[:-1], new.bias_modes[:-1])):
                b = _pad_between(b, 1 + a, m, 2 * big)
            new.bias.coeffs.copy_(_pad_between(b, b.dim() - 2, old[-1], new.bias_modes[-1]))
        w = self.weight.detach()
        for a, (m, big) in enumerate(zip(self.modes[:-1], modes[:-1])):
            w = _pad_between(w, 2 + a, m, 2 * big)  # the old +-m blocks sit at both ends of the new 2*big axis
        new.weight.copy_(_pad_between(w, w.dim() - 2, self.modes[-1], modes[-1]))
        return new

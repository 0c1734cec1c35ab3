r"""FNO: the Fourier neural operator (Li et al., ICLR 2021), neuraloperator's network in a krylon checkpoint.

:class:`FNO` wraps :class:`neuralop.models.FNO` (neuraloperator 2.x, imported when a model is built: the package
takes seconds to import) as a plain ``nn.Module`` with a JSON-able :attr:`FNO.config`, so its checkpoints go
through :mod:`.registry` and load with ``weights_only=True`` -- no pickled neuraloperator metadata, which breaks
across its versions.  The wrapped network is ``model.net``; its state-dict keys are neuraloperator's with a
``net.`` prefix.

Mode convention: **neuraloperator's**, so users' numbers carry over.  ``n_modes[a]`` counts all the frequencies
kept along axis ``a`` -- a centred window ``-n//2 .. (n-1)//2`` -- and for the last (rfft) axis ``n_modes[-1]
// 2 + 1`` non-negative ones.  ``n_modes=(24, 24)`` is the original paper's ``modes=12``; ``(16, 16)`` keeps every
mode of a 16 x 16 grid.  A grid needs at least ``n_modes[a]`` points along axis ``a`` (neuraloperator itself
would silently keep fewer); above that any resolution works (zero-shot super-resolution).

Spectral-Refiner hook: :meth:`FNO.last_spectral_layer` is the last Fourier layer's
``neuralop.layers.spectral_convolution.SpectralConv``; :meth:`FNO.widen_last_layer` re-creates it with more modes,
the old weights copied onto the matching (centred) modes and zeros elsewhere, so the output is unchanged.
Its modes are recorded as ``last_n_modes`` in :attr:`FNO.config`.

``model.to(torch.float64)`` keeps the spectral weights complex (complex128; torch alone would drop their imaginary
parts); neuraloperator's layer still accumulates its spectrum in complex64, so a float64 FNO is float64 outside
its spectral products only.  neuraloperator keeps its spectral weights as complex parameters (``DistributedDataParallel`` needs
``torch.view_as_real`` hooks or a recent torch for them); krylon's own :class:`~.sfno.SFNO` stores real ones.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from ...kernels import validate
from . import registry
from .registry import register_model

__all__ = ["FNO"]


def _modes(value, name, n_dim=None):
    modes = validate.shape([value] if isinstance(value, int) else value, name)
    if n_dim is not None and len(modes) != n_dim:
        raise ValueError(f"{name} must have {n_dim} entries (one per grid axis), got {value!r}")
    return modes


def _centred_copy(old: torch.Tensor, new: torch.Tensor, n_centred: int) -> None:
    """Copy ``old`` into the zeroed ``new`` so that each mode lands on the same frequency.

    Axes ``2 .. 2 + n_centred - 1`` hold centred windows (index ``j`` is frequency ``j - size // 2``), the rest
    (the rfft axis) start at frequency 0.
    """
    index = [slice(None), slice(None)]
    for a in range(2, old.dim()):
        if a < 2 + n_centred:
            start = new.shape[a] // 2 - old.shape[a] // 2
            index.append(slice(start, start + old.shape[a]))
        else:
            index.append(slice(0, old.shape[a]))
    new.zero_()
    new[tuple(index)] = old


@register_model
class FNO(registry.Checkpointed, nn.Module):
    """Fourier neural operator ``(B, C_in, *space) -> (B, C_out, *space)`` (neuraloperator's, any resolution).

    Parameters
    ----------
    n_modes : sequence of int
        Kept modes per space axis, neuraloperator's convention (total count; ``(24, 24)`` = paper's 12).
    in_channels, out_channels : int
    hidden_channels : int
        Width of the Fourier layers.
    n_layers : int
        Number of Fourier layers.
    last_n_modes : sequence of int, optional
        Modes of the last Fourier layer (default ``n_modes``); set by :meth:`widen_last_layer`.
    **kw
        Further keyword arguments of :class:`neuralop.models.FNO` (JSON-able values only, e.g.
        ``lifting_channel_ratio=2``, ``positional_embedding="grid"``, ``domain_padding=0.1``, ``norm=None``).

    Examples
    --------
    >>> import torch
    >>> model = FNO((8, 8), hidden_channels=8, n_layers=2)
    >>> model(torch.randn(3, 1, 16, 16)).shape
    torch.Size([3, 1, 16, 16])
    >>> model(torch.randn(3, 1, 40, 24)).shape  # zero-shot at another resolution
    torch.Size([3, 1, 40, 24])
    """

    def __init__(self, n_modes, in_channels: int = 1, out_channels: int = 1, hidden_channels: int = 32, n_layers: int = 4,
                 last_n_modes=None, **kw):
        super().__init__()
        n_modes = _modes(n_modes, "n_modes")
        last_n_modes = n_modes if last_n_modes is None else _modes(last_n_modes, "last_n_modes", len(n_modes))
        in_channels = validate.integer(in_channels, "in_channels")
        out_channels = validate.integer(out_channels, "out_channels")
        hidden_channels = validate.integer(hidden_channels, "hidden_channels")
        n_layers = validate.integer(n_layers, "n_layers")
        for key, value in kw.items():  # the config must survive json (checkpoints hold no pickled objects)
            try:
                kw[key] = json.loads(json.dumps(value))  # tuples become lists, as a reloaded config has them
            except (TypeError, ValueError):
                raise TypeError(f"FNO keyword argument {key}={value!r} is not JSON-able (a checkpoint could not "
                                "rebuild it); pass numbers, strings, lists or dicts") from None
        self.config = {"n_modes": list(n_modes), "in_channels": in_channels, "out_channels": out_channels,
                       "hidden_channels": hidden_channels, "n_layers": n_layers, "last_n_modes": list(last_n_modes), **kw}
        from neuralop.models import FNO as _NeuralopFNO  # heavy: only when a model is built

        try:
            self.net = _NeuralopFNO(n_modes=n_modes, in_channels=in_channels, out_channels=out_channels,
                                    hidden_channels=hidden_channels, n_layers=n_layers, **kw)
        except TypeError as exc:
            raise TypeError(f"neuralop.models.FNO does not accept {sorted(kw)}: {exc}") from exc
        if last_n_modes != n_modes:
            if any(b < a for a, b in zip(n_modes, last_n_modes)):
                raise ValueError(f"last_n_modes {last_n_modes} must not be below n_modes {n_modes}")
            self.net.fno_blocks.convs[-1] = self._widened_conv(last_n_modes)

    @property
    def n_dim(self) -> int:
        return len(self.config["n_modes"])

    def check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` has shape ``(B, in_channels, *space)`` with enough points for the modes."""
        cfg, d = self.config, self.n_dim
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FNO input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != d + 2 or x.shape[1] != cfg["in_channels"]:
            raise ValueError(f"FNO expects input of shape (B, {cfg['in_channels']}, <{d} space axes>), got {tuple(x.shape)}")
        need = [max(a, b) for a, b in zip(cfg["n_modes"], cfg["last_n_modes"])]
        for a, (n, m) in enumerate(zip(x.shape[2:], need)):
            if n < m:
                widened = cfg["last_n_modes"] != cfg["n_modes"]
                why = (f" (its last spectral layer was widened to {tuple(cfg['last_n_modes'])} modes by a refinement: "
                       "a refined FNO runs only on grids at least that fine)") if widened else ""
                raise ValueError(f"the input has {n} points on space axis {a} but the FNO keeps {m} modes there: it "
                                 f"needs a grid of at least {tuple(need)} points, got {tuple(x.shape[2:])}{why}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(x)

    def _apply(self, fn, recurse=True):
        # Module.to(torch.float64) casts complex parameters to float64, discarding their imaginary parts (torch
        # only warns): cast neuraloperator's complex spectral weights through their real view instead, so
        # .to(dtype)/.double()/.float() keep them complex (complex128/complex64)
        def keep_complex(t):
            if t.is_complex():
                r = fn(torch.view_as_real(t))
                if isinstance(r, torch.Tensor) and r.is_floating_point() and r.dim() == t.dim() + 1:
                    return torch.view_as_complex(r.contiguous())
            return fn(t)

        return super()._apply(keep_complex, recurse)

    # neuraloperator's BaseModel.state_dict adds a "_metadata" entry (its constructor arguments, functions
    # included) that torch.load(weights_only=True) refuses; krylon's config replaces it, so it is dropped
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        sd.pop("_metadata", None)
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = dict(state_dict)
        state_dict.pop("_metadata", None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----------------------------------------------------------------------- Spectral-Refiner hook
    def last_spectral_layer(self) -> nn.Module:
        """The last Fourier layer's spectral convolution (neuraloperator's ``SpectralConv``)."""
        return self.net.fno_blocks.convs[-1]

    def _widened_conv(self, n_modes) -> nn.Module:
        old = self.last_spectral_layer()
        if str(old.factorization).lower() not in ("none", "dense"):
            raise ValueError(f"widening needs dense spectral weights, this FNO has factorization={old.factorization!r}")
        new = type(old)(old.in_channels, old.out_channels, list(n_modes), complex_data=old.complex_data,
                        bias=old.bias is not None, separable=old.separable,
                        resolution_scaling_factor=old.resolution_scaling_factor, fno_block_precision=old.fno_block_precision,
                        implementation=old.implementation, fft_norm=old.fft_norm)
        new = new.to(device=old.weight.tensor.device)
        new.weight.tensor.data = new.weight.tensor.data.to(old.weight.tensor.dtype)
        if new.bias is not None:
            new.bias.data = new.bias.data.to(old.bias.dtype)
        with torch.no_grad():
            n_centred = old.order if old.complex_data else old.order - 1
            w = old.weight.tensor.detach()
            # a layer built with max_n_modes > n_modes uses only the centred n_modes window of its weight
            window = [slice(None), slice(None)]
            for a, (full, used) in enumerate(zip(w.shape[2:], old.n_modes)):
                lo = (full - used) // 2 if a < n_centred else 0
                window.append(slice(lo, lo + min(used, full)))
            _centred_copy(w[tuple(window)], new.weight.tensor.data, n_centred)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        return new

    def full_modes(self, grid) -> tuple[int, ...]:
        """The ``n_modes`` that keep every mode of a grid ``grid`` (its space axes; extra trailing entries are
        ignored): the grid itself, in neuraloperator's convention."""
        grid = validate.shape(grid, "grid")
        if len(grid) < self.n_dim:
            raise ValueError(f"grid must have at least {self.n_dim} entries, got {grid}")
        return tuple(grid[: self.n_dim])

    def widen_last_layer(self, n_modes) -> list[nn.Parameter]:
        """Re-create the last spectral layer keeping ``n_modes`` (neuraloperator's convention), old weights copied in.

        Each entry must be at least the current one; the full grid of an ``n_1 x ... x n_d`` problem is
        ``n_modes=(n_1, ..., n_d)``.  New modes start at zero, so the output is unchanged right after; returns the
        new layer's parameters.  :attr:`config` records the modes as ``last_n_modes``.  Unlike krylon's SFNO
        (whose widened layer uses what a coarser grid resolves), the widened FNO then refuses grids coarser than
        ``n_modes``: neuraloperator's layer does not truncate its weights.
        """
        n_modes = _modes(n_modes, "n_modes", self.n_dim)
        current = tuple(self.config["last_n_modes"])
        if any(b < a for a, b in zip(current, n_modes)):
            raise ValueError(f"widening cannot drop modes: the last layer keeps {current}, asked for {n_modes}")
        self.net.fno_blocks.convs[-1] = self._widened_conv(n_modes)
        self.config["last_n_modes"] = list(n_modes)
        return list(self.last_spectral_layer().parameters())

r"""A multilayer perceptron with a random-Fourier-feature input layer (Tancik et al. 2020), for fitting fields.

Plain MLPs learn the large scales of a field first and its small scales late or never (spectral bias); mapping the
coordinates through ``[cos(2 pi B x), sin(2 pi B x)]`` with a fixed random ``B ~ N(0, sigma^2)`` first lets them
fit small scales too.  The MEDIDA-QG paper (Mojgani et al., JAMES 2024) interpolates sparse sensor observations
with such a network (sigma 1-10, 1000 features, width 1000, depth 4, tanh).  Used by
:mod:`krylon.solvers.interpolation`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...kernels import validate
from .registry import register_model

__all__ = ["RFFMLP"]


@register_model
class RFFMLP(nn.Module):
    r"""``x -> MLP([cos(2 pi B x), sin(2 pi B x)])`` with a fixed Gaussian ``B`` and tanh hidden layers.

    Parameters
    ----------
    in_features, out_features : int
        Coordinate dimension (2 for a plane) and number of fitted fields.
    sigma : float
        Standard deviation of the frequencies ``B`` (in cycles per unit of ``x``); larger fits finer scales.
    features : int
        Number of random frequencies (the input layer has ``2 * features`` values).
    width, depth : int
        Hidden width and number of hidden layers (tanh).
    periodic : bool
        Round ``B`` to integers, so the network is exactly periodic on the unit box (fields on periodic grids).
    seed : int
        Seeds ``B`` and the initial weights.

    Examples
    --------
    >>> net = RFFMLP(2, 3, sigma=4.0, features=16, width=32, depth=2)
    >>> net(torch.rand(10, 2)).shape
    torch.Size([10, 3])
    >>> net.config["sigma"]
    4.0
    """

    def __init__(self, in_features: int = 2, out_features: int = 1, *, sigma: float = 5.0, features: int = 256,
                 width: int = 256, depth: int = 4, periodic: bool = False, seed: int = 0):
        super().__init__()
        in_features = validate.integer(in_features, "in_features")
        out_features = validate.integer(out_features, "out_features")
        sigma = validate.real_number(sigma, "sigma", minimum=0.0)
        features = validate.integer(features, "features")
        width = validate.integer(width, "width")
        depth = validate.integer(depth, "depth")
        periodic = validate.boolean(periodic, "periodic")
        seed = validate.integer(seed, "seed", minimum=0)
        self.config = {"in_features": in_features, "out_features": out_features, "sigma": sigma, "features": features,
                       "width": width, "depth": depth, "periodic": periodic, "seed": seed}
        g = torch.Generator().manual_seed(seed)
        freqs = sigma * torch.randn(features, in_features, generator=g)
        if periodic:
            freqs = freqs.round()
        self.register_buffer("frequencies", freqs)
        sizes = [2 * features] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.mlp = nn.Sequential(*layers)
        with torch.no_grad():  # seeded Xavier initialisation (tanh), independent of the global RNG
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    bound = math.sqrt(6.0 / (m.in_features + m.out_features))
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                    m.bias.zero_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The random Fourier features of coordinates ``x`` (``(..., in_features)``)."""
        if x.shape[-1] != self.config["in_features"]:
            raise ValueError(f"coordinates must have {self.config['in_features']} components in the last axis, "
                             f"got shape {tuple(x.shape)}")
        z = 2 * math.pi * x @ self.frequencies.to(x.dtype).T
        return torch.cat((torch.cos(z), torch.sin(z)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(x))

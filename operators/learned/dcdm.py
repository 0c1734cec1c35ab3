"""The DCDM network (Kaneda et al., ICML 2023): a one-level residual U-Net that approximates A^{-1} up to scale.

Architecture (as in the authors' code, generalised to 2-D/3-D and to many geometries):
a linear first convolution to ``width`` channels; ``blocks[0]`` residual blocks
``h = relu(conv(relu(conv(h)))) + h`` at full resolution; 2x average pooling;
``blocks[1]`` residual blocks at half resolution; 2x upsampling added to the
pre-pool features; ``blocks[2]`` residual blocks at full resolution; a 1x1
projection to one channel.  3x3(x3) kernels, "same" zero padding.

krylon's version takes the geometry as input channels -- the fluid mask (1 =
fluid, 0 = solid) and, for variable coefficients, the log-coefficient -- so one
trained network serves many obstacle scenes, and it is fully convolutional so a
model trained on small grids runs on larger ones.  Grids with an odd size are
zero-padded to even before pooling and cropped after.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["DCDMNet"]


class _ResBlock(nn.Module):
    def __init__(self, conv, width):
        super().__init__()
        self.c1 = conv(width, width, 3, padding=1)
        self.c2 = conv(width, width, 3, padding=1)

    def forward(self, h):
        return F.relu(self.c2(F.relu(self.c1(h)))) + h


class DCDMNet(nn.Module):
    """Residual U-Net with one pooling level mapping a (normalised) residual to a search direction.

    Parameters
    ----------
    dim : 2 or 3
    in_channels : int
        1 (residual only), 2 (+ fluid mask), 3 (+ Dirichlet marker) or 4 (+ log-coefficient).
    width : int
        Channels (16 in the paper).
    blocks : (int, int, int)
        Residual blocks before pooling, at half resolution, after upsampling.

    Examples
    --------
    >>> import torch
    >>> net = DCDMNet(dim=2, in_channels=3)
    >>> net(torch.randn(4, 3, 33, 40)).shape
    torch.Size([4, 1, 33, 40])
    """

    def __init__(self, dim: int = 2, in_channels: int = 3, width: int = 16, blocks=(2, 4, 2)):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 3 or min(blocks) < 0:
            raise ValueError(f"blocks must be three non-negative integers, got {blocks}")
        self.config = {"dim": dim, "in_channels": in_channels, "width": width, "blocks": list(blocks)}
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim = dim
        self.inp = conv(in_channels, width, 3, padding=1)
        self.pre = nn.Sequential(*[_ResBlock(conv, width) for _ in range(blocks[0])])
        self.mid = nn.Sequential(*[_ResBlock(conv, width) for _ in range(blocks[1])])
        self.post = nn.Sequential(*[_ResBlock(conv, width) for _ in range(blocks[2])])
        self.out = conv(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2:
            raise ValueError(f"a {self.dim}-D DCDM network expects input (batch, channels, *grid) with {self.dim} grid "
                             f"dimensions, got shape {tuple(x.shape)}")
        grid = x.shape[2:]
        pad = []
        for n in reversed(grid):
            pad += [0, n % 2]
        if any(pad):
            x = F.pad(x, pad)
        h = self.pre(self.inp(x))
        pool = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        m = self.mid(pool(h, 2))
        h = h + F.interpolate(m, scale_factor=2, mode="nearest")
        y = self.out(self.post(h))
        if any(pad):
            y = y[(Ellipsis,) + tuple(slice(0, n) for n in grid)]
        return y

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

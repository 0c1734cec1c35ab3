"""The DCDM network (Kaneda et al., ICML 2023): a residual U-Net that approximates A^{-1} up to scale.

The paper's architecture (``levels=1``, as in the authors' code, generalised to 2-D/3-D and to many
geometries): a linear first convolution to ``width`` channels; ``blocks[0]`` residual blocks
``h = relu(conv(relu(conv(h)))) + h`` at full resolution; 2x average pooling; ``blocks[1]`` residual
blocks at half resolution; 2x upsampling added to the pre-pool features; ``blocks[2]`` residual blocks at
full resolution; a 1x1 projection to one channel.  3x3(x3) kernels, "same" zero padding.

krylon's extensions:

* the geometry is an input -- the fluid mask (1 fluid, 0 solid), the Dirichlet-boundary marker and, for
  variable coefficients, the log-coefficient -- so one trained network serves many obstacle scenes;
* ``levels > 1`` nests the U-Net: the half-resolution stage is itself "blocks, pool, recurse, upsample,
  add, blocks".  With ``levels="auto"`` the coarse levels **share their weights** and the network recurses
  until the coarsest grid has at most ``coarsest`` cells per axis, so a model trained on 64^2 grids applies
  as many levels to a 1024^2 grid as that grid needs -- a learned multigrid V-cycle.  The coarse output is
  upsampled and multiplied by 4 (the ratio of the unit-spacing Laplacian stencil on a grid twice as coarse,
  in any dimension) so that every level sees the same scaling.  A one-level U-Net's receptive field is a
  few dozen cells, which cannot represent A^{-1} on larger grids.  The shipped models
  (``DCDM.pretrained``) are multi-level: ``"poisson2d"`` has ``levels=3`` (fixed depth, trained on 64^2 and
  128^2), ``"poisson3d"`` has ``levels="auto"`` with ``coarsest=6`` (trained on 24^3); their records are
  ``weights/dcdm_poisson{2,3}d.json`` and ``.md``.  On grids much larger than the training grid it is the
  solver's multilevel iteration (``DCDM``'s default, ``coarse="auto"``) that carries them: it feeds the network
  coarsened residuals of the size it was trained on.

The network's input channels are built by one function, :func:`input_channels`, at training time
(``krylon.solvers.dcdm.dcdm_loss``) and at inference (``krylon.solvers.dcdm.network_inputs``).

Grids whose size is not divisible by the pooling factor are zero-padded (padding reads as solid) and the
output is cropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import stencil as st
from .registry import register_model

__all__ = ["DCDMNet", "input_channels", "unit_rms", "dirichlet_marker"]


def dirichlet_marker(shape, bc) -> torch.Tensor:
    """1 on cells next to a Dirichlet boundary face, else 0 (tells the network where the solution is pinned).

    ``bc`` as for :class:`~krylon.operators.Laplacian` (a name, or a (low, high) pair per axis); float32 on the CPU.
    """
    sides = st.parse_bc(bc, len(shape))
    m = torch.zeros(shape)
    for a, (lo, hi) in enumerate(sides):
        idx = [slice(None)] * len(shape)
        if lo == "dirichlet":
            idx[a] = 0
            m[tuple(idx)] = 1
        if hi == "dirichlet":
            idx[a] = -1
            m[tuple(idx)] = 1
    return m


def unit_rms(r: torch.Tensor, fluid: torch.Tensor) -> torch.Tensor:
    """Residuals ``r`` (``(B, *grid)``) scaled to unit RMS over the fluid cells (``fluid``: ``(*grid)`` or
    ``(B, *grid)``), the network's input scale at training and at inference alike.

    Unit RMS, not unit norm: a network with biases and ReLUs is not scale-equivariant, so its input must be O(1)
    per cell whatever the grid size (unit norm would shrink it by sqrt(n)).  A zero residual stays zero.
    """
    nd = r.dim() - 1
    rn = torch.linalg.vector_norm(r.flatten(-nd) if nd > 1 else r, dim=-1)
    n_fluid = fluid.flatten(-nd).sum(-1).to(rn.dtype).clamp_min(1)
    scale = n_fluid.sqrt() / torch.where(rn == 0, torch.ones_like(rn), rn)
    return r * scale.reshape(scale.shape + (1,) * nd)


def input_channels(r: torch.Tensor, fluid: torch.Tensor, dirichlet: torch.Tensor | None = None,
                   log_coefficient: torch.Tensor | None = None, *, in_channels: int) -> torch.Tensor:
    """The network's input ``(B, in_channels, *grid)`` for scaled residuals ``r`` of shape ``(B, *grid)``.

    Channel 0: the residual (scaled by the caller with :func:`unit_rms`); 1: the fluid mask (1 fluid,
    0 solid); 2: the Dirichlet marker (:func:`dirichlet_marker`), masked to the fluid; 3: the log-coefficient of a
    variable-coefficient operator, centred to mean zero (0 for a Laplacian, or when ``log_coefficient`` is None).
    ``fluid``, ``dirichlet`` and ``log_coefficient`` are ``(*grid)`` or ``(B, *grid)``; they are cast to ``r``'s
    dtype and device.  This is the only place the channels are assembled, for training and for inference alike.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    like = dict(dtype=r.dtype, device=r.device)
    fluid = fluid.to(**like)
    chans = [r]
    if in_channels >= 2:
        chans.append(fluid.expand_as(r))
    if in_channels >= 3:
        if dirichlet is None:
            raise ValueError("a network with 3 or more input channels needs the Dirichlet marker")
        chans.append((dirichlet.to(**like) * fluid).expand_as(r))
    if in_channels >= 4:
        if log_coefficient is None:
            logk = torch.zeros_like(r)
        else:
            logk = log_coefficient.to(**like)
            logk = logk - logk.mean(dim=tuple(range(logk.dim() - r.dim() + 1, logk.dim())), keepdim=True)
        chans.append(logk.expand_as(r))
    return torch.stack(chans, dim=1)


class _ResBlock(nn.Module):
    def __init__(self, conv, width):
        super().__init__()
        self.c1 = conv(width, width, 3, padding=1)
        self.c2 = conv(width, width, 3, padding=1)

    def forward(self, h):
        return F.relu(self.c2(F.relu(self.c1(h)))) + h


def _stack(conv, width, n):
    return nn.Sequential(*[_ResBlock(conv, width) for _ in range(n)])


@register_model
class DCDMNet(nn.Module):
    """Residual U-Net mapping a (normalised) residual and the scene's geometry to a search direction.

    Parameters
    ----------
    dim : 2 or 3
    in_channels : int
        1 (residual only), 2 (+ fluid mask), 3 (+ Dirichlet marker) or 4 (+ log-coefficient).
    width : int
        Channels (16 in the paper).
    blocks : (int, int, int)
        Residual blocks before pooling, at the coarsest level, after upsampling (per level).
    levels : int or "auto"
        Number of pooling levels; 1 is the paper's network.  ``"auto"`` shares the weights of all coarse
        levels and recurses until the grid has at most ``coarsest`` cells per axis (at least one level).
    coarsest : int
        Stop pooling for ``levels="auto"`` when the smallest grid axis is at most this.
    odd : bool
        Antisymmetrise in the residual channel, ``f(r) = (g(r) - g(-r))/2`` (two passes, batched).  The
        paper's network is not odd: its biases give it an r-independent output ``g(0)`` of the same size as the
        useful part, and once the first directions have removed that field DCDM stalls.  ``A^{-1}`` is odd, so
        this costs no expressiveness.

    Examples
    --------
    >>> import torch
    >>> net = DCDMNet(dim=2, in_channels=3)
    >>> net(torch.randn(4, 3, 33, 40)).shape
    torch.Size([4, 1, 33, 40])
    >>> DCDMNet(dim=2, levels="auto")(torch.randn(1, 3, 100, 60)).shape
    torch.Size([1, 1, 100, 60])
    """

    def __init__(self, dim: int = 2, in_channels: int = 3, width: int = 16, blocks=(2, 4, 2), levels=1,
                 coarsest: int = 8, odd: bool = False):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 3 or min(blocks) < 0:
            raise ValueError(f"blocks must be three non-negative integers, got {blocks}")
        if not (levels == "auto" or (isinstance(levels, int) and levels >= 1)):
            raise ValueError(f"levels must be a positive integer or 'auto', got {levels!r}")
        if int(coarsest) < 2:
            raise ValueError(f"coarsest must be >= 2, got {coarsest}")
        self.config = {"dim": dim, "in_channels": in_channels, "width": width, "blocks": list(blocks),
                       "levels": levels, "coarsest": int(coarsest), "odd": bool(odd)}
        self.odd = bool(odd)
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim = dim
        self.levels = levels
        self.coarsest = int(coarsest)
        self.inp = conv(in_channels, width, 3, padding=1)
        # level 0 (finest) has its own blocks; with "auto" all coarser levels share one pair of stacks
        n_own = 1 if levels == "auto" else levels
        self.pre = nn.ModuleList([_stack(conv, width, blocks[0]) for _ in range(n_own)])
        self.post = nn.ModuleList([_stack(conv, width, blocks[2]) for _ in range(n_own)])
        if levels == "auto":
            self.pre_shared = _stack(conv, width, blocks[0])
            self.post_shared = _stack(conv, width, blocks[2])
        self.mid = _stack(conv, width, blocks[1])
        self.out = conv(width, 1, 1)

    def n_levels(self, grid) -> int:
        """The number of pooling levels used on a grid of this shape."""
        if self.levels != "auto":
            return int(self.levels)
        n, lv = min(int(s) for s in grid), 0
        while n > self.coarsest or lv == 0:
            n = (n + 1) // 2
            lv += 1
        return lv

    def _level(self, h, level, n_levels):
        shared = self.levels == "auto" and level > 0
        pre = self.pre_shared if shared else self.pre[level]
        post = self.post_shared if shared else self.post[level]
        h = pre(h)
        pool = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        c = pool(h, 2)
        c = self.mid(c) if level + 1 == n_levels else self._level(c, level + 1, n_levels)
        up = F.interpolate(c, scale_factor=2, mode="nearest")
        if self.levels == "auto":
            up = 4.0 * up
        return post(h + up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2:
            raise ValueError(f"a {self.dim}-D DCDM network expects input (batch, channels, *grid) with {self.dim} grid "
                             f"dimensions, got shape {tuple(x.shape)}")
        if x.shape[1] != self.inp.in_channels:
            raise ValueError(f"this DCDM network takes {self.inp.in_channels} input channels, got {x.shape[1]}")
        grid = tuple(x.shape[2:])
        L = self.n_levels(grid)
        f = 2 ** L
        pad = []
        for n in reversed(grid):
            pad += [0, (-n) % f]
        if any(pad):
            x = F.pad(x, pad)
        if self.odd:  # f(r) = (g(r) - g(-r)) / 2: odd in the residual, like A^{-1}
            neg = torch.cat([-x[:, :1], x[:, 1:]], dim=1)
            y = self.out(self._level(self.inp(torch.cat([x, neg])), 0, L))
            y = 0.5 * (y[: x.shape[0]] - y[x.shape[0]:])
        else:
            y = self.out(self._level(self.inp(x), 0, L))
        if any(pad):
            y = y[(Ellipsis,) + tuple(slice(0, n) for n in grid)]
        return y

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

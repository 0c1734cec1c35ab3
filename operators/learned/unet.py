"""The score network of the diffusion prior: a small noise-prediction U-Net ``eps(x_t, t)`` (DDPM, Ho et al. 2020).

Sinusoidal time embedding, GroupNorm + SiLU residual blocks with the time added after the first convolution,
strided-convolution downsampling, nearest-neighbour upsampling with skip concatenation, optional single-head
self-attention at the coarsest level.  Real images are one channel; complex images are two (real, imaginary),
converted by :func:`to_channels` / :func:`from_channels`.

The network takes ``(B, C, H, W)`` tensors; ``H`` and ``W`` must be divisible by ``2 ** (len(mults) - 1)``
(checked, :meth:`ScoreUNet.check_size`).  It was trained at ``config["image_size"]``; other sizes run but are
outside the training distribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["ScoreUNet", "timestep_embedding", "to_channels", "from_channels"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t w_k), sin(t w_k)]`` of (float) timesteps ``t`` of shape ``(B,)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def to_channels(x: torch.Tensor, complex_images: bool) -> torch.Tensor:
    """A field batch ``(B, H, W)`` as network channels ``(B, C, H, W)`` (complex: real and imaginary parts)."""
    if complex_images:
        return torch.view_as_real(x.to(torch.complex64) if not x.is_complex() else x).movedim(-1, 1).float()
    return x.real.unsqueeze(1).float() if x.is_complex() else x.unsqueeze(1).float()


def from_channels(h: torch.Tensor, complex_images: bool) -> torch.Tensor:
    """The inverse of :func:`to_channels`: ``(B, C, H, W)`` -> ``(B, H, W)``."""
    if complex_images:
        return torch.complex(h[:, 0], h[:, 1])
    return h[:, 0]


def _groups(ch: int, groups: int) -> int:
    g = min(groups, ch)
    while ch % g:
        g -= 1
    return g


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))


@register_model
class ScoreUNet(nn.Module):
    """Noise-prediction U-Net ``eps(x_t, t)`` for real (1 channel) or complex (2 channels) images.

    The defaults are the configuration of krylon's shipped prior (``DDS.pretrained()``, ``phantom64``), which
    ``train_prior`` and ``krylon train diffusion`` use too.

    Parameters
    ----------
    image_size : int
        Resolution the network is trained at (``H = W``); samplers read it to refuse other sizes.
    complex_images : bool
        Complex images as two channels (real, imaginary); else real images, one channel.
    channels : int
        Channels at full resolution.
    mults : sequence of int
        Channel multiplier per level; ``len(mults) - 1`` downsamplings.
    blocks : int
        Residual blocks per level on the way down (one more on the way up).
    attention : bool
        Self-attention at the coarsest level.
    groups : int
        GroupNorm groups (at most; reduced to divide the channel count).

    Examples
    --------
    >>> import torch
    >>> net = ScoreUNet(image_size=16, channels=8, mults=(1, 2), groups=4)
    >>> net(torch.zeros(2, 1, 16, 16), torch.tensor([0, 999])).shape
    torch.Size([2, 1, 16, 16])
    """

    def __init__(self, image_size: int = 64, complex_images: bool = False, channels: int = 16,
                 mults=(1, 2, 2, 4), blocks: int = 1, attention: bool = True, groups: int = 8):
        super().__init__()
        mults = [int(m) for m in mults]
        if not mults or min(mults) < 1 or channels < 1 or blocks < 1 or groups < 1:
            raise ValueError(f"ScoreUNet needs channels, blocks, groups >= 1 and mults >= 1, got channels={channels}, "
                             f"mults={mults}, blocks={blocks}, groups={groups}")
        self.factor = 2 ** (len(mults) - 1)
        if image_size < 1 or image_size % self.factor:
            raise ValueError(f"image_size {image_size} must be a positive multiple of {self.factor} "
                             f"(2 ** (len(mults) - 1) with mults={mults})")
        self.config = {"image_size": int(image_size), "complex_images": bool(complex_images),
                       "channels": int(channels), "mults": mults, "blocks": int(blocks),
                       "attention": bool(attention), "groups": int(groups)}
        self.in_channels = 2 if complex_images else 1
        temb = 4 * channels
        self.temb_dim = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(self.in_channels, channels, 3, padding=1)
        chs = [channels * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [channels]
        cur = channels
        for i, ch in enumerate(chs):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(_ResBlock(cur, ch, temb, groups))
                cur = ch
                skips.append(cur)
            self.down.append(level)
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid1 = _ResBlock(cur, cur, temb, groups)
        self.attn = _Attention(cur, groups) if attention else nn.Identity()
        self.mid2 = _ResBlock(cur, cur, temb, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chs))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(_ResBlock(cur + skips.pop(), ch, temb, groups))
                cur = ch
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(cur, groups), cur)
        self.out = nn.Conv2d(cur, self.in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    @property
    def complex_images(self) -> bool:
        return self.config["complex_images"]

    def check_size(self, shape) -> None:
        """``ValueError`` unless ``shape[-2:]`` is divisible by the network's downsampling factor."""
        h, w = shape[-2:]
        if h % self.factor or w % self.factor or h < 1 or w < 1:
            raise ValueError(f"the score network takes images whose sides are multiples of {self.factor}; "
                             f"got {h}x{w} (resize or pad the image)")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ScoreUNet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self.check_size(x.shape)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.temb_dim))
        h = self.inp(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))

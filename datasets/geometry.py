"""Random obstacle geometries for Poisson-type benchmark scenes (boxes, spheres).

Every generator takes a ``torch.Generator`` (or a seed) so scenes are reproducible,
and returns a boolean mask (True = solid) of the grid's shape.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["random_obstacles", "fill_enclosed"]


def _generator(seed):
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def random_obstacles(shape: Sequence[int], count: int, *, kind: str = "mixed", seed=0,
                     min_size: float = 0.05, max_size: float = 0.2, margin: int = 1) -> torch.Tensor:
    """A mask with ``count`` random boxes and/or spheres (True = solid).

    Parameters
    ----------
    shape : grid shape (2-D or 3-D)
    count : number of obstacles (0 gives an all-fluid mask)
    kind : ``"boxes"``, ``"spheres"`` or ``"mixed"``
    seed : int or torch.Generator
    min_size, max_size : obstacle extent as a fraction of each axis length
    margin : cells kept free next to the domain boundary, so every fluid region
        stays connected to the boundary conditions

    Examples
    --------
    >>> m = random_obstacles((64, 64), 5, seed=1)
    >>> m.shape, m.dtype, 0 < float(m.float().mean()) < 0.5
    (torch.Size([64, 64]), torch.bool, True)
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"obstacles are generated on 2-D and 3-D grids, got shape {shape}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if kind not in ("boxes", "spheres", "mixed"):
        raise ValueError(f"kind must be 'boxes', 'spheres' or 'mixed', got {kind!r}")
    if not 0 < min_size <= max_size < 1:
        raise ValueError(f"need 0 < min_size <= max_size < 1, got {min_size}, {max_size}")
    g = _generator(seed)
    mask = torch.zeros(shape, dtype=torch.bool)
    coords = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    for i in range(count):
        sphere = kind == "spheres" or (kind == "mixed" and i % 2 == 1)
        size = [min_size + (max_size - min_size) * float(torch.rand((), generator=g, dtype=torch.float64)) for _ in shape]
        ext = [max(1, int(round(s * n))) for s, n in zip(size, shape)]
        lo = [margin + int(torch.randint(0, max(1, n - e - 2 * margin), (), generator=g)) for n, e in zip(shape, ext)]
        if sphere:
            radius = min(ext) / 2
            center = [l + radius for l in lo]
            dist2 = sum((c - c0) ** 2 for c, c0 in zip(coords, center))
            mask |= dist2 <= radius ** 2
        else:
            sl = tuple(slice(l, l + e) for l, e in zip(lo, ext))
            mask[sl] = True
    # keep a margin free so no fluid pocket is sealed off from the domain boundary by a shape touching it
    if margin > 0:
        edge = torch.zeros(shape, dtype=torch.bool)
        for a in range(len(shape)):
            idx = [slice(None)] * len(shape)
            idx[a] = slice(0, margin)
            edge[tuple(idx)] = True
            idx[a] = slice(shape[a] - margin, shape[a])
            edge[tuple(idx)] = True
        mask &= ~edge
    return fill_enclosed(mask)


def fill_enclosed(mask: torch.Tensor) -> torch.Tensor:
    """Mark fluid pockets that do not touch the domain boundary as solid.

    A pocket sealed by obstacles has a pure-Neumann (singular) Poisson problem of
    its own; benchmark scenes fill it so every system is nonsingular.
    """
    import numpy as np
    from scipy import ndimage

    m = mask.cpu().numpy()
    labels, count = ndimage.label(~m)
    if count <= 1:
        return mask
    border = np.zeros_like(m)
    for a in range(m.ndim):
        idx = [slice(None)] * m.ndim
        idx[a] = 0
        border[tuple(idx)] = True
        idx[a] = -1
        border[tuple(idx)] = True
    keep = np.unique(labels[border & ~m])
    enclosed = ~np.isin(labels, keep) & ~m
    return torch.from_numpy(m | enclosed).to(mask.device)

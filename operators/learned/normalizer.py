"""Per-channel normalisation of fields, fitted on a training split and saved inside a model checkpoint."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ...kernels import distributed, validate
from .registry import register_model

__all__ = ["ChannelNormalizer"]


@register_model
class ChannelNormalizer(nn.Module):
    """``(x - mean_c) / std_c`` per channel ``c``, with its exact inverse.

    The statistics are buffers (``mean``, ``std``, ``count``), so they travel in the ``state_dict`` of any model
    that holds the normaliser, and the constructor arguments are the JSON-able ``config``.

    Parameters
    ----------
    channels : int
        Number of channels ``C``.
    eps : float
        Guard for (near-)constant channels: a channel whose standard deviation is at most ``eps`` is only
        shifted (its scale is 1), so encoding never divides by ~0 (``eps=0``: exactly constant channels only).

    Notes
    -----
    :meth:`fit` reduces over every axis but the channel axis (samples, space, time) and computes the population
    mean and standard deviation (``ddof=0``) in float64, merging per-sample moments with Chan et al.'s pairwise
    update, so a data set streams one sample at a time and a large mean does not cancel the variance.
    :meth:`encode` and :meth:`decode` compute in the input's dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(8, 2, 16, 16) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1) + 3
    >>> norm = ChannelNormalizer(2).fit(x)
    >>> z = norm.encode(x)
    >>> float(z.mean(dim=(0, 2, 3)).abs().max()) < 1e-6, torch.allclose(norm.decode(z), x, atol=1e-5)
    (True, True)
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.channels = validate.integer(channels, "channels")
        self.eps = validate.real_number(eps, "eps", minimum=0.0)
        self.config = {"channels": self.channels, "eps": self.eps}
        self.register_buffer("mean", torch.zeros(self.channels, dtype=torch.float64))
        self.register_buffer("std", torch.ones(self.channels, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        return bool(self.count > 0)

    @torch.no_grad()
    def fit(self, data, *, indices=None, key: str = "x", dim: int = 1, across_ranks: bool = False) -> "ChannelNormalizer":
        """Fit the per-channel mean and standard deviation; returns ``self``.

        Parameters
        ----------
        data : Tensor or data set
            A tensor with the channels on axis ``dim`` (default ``(N, C, ...)``), or a data set whose samples
            ``data[i][key]`` are ``(C, ...)`` (read one at a time: any size fits in memory).
        indices : iterable of int, optional
            The samples to use (the training split); default all.
        key : str
            The sample field to fit (``"x"`` or ``"y"``) when ``data`` is a data set.
        dim : int
            The channel axis of a tensor ``data``.
        across_ranks : bool
            Under ``torchrun``: every rank passes its own share of the samples and the statistics are those of
            all shares together (merged with the same pairwise update, two all-reduces of ``2 C`` and ``C``
            numbers), so no rank reads the others' samples.  A rank's share may be empty.
        """
        n = torch.zeros(self.channels, dtype=torch.float64)
        mean = torch.zeros(self.channels, dtype=torch.float64)
        m2 = torch.zeros(self.channels, dtype=torch.float64)
        if isinstance(data, torch.Tensor):
            x = self._channels_first(data, dim, "data")
            if indices is not None:
                x = x[:, _index_list(indices, x.shape[1], "indices")]
            chunks = (x[:, i:i + 64] for i in range(0, x.shape[1], 64))  # bounded float64 copies
            where = "data"
        else:
            if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
                raise TypeError(f"data must be a tensor (N, C, ...) or a data set, got {type(data).__name__}")
            idx = list(range(len(data))) if indices is None else _index_list(indices, len(data), "indices")
            getitems = getattr(data, "__getitems__", None)  # krylon's readers fetch a batch in one read

            def samples():
                for start in range(0, len(idx), 64):
                    block = idx[start:start + 64]
                    fetched = getitems(block) if getitems is not None else [data[i] for i in block]
                    parts = []
                    for i, sample in zip(block, fetched):
                        if key not in sample:
                            raise KeyError(f"sample {i} of {getattr(data, 'path', 'the data set')} has no key {key!r}; "
                                           f"it has {sorted(sample)}")
                        parts.append(self._channels_first(sample[key], 0, f"sample {i} key {key!r}"))
                    yield torch.stack(parts, dim=1) if len({p.shape for p in parts}) == 1 else torch.cat(
                        [p.reshape(self.channels, -1) for p in parts], dim=1)

            chunks = samples()
            where = f"the data set's key {key!r}"
        across = validate.boolean(across_ranks, "across_ranks") and distributed.world_size() > 1
        # a bad chunk on one rank stops every rank at once, not the others after the collectives' timeout
        with distributed.raise_together(f"the values of {where}", across):
            n, mean, m2 = self._moments(chunks, where, n, mean, m2)
        if across:
            # Chan's merge over ranks: the global mean first, then each rank's M2 about it (no cancellation)
            sums = torch.tensor(distributed.all_reduce_sum(torch.cat([n, n * mean]).tolist()), dtype=torch.float64)
            n_all, mean_all = sums[:self.channels], sums[self.channels:] / sums[:self.channels].clamp_min(1)
            m2 = torch.tensor(distributed.all_reduce_sum((m2 + n * (mean - mean_all) ** 2).tolist()),
                              dtype=torch.float64)
            n, mean = n_all, mean_all
        if not bool((n > 0).all()):
            raise ValueError(f"cannot fit a normaliser on no values ({where}, indices={indices!r})")
        std = (m2 / n).sqrt()
        constant = std <= self.eps
        self.mean.copy_(mean)
        self.std.copy_(torch.where(constant, torch.ones_like(std), std))
        self.count.fill_(float(n[0]))
        return self

    def _moments(self, chunks, where: str, n, mean, m2):
        """Welford/Chan updates of the per-channel count, mean and M2 over ``chunks``."""
        for chunk in chunks:
            c = chunk.reshape(self.channels, -1).to(device="cpu", dtype=torch.float64)
            validate.finite(c, where)
            if c.shape[1] == 0:
                continue
            nb = torch.full((self.channels,), float(c.shape[1]), dtype=torch.float64)
            mb = c.mean(dim=1)
            m2b = ((c - mb[:, None]) ** 2).sum(dim=1)
            total = n + nb
            delta = mb - mean
            mean = mean + delta * nb / total
            m2 = m2 + m2b + delta**2 * n * nb / total
            n = total
        return n, mean, m2

    def _channels_first(self, x, dim: int, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError(f"{name} is a scalar; it needs a channel axis of size {self.channels}")
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim={dim!r} is not an axis of {name} with shape {tuple(x.shape)}")
        if x.shape[dim] != self.channels:
            raise ValueError(f"{name} has {x.shape[dim]} channels on axis {dim} (shape {tuple(x.shape)}); "
                             f"this normaliser has {self.channels}")
        if x.is_complex():
            raise TypeError(f"{name} must be real, got {x.dtype}")
        return x.movedim(dim, 0)

    def _stats(self, x: torch.Tensor, dim: int):
        if not self.fitted:
            raise RuntimeError("this ChannelNormalizer is not fitted: call fit(...) or load a fitted state_dict")
        self._channels_first(x, dim, "x")
        shape = [1] * x.dim()
        shape[dim] = self.channels
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return self.mean.to(x.device, dtype).view(shape), self.std.to(x.device, dtype).view(shape), dtype

    def encode(self, x: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
        """``(x - mean) / std`` with the channels on axis ``dim`` (``1`` for a batch, ``0`` for one sample)."""
        mean, std, dtype = self._stats(x, dim)
        return (x.to(dtype) - mean) / std

    def decode(self, z: torch.Tensor, *, dim: int = 1) -> torch.Tensor:
        """The inverse of :meth:`encode`: ``z * std + mean``."""
        mean, std, dtype = self._stats(z, dim)
        return z.to(dtype) * std + mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps:g}, fitted={self.fitted}"


def _index_list(indices, n: int, name: str) -> list[int]:
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    out = [validate.integer(i, f"{name} entry", minimum=None) for i in indices]
    bad = [i for i in out if not -n <= i < n]
    if bad:
        raise IndexError(f"{name} {bad[:5]} out of range for {n} samples")
    return out

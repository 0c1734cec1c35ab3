"""One training loop for every learned part of krylon (DCDM now; neural operators and score networks later).

:func:`train` runs epochs over a data set with a progress bar, writes a
checkpoint after every epoch (model, optimiser, scheduler, epoch, loss history,
RNG state), resumes from the last checkpoint after an interruption, and plots
the loss curves to PNG.  Checkpoints hold only tensors and plain Python data,
so they load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..operators.learned.registry import atomic_save, read_torch_file

__all__ = ["TrainConfig", "EMA", "train", "load_checkpoint", "plot_losses"]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    max_grad_norm: float | None = 1.0
    num_workers: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


class EMA:
    """Exponential moving average of a model's floating parameters, a hook of :func:`train` (``ema=``).

    After every optimiser step ``shadow = d * shadow + (1 - d) * param`` with ``d = min(decay, (1 + n) / (10 + n))``
    (``n`` updates so far: the average does not drag the random initialisation along early on).  Saved in
    and restored from the training checkpoint; :meth:`copy_to` writes the averaged weights into a model.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for k, p in model.named_parameters():
            if k in self.shadow:
                p.copy_(self.shadow[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the checkpoint's EMA weights do not match this model's parameters")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.shadow = {k: v.to(self.shadow[k].device) for k, v in state["shadow"].items()}


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a training checkpoint (``weights_only=True``), with a clear error for a corrupted file."""
    path = Path(path)
    ckpt = read_torch_file(path, str(path), map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise ValueError(f"{path} is not a krylon training checkpoint")
    return ckpt


def plot_losses(history: dict, path, title: str = "training") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, values in history.items():
        if values:
            ax.semilogy(range(1, len(values) + 1), values, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor], dataset, out_dir,
          config: TrainConfig, *, progress: bool = True, log: Callable[[str], None] = print, name: str = "model",
          ema: EMA | None = None) -> dict:
    """Train ``model`` on ``dataset`` minimising ``loss_fn(model, batch)``; resume from ``out_dir`` if possible.

    Returns the loss history ``{"train": [...], "val": [...]}``.  ``out_dir`` receives
    ``checkpoint.pt`` (every epoch), ``losses.png`` and ``history.json``.  ``ema``: an :class:`EMA` updated
    after every step and kept in the checkpoint (the model itself keeps the raw weights).
    """
    from torch.utils.data import DataLoader, Subset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    n = len(dataset)
    if n < 2:
        raise ValueError(f"the data set has {n} samples; need at least 2")
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n, generator=g).tolist()
    n_val = int(round(config.val_fraction * n)) if config.val_fraction > 0 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    history = {"train": [], "val": []}
    start_epoch = 0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("name") != name:
            raise ValueError(f"{ckpt_path} belongs to {ckpt.get('name')!r}, not {name!r}; use another output folder")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"{ckpt_path} does not match this model's configuration: {exc}") from exc
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history = json.loads(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        torch.set_rng_state(ckpt["rng"])
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        log(f"resuming {name} from {ckpt_path} after epoch {start_epoch}")
    device = next(model.parameters()).device
    loader_gen = torch.Generator().manual_seed(config.seed + 1)
    for epoch in range(start_epoch, config.epochs):
        loader_gen.manual_seed(config.seed + 1 + epoch)  # the same batches whether or not we resumed
        loader = DataLoader(Subset(dataset, train_idx), batch_size=config.batch_size, shuffle=True,
                            generator=loader_gen, num_workers=config.num_workers, drop_last=False)
        model.train()
        total, count = 0.0, 0
        t0 = time.perf_counter()
        it = loader
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{config.epochs}", leave=False)
            it = bar
        for batch in it:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            bs = next(iter(batch.values())).shape[0]
            total += float(loss.detach()) * bs
            count += bs
            if bar is not None:
                bar.set_postfix(loss=f"{total / count:.4g}")
        if bar is not None:
            bar.close()
        history["train"].append(total / max(count, 1))
        if n_val:
            model.eval()
            vl, vc = 0.0, 0
            with torch.no_grad():
                for batch in DataLoader(Subset(dataset, val_idx), batch_size=config.batch_size):
                    batch = {k: v.to(device) for k, v in batch.items()}
                    bs = next(iter(batch.values())).shape[0]
                    vl += float(loss_fn(model, batch)) * bs
                    vc += bs
            history["val"].append(vl / max(vc, 1))
        atomic_save({"name": name, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": json.dumps(history),
                      "rng": torch.get_rng_state(), "config": json.dumps(getattr(model, "config", {})),
                      **({"ema": ema.state_dict()} if ema is not None else {})}, ckpt_path)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_losses(history, out / "losses.png", title=name)
        log(f"{name} epoch {epoch + 1}/{config.epochs}: train {history['train'][-1]:.5g}"
            + (f", val {history['val'][-1]:.5g}" if n_val else "") + f" ({time.perf_counter() - t0:.1f} s)")
    return history

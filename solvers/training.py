"""One training loop for every learned part of krylon (DCDM, neural operators; score networks next).

:func:`train` runs epochs over a data set with a progress bar, validates after every epoch (the loss and any
extra metrics), writes a checkpoint after every epoch (model, optimiser, scheduler, gradient scaler, hook
states, epoch, history, RNG state), resumes from the last checkpoint after an interruption -- with the same
losses an uninterrupted run gets -- and plots the loss curves to PNG.  Checkpoints hold only tensors and plain
Python data, so they load with ``torch.load(..., weights_only=True)``.

What differs between learned parts is configuration (:class:`TrainConfig`: optimiser, schedule, mixed
precision) or a :class:`TrainHook` (e.g. EMA weights), never a second loop.

Data parallel
-------------
Run under ``torchrun`` (after :func:`krylon.kernels.distributed.init_from_env`) with more than one rank, the same
loop trains a ``DistributedDataParallel`` copy of the model on every rank.  ``batch_size`` is the **global**
batch: each epoch's permutation of the training set is the one a single process draws (seeded by the epoch), cut
into the same global batches, and rank ``r`` takes the ``r``-th contiguous share of each.  Each rank's loss is
weighted by its share, so DDP's gradient average is the gradient of the global batch mean: the loss curve is the
single-process one to rounding, and a checkpoint (model, optimiser, schedule, epoch -- the global sample position
``epoch * n_train``) resumes on any number of ranks.  Training and validation metrics are summed over ranks (every
rank and the log see global values); rank 0 alone writes checkpoints (atomically) while the others wait at a
barrier.  Random draws inside the loss (diffusion noise) come from a generator reseeded per (seed, epoch, rank), so
a distributed run is reproducible for a given world size.  ``loss_fn`` must run the network as ``model(...)`` (the
DDP wrapper's forward, which arms the gradient all-reduce); other attributes reach the wrapped module.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..kernels import distributed, validate
from ..operators.learned.registry import atomic_save, read_torch_file

__all__ = ["TrainConfig", "TrainHook", "EMA", "train", "train_val_split", "load_checkpoint", "plot_losses", "autocast"]

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Options of :func:`train`.

    ``optimizer``: ``"adam"`` or ``"adamw"`` (decoupled weight decay); ``schedule``: ``"cosine"`` (annealed to
    zero over all steps; DCDM's), ``"onecycle"`` (warm-up to ``lr`` over ``pct_start`` of the steps, then
    annealed; the neural operators') or ``"constant"``; ``amp``: mixed precision -- bf16 autocast on CPU, fp16
    autocast with a gradient scaler on CUDA (modules that need fp32, such as FFTs, must say so themselves:
    see :func:`autocast`); ``val_fraction``: the share of ``dataset`` held out when no validation set is given.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.1
    max_grad_norm: float | None = 1.0
    num_workers: int = 0
    optimizer: str = "adam"
    schedule: str = "cosine"
    pct_start: float = 0.3
    amp: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
        self.optimizer = validate.choice(self.optimizer, "optimizer", OPTIMIZERS)
        self.schedule = validate.choice(self.schedule, "schedule", SCHEDULES)
        self.amp = validate.boolean(self.amp, "amp")


class TrainHook:
    """Extension point of :func:`train`: subclass and override what you need (every method is a no-op here).

    A hook's :meth:`state_dict` goes into each checkpoint and comes back through :meth:`load_state_dict` on
    resume, so a hook with state (EMA weights, counters) resumes exactly.  :meth:`evaluating` wraps validation
    and may swap weights in and out (EMA).
    """

    def on_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """After each optimiser step (``step`` counts from 1 over the whole run)."""

    def on_epoch_end(self, model: torch.nn.Module, epoch: int, history: dict) -> None:
        """After each epoch's validation, before its checkpoint (``epoch`` counts from 1)."""

    def evaluating(self, model: torch.nn.Module):
        """Context manager around validation."""
        return contextlib.nullcontext()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EMA(TrainHook):
    """Exponential moving average of a model's floating parameters (a :class:`TrainHook`).

    After every optimiser step ``shadow = d * shadow + (1 - d) * param`` with ``d = min(decay, (1 + n) / (10 + n))``
    (``n`` updates so far: early on the average does not drag the random initialisation along).  Validation runs
    with the averaged weights; :meth:`copy_to` writes them into a model (for export).
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def on_step(self, model, optimizer=None, step=None) -> None:
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

    @contextlib.contextmanager
    def evaluating(self, model: torch.nn.Module):
        raw = {k: p.detach().clone() for k, p in model.named_parameters() if k in self.shadow}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    if k in raw:
                        p.copy_(raw[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the checkpoint's EMA weights do not match this model's parameters")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.shadow = {k: v.to(self.shadow[k].device) for k, v in state["shadow"].items()}


def autocast(device: torch.device, enabled: bool):
    """The autocast context :func:`train` uses: bf16 on CPU, fp16 on CUDA; a no-op when not ``enabled``.

    Spectral layers should run their FFTs outside it (``torch.autocast(device.type, enabled=False)`` and
    ``.float()``): cuFFT takes half precision only on power-of-two sizes and the CPU FFT not at all.
    """
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a training checkpoint (``weights_only=True``), with a clear error for a corrupted file."""
    path = Path(path)
    ckpt = read_torch_file(path, str(path), map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise ValueError(f"{path} is not a krylon training checkpoint")
    return ckpt


def plot_losses(history: dict, path, title: str = "training") -> None:
    """Loss curves (``train``, ``val`` and the validation metrics ``val_*``) on a log scale, to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, values in history.items():
        if values and (key in ("train", "val") or key.startswith("val_")):
            ax.semilogy(range(1, len(values) + 1), values, marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(opt, config: TrainConfig, total_steps: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps,
                                                   pct_start=config.pct_start)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def train_val_split(dataset, val_fraction: float, seed: int):
    """The seeded split :func:`train` makes when no validation set is given: ``(train_subset, val_subset or None)``.

    ``round(val_fraction * len(dataset))`` samples of a ``torch.randperm`` drawn from ``seed`` are held out.  Code
    that fits something on the training part before training (normalisers) calls this too, so it never sees a
    validation sample.
    """
    from torch.utils.data import Subset

    n = len(dataset)
    if n < 2:
        raise ValueError(f"the data set has {n} samples; need at least 2")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    n_val = int(round(val_fraction * n)) if val_fraction > 0 else 0
    return Subset(dataset, perm[n_val:]), (Subset(dataset, perm[:n_val]) if n_val else None)


def _run_shape(config: TrainConfig, n_train: int, total_steps: int) -> dict:
    """What a checkpoint must share with the run that resumes it: the schedule's length depends on all of it."""
    return {"schedule": config.schedule, "epochs": config.epochs, "batch_size": config.batch_size,
            "n_train": n_train, "total_steps": total_steps}


def _check_resumable(ckpt: dict, ckpt_path, run: dict, n_hooks: int) -> None:
    """Refuse to resume a checkpoint whose schedule length, batch size or hooks differ from this run's.

    A resumed scheduler keeps its own length (cosine ``T_max``, one-cycle ``total_steps``): with other epochs or
    batch size the learning rate would follow the old run's curve (a cosine run's extra epochs climb back to the
    maximum), and a hook without its state would restart silently.
    """
    saved = ckpt.get("run")
    if saved is None:  # checkpoints before the run shape was stored: the scheduler's own length is all there is
        sched = ckpt["scheduler"]
        old = sched.get("total_steps", sched.get("T_max"))
        saved = {"total_steps": old} if old is not None else {}
    diff = {k: (saved[k], run[k]) for k in saved if k in run and saved[k] != run[k]}
    if diff:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
        raise ValueError(f"{ckpt_path} was written by a run with other settings ({what}); the learning-rate schedule "
                         f"would not be this run's: rerun with the checkpoint's settings or use another output folder")
    n_saved = len(ckpt.get("hooks", []))
    if n_saved != n_hooks:
        raise ValueError(f"{ckpt_path} holds the state of {n_saved} hook(s) but this run has {n_hooks}: pass the "
                         "same hooks or use another output folder")


def _rng_state() -> dict:
    """CPU and (when present) every CUDA generator: CUDA code draws from the device's own generator."""
    state = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(ckpt: dict) -> None:
    torch.set_rng_state(ckpt["rng"])
    cuda = ckpt.get("cuda_rng")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(cuda)[:torch.cuda.device_count()])


def _to(batch: Mapping, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: Mapping) -> int:
    return next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP whose attributes fall through to the wrapped module, so a ``loss_fn`` may read ``model.config`` etc."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _GlobalBatches:
    """Batch sampler of a data-parallel rank: this rank's contiguous share of each global batch.

    The global batches are those of ``DataLoader(shuffle=True, generator=...)`` in a single process
    (``RandomSampler`` + ``BatchSampler``); a rank whose share of a (last, short) batch is empty gets the batch's
    first sample as a stand-in, weighted 0 -- every rank must run forward and backward at every step.
    """

    def __init__(self, dataset, batch_size: int, generator: torch.Generator, rank: int, world: int):
        from torch.utils.data import BatchSampler, RandomSampler

        self.batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
        self.rank, self.world = rank, world

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            share = distributed.split(len(batch), self.world, self.rank)
            yield [batch[i] for i in share] if len(share) else batch[:1]


def train(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor], dataset, out_dir,
          config: TrainConfig, *, val=None, metrics: Mapping[str, Callable] | None = None,
          hooks: Sequence[TrainHook] = (), progress: bool = True, log: Callable[[str], None] = print,
          name: str = "model", plot: bool = True) -> dict:
    """Train ``model`` on ``dataset`` minimising ``loss_fn(model, batch)``; resume from ``out_dir`` if possible.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place (its parameters with ``requires_grad``); its device is the training device.
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor``, the mean over the batch; ``batch`` is a dict of tensors.
    dataset : torch.utils.data.Dataset
        Samples are dicts of tensors.
    out_dir : path
        Receives ``checkpoint.pt`` and ``history.json`` (every epoch) and ``losses.png`` (at the end, unless
        ``plot=False``); a checkpoint already
        there is resumed (it must come from a run named ``name``).
    config : TrainConfig
    val : Dataset, optional
        Validation set; without it ``config.val_fraction`` of ``dataset`` is held out (seeded split).
    metrics : dict of callables, optional
        Extra validation metrics ``fn(model, batch) -> scalar`` (batch mean), recorded as ``val_<name>``.
    hooks : sequence of TrainHook
        Called after each step and epoch; their state is checkpointed.

    Under ``torchrun`` (a process group of several ranks, see the module notes) every rank calls this with the
    same arguments; ``config.batch_size`` is the global batch, split over the ranks.

    Returns
    -------
    dict
        The history: ``train`` and ``val`` losses per epoch, ``val_<metric>`` per epoch, ``seconds`` per epoch
        (training only, wall clock), ``cpu_seconds`` (the same span in CPU time of this process, all its threads;
        rank 0's under ``torchrun``: on a shared machine it does not count the time other processes held the
        cores) and ``samples`` (training samples per epoch).
    """
    from torch.utils.data import DataLoader

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    metrics = dict(metrics or {})
    hooks = list(hooks)
    n = len(dataset)
    world = distributed.world_size()
    rank = distributed.rank()
    ddp = world > 1
    if rank != 0:  # one log and one progress bar: rank 0's (metrics are global anyway)
        log, progress = (lambda msg: None), False
    if val is None:
        train_set, val_set = train_val_split(dataset, config.val_fraction, config.seed)
    else:
        if n < 1 or len(val) < 1:
            raise ValueError(f"empty data set: {n} training and {len(val)} validation samples")
        train_set, val_set = dataset, val
    n_train = len(train_set)
    device = next(model.parameters()).device
    # what the loss runs: DDP all-reduces the gradients (its construction broadcasts rank 0's weights)
    net = model
    if ddp:
        with distributed.collective_errors("setting up DistributedDataParallel"):
            net = _DDP(model, device_ids=[device.index] if device.index is not None else None)
    opt = _optimizer(model, config)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    sched = _scheduler(opt, config, total_steps)
    run = _run_shape(config, n_train, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    history: dict = {"train": [], "val": [], **{f"val_{k}": [] for k in metrics}, "seconds": [], "cpu_seconds": [],
                     "samples": []}
    start_epoch = 0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("name") != name:
            raise ValueError(f"{ckpt_path} belongs to {ckpt.get('name')!r}, not {name!r}; use another output folder")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ValueError(f"{ckpt_path} does not match this model's configuration: {exc}") from exc
        _check_resumable(ckpt, ckpt_path, run, len(hooks))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        for hook, state in zip(hooks, ckpt.get("hooks", [])):
            hook.load_state_dict(state)
        history.update(json.loads(ckpt["history"]))
        # checkpoints from before cpu_seconds was recorded: unknown (None) for their epochs, lists stay aligned
        history["cpu_seconds"] = [None] * (len(history["seconds"]) - len(history["cpu_seconds"])) + history["cpu_seconds"]
        start_epoch = int(ckpt["epoch"])
        _set_rng_state(ckpt)
        was = int(ckpt.get("world_size", 1))
        log(f"resuming {name} from {ckpt_path} after epoch {start_epoch}"
            + (f" (written by {was} rank(s), resumed on {world})" if was != world else ""))
    loader_gen = torch.Generator().manual_seed(config.seed + 1)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        loader_gen.manual_seed(config.seed + 1 + epoch)  # the same batches whether or not we resumed
        if ddp:  # the same global batches, this rank's share of each
            sampler = _GlobalBatches(train_set, config.batch_size, loader_gen, rank, world)
            loader = DataLoader(train_set, batch_sampler=sampler, generator=loader_gen,
                                num_workers=config.num_workers)
            torch.manual_seed(_rank_seed(config.seed, epoch, rank))
        else:
            loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=loader_gen,
                                num_workers=config.num_workers, drop_last=False)
        model.train()
        total, count = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        it = loader
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{config.epochs}", leave=False)
            it = bar
        for k, batch in enumerate(it):
            batch = _to(batch, device)
            with autocast(device, config.amp):
                loss = loss_fn(net, batch)
            if ddp:  # the global batch's mean loss on every rank (all raise together on a non-finite one); this
                # rank's mean weighted by world * share / size, so DDP's average of gradients is the global mean's
                size = min(config.batch_size, n_train - k * config.batch_size)
                share = len(distributed.split(size, world, rank))
                global_sum = distributed.all_reduce_sum([float(loss.detach()) * share])[0]
                loss = loss * (world * share / size)
            if not (math.isfinite(global_sum) if ddp else torch.isfinite(loss)):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            with distributed.collective_errors(f"the gradient all-reduce of epoch {epoch + 1}", local_work=True):
                scaler.scale(loss.float()).backward()
            if config.max_grad_norm:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            for hook in hooks:
                hook.on_step(model, opt, step)
            if ddp:
                total += global_sum
                count += size
            else:
                bs = _batch_size(batch)
                total += float(loss.detach()) * bs
                count += bs
            if bar is not None:
                bar.set_postfix(loss=f"{total / count:.4g}")
        if bar is not None:
            bar.close()
        history["seconds"].append(time.perf_counter() - t0)
        history["cpu_seconds"].append(time.process_time() - c0)
        history["samples"].append(count)
        history["train"].append(total / max(count, 1))
        if val_set is not None:
            sums = _validate(model, loss_fn, metrics, val_set, config, device, hooks, rank, world)
            history["val"].append(sums.pop("loss"))
            for k, v in sums.items():
                history[f"val_{k}"].append(v)
        for hook in hooks:
            hook.on_epoch_end(model, epoch + 1, history)
        if rank == 0:
            ckpt = {"name": name, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                    "hooks": [h.state_dict() for h in hooks], "epoch": epoch + 1, "history": json.dumps(history),
                    **_rng_state(), "run": run, "config": json.dumps(getattr(model, "config", {})),
                    "samples_seen": (epoch + 1) * n_train, "world_size": world}
            atomic_save(ckpt, ckpt_path)
            (out / "history.json").write_text(json.dumps(history, indent=1))
        distributed.barrier()  # nobody reads or overwrites a checkpoint rank 0 is still writing
        extra = "".join(f", {k} {history[k][-1]:.5g}" for k in history if k.startswith("val") and history[k])
        log(f"{name} epoch {epoch + 1}/{config.epochs}: train {history['train'][-1]:.5g}{extra} "
            f"({history['seconds'][-1]:.1f} s)")
    if plot and rank == 0:  # once, at the end: a figure per epoch costs more than a small model's epoch
        plot_losses(history, out / "losses.png", title=name)
    return history


def _validate(model, loss_fn, metrics, val_set, config, device, hooks, rank: int = 0, world: int = 1) -> dict:
    """Sample-weighted means of the loss and each metric over ``val_set`` (each rank a contiguous share, summed).

    The raw module runs here, not its DDP wrapper: evaluation needs no gradient all-reduce (and must not wait for
    ranks whose share is empty).
    """
    from torch.utils.data import DataLoader, Subset

    if world > 1:
        val_set = Subset(val_set, list(distributed.split(len(val_set), world, rank)))
    model.eval()
    sums = {"loss": 0.0, **{k: 0.0 for k in metrics}}
    count = 0
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(hook.evaluating(model))
        with torch.no_grad():
            for batch in DataLoader(val_set, batch_size=config.batch_size, num_workers=config.num_workers):
                batch = _to(batch, device)
                bs = _batch_size(batch)
                with autocast(device, config.amp):
                    sums["loss"] += float(loss_fn(model, batch)) * bs
                    for k, fn in metrics.items():
                        sums[k] += float(fn(model, batch)) * bs
                count += bs
    if world > 1:
        keys = list(sums)
        *totals, count = distributed.all_reduce_sum([sums[k] for k in keys] + [count])
        sums = dict(zip(keys, totals))
    return {k: v / max(count, 1) for k, v in sums.items()}

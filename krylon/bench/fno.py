"""``krylon bench fno``: spectral neural operators trained by krylon against neuraloperator's own Trainer.

Two cases:

1. **Darcy 16x16** (neuraloperator's own small data set, read from ``shared/data/neuralop/``): the same FNO
   (n_modes (11, 11) in neuraloperator 2.0's convention, hidden 32, 4 layers, the same initial weights)
   trained by :class:`krylon.solvers.OperatorLearner` and by ``neuralop.Trainer`` with an equal budget -- the same
   epochs, batch size, optimiser (AdamW), cosine schedule, the same normalisation (x and y by the same per-channel
   statistics, krylon's ``ChannelNormalizer`` fitted on the training set, given to the peer's
   ``DefaultDataProcessor``) and the same loss, the relative L2 error in physical units (the peer's
   ``LpLoss`` of its decoded output and target: its processor hands the loss the normalised target) -- in the
   same run.  (neuraloperator's ``LpLoss`` sums over the batch where krylon averages: with AdamW and no
   gradient clipping the steps are the same.)  Reported:
   test relative L2 at 16 and zero-shot at 32 (both measured with one function on both models) and, as the
   reference for the zero-shot figure, at 32 with the model run on the input's points of the 16 grid and its
   prediction interpolated spectrally; training samples per second of wall clock and per CPU second of the
   stage's process (on a shared machine the second does not count other processes' turns); and the peak
   memory of each training stage (CUDA: allocator peak; CPU: each stage runs in a forked child from the same
   warm parent, and its peak is the child's resident-set growth, sampled).
   neuraloperator steps its scheduler per epoch, krylon per batch (the same cosine curve, finer steps).
2. **Navier--Stokes** nu = 1e-3, 10 -> 40 steps (generated with ``krylon generate ns2d``): an SFNO trained with
   relative L2, then each test prediction refined on its own (Spectral-Refiner's use: the physics residual
   needs no target; ``OperatorLearner.evaluate(test, refine=...)`` with ``refine``'s defaults): relative L2
   before and after, seconds per stage.  Skipped with a note when the generator or the SFNO is not installed.

``part="darcy"`` or ``"ns"`` (``krylon bench fno --part``) runs one of the two.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

from .common import machine_info, print_table, sync, write_json

__all__ = ["SIZES", "run", "summary", "find_data_dir"]

# darcy: training samples, epochs, batch; ns: trajectories (train/test), resolution, epochs, refinement steps
# (per test sample, Adam: refine()'s default)
SIZES = {
    "quick": {"darcy": {"n_train": 1000, "epochs": 5, "batch": 32},
              "ns": {"n_train": 16, "n_test": 4, "resolution": 32, "epochs": 3, "refine_steps": 300, "batch": 4}},
    "default": {"darcy": {"n_train": 1000, "epochs": 20, "batch": 32},
                "ns": {"n_train": 32, "n_test": 8, "resolution": 64, "epochs": 6, "refine_steps": 300, "batch": 4}},
    "paper": {"darcy": {"n_train": 1000, "epochs": 20, "batch": 32},
              "ns": {"n_train": 1152, "n_test": 128, "resolution": 64, "epochs": 10, "refine_steps": 300, "batch": 4,
                     "preset": "paper"}},
}
# n_modes (11, 11): frequencies -5..5 on both axes.  (16, 16) keeps every mode of the 16 x 16 training grid, the
# Nyquist ones included, whose weights act differently on a finer grid (at 16 the Nyquist mode is real and its own
# conjugate; at 32 it is an ordinary mode of which the window keeps one sign): after 20 epochs (16, 16) gave 0.0912
# at 16 and 0.154 zero-shot at 32, (11, 11) 0.0880 and 0.114 with half the parameters (BENCHMARKS.md).
DARCY = {"n_modes": (11, 11), "hidden_channels": 32, "n_layers": 4, "lr": 8e-3, "weight_decay": 1e-4}


def find_data_dir(data_dir=None) -> Path | None:
    """``shared/data/neuralop`` next to or above the current directory or this repository (or ``data_dir``)."""
    if data_dir is not None:
        p = Path(data_dir)
        return p if (p / "darcy_train_16.pt").is_file() else None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            cand = folder / "shared" / "data" / "neuralop"
            if (cand / "darcy_train_16.pt").is_file():
                return cand
    return None


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stage(fn, device) -> dict:
    """Run one training stage and add its ``peak_mib``.

    On a CPU the stage runs in a forked child, so both trainers start from the same process state (the second
    does not inherit the first's warm allocator) and the peak is the child's resident-set growth, sampled every
    10 ms; on CUDA it runs in-process and the peak is the allocator's (CUDA does not survive a fork).
    """
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        return out
    import multiprocessing
    import traceback

    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()

    def child():
        gc.collect()
        base, peak = _rss(), [0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.01):
                peak[0] = max(peak[0], _rss() - base)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            out = fn()
            stop.set()
            thread.join()
            out["peak_mib"] = max(peak[0], _rss() - base) / 2 ** 20
            queue.put(("ok", out))
        except BaseException:  # the parent re-raises it with the child's traceback
            queue.put(("error", traceback.format_exc()))

    proc = ctx.Process(target=child)
    proc.start()
    status, out = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark stage failed in its child process:\n{out}")
    return out


def _fresh(folder: Path) -> Path:
    """``folder`` emptied: each stage trains from scratch (a checkpoint left by an earlier run would be resumed and
    its timings reported next to the peer's fresh ones)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _no_resume(message: str) -> None:
    """The training log of a benchmark stage: a resumed run is an error (its times would be another run's)."""
    if message.startswith("resuming"):
        raise RuntimeError(f"the benchmark resumed a training run ({message}); its timings would not be this run's")


class _Pairs:
    """A torch Dataset of ``{"x": (1, n, n), "y": (1, n, n)}`` from neuraloperator's ``.pt`` dicts."""

    def __init__(self, path: Path, n: int | None = None):
        import torch

        d = torch.load(path, map_location="cpu", weights_only=True)
        n = n or len(d["x"])
        self.x = d["x"][:n].float().unsqueeze(1).contiguous()
        self.y = d["y"][:n].float().unsqueeze(1).contiguous()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _fno(seed: int):
    """krylon's FNO (it wraps neuraloperator's) and neuraloperator's own network with the same initial weights."""
    import copy

    import torch

    from ..operators.learned import FNO

    torch.manual_seed(seed)
    model = FNO(n_modes=DARCY["n_modes"], in_channels=1, out_channels=1, hidden_channels=DARCY["hidden_channels"],
                n_layers=DARCY["n_layers"])
    return model, copy.deepcopy(model.net)


def _errors(predict, data, device, train_grid: int | None = None) -> float:
    """Mean relative L2 error over ``data`` of ``predict(x)`` -- one measurement for both trainers.

    ``train_grid``: the network runs on the training grid instead -- the input's points of that grid (every
    ``n // train_grid``-th: neuraloperator's 16 and 32 grids share the points ``j / 16``) -- and its prediction is
    interpolated spectrally to the data's grid.  The reference for zero-shot super-resolution: what the
    trained model knows, delivered at the finer grid without running its pointwise layers there.
    """
    import torch

    from ..operators.pde.navier_stokes import spectral_resample
    from ..solvers.operator_learning import relative_errors

    n = data.x.shape[-1]
    step = 1 if train_grid is None else n // train_grid

    def apply(x):
        if step == 1:
            return predict(x)
        return spectral_resample(predict(x[..., ::step, ::step]), x.shape[-2:])

    with torch.no_grad():
        pred = torch.cat([apply(data.x[i:i + 50].to(device)).cpu() for i in range(0, len(data), 50)])
    return float(relative_errors(pred.double(), data.y.double()).mean())


def _warm_up(device, train) -> None:
    """One untimed forward/backward/step so neither trainer pays the first call's FFT plans and lazy imports."""
    import torch

    model, _ = _fno(0)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters())
    model(train.x[:4].to(device)).square().mean().backward()
    opt.step()


def _darcy(cfg: dict, data_dir: Path, device, out: Path, seed: int = 0) -> list[dict]:
    import warnings

    import torch
    from torch.utils.data import DataLoader

    from ..solvers import OperatorLearner

    train = _Pairs(data_dir / "darcy_train_16.pt", cfg["n_train"])
    tests = {16: _Pairs(data_dir / "darcy_test_16.pt"), 32: _Pairs(data_dir / "darcy_test_32.pt")}
    _warm_up(device, train)  # in the parent: both stages (children on a CPU) start warm

    model, peer = _fno(seed)
    model, peer = model.to(device), peer.to(device)
    n_params = sum(p.numel() for p in model.parameters())

    def krylon_stage():
        learner = OperatorLearner(model, loss="l2")
        hist = learner.fit(train, None, out_dir=_fresh(out / "fno-darcy-krylon"), progress=False, log=_no_resume,
                           plot=False, epochs=cfg["epochs"], batch_size=cfg["batch"], lr=DARCY["lr"],
                           weight_decay=DARCY["weight_decay"], optimizer="adamw", schedule="cosine", val_fraction=0.0,
                           seed=seed, max_grad_norm=None)
        seconds, cpu_seconds = sum(hist["seconds"]), sum(hist["cpu_seconds"])
        model.eval()
        return {"case": "darcy16", "trainer": "krylon OperatorLearner (krylon FNO)", "parameters": n_params,
                "epochs": cfg["epochs"], "train_s": seconds, "samples_per_s": sum(hist["samples"]) / seconds,
                "cpu_s": cpu_seconds, "samples_per_cpu_s": sum(hist["samples"]) / cpu_seconds,
                "l2_16": _errors(learner.operator, tests[16], device), "l2_32": _errors(learner.operator, tests[32], device),
                "l2_32_via16": _errors(learner.operator, tests[32], device, train_grid=16)}

    # neuraloperator's Trainer: the same network and initial weights, its own data processor (output normalised)
    def peer_stage():
        from neuralop import LpLoss, Trainer
        from neuralop.data.transforms.data_processors import DefaultDataProcessor
        from neuralop.data.transforms.normalizers import UnitGaussianNormalizer

        from ..operators.learned.normalizer import ChannelNormalizer

        def same_stats(key):  # krylon's statistics of x or y in neuraloperator's normaliser
            fitted = ChannelNormalizer(1).fit(train, key=key)
            shape = (1, -1, 1, 1)
            return UnitGaussianNormalizer(mean=fitted.mean.float().view(shape), std=fitted.std.float().view(shape),
                                          eps=0.0, dim=[0, 2, 3])

        x_norm, y_norm = same_stats("x"), same_stats("y")
        processor = DefaultDataProcessor(in_normalizer=x_norm, out_normalizer=y_norm).to(device)
        loader = DataLoader(train, batch_size=cfg["batch"], shuffle=True, generator=torch.Generator().manual_seed(seed + 1))
        opt = torch.optim.AdamW(peer.parameters(), lr=DARCY["lr"], weight_decay=DARCY["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
        trainer = Trainer(model=peer, n_epochs=cfg["epochs"], device=str(device), data_processor=processor,
                          eval_interval=10 ** 9, verbose=False)
        epoch_seconds, epoch_cpu_seconds = [], []
        one_epoch = trainer.train_one_epoch

        def timed(*a, **kw):  # the span krylon's loop times: one epoch's training, no evaluation or checkpoint
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            r = one_epoch(*a, **kw)
            sync(device)
            epoch_seconds.append(time.perf_counter() - t0)
            epoch_cpu_seconds.append(time.process_time() - c0)
            return r

        trainer.train_one_epoch = timed
        lp = LpLoss(d=2, p=2)

        def loss(out_, y, **_):  # the processor gives the normalised target in training: compare physical fields
            return lp(y_norm.inverse_transform(out_), y_norm.inverse_transform(y))

        with warnings.catch_warnings():
            # its Trainer passes every batch key to the model and the loss, which warn about the ones they ignore
            warnings.filterwarnings("ignore", message=".*received unexpected keyword arguments")
            trainer.train(train_loader=loader, test_loaders={}, optimizer=opt, scheduler=sched, training_loss=loss,
                          eval_losses={"l2": lp}, save_dir=str(_fresh(out / "fno-darcy-neuralop")))
        peer.eval()
        processor.eval()

        def peer_predict(x):
            out_, _ = processor.postprocess(peer(x_norm.transform(x)), {"x": x, "y": x})
            return out_

        seconds, cpu_seconds = sum(epoch_seconds), sum(epoch_cpu_seconds)
        return {"case": "darcy16", "trainer": "neuralop Trainer (neuralop FNO)", "parameters": n_params,
                "epochs": cfg["epochs"], "train_s": seconds, "samples_per_s": len(train) * cfg["epochs"] / seconds,
                "cpu_s": cpu_seconds, "samples_per_cpu_s": len(train) * cfg["epochs"] / cpu_seconds,
                "l2_16": _errors(peer_predict, tests[16], device), "l2_32": _errors(peer_predict, tests[32], device),
                "l2_32_via16": _errors(peer_predict, tests[32], device, train_grid=16)}

    rows = [_stage(krylon_stage, device), _stage(peer_stage, device)]
    for r in rows:
        r["zero_shot_ratio"] = r["l2_32"] / r["l2_16"]
        r["via16_ratio"] = r["l2_32_via16"] / r["l2_16"]
    return rows


def _ns_data(cfg: dict, out: Path, seed: int, device):
    """Generate (or reuse) the NS train/test files with ``krylon generate ns2d``'s library function."""
    from ..datasets import read_attrs
    from ..datasets.navier_stokes import generate, initial_amplitude
    from ..datasets.presets import NS2D

    preset = dict(NS2D[cfg.get("preset", "quick")])
    preset.update(resolution=cfg["resolution"], sim_resolution=max(cfg["resolution"], preset["sim_resolution"]))
    paths = {}
    for split, n, s in (("train", cfg["n_train"], seed), ("test", cfg["n_test"], seed + 10_000)):
        path = out / f"ns2d-{cfg['resolution']}-{split}-{n}-seed{s}.h5"
        if path.exists() and read_attrs(path).get("parameters", {}).get("sigma") != initial_amplitude():
            path.unlink()  # written with another initial-vorticity amplitude (before FNO's): not this recipe's data
        if not path.exists():
            generate(path, n, viscosity=1e-3, t_in=10, t_out=40, seed=s, device=device, **preset)
        paths[split] = path
    return paths


def _ns(cfg: dict, device, out: Path, seed: int = 0) -> tuple[list[dict], str | None]:
    import torch

    try:
        from ..operators.learned import SFNO
    except ImportError:
        return [], "skipped: no SFNO in this installation (krylon.operators.learned.SFNO)"
    try:
        from ..datasets import navier_stokes  # noqa: F401
    except ImportError:
        return [], "skipped: the Navier-Stokes generator (krylon generate ns2d) is not in this installation"
    t0 = time.perf_counter()
    paths = _ns_data(cfg, out, seed, device)
    t_data = time.perf_counter() - t0
    from ..datasets import open_dataset, read_attrs
    from ..solvers import OperatorLearner
    from ..solvers.operator_learning import NavierStokesResidual

    train, test = open_dataset(paths["train"]), open_dataset(paths["test"])
    torch.manual_seed(seed)
    model = SFNO(modes=(12, 12, 5), width=20, n_layers=4, in_steps=10, out_steps=40).to(device)
    learner = OperatorLearner(model, loss="l2", time_axis=-1)
    hist = learner.fit(train, None, out_dir=_fresh(out / "sfno-ns"), progress=False, log=_no_resume, plot=False,
                       epochs=cfg["epochs"], batch_size=cfg["batch"], lr=1e-2, val_fraction=0.0, seed=seed)
    before = learner.evaluate(test)
    # each test prediction refined on its own (no target used), refine()'s defaults
    residual = NavierStokesResidual.from_attrs(read_attrs(paths["test"]), str(paths["test"]))
    after = learner.evaluate(test, refine={"residual": residual, "steps": cfg["refine_steps"]})
    return [{"case": f"ns2d {cfg['resolution']}^2 nu=1e-3 10->40", "train_trajectories": len(train),
             "test_trajectories": len(test), "epochs": cfg["epochs"], "data_s": t_data,
             "train_s": sum(hist["seconds"]), "l2_before": before["l2"], "refine_s": after["refine_seconds"],
             "refine_steps": cfg["refine_steps"], "refine_loss": after["refine_loss"], "l2_after": after["l2"],
             "l2_per_step_before": before["l2_per_step"], "l2_per_step_after": after["l2_per_step"],
             "improvement": before["l2"] / after["l2"], "parameters": learner.n_parameters,
             "time_padding": model.config["time_padding"]}], None


PARTS = ("darcy", "ns")


def run(size: str = "default", *, device: str = "cpu", out="bench-out", data_dir=None, plot: bool = True,
        part: str | None = None) -> dict:
    """Run the suite at ``size``; ``data_dir``: the folder of neuraloperator's Darcy ``.pt`` files; ``part``:
    ``"darcy"`` or ``"ns"`` runs that case only (default: both)."""
    import torch

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if part is not None and part not in PARTS:
        raise ValueError(f"part must be one of {PARTS} or None (both), got {part!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {k: (v if part in (None, k) else None) for k, v in SIZES[size].items()}
    result = {"suite": "fno", "size": size, "part": part or "all", "machine": machine_info(device), "darcy": [],
              "ns": [], "notes": []}
    found = find_data_dir(data_dir) if cfg.get("darcy") else None
    if cfg.get("darcy") and found is None:
        note = (f"Darcy skipped: no darcy_train_16.pt in {data_dir}" if data_dir else
                "Darcy skipped: no shared/data/neuralop/ next to or above the current folder or the repository "
                "(pass data_dir / --data-dir)")
        result["notes"].append(note)
        print(note)
    elif cfg.get("darcy"):
        result["darcy"] = _darcy(cfg["darcy"], found, device, out)
        result["darcy_data"] = str(found)
        print_table(result["darcy"], ["trainer", "parameters", "epochs", "train_s", "samples_per_s", "cpu_s",
                                      "samples_per_cpu_s", "peak_mib", "l2_16", "l2_32", "zero_shot_ratio",
                                      "l2_32_via16", "via16_ratio"],
                    title=f"\n== FNO on Darcy 16x16 ({cfg['darcy']['n_train']} samples), krylon vs neuraloperator's "
                          f"Trainer (device {device}, torch threads {torch.get_num_threads()}) ==")
        write_json(out / "fno.json", result)
    if cfg.get("ns"):
        rows, note = _ns(cfg["ns"], device, out)
        result["ns"] = rows
        if note:
            result["notes"].append("NS " + note)
            print("NS " + note)
        else:
            print_table(rows, ["case", "train_trajectories", "test_trajectories", "epochs", "train_s", "l2_before",
                               "refine_steps", "refine_s", "l2_after", "improvement"],
                        title="\n== SFNO on Navier-Stokes, then Spectral-Refiner (per test sample) ==")
    write_json(out / "fno.json", result)
    if plot and result["darcy"]:
        _plot(result, out / "fno_darcy.png")
    print(f"\nwrote {out / 'fno.json'}")
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["darcy"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.35
    for i, r in enumerate(rows):
        ax.bar([j + i * width for j in range(2)], [r["l2_16"], r["l2_32"]], width, label=r["trainer"])
    ax.set_xticks([width / 2, 1 + width / 2], ["test 16x16", "zero-shot 32x32"])
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"Darcy FNO, {rows[0]['epochs']} epochs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(result: dict) -> list[dict]:
    """Darcy: test error at 16 and zero-shot at 32 (lower is better), training throughput per wall and per CPU
    second (higher; on a shared machine the CPU-time figure does not count other processes' turns); NS:
    relative L2 after refinement against before (krylon's own stage 1 is the reference)."""
    from .summary import HIGHER, compare

    rows = result.get("darcy") or []
    mine = [r for r in rows if r["trainer"].startswith("krylon")]
    peers = [r for r in rows if not r["trainer"].startswith("krylon")]
    out = []
    if mine and peers:
        for metric, key, better in (("test rel. L2 at 16", "l2_16", "lower"), ("zero-shot rel. L2 at 32", "l2_32", "lower"),
                                    ("training samples/s", "samples_per_s", HIGHER),
                                    ("training samples per CPU s", "samples_per_cpu_s", HIGHER)):
            if all(key in r for r in rows):  # results written before the CPU-time columns lack them
                out.append(compare("fno", "darcy 16x16 FNO", metric, [(r["trainer"], r[key]) for r in mine],
                                   [(r["trainer"], r[key]) for r in peers], better=better))
    for r in result.get("ns") or []:
        out.append(compare("fno", r["case"], "test rel. L2 (refined vs SFNO)", [("SFNO + Spectral-Refiner", r["l2_after"])],
                           [("SFNO (stage 1)", r["l2_before"])]))
    return out

"""Data-parallel training: time per epoch of ``krylon train fno`` on 1 process and on N ``torchrun`` ranks.

The same command -- an FNO on a Darcy data set written by ``krylon generate darcy`` -- runs once as a plain process
and once as ``torchrun --nproc-per-node N -m krylon -- train fno ...`` (gloo on the CPU, NCCL with one GPU per rank
when ``device`` is CUDA and the machine has N GPUs).  ``--batch`` is the global batch, so both runs take the same
optimisation steps: the table gives the training seconds per epoch (rank 0's clock, validation excluded; the
median over the epochs after the first), the speed-up, and the final training losses, which agree to rounding.
Each CPU rank runs one intra-op thread (``--threads 1``), so N ranks use N cores.

Not one of ``krylon bench all``'s suites (it starts several processes); run it by name: ``krylon bench ddp
--size quick|default|paper [--device cpu|cuda]``.
Sizes: ``quick`` 96 samples at 32^2, 2 ranks; ``default`` 256 at 64^2, 2 ranks; ``paper`` 1024 at 128^2, 4 ranks.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from .common import machine_info, print_table, run_command, torchrun, write_json

LAUNCH_TIMEOUT = 3600  # seconds for one training run (a hung rank ends the benchmark instead of blocking it)

SIZES = {
    "quick": {"n": 96, "resolution": 32, "modes": 12, "hidden": 16, "layers": 4, "epochs": 4, "batch": 16, "ranks": 2},
    "default": {"n": 256, "resolution": 64, "modes": 16, "hidden": 32, "layers": 4, "epochs": 4, "batch": 32, "ranks": 2},
    "paper": {"n": 1024, "resolution": 128, "modes": 24, "hidden": 64, "layers": 4, "epochs": 3, "batch": 64, "ranks": 4},
}


def _train(data: Path, out: Path, cfg: dict, ranks: int, device: str) -> dict:
    args = ["train", "fno", "--data", str(data), "--out", str(out), "--modes", str(cfg["modes"]), str(cfg["modes"]),
            "--hidden", str(cfg["hidden"]), "--layers", str(cfg["layers"]), "--epochs", str(cfg["epochs"]),
            "--batch", str(cfg["batch"]), "--device", device, "--no-progress"]
    if not device.startswith("cuda"):
        args += ["--threads", "1"]
    if ranks == 1:
        proc = run_command([sys.executable, "-m", "krylon", *args], timeout=LAUNCH_TIMEOUT)
    else:
        proc = torchrun(ranks, "krylon", *args, timeout=LAUNCH_TIMEOUT)
    history = json.loads((out / "history.json").read_text())
    per_epoch = history["seconds"][1:] or history["seconds"]
    return {"ranks": ranks, "seconds_per_epoch": statistics.median(per_epoch), "seconds": history["seconds"],
            "samples_per_epoch": history["samples"][-1],
            "final_train_loss": history["train"][-1], "final_val_l2": history["val_l2"][-1],
            "command": " ".join(proc.args[1:])}


def run(size: str = "quick", *, device: str = "cpu", out: str | Path = "bench-out") -> dict:
    """Run the suite; see the module docstring."""
    import torch

    from ..datasets import darcy

    cfg = SIZES[size]
    out = Path(out) / "ddp"
    out.mkdir(parents=True, exist_ok=True)
    ranks = cfg["ranks"]
    if device.startswith("cuda"):
        ranks = min(ranks, torch.cuda.device_count())
    data = out / f"darcy-{cfg['n']}-{cfg['resolution']}.h5"
    if not data.exists():
        darcy.generate(data, cfg["n"], resolution=cfg["resolution"], batch_size=32)
    runs = []
    for n in sorted({1, ranks}):
        folder = out / f"fno-{n}-ranks"
        for f in ("checkpoint.pt", "history.json"):  # a fresh run each time, never a resumed one
            (folder / f).unlink(missing_ok=True)
        runs.append(_train(data, folder, cfg, n, device))
    base = runs[0]["seconds_per_epoch"]
    rows = [{"ranks": r["ranks"], "s/epoch": r["seconds_per_epoch"], "speed-up": base / r["seconds_per_epoch"],
             "final train loss": r["final_train_loss"], "val rel. L2": r["final_val_l2"]} for r in runs]
    print_table(rows, list(rows[0]), title=f"FNO data-parallel training, Darcy {cfg['n']} x {cfg['resolution']}^2, "
                f"global batch {cfg['batch']} ({device})")
    result = {"suite": "ddp", "size": size, "config": cfg, "machine": machine_info(device), "runs": runs}
    write_json(out / "ddp.json", result)
    return result


def summary(result: dict) -> list[dict]:
    """One row: seconds per epoch on N ranks (krylon) against one process (the peer); ratio = speed-up."""
    from .summary import HIGHER, compare

    runs = result["runs"]
    one, many = runs[0], runs[-1]
    return [compare("ddp", f"FNO epoch, {many['ranks']} ranks vs 1", "samples/s",
                    [(f"{many['ranks']} ranks", many["samples_per_epoch"] / many["seconds_per_epoch"])],
                    [("1 process", one["samples_per_epoch"] / one["seconds_per_epoch"])], better=HIGHER)]


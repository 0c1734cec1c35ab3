"""The training loop records each epoch's CPU time next to its wall time: on a shared machine the wall clock also
counts the turns other processes held the cores, the process's CPU time does not."""

import json
import time

import pytest
import torch

from krylon.operators.learned.registry import atomic_save
from krylon.solvers import training

pytestmark = pytest.mark.usefixtures("torch_one_thread")
QUIET = dict(progress=False, log=lambda s: None, plot=False)


def _data(n=8):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    return [{"x": x[i], "y": x[i, :1]} for i in range(n)]


def _loss(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


class _Idle(training.TrainHook):
    """Sleeps (wall time, no CPU) or spins (CPU time) after every step, inside the timed span."""

    def __init__(self, sleep=0.0, spin=0.0):
        self.sleep, self.spin = sleep, spin

    def on_step(self, model, optimizer, step):
        time.sleep(self.sleep)
        end = time.process_time() + self.spin
        while time.process_time() < end:
            pass


def test_cpu_seconds_count_work_not_waiting(tmp_path):
    cfg = training.TrainConfig(epochs=2, batch_size=4, val_fraction=0.0)  # 2 steps per epoch
    training.train(torch.nn.Linear(3, 1), _loss, _data(), tmp_path / "warm", cfg, **QUIET)  # lazy imports, first calls
    c0 = time.process_time()
    hist = training.train(torch.nn.Linear(3, 1), _loss, _data(), tmp_path / "sleep", cfg, hooks=[_Idle(sleep=0.06)],
                          **QUIET)
    spent = time.process_time() - c0
    assert len(hist["cpu_seconds"]) == len(hist["seconds"]) == 2
    assert all(s >= 0.12 for s in hist["seconds"])  # two 0.06 s sleeps per epoch on the wall clock ...
    assert all(0 < c < 0.06 for c in hist["cpu_seconds"])  # ... but hardly any CPU time
    assert sum(hist["cpu_seconds"]) <= spent
    hist = training.train(torch.nn.Linear(3, 1), _loss, _data(), tmp_path / "spin", cfg, hooks=[_Idle(spin=0.03)],
                          **QUIET)
    assert all(c >= 0.06 for c in hist["cpu_seconds"])  # two 0.03 s spins per epoch
    saved = json.loads((tmp_path / "spin" / "history.json").read_text())
    assert saved["cpu_seconds"] == hist["cpu_seconds"]


def test_resuming_a_checkpoint_without_cpu_seconds_keeps_the_lists_aligned(tmp_path):
    """Checkpoints written before the CPU time was recorded: their epochs get None."""
    ds = _data()
    kw = dict(batch_size=4, val_fraction=0.0, schedule="constant")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    training.train(model, _loss, ds, tmp_path, training.TrainConfig(epochs=1, **kw), **QUIET)
    ckpt = training.load_checkpoint(tmp_path / "checkpoint.pt")
    old = json.loads(ckpt["history"])
    del old["cpu_seconds"]
    ckpt["history"] = json.dumps(old)
    ckpt["run"]["epochs"], ckpt["run"]["total_steps"] = 3, 6  # as if the old run had asked for 3 epochs
    atomic_save(ckpt, tmp_path / "checkpoint.pt")
    hist = training.train(model, _loss, ds, tmp_path, training.TrainConfig(epochs=3, **kw), **QUIET)
    assert len(hist["seconds"]) == len(hist["cpu_seconds"]) == 3
    assert hist["cpu_seconds"][0] is None and all(c > 0 for c in hist["cpu_seconds"][1:])

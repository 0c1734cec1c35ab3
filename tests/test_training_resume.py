"""Resume safety of the training loop: a checkpoint is resumed only by the run that wrote it (schedule length, batch
size, data size, hooks), and the CUDA generators are checkpointed with the CPU one."""

import pytest
import torch

from krylon.solvers import training

pytestmark = pytest.mark.usefixtures("torch_one_thread")
QUIET = dict(progress=False, log=lambda s: None, plot=False)


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def _loss(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


class _Lr(training.TrainHook):
    def __init__(self):
        self.lrs = []

    def on_step(self, model, optimizer, step):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_cosine_resume_with_more_epochs_is_refused_not_climbing_back(tmp_path):
    """The review's repro: 2 cosine epochs, then a rerun asking for 4 used to climb back to the maximum lr."""
    ds = _data()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    kw = dict(batch_size=8, lr=1e-2, schedule="cosine", val_fraction=0.0)
    hook = _Lr()
    training.train(model, _loss, ds, tmp_path, training.TrainConfig(epochs=2, **kw), hooks=[hook], **QUIET)
    assert hook.lrs[-1] == pytest.approx(0.0, abs=1e-12)  # annealed to zero over the 4 steps of the first run
    with pytest.raises(ValueError, match=r"epochs 2 -> 4.*other output folder"):
        training.train(model, _loss, ds, tmp_path, training.TrainConfig(epochs=4, **kw), hooks=[_Lr()], **QUIET)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "onecycle"])
@pytest.mark.parametrize("change", [{"epochs": 3}, {"batch_size": 4}])
def test_resume_with_another_schedule_length_is_refused_for_every_schedule(tmp_path, schedule, change):
    ds = _data()
    model = torch.nn.Linear(4, 1)
    kw = dict(epochs=2, batch_size=8, schedule=schedule, val_fraction=0.0)
    training.train(model, _loss, ds, tmp_path, training.TrainConfig(**kw), **QUIET)
    with pytest.raises(ValueError, match=next(iter(change))):
        training.train(model, _loss, ds, tmp_path, training.TrainConfig(**{**kw, **change}), **QUIET)
    # the same settings resume (nothing left to do: the history is the finished run's)
    hist = training.train(model, _loss, ds, tmp_path, training.TrainConfig(**kw), **QUIET)
    assert len(hist["train"]) == 2


def test_resume_with_another_number_of_hooks_is_refused(tmp_path):
    ds = _data()
    model = torch.nn.Linear(4, 1)
    cfg = training.TrainConfig(epochs=1, batch_size=8, val_fraction=0.0)
    training.train(model, _loss, ds, tmp_path, cfg, hooks=[training.EMA(model)], **QUIET)
    with pytest.raises(ValueError, match="1 hook.*this run has 0"):
        training.train(model, _loss, ds, tmp_path, cfg, **QUIET)


def test_resume_with_another_data_size_is_refused(tmp_path):
    model = torch.nn.Linear(4, 1)
    cfg = training.TrainConfig(epochs=1, batch_size=32, val_fraction=0.0)
    training.train(model, _loss, _data(16), tmp_path, cfg, **QUIET)
    with pytest.raises(ValueError, match="n_train 16 -> 12"):
        training.train(model, _loss, _data(12), tmp_path, cfg, **QUIET)


def test_train_val_split_is_the_split_train_makes():
    ds = list(range(20))
    tr, va = training.train_val_split(ds, 0.25, seed=5)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(5)).tolist()
    assert list(va) == perm[:5] and list(tr) == perm[5:]
    tr, va = training.train_val_split(ds, 0.0, seed=5)
    assert va is None and sorted(tr) == ds
    with pytest.raises(ValueError, match="val_fraction"):
        training.train_val_split(ds, 1.0, seed=0)


class _FakeCuda:
    """Stands in for ``torch.cuda``'s generator API on a machine without a GPU: one device, a byte-tensor state."""

    def __init__(self):
        self.state, self.restored = torch.tensor([1, 2, 3], dtype=torch.uint8), None

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.state.clone()])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: setattr(self, "restored", list(states)))


def test_cuda_generator_states_are_checkpointed_and_restored(tmp_path, monkeypatch):
    fake = _FakeCuda()
    fake.install(monkeypatch)

    class Stop(training.TrainHook):
        def on_step(self, model, optimizer, step):
            if step == 3:  # in the middle of epoch 2: the checkpoint of epoch 1 stays
                fake.state = torch.tensor([9, 9, 9], dtype=torch.uint8)  # the generator moved on
                raise KeyboardInterrupt

    model = torch.nn.Linear(4, 1)
    cfg = training.TrainConfig(epochs=2, batch_size=8, val_fraction=0.0)
    with pytest.raises(KeyboardInterrupt):
        training.train(model, _loss, _data(), tmp_path, cfg, hooks=[Stop()], **QUIET)
    ckpt = training.load_checkpoint(tmp_path / "checkpoint.pt")
    assert [s.tolist() for s in ckpt["cuda_rng"]] == [[1, 2, 3]]
    training.train(model, _loss, _data(), tmp_path, cfg, hooks=[training.TrainHook()], **QUIET)
    assert [s.tolist() for s in fake.restored] == [[1, 2, 3]]  # the state of the end of epoch 1, not [9, 9, 9]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_with_cuda_noise_matches_the_uninterrupted_run(tmp_path):
    """Diffusion-style training draws its noise from the CUDA generator: a resumed run must draw the same."""
    dev = torch.device("cuda")
    ds = _data()

    def noisy(model, batch):
        return ((model(batch["x"] + torch.randn_like(batch["x"])) - batch["y"]) ** 2).mean()

    class Stop(training.TrainHook):
        def on_step(self, model, optimizer, step):
            if step == 3:
                torch.randn(1000, device=dev)  # move the CUDA generator past where the checkpoint left it
                raise KeyboardInterrupt

    cfg = training.TrainConfig(epochs=3, batch_size=8, val_fraction=0.0)

    def run(folder, hooks):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1).to(dev)
        return training.train(model, noisy, ds, folder, cfg, hooks=hooks, **QUIET)

    ref = run(tmp_path / "a", [training.TrainHook()])
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", [Stop()])
    assert run(tmp_path / "b", [training.TrainHook()])["train"] == ref["train"]

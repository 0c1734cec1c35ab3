"""The training loop's options (optimisers, schedules, AMP, hooks, resume after interruption) and OperatorLearner
(fit, evaluate, predict, save/load, Spectral-Refiner refinement), on a small spectral model defined here so the
tests depend on no model class of the package; references are numpy FFTs and analytic fields."""

import json
import math

import numpy as np
import pytest
import torch

from krylon.operators.learned import registry
from krylon.solvers import training
from krylon.solvers.operator_learning import OperatorLearner, relative_errors

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ----------------------------------------------------------------------------- a small spectral model
def _rows(m: int, n: int) -> torch.Tensor:
    """Grid rows of the signed frequencies 0..ceil(m/2)-1, -(m//2)..-1 (all of them if m >= n)."""
    if m >= n:
        return torch.arange(n)
    return torch.cat([torch.arange(0, (m + 1) // 2), torch.arange(n - m // 2, n)])


class _SpecConv(torch.nn.Module):
    def __init__(self, channels, n_modes):
        super().__init__()
        self.n_modes = tuple(n_modes)
        scale = 1.0 / channels
        self.re = torch.nn.Parameter(scale * torch.randn(channels, channels, *self.n_modes))
        self.im = torch.nn.Parameter(scale * torch.randn(channels, channels, *self.n_modes))

    def forward(self, h):
        X, Y = h.shape[-2:]
        hf = torch.fft.rfft2(h)
        m0, m1 = min(self.n_modes[0], X), min(self.n_modes[1], Y // 2 + 1)
        rows = _rows(m0, X)
        w = torch.complex(self.re, self.im)[:, :, _rows(m0, self.n_modes[0]) if m0 < self.n_modes[0] else slice(None), :m1]
        out = torch.zeros_like(hf)
        out[..., rows, :m1] = torch.einsum("bixy,ioxy->boxy", hf[..., rows, :m1], w)
        return torch.fft.irfft2(out, s=(X, Y))


@registry.register_model
class ToySpectral(torch.nn.Module):
    """lift -> spectral conv (+ pointwise) -> GELU -> spectral conv (+ pointwise) -> projection."""

    def __init__(self, n_modes=(6, 4), in_channels=1, out_channels=1, hidden_channels=6, linear=False):
        super().__init__()
        self.config = dict(n_modes=list(n_modes), in_channels=in_channels, out_channels=out_channels,
                           hidden_channels=hidden_channels, linear=linear)
        self.lift = torch.nn.Conv2d(in_channels, hidden_channels, 1)
        self.spec = torch.nn.ModuleList([_SpecConv(hidden_channels, n_modes) for _ in range(2)])
        self.pointwise = torch.nn.ModuleList([torch.nn.Conv2d(hidden_channels, hidden_channels, 1) for _ in range(2)])
        self.proj = torch.nn.Conv2d(hidden_channels, out_channels, 1)
        self.act = torch.nn.Identity() if linear else torch.nn.GELU()

    def forward(self, x):
        h = self.lift(x)
        h = self.act(self.spec[0](h) + self.pointwise[0](h))
        return self.proj(self.spec[1](h) + self.pointwise[1](h))

    def last_spectral_layer(self):
        return self.spec[-1]

    def widen_last_layer(self, modes):
        old = self.spec[-1]
        new = _SpecConv(old.re.shape[0], modes).to(old.re)
        with torch.no_grad():
            new.re.zero_()
            new.im.zero_()
            for src, dst in ((old.re, new.re), (old.im, new.im)):
                m0, m1 = old.n_modes
                lo, hi = (m0 + 1) // 2, m0 // 2  # positive rows first, negative rows last, in both
                dst[:, :, :lo, :m1] = src[:, :, :lo]
                if hi:
                    dst[:, :, dst.shape[2] - hi:, :m1] = src[:, :, lo:]
        self.spec[-1] = new
        return list(new.parameters())


def _smooth_fields(n, size, seed, decay=2.0):
    """Random periodic fields with a power-law spectrum (numpy), shape (n, 1, size, size)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size, 1.0 / size)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    amp = (1 + kk) ** -decay * (kk <= size // 3)
    c = (rng.standard_normal((n, size, size)) + 1j * rng.standard_normal((n, size, size))) * amp
    u = np.fft.ifft2(c).real
    return (u / u.std(axis=(1, 2), keepdims=True) + 0.5)[:, None]


def _helmholtz(u, nu=0.01):
    """y = (1 - nu Laplace)^{-1} u on the unit torus, by numpy FFT: the operator to learn."""
    size = u.shape[-1]
    k = 2 * np.pi * np.fft.fftfreq(size, 1.0 / size)
    sym = 1 + nu * (k[:, None] ** 2 + k[None, :] ** 2)
    return np.fft.ifft2(np.fft.fft2(u) / sym).real


class Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _darcy_like(n, size=16, seed=0):
    x = _smooth_fields(n, size, seed)
    return Pairs(x, _helmholtz(x))


# ----------------------------------------------------------------------------- the training loop
class _Stop(KeyboardInterrupt):
    """Stands for Ctrl-C in the middle of an epoch."""


class _Counter(training.TrainHook):
    """Counts steps (its state is checkpointed) and can interrupt the run like Ctrl-C at a given step."""

    def __init__(self, stop_at=None):
        self.count, self.stop_at, self.epochs = 0, stop_at, []

    def on_step(self, model, optimizer, step):
        self.count += 1
        if self.stop_at is not None and step == self.stop_at:
            raise _Stop

    def on_epoch_end(self, model, epoch, history):
        self.epochs.append(epoch)

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def _loss(model, batch):
    return relative_errors(model(batch["x"]), batch["y"]).mean()


@pytest.mark.parametrize("optimizer, schedule", [pytest.param("adamw", "onecycle", id="adamw-onecycle"),
                                                 pytest.param("adam", "cosine", id="adam-cosine")])
def test_resume_after_interruption_gives_the_uninterrupted_losses(tmp_path, optimizer, schedule):
    ds = _darcy_like(24)
    cfg = training.TrainConfig(epochs=3, batch_size=8, lr=3e-3, optimizer=optimizer, schedule=schedule, seed=3)

    def run(folder, hooks):
        torch.manual_seed(0)
        model = ToySpectral()
        return training.train(model, _loss, ds, folder, cfg, hooks=hooks, progress=False, log=lambda s: None,
                              name="toy", plot=folder.name == "b"), model

    ref, ref_model = run(tmp_path / "a", [_Counter()])
    # 24 samples, 10% validation: 22 training samples = 3 steps per epoch; stop in the middle of epoch 2
    with pytest.raises(_Stop):
        run(tmp_path / "b", [_Counter(stop_at=5)])
    ckpt = training.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["hooks"] == [{"count": 3}]
    counter = _Counter()
    hist, model = run(tmp_path / "b", [counter])
    assert hist["train"] == ref["train"] and hist["val"] == ref["val"]
    assert counter.count == 9 and counter.epochs == [2, 3]  # restored from the checkpoint, then 6 more steps
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ref["train"][-1] < ref["train"][0]
    assert (tmp_path / "b" / "losses.png").stat().st_size > 0
    assert json.loads((tmp_path / "b" / "history.json").read_text())["train"] == ref["train"]


def test_onecycle_schedule_and_adamw_follow_torch(tmp_path):
    ds = _darcy_like(8)
    torch.manual_seed(0)
    model = ToySpectral()
    cfg = training.TrainConfig(epochs=2, batch_size=4, lr=1e-2, optimizer="adamw", weight_decay=1e-3,
                               schedule="onecycle", val_fraction=0.0)
    seen = []

    class Lr(training.TrainHook):
        def on_step(self, model, optimizer, step):
            seen.append((type(optimizer).__name__, optimizer.param_groups[0]["lr"]))

    training.train(model, _loss, ds, tmp_path, cfg, hooks=[Lr()], progress=False, log=lambda s: None, plot=False)
    ref_opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-2)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=1e-2, total_steps=4, pct_start=0.3)
    expected = []
    for _ in range(4):
        ref_opt.step()
        ref.step()
        expected.append(ref_opt.param_groups[0]["lr"])
    assert [s[0] for s in seen] == ["AdamW"] * 4
    np.testing.assert_allclose([s[1] for s in seen], expected, rtol=1e-12)


def test_onecycle_resume_with_other_epochs_is_refused(tmp_path):
    ds = _darcy_like(8)
    model = ToySpectral()
    kw = dict(batch_size=4, schedule="onecycle", val_fraction=0.0)
    quiet = dict(progress=False, log=lambda s: None, plot=False)
    training.train(model, _loss, ds, tmp_path, training.TrainConfig(epochs=1, **kw), **quiet)
    with pytest.raises(ValueError, match="total_steps 2 -> 4"):
        training.train(model, _loss, ds, tmp_path, training.TrainConfig(epochs=2, **kw), **quiet)


def test_mixed_precision_on_cpu_autocasts_to_bf16_and_still_trains(tmp_path):
    ds = _darcy_like(16)
    dtypes = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular")
            self.b = torch.nn.Conv2d(8, 1, 3, padding=1, padding_mode="circular")

        def forward(self, x):
            h = self.a(x)
            dtypes.append(h.dtype)
            return self.b(torch.tanh(h))

    torch.manual_seed(0)
    hist = training.train(Net(), lambda m, b: ((m(b["x"]).float() - b["y"]) ** 2).mean(), ds, tmp_path,
                          training.TrainConfig(epochs=4, batch_size=4, lr=1e-2, amp=True, val_fraction=0.25),
                          progress=False, log=lambda s: None, plot=False)
    assert set(dtypes) == {torch.bfloat16}
    assert hist["train"][-1] < hist["train"][0] and len(hist["val"]) == 4


@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(optimizer="sgd"), "optimizer", id="optimizer"),
    pytest.param(dict(schedule="step"), "schedule", id="schedule"),
    pytest.param(dict(pct_start=1.5), "pct_start", id="pct_start"),
    pytest.param(dict(weight_decay=-1.0), "weight_decay", id="weight_decay"),
    pytest.param(dict(amp="yes"), "amp", id="amp"),
])
def test_bad_training_options_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        training.TrainConfig(**kw)


# ----------------------------------------------------------------------------- metrics
def test_relative_errors_match_numpy_and_analytic_sobolev_norms():
    n = 32
    x = np.arange(n) / n
    X, Y = np.meshgrid(x, x, indexing="ij")
    y = np.sin(2 * np.pi * X) * np.cos(2 * np.pi * Y)
    e = 0.1 * np.sin(2 * np.pi * 3 * X)
    pred, target = torch.tensor((y + e)[None, None]), torch.tensor(y[None, None])
    l2 = float(relative_errors(pred, target)[0])
    assert l2 == pytest.approx(np.linalg.norm(e) / np.linalg.norm(y), rel=1e-12)
    # H1 weights 1 + |k|^2 (angular k): |e|^2 = 0.01/2 (1 + 36 pi^2), |y|^2 = 1/4 (1 + 8 pi^2)
    h1 = float(relative_errors(pred, target, s=1.0)[0])
    assert h1 == pytest.approx(math.sqrt(0.005 * (1 + 36 * math.pi ** 2) / (0.25 * (1 + 8 * math.pi ** 2))), rel=1e-10)
    # per time step: the last axis is time; the second step has twice the error; the trajectory's error is the
    # ratio of the time-integrated squared norms
    traj_p = torch.stack([pred, target + 2 * (pred - target)], dim=-1)
    traj_t = torch.stack([target, target], dim=-1)
    np.testing.assert_allclose(relative_errors(traj_p, traj_t, time_axis=-1, per_step=True).numpy(), [[l2, 2 * l2]],
                               rtol=1e-12)
    np.testing.assert_allclose(relative_errors(traj_p, traj_t, time_axis=-1).numpy(), [math.sqrt(2.5) * l2], rtol=1e-12)


# ----------------------------------------------------------------------------- OperatorLearner
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    train, val = _darcy_like(48, seed=1), _darcy_like(8, seed=2)
    learner = OperatorLearner(ToySpectral(n_modes=(8, 5)), loss="h1")
    hist = learner.fit(train, val, epochs=10, batch_size=8, lr=2e-2, out_dir=out, progress=False, log=lambda s: None,
                       plot=False)
    return learner, train, val, out, hist


def test_fit_lowers_the_error_and_records_metrics(fitted):
    learner, train, val, out, hist, *_ = fitted
    assert hist["train"][-1] < 0.5 * hist["train"][0]
    assert len(hist["val_l2"]) == len(hist["val_h1"]) == 10
    res = learner.evaluate(val)
    assert res["l2"] < 0.1 and res["samples"] == 8 and res["resolution"] == [16, 16]
    # the reported error is the numpy relative error of the predictions
    pred = learner.predict(val.x).double().numpy()
    ref = np.linalg.norm((pred - val.y.numpy()).reshape(8, -1), axis=1) / np.linalg.norm(val.y.numpy().reshape(8, -1), axis=1)
    np.testing.assert_allclose(res["l2_per_sample"], ref, rtol=1e-5)
    assert res["l2"] == pytest.approx(hist["val_l2"][-1], rel=1e-4)


def test_normalisers_are_fitted_on_the_training_split(fitted):
    learner, train, *_ = fitted
    xs = train.x.double().numpy()
    torch.testing.assert_close(learner.x_normalizer.encode(train.x.double()).mean(), torch.tensor(0.0, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    enc = learner.x_normalizer.encode(train.x.double()).numpy()
    np.testing.assert_allclose(enc, (xs - xs.mean()) / xs.std(), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_and_foreign_checkpoints(fitted, tmp_path):
    learner, train, val, out, *_ = fitted
    loaded = OperatorLearner.load(out / "model.pt")
    torch.testing.assert_close(loaded.predict(val.x), learner.predict(val.x), rtol=0, atol=0)
    assert loaded.loss == "h1" and loaded.history["train"] == learner.history["train"]
    with pytest.raises(ValueError, match="training checkpoint"):
        OperatorLearner.load(out / "checkpoint.pt")
    registry.save_checkpoint(ToySpectral(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not an operator learner"):
        OperatorLearner.load(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        OperatorLearner.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        OperatorLearner.load(tmp_path / "missing.pt")


def test_zero_shot_at_another_resolution(fitted):
    learner, *_ = fitted
    fine = _darcy_like(4, size=32, seed=5)
    res = learner.evaluate(fine)
    assert res["resolution"] == [32, 32] and res["l2"] < 0.15


def test_bad_input_is_a_clear_error(fitted):
    learner, train, *_ = fitted
    x = train.x[:2].clone()
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 3, 16, 16\)"):
        learner.predict(x.expand(2, 3, 16, 16))
    bare = OperatorLearner(learner.model, normalize=False)  # the network's own error, named with the shape
    with pytest.raises(ValueError, match=r"failed on an input of shape \(2, 3, 16, 16\)"):
        bare.predict(x.expand(2, 3, 16, 16))
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="x"):
        learner.predict(x)
    with pytest.raises(TypeError, match="floating"):
        learner.predict(torch.zeros(1, 1, 16, 16, dtype=torch.int64))

    class NoY(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"x": torch.zeros(1, 8, 8), "u": torch.zeros(1, 8, 8)}

    with pytest.raises(ValueError, match="'x' and 'y'.*'u'"):
        learner.fit(NoY(), progress=False)
    with pytest.raises(ValueError, match="loss"):
        OperatorLearner(ToySpectral(), loss="l3")
    with pytest.raises(TypeError, match="nn.Module"):
        OperatorLearner(lambda x: x)


def test_plot_writes_a_png(fitted, tmp_path):
    learner, train, val, *_ = fitted
    path = learner.plot(val, tmp_path / "p.png", index=1)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="index"):
        learner.plot(val, tmp_path / "q.png", index=99)


# ----------------------------------------------------------------------------- Spectral-Refiner
def _heat_step(u, nu, dt):
    """One Crank-Nicolson step of u_t = nu Laplace u on the unit torus, exactly, by numpy FFT."""
    size = u.shape[-1]
    k = 2 * np.pi * np.fft.fftfreq(size, 1.0 / size)
    lap = -(k[:, None] ** 2 + k[None, :] ** 2)
    return np.fft.ifft2(np.fft.fft2(u) * (1 + 0.5 * dt * nu * lap) / (1 - 0.5 * dt * nu * lap)).real


def _cn_residual(nu, dt):
    """R(w0, w1) = (w1 - w0)/dt - nu Laplace (w0 + w1)/2, spectrally (torch)."""
    def residual(w0, w1):
        size = w0.shape[-1]
        k = 2 * math.pi * torch.fft.fftfreq(size, 1.0 / size, dtype=torch.float64)
        lap = -(k[:, None] ** 2 + k[None, :] ** 2)
        mid = torch.fft.ifft2(torch.fft.fft2(0.5 * (w0 + w1)) * lap).real
        return (w1 - w0) / dt - nu * mid
    return residual


@pytest.mark.parametrize("mode", ["physics", "data"])
def test_refine_trains_only_the_widened_last_layer_and_lowers_the_error(tmp_path, mode):
    nu, dt, size = 0.02, 0.5, 16
    x = _smooth_fields(40, size, seed=7, decay=1.5)
    data = Pairs(x, _heat_step(x, nu, dt))
    torch.manual_seed(0)
    learner = OperatorLearner(ToySpectral(n_modes=(4, 3), hidden_channels=4, linear=True), normalize=False)
    learner.fit(Pairs(x[:32], data.y[:32].numpy()), epochs=10, batch_size=8, lr=2e-2, out_dir=tmp_path, progress=False,
                log=lambda s: None, val_fraction=0.0, plot=False)
    test = Pairs(x[32:], data.y[32:].numpy())
    before = learner.evaluate(test)["l2"]
    frozen = {k: v.clone() for k, v in learner.model.state_dict().items() if not k.startswith("spec.1")}
    res = learner.refine(Pairs(x[:32], data.y[:32].numpy()), mode=mode, residual=_cn_residual(nu, dt), steps=60,
                         lr=1e-2, batch_size=8, per_sample=False)  # the model's widened layer, on a data set
    after = learner.evaluate(test)["l2"]
    assert learner.model.spec[1].n_modes == (16, 16) and res["modes"] == [16, 16]
    assert res["parameters"] == 2 * 4 * 4 * 16 * 16
    for k, v in learner.model.state_dict().items():
        if k in frozen:
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)
    assert next(learner.model.parameters()).dtype == torch.float32
    assert res["loss"][-1] < res["loss"][0]
    # stage 1 with 4 x 3 modes cannot resolve the fine scales (error ~0.2); the widened layer can (~0.01)
    assert before > 0.1 and after < 0.2 * before, (before, after)


def test_refine_needs_a_residual_in_physics_mode(fitted):
    learner, train, *_ = fitted
    with pytest.raises(ValueError, match="residual="):
        learner.refine(train, mode="physics")
    with pytest.raises(ValueError, match="mode"):
        learner.refine(train, mode="both")


# ----------------------------------------------------------------------------- command line and example
def _h5_pairs(path, n, size, seed):
    from krylon.datasets import write_dataset

    x = _smooth_fields(n, size, seed)
    return write_dataset(path, {"x": x.astype(np.float32), "y": _helmholtz(x).astype(np.float32)})


def test_cli_train_evaluate_refine_fno(tmp_path, capsys):
    from krylon import cli

    train, test, fine = (_h5_pairs(tmp_path / "train.h5", 24, 16, 0), _h5_pairs(tmp_path / "test.h5", 4, 16, 1),
                         _h5_pairs(tmp_path / "fine.h5", 4, 32, 2))
    out = tmp_path / "run"
    assert cli.main(["train", "fno", "--data", str(train), "--test", str(test), "--test", str(fine), "--out", str(out),
                     "--modes", "8", "8", "--hidden", "8", "--layers", "2", "--epochs", "2", "--batch", "8",
                     "--lr", "1e-2", "--no-progress", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "train.h5" not in text and "test.h5" in text and "fine.h5" in text and "resolution 32x32" in text
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["n_modes"] == [8, 8] and set(record["test"]) == {str(test), str(fine)}
    assert (out / "losses.png").stat().st_size > 0
    learner = OperatorLearner.load(out / "model.pt")
    assert cli.main(["evaluate", "--model", str(out / "model.pt"), "--data", str(fine), "--plot", str(tmp_path / "e.png"),
                     "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())[str(fine)]
    from krylon.datasets import open_dataset

    assert res["l2"] == pytest.approx(learner.evaluate(open_dataset(fine))["l2"], rel=1e-6)
    assert (tmp_path / "e.png").stat().st_size > 1000
    assert cli.main(["refine", "--model", str(out / "model.pt"), "--data", str(train), "--mode", "data", "--steps", "3",
                     "--test", str(test), "--out", str(tmp_path / "r.pt")]) == 0
    refined = OperatorLearner.load(tmp_path / "r.pt")
    assert refined.model.config["last_n_modes"] == [16, 16] and "-> " in capsys.readouterr().out
    # physics mode needs the equations of the data: a plain file is a clear error (exit code 2)
    assert cli.main(["refine", "--model", str(out / "model.pt"), "--data", str(train), "--steps", "1"]) == 2
    assert "viscosity" in capsys.readouterr().err
    # a checkpoint of another kind is refused by name
    assert cli.main(["evaluate", "--model", str(out / "checkpoint.pt"), "--data", str(test)]) == 2
    assert "not an operator learner" in capsys.readouterr().err


def test_example_navier_stokes_operator_runs_small(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    from krylon.datasets import presets

    # a short warm-up on a coarse simulation grid: the workflow, not the physics, is under test here
    monkeypatch.setitem(presets.NS2D, "quick", dict(presets.NS2D["quick"], sim_resolution=16, warmup=0.2, interval=0.1))
    spec = importlib.util.spec_from_file_location("nso", Path(__file__).parent.parent / "examples" / "navier_stokes_operator.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(tmp_path, n_train=4, n_test=2, resolution=16, epochs=1, refine_steps=2, width=4, quiet=True)
    assert len(res["after"]["l2_per_step"]) == 40 and np.isfinite(res["after"]["l2"])
    assert Path(res["plot"]).stat().st_size > 1000
    assert res["after"]["refine_seconds"] > 0  # each test prediction refined on its own; the model as trained
    assert OperatorLearner.load(tmp_path / "sfno.pt").model.config["time_padding"] == 1.0

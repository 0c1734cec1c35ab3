"""Data-parallel training and sharded data generation on torch.distributed: 2 gloo ranks on the CPU.

The ranks are forked from the test process (torch is already imported there: a spawned rank would spend seconds
importing it again) and joined in a gloo group through the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` on a free port), so :func:`krylon.kernels.distributed.init_from_env` is what
connects them.  Every launch has a deadline; a rank still alive after it is killed and the test fails.

References: a single-process run of the same loop (the existing, separately tested path) for the loss curves and
resumes, a single-process generation for the data (bit for bit).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import traceback

import numpy as np
import pytest
import torch

from krylon.datasets import darcy, open_dataset, write_dataset
from krylon.datasets.hdf5 import DatasetWriter
from krylon.datasets.parts import generate_sharded, link_parts, part_path, part_range
from krylon.datasets.phantoms import generate_phantoms
from krylon.kernels import distributed
from krylon.operators.learned.sfno import SFNO
from krylon.solvers import training
from krylon.solvers.operator_learning import OperatorLearner

WORLD = 2
EPOCHS = 3
# 23 samples, 2 held out: 21 training samples in global batches 5, 5, 5, 5, 1 -- uneven shares (3 + 2) and a last
# batch that leaves rank 1 nothing (it runs a stand-in sample weighted 0)
N_SAMPLES, BATCH = 23, 5


# ----------------------------------------------------------------------------- launcher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world, port, queue, args, timeout):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        distributed.init_from_env(timeout=timeout)
        queue.put((rank, "ok", fn(rank, *args)))
    except BaseException as exc:  # noqa: BLE001 -- reported to the test, which decides
        queue.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        queue.close()
        queue.join_thread()
        os._exit(0)  # a forked child must not run the parent's (pytest's) exit handlers


def launch(fn, *args, world: int = WORLD, deadline: float = 90.0, timeout: float = 30.0) -> dict:
    """``{rank: ("ok", result) or ("error", message)}`` of ``fn(rank, *args)`` on ``world`` gloo ranks."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, queue, args, timeout)) for r in range(world)]
    for p in procs:
        p.start()
    results, end = {}, time.monotonic() + deadline
    while len(results) < world and time.monotonic() < end:
        try:
            rank, status, value = queue.get(timeout=max(0.1, min(1.0, end - time.monotonic())))
            results[rank] = (status, value)
        except Exception:  # noqa: BLE001 -- queue.Empty: keep waiting until the deadline
            pass
    for p in procs:
        p.join(timeout=max(0.1, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    assert len(results) == world, f"ranks {sorted(set(range(world)) - set(results))} hung past {deadline} s"
    return results


def _ok(results: dict) -> list:
    errors = {r: v for r, (s, v) in results.items() if s != "ok"}
    assert not errors, errors
    return [results[r][1] for r in sorted(results)]


# ----------------------------------------------------------------------------- shared runs
class _Stop(Exception):
    """Raised by a hook: a run killed after an epoch's checkpoint (the checkpoint is written atomically)."""


class _KillAfter(training.TrainHook):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, model, epoch, history):
        if self.epoch is not None and epoch == self.epoch + 1:  # the next epoch ends before its checkpoint: the last one on disk is `epoch`
            raise _Stop


def _learner(kind="sfno") -> OperatorLearner:
    torch.manual_seed(0)
    if kind == "fno":  # neuraloperator's FNO keeps complex spectral weights (the known DDP pitfall)
        from krylon.operators.learned import FNO

        return OperatorLearner(FNO(n_modes=(4, 4), hidden_channels=4, n_layers=1))
    return OperatorLearner(SFNO(modes=(3, 3, 2), width=4, n_layers=1, in_steps=2, out_steps=2))


class _Steady(torch.utils.data.Dataset):
    """The first snapshot of each trajectory: 2-D fields for the FNO."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return {k: v[..., 0] for k, v in self.ds[i].items()}


def _fit(data, out, kill_after=None, kind="sfno"):
    ds = open_dataset(data)
    ds = _Steady(ds) if kind == "fno" else ds
    hooks = [_KillAfter(kill_after)]  # always one hook: a checkpoint resumes only with the hooks it was written with
    try:
        return _learner(kind).fit(ds, out_dir=out, epochs=EPOCHS, batch_size=BATCH, lr=3e-3, progress=False, plot=False,
                              log=lambda msg: None, hooks=hooks)
    except _Stop:
        return None


def _write_data(path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_SAMPLES, 1, 8, 8, 2, generator=g)
    write_dataset(path, {"x": x.numpy(), "y": (0.5 * x.flip(-1) + 0.1 * x.roll(1, 2)).numpy()})


def _rank_work(rank, tmp):
    """Everything the 2-rank session does, in one process group (each launch costs process start-up)."""
    out = {"fresh": _fit(f"{tmp}/data.h5", f"{tmp}/fresh-2"), "fno": _fit(f"{tmp}/data.h5", f"{tmp}/fno-2", kind="fno")}
    out["resumed_from_1"] = _fit(f"{tmp}/data.h5", f"{tmp}/killed-1")  # a 1-rank checkpoint, resumed on 2 ranks
    _fit(f"{tmp}/data.h5", f"{tmp}/killed-2", kill_after=1)  # resumed on 1 rank by the test
    distributed.barrier()
    from krylon.operators.learned.normalizer import ChannelNormalizer

    share = range(0, 20) if rank == 0 else range(20, N_SAMPLES)  # uneven shares, each read by its rank only
    norm = ChannelNormalizer(1).fit(open_dataset(f"{tmp}/data.h5"), indices=share, key="y", across_ranks=True)
    out["normalizer"] = (norm.mean.tolist(), norm.std.tolist(), float(norm.count))
    generate_sharded(f"{tmp}/darcy-2.h5", darcy.generate, 10, resolution=12, batch_size=4)
    generate_sharded(f"{tmp}/phantoms-2.h5", generate_phantoms, 5, 16, seed=3)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _write_data(tmp / "data.h5")
    ref = _fit(tmp / "data.h5", tmp / "ref-1")
    fno = _fit(tmp / "data.h5", tmp / "fno-1", kind="fno")
    assert _fit(tmp / "data.h5", tmp / "killed-1", kill_after=1) is None
    results = _ok(launch(_rank_work, str(tmp)))
    resumed_from_2 = _fit(tmp / "data.h5", tmp / "killed-2")
    darcy.generate(tmp / "darcy-1.h5", 10, resolution=12, batch_size=4)
    generate_phantoms(tmp / "phantoms-1.h5", 5, 16, seed=3)
    return {"tmp": tmp, "ref": ref, "fno": fno, "ranks": results, "resumed_from_2": resumed_from_2}


def _same_curve(a, b, rtol=1e-5):
    for key in ("train", "val", "val_l2", "val_h1", "samples"):
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, err_msg=key)


# ----------------------------------------------------------------------------- training
def test_two_ranks_give_the_one_rank_loss_curve(runs):
    ranks = runs["ranks"]
    for r in range(WORLD):  # every rank sees the global metrics
        _same_curve(ranks[r]["fresh"], runs["ref"])
    assert ranks[0]["fresh"]["samples"] == [N_SAMPLES - 2] * EPOCHS
    ref = torch.load(runs["tmp"] / "ref-1" / "model.pt", weights_only=True)["state_dict"]
    two = torch.load(runs["tmp"] / "fresh-2" / "model.pt", weights_only=True)["state_dict"]
    for k in ref:
        torch.testing.assert_close(two[k], ref[k], rtol=1e-4, atol=1e-6)


def test_complex_spectral_weights_train_under_ddp(runs):
    """neuraloperator's FNO (complex parameters) under gloo DDP: the one-rank curve and weights."""
    _same_curve(runs["ranks"][0]["fno"], runs["fno"])
    ref = torch.load(runs["tmp"] / "fno-1" / "model.pt", weights_only=True)["state_dict"]
    two = torch.load(runs["tmp"] / "fno-2" / "model.pt", weights_only=True)["state_dict"]
    assert any(v.is_complex() for v in ref.values())
    for k in ref:
        torch.testing.assert_close(two[k], ref[k], rtol=1e-4, atol=1e-6)


def test_normaliser_moments_merge_over_ranks(runs):
    import h5py

    with h5py.File(runs["tmp"] / "data.h5") as f:
        y = f["y"][()].astype(np.float64)
    for r in range(WORLD):
        mean, std, count = runs["ranks"][r]["normalizer"]
        np.testing.assert_allclose(mean, [y.mean()], rtol=1e-12)
        np.testing.assert_allclose(std, [y.std()], rtol=1e-12)
        assert count == y.size


def test_checkpoint_of_one_rank_resumes_on_two(runs):
    for r in range(WORLD):
        _same_curve(runs["ranks"][r]["resumed_from_1"], runs["ref"])
    ckpt = training.load_checkpoint(runs["tmp"] / "killed-1" / "checkpoint.pt")
    assert ckpt["world_size"] == WORLD and ckpt["epoch"] == EPOCHS
    assert ckpt["samples_seen"] == EPOCHS * (N_SAMPLES - 2)


def test_checkpoint_of_two_ranks_resumes_on_one(runs):
    _same_curve(runs["resumed_from_2"], runs["ref"])


def test_rank_zero_writes_one_checkpoint(runs):
    out = runs["tmp"] / "fresh-2"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json", "model.pt"]
    ckpt = training.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == WORLD and not any(k.startswith("module.") for k in ckpt["model"])
    assert json.loads((out / "history.json").read_text())["train"] == runs["ranks"][0]["fresh"]["train"]


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name, fields", [pytest.param("darcy", ("x", "y"), id="darcy-batched"),
                                          pytest.param("phantoms", ("x",), id="phantoms")])
def test_sharded_generation_equals_one_process(runs, name, fields, monkeypatch):
    tmp = runs["tmp"]
    monkeypatch.chdir(tmp.parent)  # relative part names resolve next to the linked file, not the working folder
    one, two = open_dataset(tmp / f"{name}-1.h5"), open_dataset(tmp / f"{name}-2.h5")
    assert len(two) == len(one) and two.shapes == one.shapes
    for k in fields:
        a, b = one[0:len(one)][k], two[0:len(two)][k]
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert two.attrs["parts"] == [part_path(f"{name}-2.h5", i, WORLD).name for i in range(WORLD)]
    for key in ("generator", "parameters", "seed", "n_samples", "n_written", "complete"):
        assert two.attrs[key] == one.attrs[key], key


def test_linked_file_refuses_a_missing_part(runs, tmp_path):
    import shutil

    for p in runs["tmp"].glob("phantoms-2*"):
        shutil.copy(p, tmp_path / p.name)
    open_dataset(tmp_path / "phantoms-2.h5")
    (tmp_path / part_path("phantoms-2.h5", 1, WORLD).name).unlink()
    with pytest.raises(FileNotFoundError, match="part file"):
        open_dataset(tmp_path / "phantoms-2.h5")


# ----------------------------------------------------------------------------- a rank that fails
def _one_rank_raises(rank, tmp):
    def loss(model, batch):
        if rank == 1:
            raise ValueError("rank 1 broke")
        return model(batch["x"]).pow(2).mean()

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    ds = [{"x": torch.full((4,), float(i))} for i in range(8)]
    t0 = time.monotonic()
    try:
        training.train(net, loss, ds, f"{tmp}/r{rank}", training.TrainConfig(epochs=1, batch_size=4),
                       progress=False, plot=False, log=lambda m: None)
    finally:
        print(f"rank {rank} stopped after {time.monotonic() - t0:.1f} s")


def test_a_rank_that_raises_stops_the_others_with_a_clear_error(tmp_path):
    t0 = time.monotonic()
    results = launch(_one_rank_raises, str(tmp_path), deadline=60.0, timeout=20.0)
    assert results[1] == ("error", results[1][1]) and "rank 1 broke" in results[1][1]
    status, message = results[0]
    assert status == "error" and "another rank" in message, message
    assert time.monotonic() - t0 < 50


def _one_rank_hangs(rank, tmp):
    if rank == 1:
        time.sleep(4)  # alive but absent: longer than the group's timeout
    t0 = time.monotonic()
    try:
        training.train(torch.nn.Linear(4, 1), lambda m, b: m(b["x"]).pow(2).mean(),
                       [{"x": torch.ones(4)}] * 4, f"{tmp}/r{rank}", training.TrainConfig(epochs=1, batch_size=2),
                       progress=False, plot=False, log=lambda m: None)
    finally:
        if rank == 0:
            assert time.monotonic() - t0 < 3.5, "rank 0 waited past the timeout"


def test_a_rank_that_does_not_arrive_times_out(tmp_path):
    results = launch(_one_rank_hangs, str(tmp_path), deadline=40.0, timeout=1.5)
    status, message = results[0]
    assert status == "error" and "another rank" in message and "within the timeout" in message, message


# ----------------------------------------------------------------------------- the review's regressions
REVIEW_TIMEOUT = 2.0  # the group's collective timeout in _review_work: the slow part below takes longer


def _slow_generator(path, n, part=None):
    w = DatasetWriter(path, n, {"u": ((2,), "float64")}, generator="slow", seed=0, part=part)
    for i in range(w.n_written, w.stop):
        if part[0] == 1:
            time.sleep(1.5 * REVIEW_TIMEOUT / len(range(w.n_written, w.stop)))  # rank 1's part outlasts the timeout
        w.write(i, {"u": np.full(2, float(i))})
    w.close()


def _review_work(rank, tmp):
    from krylon.operators.learned.normalizer import ChannelNormalizer

    out = {}
    # 1. a rank that finishes its part first waits for the slower one past the collectives' timeout
    generate_sharded(f"{tmp}/slow.h5", _slow_generator, 6)
    out["generated"] = open_dataset(f"{tmp}/slow.h5")[0:6]["u"][:, 0].tolist()
    # 2. a NaN in one rank's share: every rank raises at once
    x = torch.ones(4, 1, 3)
    if rank == 1:
        x[2, 0, 1] = float("nan")
    t0 = time.monotonic()
    try:
        ChannelNormalizer(1).fit(x, across_ranks=True)
    except ValueError as exc:
        out["normaliser"] = (str(exc), time.monotonic() - t0)

    # 3. (last: it ends the group) a local autograd error in rank 0's backward is rank 0's own error
    def loss(net, batch):
        y = net(batch["x"])
        if rank == 0:
            y = torch.sigmoid(y)
            y.add_(1.0)  # in place on an output autograd saved: backward() fails on this rank only
        return (y ** 2).mean()

    torch.manual_seed(0)
    try:
        training.train(torch.nn.Linear(3, 1), loss, [{"x": torch.full((3,), float(i))} for i in range(8)],
                       f"{tmp}/r{rank}", training.TrainConfig(epochs=1, batch_size=4), progress=False, plot=False,
                       log=lambda m: None)
    except RuntimeError as exc:
        out["backward"] = f"{type(exc).__name__}: {exc}"
    return out


def test_review_regressions_on_two_ranks(tmp_path):
    """Three fixes in one launch: the part wait has its own timeout, bad normaliser input stops every rank at
    once, and a local backward error is not reported as a peer's failure."""
    r0, r1 = _ok(launch(_review_work, str(tmp_path), deadline=60.0, timeout=REVIEW_TIMEOUT))
    assert r0["generated"] == r1["generated"] == [float(i) for i in range(6)]
    assert "1 non-finite" in r1["normaliser"][0]
    assert "rank(s) [1]" in r0["normaliser"][0] and r0["normaliser"][1] < REVIEW_TIMEOUT
    assert "modified by an inplace operation" in r0["backward"] and "another rank" not in r0["backward"]
    assert "rank 1 of 2" in r1["backward"] and "another rank" in r1["backward"]


def test_resuming_on_another_number_of_ranks_warns_and_the_link_checks_its_parts(tmp_path):
    out = tmp_path / "d.h5"
    fields = {"u": ((2,), "float64")}

    def write(index, count, seed=1):
        with DatasetWriter(out, 4, fields, generator="t", seed=seed, part=(index, count)) as w:
            for i in range(w.start, w.stop):
                w.write(i, {"u": np.full(2, float(i))})

    write(0, 3)  # an unfinished 3-rank run left part 0 of 3
    with pytest.warns(UserWarning, match="another number of ranks.*part-00000-of-00003"):
        generate_sharded(out, lambda path, n: write_dataset(path, {"u": np.zeros((n, 2))}), 4)
    out.unlink()
    for index in range(2):
        write(index, 2)
    link_parts(out, 2)
    assert open_dataset(out)[0:4]["u"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    import h5py

    with h5py.File(part_path(out, 1, 2), "r+") as f:  # a part regenerated with another seed since the link
        f.attrs["seed"] = 2
    with pytest.raises(ValueError, match="seed 2"):
        open_dataset(out)
    with h5py.File(part_path(out, 1, 2), "r+") as f:  # ... or with another split (a rerun on other ranks)
        f.attrs["seed"], f.attrs["part_start"] = 1, 3
    with pytest.raises(ValueError, match="holds samples 3..4"):
        open_dataset(out)


def _generate_command(rank, tmp):
    from krylon import cli

    return cli.main(["generate", "phantoms", "--n", "5", "--size", "12", "--seed", "2", "--out", f"{tmp}/p.h5",
                     "--no-progress"])


def test_generate_command_on_two_ranks_equals_one_process(tmp_path):
    """``krylon generate phantoms`` as torchrun runs it on each rank (the environment set, the group joined by the
    command).  The command line itself, ``torchrun --nproc-per-node 2 -m krylon -- generate ...``, is the
    README's; a torchrun subprocess would add ~15 s of process start-up here."""
    assert [r for _, r in launch(_generate_command, str(tmp_path)).values()] == [0, 0]
    generate_phantoms(tmp_path / "one.h5", 5, 12, seed=2)
    one, two = open_dataset(tmp_path / "one.h5"), open_dataset(tmp_path / "p.h5")
    assert torch.equal(one[0:5]["x"], two[0:5]["x"]) and len(two.attrs["parts"]) == WORLD


# ----------------------------------------------------------------------------- pieces, in one process
def test_global_batches_split_the_single_process_batches():
    from torch.utils.data import DataLoader

    data = list(range(21))
    single = [b.tolist() for b in DataLoader(data, batch_size=5, shuffle=True,
                                             generator=torch.Generator().manual_seed(7))]
    shares = []
    for r in range(3):  # as train() draws them: through a DataLoader that shares the generator
        g = torch.Generator().manual_seed(7)
        loader = DataLoader(data, batch_sampler=training._GlobalBatches(data, 5, g, r, 3), generator=g)
        shares.append([b.tolist() for b in loader])
    for k, batch in enumerate(single):
        got = [shares[r][k] for r in range(3)]
        real = [s for r, s in enumerate(got) if len(distributed.split(len(batch), 3, r))]
        assert sum(real, []) == batch  # contiguous shares, in order, covering the batch once
        assert all(s == batch[:1] for r, s in enumerate(got) if not len(distributed.split(len(batch), 3, r)))


def test_split_and_part_range_tile_the_samples():
    for n in range(0, 12):
        for parts in (1, 2, 3, 5):
            pieces = [distributed.split(n, parts, i) for i in range(parts)]
            assert [j for p in pieces for j in p] == list(range(n))
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
            for granule in (1, 4):
                ranges = [part_range(n, i, parts, granule) for i in range(parts)]
                assert [j for p in ranges for j in p] == list(range(n))
                assert all(r.start % granule == 0 for r in ranges if len(r))
    with pytest.raises(ValueError, match="index"):
        distributed.split(4, 2, 2)


def test_single_process_helpers_and_bad_input(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_distributed()) == (0, 1, False)
    distributed.barrier()
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="timeout"):
        distributed.init_from_env(timeout=0)
    with pytest.raises(ValueError, match="backend"):
        distributed.init_from_env(timeout=5, backend="mpi")
    monkeypatch.setenv("LOCAL_RANK", "99")  # more processes on the node than GPUs
    with pytest.raises(ValueError, match="no GPU"):
        distributed.init_from_env(timeout=5, backend="nccl")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "ten")
    with pytest.raises(ValueError, match="KRYLON_DIST_TIMEOUT"):
        distributed.init_from_env()


def test_part_writer_resumes_and_links(tmp_path):
    out = tmp_path / "d.h5"
    fields = {"u": ((3,), "float64")}
    for index in range(2):
        w = DatasetWriter(out, 5, fields, generator="t", seed=1, part=(index, 2))
        assert (w.start, w.stop) == ((0, 3) if index == 0 else (3, 5))
        w.write(w.start, {"u": np.full(3, w.start, dtype=float)})  # one sample, then "killed"
        w.f.close()
        w.f = None
    for index in range(2):  # resumed per part, at its own position
        with DatasetWriter(out, 5, fields, generator="t", seed=1, part=(index, 2)) as w:
            assert w.n_written == w.start + 1
            for i in range(w.n_written, w.stop):
                w.write(i, {"u": np.full(3, i, dtype=float)})
    with pytest.raises(ValueError, match="parameters differ"):
        DatasetWriter(out, 5, fields, generator="t", seed=1, parameters={"a": 1}, part=(0, 2))
    link_parts(out, 2)
    np.testing.assert_array_equal(open_dataset(out)[0:5]["u"].numpy(), np.repeat(np.arange(5.0), 3).reshape(5, 3))
    with pytest.raises(FileExistsError):
        link_parts(out, 2)
    with pytest.raises(FileNotFoundError, match="missing"):
        link_parts(tmp_path / "other.h5", 2)
    with pytest.raises(ValueError, match="part index"):
        DatasetWriter(tmp_path / "e.h5", 5, fields, generator="t", part=(-1, 2))
    with pytest.raises(TypeError, match="pair"):
        DatasetWriter(tmp_path / "e.h5", 5, fields, generator="t", part=3)


def test_sequential_generators_refuse_torchrun(tmp_path, monkeypatch, capsys):
    from krylon import cli

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; the command refuses before joining any group
    assert cli.main(["generate", "ks", "--out", str(tmp_path / "ks.h5")]) == 2
    assert "without torchrun" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

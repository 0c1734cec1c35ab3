"""``krylon bench fno`` review fixes: a rerun into the same folder trains afresh (it used to resume the finished
checkpoint and report the old run's times next to the peer's new ones), and both trainers see the same
normalisation statistics and compare physical fields in their loss."""

import json

import pytest

from krylon.bench import fno

pytestmark = pytest.mark.usefixtures("torch_one_thread")
DATA = fno.find_data_dir()


def test_a_resumed_training_run_is_an_error_in_the_bench():
    fno._no_resume("fno epoch 1/2: train 0.5")  # ordinary progress lines pass
    with pytest.raises(RuntimeError, match="resumed a training run"):
        fno._no_resume("resuming fno from out/checkpoint.pt after epoch 2")


@pytest.mark.skipif(DATA is None, reason="needs neuraloperator's Darcy files (shared/data/neuralop)")
def test_darcy_rerun_in_the_same_folder_trains_afresh_with_its_own_schedule(tmp_path):
    pytest.importorskip("neuralop")
    first = fno._darcy({"n_train": 16, "epochs": 1, "batch": 8}, DATA, "cpu", tmp_path)
    second = fno._darcy({"n_train": 16, "epochs": 2, "batch": 8}, DATA, "cpu", tmp_path)
    hist = json.loads((tmp_path / "fno-darcy-krylon" / "history.json").read_text())
    assert len(hist["train"]) == 2 and len(hist["seconds"]) == 2  # this run's two epochs, not the old one's
    assert all(r["train_s"] > 0 for r in first + second)
    # the same initial weights, data, statistics, loss and schedule: both trainers end close
    k, p = second
    assert abs(k["l2_16"] - p["l2_16"]) < 0.25 * max(k["l2_16"], p["l2_16"]), (k, p)

"""``krylon bench fno --part darcy|ns`` runs one of the suite's two cases; the Darcy rows carry CPU-time
throughput next to the wall-clock one and the zero-shot error of the model run on the training grid."""

import numpy as np
import pytest
import torch

from krylon.bench import fno

ROW = {"case": "darcy16", "parameters": 1, "epochs": 1, "train_s": 2.0, "samples_per_s": 8.0, "cpu_s": 1.0,
       "samples_per_cpu_s": 16.0, "peak_mib": 1.0, "l2_16": 0.1, "l2_32": 0.12, "zero_shot_ratio": 1.2}


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def darcy(cfg, data_dir, device, out, seed=0):
        seen.append("darcy")
        return [dict(ROW, trainer="krylon OperatorLearner"), dict(ROW, trainer="neuralop Trainer", samples_per_cpu_s=8.0)]

    def ns(cfg, device, out, seed=0):
        seen.append("ns")
        return [], "skipped: stub"

    monkeypatch.setattr(fno, "_darcy", darcy)
    monkeypatch.setattr(fno, "_ns", ns)
    monkeypatch.setattr(fno, "find_data_dir", lambda data_dir=None: "somewhere")
    return seen


@pytest.mark.parametrize("part, expected", [(None, ["darcy", "ns"]), ("darcy", ["darcy"]), ("ns", ["ns"])])
def test_part_selects_the_case(tmp_path, calls, part, expected):
    result = fno.run("quick", out=tmp_path, plot=False, part=part)
    assert calls == expected and result["part"] == (part or "all")
    assert bool(result["darcy"]) == ("darcy" in expected)


def test_summary_compares_cpu_time_throughput(tmp_path, calls):
    rows = {r["metric"]: r for r in fno.summary(fno.run("quick", out=tmp_path, plot=False, part="darcy"))}
    assert rows["training samples per CPU s"]["ratio"] == pytest.approx(2.0)  # krylon 16 / peer 8
    assert rows["training samples/s"]["ratio"] == pytest.approx(1.0)


def test_a_bad_part_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="'navier'"):
        fno.run("quick", out=tmp_path, part="navier")


def test_the_command_line_passes_part_to_the_suite(tmp_path, monkeypatch):
    from krylon import cli

    seen = {}
    monkeypatch.setattr(fno, "run", lambda size, *, device="cpu", out="bench-out", data_dir=None, plot=True, part=None:
                        seen.update(size=size, part=part) or {"darcy": [], "ns": []})
    assert cli.main(["bench", "fno", "--size", "quick", "--part", "ns", "--out", str(tmp_path), "--no-plot"]) == 0
    assert seen == {"size": "quick", "part": "ns"}
    with pytest.raises(SystemExit):
        cli.main(["bench", "fno", "--part", "burgers"])


class _Fields:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)


def _numpy_upsample(u16, n):
    """Zero-padded spectrum, the 16-grid's Nyquist modes dropped (numpy, independent of the suite's code)."""
    c = np.fft.fft2(u16)
    m = u16.shape[-1]
    k = np.fft.fftfreq(m, 1 / m)
    keep = np.abs(k) < m / 2
    out = np.zeros(u16.shape[:-2] + (n, n), complex)
    idx = np.where(keep)[0]
    kk = k[idx].astype(int) % n
    out[..., kk[:, None], kk[None, :]] = c[..., idx[:, None], idx[None, :]]
    return np.fft.ifft2(out).real * (n / m) ** 2


def test_zero_shot_via_the_training_grid_matches_numpy_and_runs_on_the_training_grid():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 1, 32, 32, generator=g, dtype=torch.float64)
    x = torch.randn(3, 1, 32, 32, generator=g, dtype=torch.float64)
    seen = []

    def predict(inp):  # a "model" whose output is the target, sampled where it sees its input
        seen.append(inp.shape[-1])
        return y[..., ::32 // inp.shape[-1], ::32 // inp.shape[-1]] + 0 * inp

    data = _Fields(x, y)
    assert fno._errors(predict, data, "cpu") == pytest.approx(0.0, abs=1e-12) and seen == [32]
    got = fno._errors(predict, data, "cpu", train_grid=16)
    assert seen == [32, 16]
    ref = _numpy_upsample(y.numpy()[..., ::2, ::2], 32)
    want = np.mean(np.linalg.norm((ref - y.numpy()).reshape(3, -1), axis=1) / np.linalg.norm(y.numpy().reshape(3, -1), axis=1))
    assert got == pytest.approx(want, rel=1e-9) and 0.1 < got < 1.5  # white noise: half its energy above the band

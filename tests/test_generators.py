"""The ``ns2d`` and ``darcy`` data-set generators: content against independent references, resume, batch size, CLI."""

import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from krylon.cli import main
from krylon.datasets import darcy, navier_stokes
from krylon.datasets.hdf5 import DatasetWriter
from krylon.operators.pde import NavierStokes2D

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_NS = dict(resolution=8, sim_resolution=16, dt=0.05, warmup=0.1, interval=0.05, t_in=2, t_out=3)


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in f.keys()}, dict(f.attrs)


def interrupt_at(monkeypatch, index):
    """Make DatasetWriter.write fail (as Ctrl-C would) when it reaches sample ``index``."""
    original = DatasetWriter.write

    def write(self, i, sample):
        if i == index:
            raise KeyboardInterrupt
        return original(self, i, sample)

    monkeypatch.setattr(DatasetWriter, "write", write)


# ------------------------------------------------------------------ ns2d
def test_ns2d_layout_attributes_and_downsampling(tmp_path):
    path = navier_stokes.generate(tmp_path / "ns.h5", 3, batch_size=2, seed=5, store_dtype="float64",
                                  **{**TINY_NS, "warmup": 0.0})
    data, attrs = read(path)
    assert data["x"].shape == (3, 1, 8, 8, 2) and data["y"].shape == (3, 1, 8, 8, 3)
    assert attrs["viscosity"] == 1e-3 and attrs["dt"] == 0.05 and attrs["resolution"] == 8 and attrs["interval"] == 0.05
    assert (attrs["t_in"], attrs["t_out"], attrs["sim_resolution"]) == (2, 3, 16)
    np.testing.assert_allclose(attrs["times"], [0.0, 0.05, 0.1, 0.15, 0.2], atol=1e-12)
    np.testing.assert_array_equal(attrs["lengths"], [1.0, 1.0])
    # with no warm-up the first input snapshot is the initial field, coarsened by Fourier truncation (numpy)
    w0 = navier_stokes.initial_vorticity(5, range(3), 16).numpy()
    c = np.fft.fft2(w0)
    keep = np.r_[0:4, 13:16]  # |m| < 4: below the 8-grid's Nyquist
    coarse = np.zeros((3, 8, 8), dtype=complex)
    idx = np.r_[0:4, 5:8]
    coarse[:, idx[:, None], idx[None, :]] = c[:, keep[:, None], keep[None, :]]
    expected = np.real(np.fft.ifft2(coarse)) * (64 / 256)
    np.testing.assert_allclose(data["x"][:, 0, :, :, 0], expected, atol=1e-12)


def test_ns2d_snapshots_are_consecutive_steps_in_time_order(tmp_path):
    # stored at the simulated resolution with one step between snapshots: y[0] follows x[-1] by one CNAB2 step,
    # so their Crank–Nicolson residual is tiny; the pair taken in the wrong order is not
    opts = {**TINY_NS, "resolution": 16, "dt": 0.02, "interval": 0.02}
    path = navier_stokes.generate(tmp_path / "ns.h5", 1, seed=1, store_dtype="float64", **opts)
    data, _ = read(path)
    ns = NavierStokes2D(viscosity=1e-3)
    a, b = torch.from_numpy(data["x"][0, 0, ..., -1]), torch.from_numpy(data["y"][0, 0, ..., 0])
    scale = float(((b - a) / 0.02).norm())
    assert float(ns.crank_nicolson_residual(a, b, 0.02).norm()) < 1e-3 * scale
    assert float(ns.crank_nicolson_residual(b, a, 0.02).norm()) > 0.5 * scale


def test_ns2d_resume_after_interruption_is_identical(tmp_path, monkeypatch):
    full = navier_stokes.generate(tmp_path / "full.h5", 5, batch_size=2, **TINY_NS)
    part = tmp_path / "part.h5"
    with monkeypatch.context() as m:
        interrupt_at(m, 3)  # mid-batch: samples 0-2 on disk, batch [2, 3] interrupted after writing 2
        with pytest.raises(KeyboardInterrupt):
            navier_stokes.generate(part, 5, batch_size=2, **TINY_NS)
    assert not part.exists()
    with h5py.File(str(part) + ".partial", "r") as f:
        assert int(f.attrs["n_written"]) == 3
    navier_stokes.generate(part, 5, batch_size=2, **TINY_NS)
    a, _ = read(full)
    b, _ = read(part)
    for k in ("x", "y"):
        np.testing.assert_array_equal(a[k], b[k])
    # another batch size: the same data to rounding (per-sample seeds)
    c, _ = read(navier_stokes.generate(tmp_path / "b3.h5", 5, batch_size=3, **TINY_NS))
    np.testing.assert_allclose(c["y"], a["y"], rtol=1e-5, atol=1e-6)
    # a rerun with other settings refuses to resume
    with monkeypatch.context() as m:
        interrupt_at(m, 1)
        with pytest.raises(KeyboardInterrupt):
            navier_stokes.generate(tmp_path / "other.h5", 3, **TINY_NS)
    with pytest.raises(ValueError, match="parameters differ"):
        navier_stokes.generate(tmp_path / "other.h5", 3, **{**TINY_NS, "t_out": 4})


@pytest.mark.slow  # a fresh interpreter imports torch: a few seconds
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_ns2d_resume_after_kill_9(tmp_path):
    # a process killed outright (no cleanup, no close) right after flushing sample 2 of 4: the rerun continues
    full = navier_stokes.generate(tmp_path / "full.h5", 4, batch_size=3, **TINY_NS)
    part = tmp_path / "part.h5"
    script = textwrap.dedent(f"""
        import os, signal
        from krylon.datasets import navier_stokes
        from krylon.datasets.hdf5 import DatasetWriter
        original = DatasetWriter.write
        def write(self, i, sample):
            original(self, i, sample)
            if i == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        DatasetWriter.write = write
        navier_stokes.generate({str(part)!r}, 4, batch_size=3, **{TINY_NS!r})
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not part.exists()
    with h5py.File(str(part) + ".partial", "r") as f:
        assert int(f.attrs["n_written"]) == 3
    navier_stokes.generate(part, 4, batch_size=3, **TINY_NS)
    a, _ = read(full)
    b, _ = read(part)
    for k in ("x", "y"):
        np.testing.assert_array_equal(a[k], b[k])


def test_ns2d_bad_options(tmp_path):
    with pytest.raises(ValueError, match="sim_resolution"):
        navier_stokes.generate(tmp_path / "a.h5", 2, **{**TINY_NS, "sim_resolution": 4})
    with pytest.raises(ValueError, match="multiple of the time step"):
        navier_stokes.generate(tmp_path / "a.h5", 2, **{**TINY_NS, "interval": 0.07})
    with pytest.raises(ValueError, match="even"):
        navier_stokes.generate(tmp_path / "a.h5", 2, **{**TINY_NS, "resolution": 9})
    with pytest.raises(ValueError, match="n must be"):
        navier_stokes.generate(tmp_path / "a.h5", 0, **TINY_NS)


# ------------------------------------------------------------------ darcy
def scipy_darcy(a):
    """Independent 5-point assembly: harmonic face means between interior nodes, a_p on boundary faces."""
    s = a.shape[0]
    m, h2 = s - 2, (1.0 / (s - 1)) ** 2
    k = a[1:-1, 1:-1]
    idx = np.arange(m * m).reshape(m, m)
    rows, cols, vals = [], [], []
    diag = np.zeros((m, m))
    for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        for i in range(m):
            for j in range(m):
                p, q = i + di, j + dj
                if 0 <= p < m and 0 <= q < m:
                    w = 2 * k[i, j] * k[p, q] / (k[i, j] + k[p, q]) / h2
                    rows.append(idx[i, j])
                    cols.append(idx[p, q])
                    vals.append(-w)
                else:
                    w = k[i, j] / h2
                diag[i, j] += w
    A = sp.csr_matrix((vals, (rows, cols)), shape=(m * m, m * m)) + sp.diags(diag.ravel())
    u = np.zeros((s, s))
    u[1:-1, 1:-1] = spla.spsolve(A.tocsc(), np.ones(m * m)).reshape(m, m)
    return u


def test_darcy_matches_scipy_sparse_solve(tmp_path):
    path = darcy.generate(tmp_path / "d.h5", 3, resolution=17, batch_size=2, seed=3, store_dtype="float64")
    data, attrs = read(path)
    assert data["x"].shape == (3, 1, 17, 17) and data["y"].shape == (3, 1, 17, 17)
    a, u = data["x"][:, 0], data["y"][:, 0]
    assert set(np.unique(a)) <= {3.0, 12.0}
    assert (a == 12).any() and (a == 3).any()
    for i in range(3):
        ref = scipy_darcy(a[i])
        np.testing.assert_allclose(u[i], ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    assert np.all(u[:, 0, :] == 0) and np.all(u[:, :, -1] == 0)
    assert attrs["resolution"] == 17


def test_darcy_resume_and_batch_independence(tmp_path, monkeypatch):
    full, _ = read(darcy.generate(tmp_path / "full.h5", 4, resolution=9, batch_size=2))
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(KeyboardInterrupt):
            darcy.generate(tmp_path / "p.h5", 4, resolution=9, batch_size=2)
    part, _ = read(darcy.generate(tmp_path / "p.h5", 4, resolution=9, batch_size=2))
    for k in ("x", "y"):
        np.testing.assert_array_equal(part[k], full[k])
    one, _ = read(darcy.generate(tmp_path / "one.h5", 4, resolution=9, batch_size=1))
    np.testing.assert_array_equal(one["x"], full["x"])
    np.testing.assert_allclose(one["y"], full["y"], rtol=1e-6)


def test_darcy_solve_is_preconditioned():
    # the fast-Poisson preconditioner keeps CG's iterations bounded by the 4x contrast, not the grid
    for s in (17, 65):
        u, res = darcy.solve_darcy(darcy.permeability(0, range(2), s), rtol=1e-10)
        assert res.all_converged and int(res.iterations.max()) < 40, (s, res.iterations)
    assert u.shape == (2, 65, 65)


def test_darcy_bad_input():
    with pytest.raises(ValueError, match="positive"):
        darcy.solve_darcy(-torch.ones(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="s, s"):
        darcy.solve_darcy(torch.ones(5, 6, dtype=torch.float64))


# ------------------------------------------------------------------ command line
def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "ns.h5"
    argv = ["generate", "ns2d", "--n", "2", "--out", str(out), "--resolution", "8", "--sim-resolution", "16",
            "--dt", "0.05", "--warmup", "0.1", "--interval", "0.05", "--t-in", "2", "--t-out", "2", "--no-progress",
            "--device", "cpu"]
    assert main(argv) == 0
    data, attrs = read(out)
    assert data["x"].shape == (2, 1, 8, 8, 2) and attrs["sim_resolution"] == 16
    assert main(["generate", "darcy", "--n", "2", "--out", str(tmp_path / "d.h5"), "--resolution", "9",
                 "--no-progress"]) == 0
    assert read(tmp_path / "d.h5")[0]["y"].shape == (2, 1, 9, 9)
    assert main(argv[:-2] + ["--resolution", "7"]) == 2  # an odd grid: a clear error, no traceback
    assert "even" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "ns2d", "--help"])
    assert "default: 64 with --size quick, 256 with --size paper" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["generate"])


# ------------------------------------------------------------------ GPU and docstring examples
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generation_matches_cpu(tmp_path):
    cpu, _ = read(navier_stokes.generate(tmp_path / "c.h5", 2, store_dtype="float64", device="cpu", **TINY_NS))
    gpu, _ = read(navier_stokes.generate(tmp_path / "g.h5", 2, store_dtype="float64", device="cuda", **TINY_NS))
    np.testing.assert_allclose(gpu["y"], cpu["y"], rtol=1e-10, atol=1e-12)
    dc, _ = read(darcy.generate(tmp_path / "dc.h5", 2, resolution=17, store_dtype="float64", device="cpu"))
    dg, _ = read(darcy.generate(tmp_path / "dg.h5", 2, resolution=17, store_dtype="float64", device="cuda"))
    np.testing.assert_array_equal(dg["x"], dc["x"])
    np.testing.assert_allclose(dg["y"], dc["y"], rtol=1e-8, atol=1e-12)
    ns = NavierStokes2D()
    w = navier_stokes.initial_vorticity(0, range(2), 32)
    r_cpu = ns.crank_nicolson_residual(w, 1.01 * w, 0.1)
    r_gpu = ns.crank_nicolson_residual(w.cuda(), 1.01 * w.cuda(), 0.1)
    np.testing.assert_allclose(r_gpu.cpu().numpy(), r_cpu.numpy(), atol=1e-12)


def test_docstring_examples():
    import doctest

    from krylon.operators.pde import navier_stokes as ns_module

    for mod in (ns_module, navier_stokes):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_generate_samples_is_n_under_a_name_torchrun_does_not_abbreviate():
    """`--samples` is `--n` for generate ns2d|darcy|phantoms (torchrun's parser takes `--n` for its own options)."""
    from krylon.cli import _parser

    for kind in ("ns2d", "darcy", "phantoms"):
        a = _parser().parse_args(["generate", kind, "--samples", "7", "--out", "x.h5"])
        b = _parser().parse_args(["generate", kind, "--n", "7", "--out", "x.h5"])
        assert a.n == b.n == 7
    # torchrun's argument parser (which refuses "--n" as ambiguous) passes "--samples" through to krylon
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(["x.py", "generate", "darcy", "--samples", "3"]).training_script_args
    assert args == ["generate", "darcy", "--samples", "3"]

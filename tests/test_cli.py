"""The ``krylon`` command, run as a user runs it (a subprocess through the console entry point)."""

import json
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "krylon", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("solver", ["cg", "pcg-jacobi", "pcg-ic0", "pcg-dst", "minres", "gmres"])
def test_solve_poisson_prints_iterations_time_residual(solver):
    p = run("solve", "poisson", "--grid", "24", "24", "--obstacles", "2", "--solver", solver, "--rtol", "1e-8", "--threads", "1")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "iterations" in out and "time" in out and "residual" in out
    rel = float(out.split("||b - A x|| / ||b|| = ")[1].split()[0])
    assert rel <= 1e-8


def test_solve_poisson_3d_neumann():
    p = run("solve", "poisson", "--grid", "10", "12", "8", "--bc", "neumann", "--solver", "cg", "--threads", "1")
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("args, message", [
    pytest.param(("solve", "poisson", "--grid", "16"), "2 or 3", id="1d-grid"),
    pytest.param(("solve", "poisson", "--grid", "16", "16", "--rtol", "-1"), "rtol", id="negative-rtol"),
    pytest.param(("solve", "poisson", "--grid", "16", "16", "--maxiter", "0"), "maxiter", id="maxiter-0"),
])
def test_solve_bad_input_is_a_clear_error(args, message):
    p = run(*args)
    assert p.returncode != 0
    assert message in (p.stderr + p.stdout)


def test_solve_reports_non_convergence_with_exit_code():
    p = run("solve", "poisson", "--grid", "32", "32", "--maxiter", "3")
    assert p.returncode == 1
    assert "not converged" in p.stdout and "maxiter" in p.stdout


def test_bench_krylov_writes_json_and_png(tmp_path):
    p = run("bench", "krylov", "--size", "quick", "--repeats", "1", "--out", str(tmp_path), "--no-peers", timeout=600)
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "krylov.json").read_text())
    assert data["machine"]["torch_threads"] == 1
    assert {c["case"].split()[0] for c in data["cases"]} == {"poisson2d", "poisson3d"}
    for case in data["cases"]:
        for row in case["rows"]:
            assert row["converged"] and row["true_rel_res"] <= 1e-8
    assert (tmp_path / "krylov_convergence.png").stat().st_size > 1000
    assert "batched CG" in p.stdout
    assert "== summary: krylov at --size quick" in p.stdout  # one suite prints its summary rows too
    assert "no peer" in p.stdout and not (tmp_path / "summary.json").exists()  # --no-peers; only the all-form writes it


def test_train_dcdm_end_to_end_resume_and_fine_tune(tmp_path):
    out = tmp_path / "run"
    args = ("train", "dcdm", "--grid", "8", "--geometries", "3", "--rhs", "4", "--lanczos", "20", "--levels", "1",
            "--width", "4", "--batch", "4", "--threads", "1", "--no-progress")
    p = run(*args, "--epochs", "1", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    rec = json.loads((out / "training.json").read_text())
    assert rec["smooth_fraction"] == 0.5 and rec["white_fraction"] == 0.25 and rec["network"]["width"] == 4
    # a second call resumes from the checkpoint instead of starting again; other epochs would change the schedule
    p = run(*args, "--epochs", "1", "--out", str(out))
    assert p.returncode == 0 and "resuming" in p.stdout + p.stderr, p.stdout + p.stderr
    assert len(json.loads((out / "history.json").read_text())["train"]) == 1
    p = run(*args, "--epochs", "2", "--out", str(out))
    assert p.returncode != 0 and "epochs 1 -> 2" in p.stderr
    # fine-tuning: --init must name a model with the same network
    p = run(*args, "--epochs", "1", "--out", str(tmp_path / "ft"), "--init", str(out / "dcdm.pt"))
    assert p.returncode == 0, p.stdout + p.stderr
    wider = tuple("8" if a == "4" and args[i - 1] == "--width" else a for i, a in enumerate(args))
    p = run(*wider, "--epochs", "1", "--out", str(tmp_path / "bad"), "--init", str(out / "dcdm.pt"))
    assert p.returncode != 0 and "--init model" in p.stderr


@pytest.mark.parametrize("solver", ["dcdm", "dcdm-paper", "dcdm+r", "fpcg-dcdm"])
def test_solve_poisson_with_the_shipped_dcdm_model(solver):
    p = run("solve", "poisson", "--grid", "48", "48", "--obstacles", "3", "--solver", solver, "--rtol", "1e-4",
            "--threads", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    rel = float(p.stdout.split("||b - A x|| / ||b|| = ")[1].split()[0])
    its = int(p.stdout.split("iterations")[1].split()[0])
    assert rel <= 1e-4 and its <= 40  # CG needs ~100 here


def test_dcdm_solver_follows_the_library_default_and_dcdm_plus_r_is_its_old_name():
    args = ("solve", "poisson", "--grid", "96", "96", "--obstacles", "4", "--rtol", "1e-4", "--threads", "1")
    its = {}
    for solver in ("dcdm", "dcdm+r"):
        p = run(*args, "--solver", solver)
        assert p.returncode == 0, p.stdout + p.stderr
        its[solver] = int(p.stdout.split("iterations")[1].split()[0])
        assert ("now --solver dcdm" in p.stderr) == (solver == "dcdm+r")
    assert its["dcdm"] == its["dcdm+r"] <= 12  # the multilevel iteration, DCDM.pretrained's default
    p = run(*args, "--solver", "dcdm-paper", "--maxiter", "3")  # the paper's plain iteration, on request
    assert "iterations  3" in p.stdout, p.stdout + p.stderr

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

"""The numba-fused CPU kernels of the CG hot loop agree with the eager reference, and CG uses them correctly."""

import itertools
import os

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from krylon.kernels import fused_cpu, linalg
from krylon.kernels import stencil as st
from krylon.operators import Laplacian
from krylon.solvers import CG

pytest.importorskip("numba")

BCS = ("dirichlet", "neumann", "periodic")
PAIRS = [(lo, hi) for lo in BCS for hi in BCS if (lo == "periodic") == (hi == "periodic")]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def numba_on(monkeypatch):
    monkeypatch.delenv("KRYLON_NUMBA", raising=False)
    monkeypatch.setattr(fused_cpu, "_failed", [])  # a simulated compile failure stays inside its test
    yield


def _check_stencil(grid, sides, spacing, dtype, batch=(2,)):
    g = torch.Generator().manual_seed(len(grid) * 100 + sum(grid))
    u = torch.randn(batch + grid, generator=g, dtype=dtype)
    out = torch.full_like(u, float("nan"))  # every entry must be written
    d = fused_cpu.stencil_dot(u, out, spacing, sides)
    ref = st.apply_constant(u.double(), spacing, sides)
    tol = 1e-13 if dtype == torch.float64 else 2e-5
    scale = max(float(ref.abs().max()), float(u.abs().max()))  # A u = 0 for an all-Neumann single cell
    assert float((out.double() - ref).abs().max() / scale) < tol, (grid, sides)
    dref = linalg.dot(u.double(), ref, len(grid))
    assert d.dtype == dtype and d.shape == batch
    dscale = float(linalg.dot(u.double(), u.double(), len(grid)).max()) * scale
    assert float((d.double() - dref).abs().max()) <= 10 * tol * dscale


def _check_weighted(grid, sides, spacing, dtype, batch=(2,), solid=True, coefficient=True):
    g = torch.Generator().manual_seed(sum(grid) + 7 * len(grid))
    k = (0.1 + torch.rand(grid, generator=g, dtype=torch.float64)) if coefficient else None
    mask = (torch.rand(grid, generator=g) < 0.2) if solid else None
    w = st.stencil_weights(grid, spacing, sides, coefficient=k, solid=mask, dtype=dtype)
    u = torch.randn(batch + grid, generator=g, dtype=dtype)
    out = torch.full_like(u, float("nan"))
    prep = fused_cpu.prepare_weights(w.diag, st.lower_face_weights(w, grid), [x is not None for x in w.wraps])
    d = fused_cpu.weighted_stencil_dot(u, out, prep)
    ref = st.apply_weights(u, w)
    tol = 1e-13 if dtype == torch.float64 else 2e-5
    scale = max(float(ref.abs().max()), float(u.abs().max() * w.diag.abs().max()))
    assert float((out - ref).abs().max()) <= tol * scale, (grid, sides)
    dref = linalg.dot(u, ref, len(grid))
    assert float((d - dref).abs().max()) <= 10 * tol * scale * float(linalg.dot(u, u, len(grid)).max())





CHECKS = [pytest.param(_check_stencil, id="constant"), pytest.param(_check_weighted, id="weighted")]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("grid", [(5, 7), (1, 6), (6, 1), (2, 2), (1, 1), (3, 2)])
def test_stencil_dot_2d_every_boundary_combination(grid, check):
    # all 4 x 4 = 16 side combinations on grids that include the degenerate lengths 1 and 2
    for sides in itertools.product(PAIRS, repeat=2):
        check(grid, sides, (0.7, 1.3), torch.float64)


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("grid", [(4, 5, 6), (1, 3, 2), (3, 1, 1), (2, 2, 5)])
def test_stencil_dot_3d_boundary_combinations(grid, check):
    for sides in itertools.product(PAIRS, repeat=3):
        check(grid, sides, (0.5, 1.0, 2.0), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(), (1,), (2, 3)])
def test_stencil_dot_dtypes_and_batches(dtype, batch):
    _check_stencil((9, 8), (("dirichlet", "neumann"), ("periodic", "periodic")), (1.0, 0.5), dtype, batch)
    _check_stencil((4, 6, 5), (("neumann", "neumann"), ("dirichlet", "dirichlet"), ("periodic", "periodic")),
                   (1.0, 1.0, 1.0), dtype, batch)


def test_stencil_dot_propagates_nan():
    u = torch.ones(1, 8, 8, dtype=torch.float64)
    u[0, 3, 4] = float("nan")
    out = torch.empty_like(u)
    d = fused_cpu.stencil_dot(u, out, (1.0, 1.0), (("dirichlet", "dirichlet"),) * 2)
    assert torch.isnan(d).all()
    assert torch.isnan(out[0, 2:5, 3:6]).sum() == 5  # the cell and its four neighbours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_update_and_advance_match_eager(dtype):
    g = torch.Generator().manual_seed(3)
    x, r, p, ap, z = (torch.randn(3, 7, 9, generator=g, dtype=dtype) for _ in range(5))
    alpha = torch.tensor([0.5, 0.0, -1.5], dtype=dtype)  # 0 leaves system 1 unchanged
    beta = torch.tensor([0.25, 2.0, 0.0], dtype=dtype)
    r1, r2 = r.clone(), r.clone()
    rr1 = fused_cpu.residual_update(r1, ap, alpha, 2)
    r2 -= alpha[:, None, None] * ap
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r1, r2, **tol)
    torch.testing.assert_close(rr1, (r2 * r2).sum((1, 2)), **tol)
    assert torch.equal(r1[1], r[1])
    x1, p1 = x.clone(), p.clone()
    fused_cpu.advance(x1, p1, z, alpha, beta, 2)
    torch.testing.assert_close(x1, x + alpha[:, None, None] * p, **tol)
    torch.testing.assert_close(p1, z + beta[:, None, None] * p, **tol)
    # a 0-dim coefficient applies to the single system
    x2 = x[0].clone()
    p2 = p[0].clone()
    fused_cpu.advance(x2, p2, z[0], torch.tensor(0.5, dtype=dtype), torch.tensor(0.25, dtype=dtype), 2)
    torch.testing.assert_close(x2, x1[0], **tol)
    torch.testing.assert_close(p2, p1[0], **tol)


def test_usable_only_where_it_applies(one_thread, numba_on):
    big = torch.zeros(64, 64, dtype=torch.float64)
    assert fused_cpu.usable(big, big.clone())
    assert not fused_cpu.usable(torch.zeros(8, 8, dtype=torch.float64))           # too small to pay off
    assert not fused_cpu.usable(big.to(torch.complex128))                          # complex: eager
    assert not fused_cpu.usable(big.t(), big)                                      # not contiguous
    assert not fused_cpu.usable(big, big.float())                                  # mixed dtypes
    assert not fused_cpu.usable(big.clone().requires_grad_())                      # autograd: eager
    torch.set_num_threads(2)
    assert fused_cpu.usable(big)                                      # below torch's grain: eager is serial too
    # above it, only where the multi-threaded build may run (else eager torch would use the threads)
    assert fused_cpu.usable(torch.zeros(256, 256, dtype=torch.float64)) == fused_cpu._parallel_ok()


def test_env_switch_turns_the_kernels_off(monkeypatch, one_thread, numba_on):
    big = torch.zeros(64, 64, dtype=torch.float64)
    assert fused_cpu.usable(big)
    monkeypatch.setenv("KRYLON_NUMBA", "0")  # read at each call
    assert not fused_cpu.usable(big)
    monkeypatch.setenv("KRYLON_NUMBA", "1")
    assert fused_cpu.usable(big)


def _calls(monkeypatch):
    """Count calls of the fused kernels (to prove which path a solve took)."""
    seen = {"stencil_dot": 0, "residual_update": 0, "advance": 0}
    for name in seen:
        orig = getattr(fused_cpu, name)

        def wrapped(*a, _orig=orig, _name=name, **k):
            seen[_name] += 1
            return _orig(*a, **k)
        monkeypatch.setattr(fused_cpu, name, wrapped)
    return seen


@pytest.mark.parametrize("shape, bc", [((64, 80), "dirichlet"), ((20, 18, 16), (("dirichlet", "neumann"), "periodic", "dirichlet"))])
def test_cg_with_fused_kernels_matches_scipy_and_eager(shape, bc, monkeypatch, one_thread, numba_on):
    A = Laplacian(shape, bc=bc, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    b = torch.rand((3,) + shape, generator=g, dtype=torch.float64)
    seen = _calls(monkeypatch)
    res = CG(rtol=1e-10).solve(A, b)
    assert seen["stencil_dot"] > 10 and seen["advance"] > 10 and seen["residual_update"] > 10
    assert bool(res.converged.all())
    K = A.to_scipy()
    for i in range(3):
        ref = spla.spsolve(K.tocsc(), b[i].reshape(-1).numpy())
        np.testing.assert_allclose(res.x[i].reshape(-1).numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    # the eager path takes the same number of iterations (rounding may shift it by one or two)
    monkeypatch.setenv("KRYLON_NUMBA", "0")
    before = dict(seen)
    res0 = CG(rtol=1e-10).solve(A, b)
    assert seen == before
    assert (res.iterations - res0.iterations).abs().max() <= 2
    torch.testing.assert_close(res.x, res0.x, rtol=0, atol=1e-8 * float(res0.x.abs().max()))


def test_cg_fused_single_system_float32_and_callback(monkeypatch, one_thread, numba_on):
    A = Laplacian((96, 96), bc="dirichlet", dtype=torch.float32)
    b = torch.rand(96, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    seen = _calls(monkeypatch)
    xs = []
    res = CG(rtol=1e-3).solve(A, b, callback=lambda st_: xs.append(st_.x.clone()))
    assert seen["advance"] > 0 and bool(res.converged)
    # the callback sees the current iterate (x is not one step behind): its residual matches the reported one
    k = len(xs) // 2
    true = float(torch.linalg.vector_norm(b - A.matvec(xs[k])))
    reported = float(res.residual_norms[k + 1])
    assert abs(true - reported) <= 1e-3 * reported
    assert float(torch.linalg.vector_norm(b - A.matvec(res.x))) <= 1.01e-3 * float(torch.linalg.vector_norm(b))


def test_cg_fused_path_per_system_convergence(monkeypatch, one_thread, numba_on):
    # one easy system (b = A e_smooth) and one hard one: the easy one stops early, the hard one finishes
    A = Laplacian((64, 64), bc="dirichlet", dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    b = torch.stack([torch.zeros(64, 64, dtype=torch.float64), torch.rand(64, 64, generator=g, dtype=torch.float64)])
    b[0, 10, 10] = 1.0
    res = CG(rtol=1e-9).solve(A, b)
    assert bool(res.converged.all())
    for i in range(2):
        assert float(torch.linalg.vector_norm(b[i] - A.matvec(res.x[i]))) <= 1e-9 * float(torch.linalg.vector_norm(b[i]))


def test_overlapping_output_is_refused_like_eager(one_thread, numba_on):
    A = Laplacian((64, 64), dtype=torch.float64)
    x = torch.randn(64, 64, dtype=torch.float64)
    assert not fused_cpu.usable(x, x.view_as(x))
    with pytest.raises(RuntimeError, match="memory location"):
        A.matvec_dot(x, out=x.view_as(x))


def test_non_contiguous_inputs_still_take_the_fused_path(monkeypatch, one_thread, numba_on):
    # CG's work vectors are dense whatever the layout of b, and IC0 returns dense batches
    from krylon.solvers import IC0

    A = Laplacian((64, 64), bc="dirichlet", dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    seen = _calls(monkeypatch)
    bt = torch.rand(64, 64, generator=g, dtype=torch.float64).t()
    res = CG(rtol=1e-8).solve(A, bt)
    assert bool(res.converged) and seen["stencil_dot"] >= int(res.iterations)
    seen["stencil_dot"] = 0
    res = CG(rtol=1e-8, M=IC0()).solve(A, torch.rand(2, 64, 64, generator=g, dtype=torch.float64))
    assert bool(res.converged.all()) and seen["stencil_dot"] >= int(res.iterations.max())


def test_compile_failure_falls_back_to_eager(monkeypatch, one_thread, numba_on):
    import numba

    def broken(parallel):
        raise numba.core.errors.TypingError("simulated compiler failure")

    monkeypatch.setattr(fused_cpu, "_kernels", broken)
    monkeypatch.setenv("KRYLON_NUMBA", "1")
    A = Laplacian((64, 64), bc="dirichlet", dtype=torch.float64)
    b = torch.rand(64, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="eager path"):
        res = CG(rtol=1e-8).solve(A, b)
    assert bool(res.converged)
    assert float(torch.linalg.vector_norm(b - A.matvec(res.x))) <= 1e-8 * float(torch.linalg.vector_norm(b))
    assert not fused_cpu.available()
    assert os.environ["KRYLON_NUMBA"] == "1"  # this process only: the environment is left alone


def test_multithreaded_kernels_match_serial(numba_on):
    # with several torch threads a large field runs on the prange build of the same kernels
    if not fused_cpu._parallel_ok():
        pytest.skip("numba has no safe threading layer here")
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(7)
        u = torch.randn(2, 200, 190, generator=g, dtype=torch.float64)
        out = torch.empty_like(u)
        sides = (("dirichlet", "neumann"), ("periodic", "periodic"))
        d = fused_cpu.stencil_dot(u, out, (1.0, 0.5), sides)
        ref = st.apply_constant(u, (1.0, 0.5), sides)
        torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-12)
        torch.testing.assert_close(d, linalg.dot(u, ref, 2), rtol=1e-12, atol=0)
        r, ap = torch.randn(2, 70000, generator=g, dtype=torch.float64), torch.randn(2, 70000, generator=g, dtype=torch.float64)
        alpha = torch.tensor([0.3, -0.7], dtype=torch.float64)
        r1 = r.clone()
        rr = fused_cpu.residual_update(r1, ap, alpha, 1)
        torch.testing.assert_close(r1, r - alpha[:, None] * ap)
        torch.testing.assert_close(rr, (r1 * r1).sum(1))
        A = Laplacian((256, 256), bc="dirichlet", dtype=torch.float64)
        b = torch.rand(256, 256, generator=g, dtype=torch.float64)
        res = CG(rtol=1e-8).solve(A, b)
        assert bool(res.converged)
        assert float(torch.linalg.vector_norm(b - A.matvec(res.x))) <= 1e-8 * float(torch.linalg.vector_norm(b))
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_stencil_dot_dtypes_batches_and_plain_obstacles(dtype):
    _check_weighted((9, 8), (("dirichlet", "neumann"), ("periodic", "periodic")), (1.0, 0.5), dtype, batch=())
    _check_weighted((4, 6, 5), (("neumann", "neumann"), ("dirichlet", "dirichlet"), ("periodic", "periodic")),
                    (1.0, 1.0, 1.0), dtype, batch=(2, 3))
    _check_weighted((12, 10), "dirichlet", 1.0, dtype, coefficient=False)           # Laplacian with obstacles


@pytest.mark.parametrize("make", [
    pytest.param(lambda m: Laplacian((64, 72), bc="neumann", obstacles=m), id="laplacian-obstacles"),
    pytest.param(lambda m: __import__("krylon.operators", fromlist=["Diffusion"]).Diffusion(
        0.2 + torch.rand(64, 72, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
        bc=(("dirichlet", "neumann"), "periodic")), id="diffusion"),
])
def test_cg_on_weighted_operators_uses_the_fused_stencil(make, monkeypatch, one_thread, numba_on):
    mask = torch.zeros(64, 72, dtype=torch.bool)
    mask[20:30, 10:50] = True
    A = make(mask)
    calls = {"n": 0}
    orig = fused_cpu.weighted_stencil_dot

    def counted(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)
    monkeypatch.setattr(fused_cpu, "weighted_stencil_dot", counted)
    g = torch.Generator().manual_seed(8)
    b = torch.rand(2, 64, 72, generator=g, dtype=torch.float64)
    if A.obstacles is not None:
        b = b.masked_fill(mask, 0)
    b = A.project_range(b) if "positive_definite" not in A.tags else b
    res = CG(rtol=1e-9).solve(A, b)
    assert bool(res.converged.all()) and calls["n"] >= int(res.iterations.max())
    for i in range(2):
        assert float(torch.linalg.vector_norm(b[i] - A.matvec(res.x[i]))) <= 1.01e-9 * float(torch.linalg.vector_norm(b[i]))


def test_disabled_context_nests_and_restores(monkeypatch, one_thread, numba_on):
    import threading

    big = torch.zeros(64, 64, dtype=torch.float64)
    assert fused_cpu.usable(big)
    with fused_cpu.disabled():
        with fused_cpu.disabled():
            assert not fused_cpu.usable(big)
        assert not fused_cpu.usable(big)   # the outer block is still open
    assert fused_cpu.usable(big) and fused_cpu.available()
    # a block open in another thread does not change the kernel this thread's solve takes
    opened, release = threading.Event(), threading.Event()

    def other():
        with fused_cpu.disabled():
            opened.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    try:
        assert opened.wait(10)
        assert fused_cpu.usable(big)
    finally:
        release.set()
        t.join(10)


def test_warm_survives_a_compile_failure(monkeypatch, numba_on):
    import numba

    def broken(parallel):
        raise numba.core.errors.TypingError("simulated compiler failure")

    monkeypatch.setattr(fused_cpu, "_kernels", broken)
    monkeypatch.setenv("KRYLON_NUMBA", "1")
    with pytest.warns(RuntimeWarning, match="eager path"):
        assert fused_cpu.warm() == 0.0
    assert not fused_cpu.available()
    assert os.environ["KRYLON_NUMBA"] == "1"


def test_cached_weight_operands_follow_changed_weights(one_thread, numba_on):
    import dataclasses

    g = torch.Generator().manual_seed(11)
    w = st.stencil_weights((64, 72), 1.0, "dirichlet", coefficient=0.1 + torch.rand(64, 72, generator=g, dtype=torch.float64))
    u = torch.randn(64, 72, generator=g, dtype=torch.float64)
    out = torch.empty_like(u)
    st.apply_weights_dot(u, w, out=out)                    # builds the cached operands
    w2 = dataclasses.replace(w, diag=3 * w.diag)           # a new object does not inherit them
    y, _ = st.apply_weights_dot(u, w2, out=out)
    torch.testing.assert_close(y, st.apply_weights(u, w2))
    w.faces[0].mul_(2)                                     # changed in place: rebuilt
    w.diag.mul_(2)
    y, _ = st.apply_weights_dot(u, w, out=out)
    torch.testing.assert_close(y, st.apply_weights(u, w))


_SAME_SOLVE_TWICE = """
import torch
torch.set_num_threads(1)
from krylon.operators import Laplacian
from krylon.solvers import CG

A = Laplacian((96, 96), bc="dirichlet", dtype=torch.float64)
b = torch.rand(2, 96, 96, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
x1 = CG(rtol=1e-8).solve(A, b).x                      # the first solve of a cold process
big = Laplacian((1024, 1024), dtype=torch.float64)    # ~3 * 10^8 field values of other work
CG(rtol=0.0, maxiter=100).solve(big, torch.rand(1024, 1024, dtype=torch.float64))
x2 = CG(rtol=1e-8).solve(A, b).x
assert torch.equal(x1, x2), float((x1 - x2).abs().max())
"""


def test_same_solve_is_bitwise_identical_cold_and_after_other_work(numba_on):
    # the kernel is chosen from the call, not from the work the process has done before
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KRYLON_NUMBA"}
    proc = subprocess.run([sys.executable, "-c", _SAME_SOLVE_TWICE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_chosen_realisation_is_a_function_of_the_call(monkeypatch, one_thread, numba_on):
    A = Laplacian((64, 64), bc="dirichlet", dtype=torch.float64)
    w = A.stencil()
    u = torch.rand(2, 64, 64, dtype=torch.float64)
    out = torch.empty_like(u)
    small = torch.rand(8, 8, dtype=torch.float64)

    def calls():
        return (st.realisation(u, w, out), st.realisation(u, w, None), st.realisation(small, w, small.clone()),
                st.realisation(u.float(), w, out.float()), st.realisation(u, w, out, dot=False))

    expected = ("numba", "eager", "eager", "numba", "eager")
    assert calls() == expected
    CG(rtol=1e-8).solve(Laplacian((256, 256), dtype=torch.float64), torch.rand(256, 256, dtype=torch.float64))
    assert calls() == expected                      # unchanged by the work done in between
    with fused_cpu.disabled():
        assert st.realisation(u, w, out) == "eager"
    monkeypatch.setenv("KRYLON_NUMBA", "0")
    assert st.realisation(u, w, out) == "eager"
    monkeypatch.setenv("KRYLON_NUMBA", "1")
    assert calls() == expected


def test_warm_loads_the_kernels(monkeypatch, one_thread, numba_on):
    assert fused_cpu.warm((torch.float32, torch.float64)) > 0
    seen = _calls(monkeypatch)
    A = Laplacian((64, 64), bc="dirichlet", dtype=torch.float64)
    res = CG(rtol=1e-8).solve(A, torch.rand(64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert bool(res.converged) and seen["stencil_dot"] >= int(res.iterations)
    with fused_cpu.disabled():
        assert fused_cpu.warm() == 0.0

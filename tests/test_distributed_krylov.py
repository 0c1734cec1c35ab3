"""Domain-decomposed Krylov solves on 2 gloo CPU processes against single-process solves and scipy.

The ranks come from the launcher of ``test_distributed_training`` (forked from the test process, joined through
the environment torchrun sets, a deadline on every launch): one launch computes everything the comparisons
need (:func:`_main_work` writes each rank's results to a file), two more check that a rank that raises or stalls
makes the other fail with a clear error instead of hanging.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from test_distributed_training import _ok as ok
from test_distributed_training import launch

from krylon.kernels import distributed as dd
from krylon.operators import DistributedLaplacian, Laplacian

WORLD = 2
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_poisson.py"
LIMIT = 120.0  # seconds for one launch (the machine is shared: generous)

#: (name, global shape, bc, counts): halo exchange vs the global stencil
HALO_CASES = [
    ("2d-even", (8, 6), "dirichlet", None),
    ("2d-uneven", (7, 6), "dirichlet", (4, 3)),
    ("2d-single-plane", (7, 6), "dirichlet", (1, 6)),
    ("2d-mixed", (7, 6), [("neumann", "dirichlet"), "periodic"], (6, 1)),
    ("3d-periodic-cut", (5, 4, 3), "periodic", (2, 3)),
    ("2d-periodic-both-neighbours-one-rank", (2, 5), "periodic", (1, 1)),
    ("3d-neumann", (6, 5, 4), ("neumann", "dirichlet", "neumann"), None),
    ("3d-fused", (24, 18, 16), "dirichlet", (13, 11)),  # >= 4096 values per slab: the fused CPU kernels
]

#: (name, global shape, bc, counts, batch): solves compared with the single-process ones
SOLVE_CASES = [
    ("3d-fused", (34, 16, 16), "dirichlet", (18, 16), ()),  # >= 4096 values per slab: the fused CPU kernels
    ("3d-single-plane", (9, 10, 8), [("dirichlet", "neumann"), "neumann", "dirichlet"], (1, 8), ()),
    ("2d-batch", (7, 9), "dirichlet", None, (2,)),
]
SOLVERS = ("cg", "pcg-jacobi", "minres")
#: (name, global shape, counts): grids smaller than GMRES's restart (20), whose cap must be the global size on
#: every rank (a slab-sized cap gave the ranks different cycle lengths: a deadlock, or other iterates)
SMALL_CASES = [("5x3-slabs-3-2", (5, 3), (3, 2)), ("4x4-slabs-2-2", (4, 4), (2, 2))]
SMALL_SOLVERS = ("gmres", "cgls")
RTOL = 1e-10


def _solver(name):
    from krylon.solvers import CG, CGLS, GMRES, MINRES
    from krylon.solvers.preconditioners import Jacobi

    return {"cg": lambda: CG(rtol=RTOL), "pcg-jacobi": lambda: CG(rtol=RTOL, M=Jacobi()),
            "minres": lambda: MINRES(rtol=RTOL), "gmres": lambda: GMRES(rtol=RTOL, restart=20),
            "cgls": lambda: CGLS(rtol=RTOL)}[name]()


def _field(shape, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(batch) + tuple(shape), dtype=torch.float64, generator=g)


# ----------------------------------------------------------------------------- the work of each rank
def _main_work(me: int, out: str) -> None:
    out = Path(out)
    res = {"halo": {}, "solve": {}}
    for name, shape, bc, counts in HALO_CASES:
        A = DistributedLaplacian(shape, bc=bc, counts=counts)
        x = _field(shape, (2,), seed=1)
        xl = A.slabs.local(x)
        y = A.matvec(xl)
        y2, part = A.matvec_dot(xl, out=torch.empty_like(xl))
        res["halo"][name] = {"y": A.slabs.gather(y), "y2": A.slabs.gather(y2), "dot": A.reduce(part),
                             "diag": A.slabs.gather(A.diagonal()), "planes": list(A.slabs.planes()),
                             "scattered": A.slabs.scatter(x if me == 0 else None, batch=(2,)).equal(xl)}
    for name, shape, bc, counts, batch in SOLVE_CASES:
        A = DistributedLaplacian(shape, bc=bc, counts=counts)
        b = A.slabs.local(_field(shape, batch, seed=2))
        for s in SOLVERS:
            r = _solver(s).solve(A, b)
            res["solve"][f"{name}/{s}"] = {"x": A.slabs.gather(r.x), "iterations": r.iterations,
                                           "history": r.residual_norms, "converged": r.converged}
    for name, shape, counts in SMALL_CASES:
        A = DistributedLaplacian(shape, counts=counts)
        b = A.slabs.local(_field(shape, seed=3))
        for s in SMALL_SOLVERS:
            r = _solver(s).solve(A, b)
            res["solve"][f"{name}/{s}"] = {"x": A.slabs.gather(r.x), "iterations": r.iterations,
                                           "converged": r.converged}
    torch.save(res, out / f"rank{me}.pt")
    # the example, on the same two ranks (it leaves the process group, so it comes last)
    (out / f"example{me}.json").write_text(json.dumps(_example().main(["--grid", "12"])))


def _example():
    spec = importlib.util.spec_from_file_location("distributed_poisson", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def _bad_input_work(me: int) -> dict:
    """Bad input on rank 1 only: a NaN in its slab of ``b``, then a zero in its slab of Jacobi's diagonal."""
    A = DistributedLaplacian((16, 8))
    b = A.slabs.local(_field((16, 8)))
    if me == 1:
        b[0, 0] = float("nan")
        A.diagonal = lambda: torch.zeros(A.shape_in, dtype=A.dtype)
    out = {}
    for case, run in (("nan-b", lambda: _solver("cg").solve(A, b)),
                      ("jacobi", lambda: _solver("pcg-jacobi").solve(A, b.nan_to_num()))):
        t0 = time.monotonic()
        try:
            run()
            out[case] = {"error": None}
        except Exception as exc:  # noqa: BLE001 -- the test checks the type and message
            out[case] = {"error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - t0}
    return out


def _failing_work(me: int, case: str, stall: float):
    A = DistributedLaplacian((64, 64))
    b = A.slabs.local(_field((64, 64)))
    if me == 1:
        if case == "stall":  # alive but absent for longer than the group's timeout, then gone
            time.sleep(stall)
            return None

        def boom(state):
            if state.iteration == 3:
                raise ValueError("rank 1 fails on purpose")
        _solver("cg").solve(A, b, callback=boom)
    t0 = time.monotonic()
    try:
        _solver("cg").solve(A, b)
    except RuntimeError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - t0}
    return {"error": None}


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    ok(launch(_main_work, str(out), deadline=LIMIT, timeout=60.0))
    runs = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in range(WORLD):
        runs[r]["example"] = json.loads((out / f"example{r}.json").read_text())
    return runs


# ----------------------------------------------------------------------------- the comparisons
@pytest.mark.parametrize("name,shape,bc,counts", [pytest.param(*c, id=c[0]) for c in HALO_CASES])
def test_halo_exchange_matches_the_assembled_global_stencil(main_run, name, shape, bc, counts):
    got = main_run[0]["halo"][name]
    L = Laplacian(shape, bc=bc)
    x = _field(shape, (2,), seed=1)
    # the independent reference: scipy's product with the matrix assembled from the global stencil
    S = L.to_scipy()
    want = torch.from_numpy(S @ x.reshape(2, -1).numpy().T).T.reshape(x.shape)
    assert torch.allclose(got["y"], want, rtol=1e-13, atol=1e-12)
    assert torch.allclose(got["y2"], want, rtol=1e-13, atol=1e-12)
    quad = (x * want).sum(dim=tuple(range(1, x.dim())))
    for rank_result in main_run:  # every rank holds the same reduced quadratic form
        assert torch.allclose(rank_result["halo"][name]["dot"], quad, rtol=1e-12)
    assert torch.equal(got["diag"], torch.from_numpy(S.diagonal()).reshape(shape))
    planes = main_run[0]["halo"][name]["planes"] + main_run[1]["halo"][name]["planes"]
    assert planes == list(range(shape[0]))  # the slabs cover the first axis once, in order
    assert all(rr["halo"][name]["scattered"] for rr in main_run)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name,shape,bc,counts,batch", [pytest.param(*c, id=c[0]) for c in SOLVE_CASES])
def test_distributed_solve_matches_the_single_process_solve(main_run, name, shape, bc, counts, batch, solver):
    got = main_run[0]["solve"][f"{name}/{solver}"]
    b = _field(shape, batch, seed=2)
    ref = _solver(solver).solve(Laplacian(shape, bc=bc), b)
    assert bool(got["converged"].all()) and bool(ref.converged.all())
    assert torch.equal(got["iterations"], ref.iterations)
    assert torch.equal(main_run[1]["solve"][f"{name}/{solver}"]["iterations"], ref.iterations)
    assert got["history"].shape == ref.residual_norms.shape
    # equal to rounding: the histories differ by rounding of the summation order (amplified by the recurrences),
    # far below the tolerance the solve was asked for
    assert float(((got["history"] - ref.residual_norms).abs() / ref.residual_norms[0]).max()) <= 1e-14
    scale = ref.x.abs().max()
    assert float((got["x"] - ref.x).abs().max()) <= 1e-8 * float(scale)
    # and the solution solves the global system (scipy's assembled matrix as the judge)
    S = Laplacian(shape, bc=bc).to_scipy()
    xs = got["x"].reshape(-1, S.shape[0]).numpy()
    bs = b.reshape(-1, S.shape[0]).numpy()
    rel = ((S @ xs.T).T - bs)
    assert float((rel ** 2).sum() ** 0.5) <= 2e-10 * float((bs ** 2).sum() ** 0.5) * max(1, len(xs))


@pytest.mark.parametrize("solver", SMALL_SOLVERS)
@pytest.mark.parametrize("name,shape,counts", [pytest.param(*c, id=c[0]) for c in SMALL_CASES])
def test_gmres_and_cgls_on_grids_smaller_than_the_restart(main_run, name, shape, counts, solver):
    ref = _solver(solver).solve(Laplacian(shape), _field(shape, seed=3))
    assert bool(ref.converged.all())
    for rank_result in main_run:  # the same cycles on every rank: the single process's iterations
        got = rank_result["solve"][f"{name}/{solver}"]
        assert bool(got["converged"].all()) and torch.equal(got["iterations"], ref.iterations)
    # the independent judge: scipy's dense solve of the assembled global matrix
    import numpy as np

    S = Laplacian(shape).to_scipy().toarray()
    want = torch.from_numpy(np.linalg.solve(S, _field(shape, seed=3).reshape(-1).numpy())).reshape(shape)
    x = main_run[0]["solve"][f"{name}/{solver}"]["x"]
    # the single-process solve to rounding (CGLS's normal equations square the conditioning: amplified rounding,
    # still far below the 1e-10 the solve was asked for)
    assert float((x - ref.x).abs().max()) <= (1e-13 if solver == "gmres" else 1e-10) * float(want.abs().max())
    assert float((x - want).abs().max()) <= 1e-8 * float(want.abs().max())


def test_a_rank_that_raises_makes_the_other_exit_with_a_clear_error():
    results = launch(_failing_work, "raise", 0.0, deadline=LIMIT, timeout=30.0)
    assert results[1][0] == "error" and "rank 1 fails on purpose" in results[1][1]
    status, record = results[0]
    assert status == "ok" and "rank 0 of 2" in record["error"] and "another rank" in record["error"]
    assert record["seconds"] < 10.0  # the peer's closed connection fails the pending operation at once


def test_bad_input_on_one_rank_stops_every_rank_at_once():
    timeout = 20.0
    results = launch(_bad_input_work, deadline=LIMIT, timeout=timeout)
    (s0, r0), (s1, r1) = results[0], results[1]
    assert s0 == "ok" and s1 == "ok", results
    assert r1["nan-b"]["error"].startswith("ValueError: b contains 1 non-finite")
    assert r1["jacobi"]["error"].startswith("ValueError: Jacobi: the operator's diagonal has")
    for case in ("nan-b", "jacobi"):  # the healthy rank raises too, at once: not after the group's timeout
        assert r0[case]["error"].startswith("ValueError: rank 0 of 2") and "rank(s) [1]" in r0[case]["error"]
        assert r0[case]["seconds"] < timeout / 2


def test_a_rank_that_stalls_makes_the_other_fail_after_the_timeout():
    pg_timeout, stall = 2.0, 8.0
    results = launch(_failing_work, "stall", stall, deadline=LIMIT, timeout=pg_timeout)
    status, record = results[0]
    assert status == "ok" and "rank 0 of 2" in record["error"] and "within the timeout" in record["error"]
    assert record["seconds"] < stall - 2.0  # failed by the timeout, not by the peer leaving


def test_the_example_solves_the_poisson_problem_on_two_ranks_and_on_one(main_run, capsys):
    for r in range(WORLD):  # the discrete solution is the exact one (quadratic profiles): the error is the solve's
        ex = main_run[r]["example"]
        assert ex["converged"] and ex["rms_error"] < 1e-9
    one = _example().main(["--grid", "12"])
    assert one["converged"] and one["rms_error"] < 1e-9
    assert one["iterations"] == main_run[0]["example"]["iterations"]
    assert "global grid 12^3" in capsys.readouterr().out


# ----------------------------------------------------------------------------- in one process
def test_one_process_is_the_global_laplacian_and_the_helpers_default_to_rank_0_of_1():
    assert not dd.is_distributed() and dd.rank() == 0 and dd.world_size() == 1
    A = DistributedLaplacian((6, 5), bc="neumann")
    assert A.reduce is None and A.shape_in == (6, 5)
    x = _field((6, 5), (3,))
    assert torch.equal(A @ x, Laplacian((6, 5), bc="neumann") @ x)
    v = A.project_range(x)
    assert torch.allclose(v.sum(dim=(-2, -1)), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_slab_decomposition_and_its_bad_input():
    s = dd.Slabs((10, 4), parts=3)
    assert s.counts == (4, 3, 3) and [list(s.planes(r)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert dd.Slabs((7, 3), parts=2).counts == (4, 3)
    with pytest.raises(ValueError, match="at least one plane"):
        dd.Slabs((2, 4), parts=3)
    with pytest.raises(ValueError, match="sum to the 7 planes"):
        dd.Slabs((7, 4), counts=(3, 3), parts=2)
    with pytest.raises(ValueError, match="name 3 slabs"):
        dd.Slabs((7, 4), counts=(3, 3, 1), parts=2)
    assert dd.init_from_env() is False or dd.is_distributed()  # no torchrun environment: a single process


def test_docstring_examples_run():
    import doctest

    from krylon.operators import distributed as op_module

    for module in (dd, op_module):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0


def test_the_bench_suite_is_registered_by_name_and_summarises_its_rows():
    from krylon.bench import EXTRA_SUITES, SUITES, load

    assert "distributed" in EXTRA_SUITES and "distributed" not in SUITES  # not part of `krylon bench all`
    suite = load("distributed")
    assert {"quick", "default", "paper"} <= set(suite.SIZES)
    rows = suite.summary({"rows": [{"ranks": 2, "grid": "32x8x8", "ms_per_iter": 2.0, "single_ms_per_iter": 3.0,
                                    "oversubscribed": False}]})
    assert rows[0]["ratio"] == 1.5 and rows[0]["family"] == "distributed"

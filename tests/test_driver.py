"""The iteration driver and the option tables every solver shares.

References: ``numpy.linalg`` solves / ``lstsq`` on the assembled matrix for the answers; host
synchronisations are counted by wrapping ``torch.Tensor.__bool__`` (and ``item``/``__float__``/``__int__``),
the ways a device value reaches the host.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from krylon.operators import Laplacian, aslinearoperator
from krylon.operators.learned.dcdm import DCDMNet
from krylon.solvers import CG, CGLS, DCDM, GMRES, MINRES, IterativeSolver

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ============================================================================= options
BAD_OPTIONS = [
    pytest.param(DCDM, "coarse", "bogus", ValueError, id="dcdm-coarse-str"),
    pytest.param(DCDM, "coarse", -2, ValueError, id="dcdm-coarse-negative"),
    pytest.param(DCDM, "k", 1.5, TypeError, id="dcdm-k-float"),
    pytest.param(DCDM, "variant", "augmented", ValueError, id="dcdm-variant-unknown"),
    pytest.param(DCDM, "augment", "yes", TypeError, id="dcdm-augment-str"),
    pytest.param(DCDM, "stall_window", 0, ValueError, id="dcdm-stall-window-0"),
    pytest.param(MINRES, "shift", "x", TypeError, id="minres-shift-str"),
    pytest.param(MINRES, "shift", float("nan"), ValueError, id="minres-shift-nan"),
    pytest.param(CG, "flexible", "no", TypeError, id="cg-flexible-str"),
    pytest.param(CG, "strict", None, TypeError, id="cg-strict-none"),
    pytest.param(CG, "M", "jacobi", TypeError, id="cg-M-str"),
    pytest.param(GMRES, "restart", "20", ValueError, id="gmres-restart-str"),
    pytest.param(CGLS, "damp", "0.1", TypeError, id="cgls-damp-str"),
    pytest.param(CG, "sync_every", 0, ValueError, id="cg-sync-every-0"),
    pytest.param(MINRES, "progress", "yes", TypeError, id="minres-progress-str"),
    pytest.param(CGLS, "differentiable", 1, TypeError, id="cgls-differentiable-int"),
]


def _make(S, **kw):
    return S(DCDMNet(dim=2).double(), **kw) if S is DCDM else S(**kw)


@pytest.mark.parametrize("S, name, value, exc", BAD_OPTIONS)
def test_a_bad_option_is_refused_up_front_in_the_constructor_and_in_solve(S, name, value, exc):
    """The same checker runs for ``S(name=value)`` and ``S().solve(..., name=value)``, before any iteration."""
    A = Laplacian((8, 8))
    b = torch.ones(8, 8, dtype=F64)
    with pytest.raises(exc, match=name):
        _make(S, **{name: value})
    solver = _make(S)
    before = dict(solver.options)
    calls = []
    with pytest.raises(exc, match=name):
        solver.solve(A, b, callback=calls.append, **{name: value})
    assert calls == []
    assert solver.options == before  # a refused override leaves the solver as it was


@pytest.mark.parametrize("S", [pytest.param(CG, id="cg"), pytest.param(MINRES, id="minres"),
                               pytest.param(GMRES, id="gmres"), pytest.param(CGLS, id="cgls"),
                               pytest.param(DCDM, id="dcdm")])
def test_unknown_options_list_the_known_ones(S):
    with pytest.raises(TypeError, match="unknown option.*tol.*known:.*rtol"):
        _make(S, tol=1e-3)
    with pytest.raises(TypeError, match="unknown option.*tol.*known:.*rtol"):
        _make(S).solve(Laplacian((4, 4)), torch.ones(4, 4, dtype=F64), tol=1e-3)


def test_option_tables_extend_the_base_table():
    base = set(IterativeSolver.OPTIONS)
    assert set(CG.OPTIONS) == base | {"strict", "flexible"}
    assert set(MINRES.OPTIONS) == base | {"shift"}
    assert set(GMRES.OPTIONS) == base | {"restart"}
    assert set(CGLS.OPTIONS) == base | {"damp"}
    assert base < set(DCDM.OPTIONS)
    # CGLS and DCDM have no preconditioner: M is refused up front (DCDM once ignored it), in solve() too
    for S in (CGLS, DCDM):
        with pytest.raises(ValueError, match="M=.*preconditioner"):
            _make(S, M=lambda r: r)
        with pytest.raises(ValueError, match="M=.*preconditioner"):
            _make(S).solve(Laplacian((4, 4)), torch.ones(4, 4, dtype=F64), M=lambda r: r)
    # options are read-only: a change goes through solve(**overrides) or a new solver, which check it
    with pytest.raises(TypeError):
        CG().options["rtol"] = 1.0
    # canonical values: a numpy float and a one-element tensor become Python floats
    s = MINRES(rtol=np.float32(1e-3), shift=torch.tensor(0.5, dtype=F64))
    assert type(s.options["rtol"]) is float and type(s.options["shift"]) is float and s.options["shift"] == 0.5
    assert DCDM(DCDMNet(dim=2)).options["maxiter"] == 100


# ============================================================================= host-sync cadence
class _SyncCounter:
    """Counts the ways a tensor's value reaches the host while active."""

    NAMES = ("__bool__", "item", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.n = 0
        self.on = False
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=orig, **k):
                if self.on:
                    self.n += 1
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)

    def count(self, fn):
        self.n, self.on = 0, True
        try:
            out = fn()
        finally:
            self.on = False
        return out, self.n


def _spd_batch():
    A = Laplacian((12, 12))
    b = torch.rand(3, 12, 12, dtype=F64, generator=_gen(1))
    return A, b


@pytest.mark.parametrize("S", [pytest.param(CG, id="cg"), pytest.param(MINRES, id="minres"),
                               pytest.param(lambda **k: GMRES(restart=10, **k), id="gmres"),
                               pytest.param(CGLS, id="cgls")])
def test_host_syncs_follow_sync_every(S, monkeypatch):
    """With sync_every=5 the host looks at the device about once per 5 iterations (was every iteration for
    CGLS); the answer is the same as with sync_every=1 and as numpy's solve."""
    A, b = _spd_batch()
    counter = _SyncCounter(monkeypatch)
    every, n_every = counter.count(lambda: S(rtol=1e-10, sync_every=1).solve(A, b))
    fifth, n_fifth = counter.count(lambda: S(rtol=1e-10, sync_every=5).solve(A, b))
    its = int(fifth.iterations.max())
    assert its > 20
    assert n_every >= int(every.iterations.max())
    # at a sync point: the loop check, the convergence check, (CG) the broken-system check; a few per solve
    assert n_fifth <= 3 * (its // 5 + 1) + 8, (n_fifth, its)
    assert bool(every.converged.all()) and bool(fifth.converged.all())
    mat = A.to_scipy().toarray()
    ref = np.linalg.solve(mat, b.reshape(3, -1).numpy().T).T.reshape(b.shape)
    np.testing.assert_allclose(fifth.x.numpy(), ref, atol=1e-8 * np.abs(ref).max() * np.linalg.cond(mat))
    torch.testing.assert_close(fifth.x, every.x, rtol=0, atol=1e-8 * float(every.x.abs().max()))


def test_cgls_checks_convergence_only_at_sync_points():
    """CGLS verifies candidates on the true normal-equation residual (2 applications each) only every
    sync_every iterations: the iteration counts are multiples of 5 and every extra application is a check."""
    g = _gen(2)
    R = torch.randn(30, 8, dtype=F64, generator=g)
    b = torch.randn(2, 30, dtype=F64, generator=g)
    res = CGLS(rtol=1e-12, sync_every=5).solve(aslinearoperator(R), b)
    assert bool(res.converged.all())
    assert all(int(k) % 5 == 0 for k in res.iterations)
    k = int(res.iterations.max())
    checks = (res.n_matvec - 1 - 2 * k) // 2  # 1 for A^H b at the start, 2 per iteration
    assert 1 <= checks <= k // 5
    torch.testing.assert_close(res.x, torch.linalg.lstsq(R, b.T).solution.T, rtol=0, atol=1e-9)
    assert res.extras["data_residual_norms"].shape == res.residual_norms.shape


def test_every_method_records_one_history_row_and_one_callback_per_iteration():
    A, b = _spd_batch()
    for S in (CG, MINRES, GMRES, CGLS):
        calls = []
        res = S(rtol=1e-8, callback=lambda s: calls.append((s.iteration, s.residual_norms.clone()))).solve(A, b)
        assert [c[0] for c in calls] == list(range(1, int(res.iterations.max()) + 1))
        assert res.residual_norms.shape == (len(calls) + 1, 3)
        for it, rn in calls:
            torch.testing.assert_close(res.residual_norms[it], rn, rtol=0, atol=0)


# ============================================================================= fields split across processes
@pytest.fixture
def reduced(monkeypatch):
    """Operators whose ``reduce`` is set (as on fields split across ranks), summing over one process."""
    from krylon.operators.base import LinearOperator

    monkeypatch.setattr(LinearOperator, "reduce", property(lambda self: lambda t: t.clone()))


def test_reduced_norms_are_squared_without_overflow():
    import types

    from krylon.solvers.driver import Driver

    # a float16 norm of 600 is finite, its square (360000 > 65504) is not: the partial sums are squared wide
    x = torch.full((2, 4), 300.0, dtype=torch.float16)
    two_ranks = types.SimpleNamespace(reduce=lambda t: 2 * t, nd_in=1)  # both ranks hold the same slab
    got = Driver.norm(two_ranks, x)
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), [600 * 2 ** 0.5] * 2, rtol=1e-3)  # sqrt(2 * 600^2)


def test_with_reduce_the_progress_bar_is_rank_zeros(reduced, monkeypatch, capsys):
    from krylon.kernels import distributed

    A = aslinearoperator(torch.diag(torch.tensor([1.0, 3.0], dtype=F64)))
    for rank, shown in ((1, False), (0, True)):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        CG(progress=True).solve(A, torch.ones(2, dtype=F64))
        assert ("CG" in capsys.readouterr().err) == shown

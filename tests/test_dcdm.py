"""DCDM: network shapes, loss scale invariance, A-orthogonality, convergence, checkpoints, data, bad input."""

import json

import numpy as np
import pytest
import torch

from krylon.datasets import dcdm as dcdm_data
from krylon.datasets import open_dataset
from krylon.kernels import stencil as st
from krylon.operators import Diffusion, Laplacian, aslinearoperator
from krylon.operators.learned.dcdm import DCDMNet
from krylon.solvers.dcdm import DCDM, VARIANTS, batch_weights, dcdm_loss, network_inputs


class InverseNet(torch.nn.Module):
    """A 'perfect' direction network for one operator: q = A^{-1} r (dense solve), to test the iteration."""

    def __init__(self, A, in_channels=3):
        super().__init__()
        self.A = torch.linalg.inv(torch.from_numpy(A.to_scipy().toarray()))
        self.config = {"dim": A.ndim, "in_channels": in_channels}
        self.dummy = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        r = x[:, 0]
        return (r.reshape(r.shape[0], -1) @ self.A.T).reshape(r.shape).unsqueeze(1)


@pytest.mark.parametrize("dim, shape", [(2, (17, 12)), (3, (6, 7, 5))])
def test_network_shapes_and_odd_grids(dim, shape):
    net = DCDMNet(dim=dim)
    y = net(torch.randn((2, 3) + shape))
    assert y.shape == (2, 1) + shape
    with pytest.raises(ValueError, match="expects input"):
        net(torch.randn((2, 3) + shape[:-1]))


def _batch(shape=(12, 12), n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask, bc = dcdm_data.scene(shape, seed, 0, max_obstacles=3)
    fluid = ~mask
    b = torch.randn((n,) + shape, generator=g) * fluid
    b = b / b.reshape(n, -1).norm(dim=1).reshape(n, 1, 1)
    marker = dcdm_data.dirichlet_marker(shape, bc).bool() & fluid
    sides = torch.tensor([s == "dirichlet" for pair in st.parse_bc(bc, 2) for s in pair])
    return {"b": b, "fluid": fluid.expand(n, *shape), "dirichlet": marker.expand(n, *shape),
            "bc_dirichlet": sides.expand(n, 4)}, bc, mask


def test_loss_is_scale_invariant_and_zero_for_exact_inverse():
    torch.manual_seed(0)
    net = DCDMNet(dim=2)
    batch, bc, mask = _batch()

    class Scaled(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c, self.inner, self.config = c, net, net.config

        def forward(self, x):
            return self.c * self.inner(x)

    l1 = dcdm_loss(net, batch)
    for c in (1e-3, 7.0, -2.0):
        torch.testing.assert_close(dcdm_loss(Scaled(c), batch), l1, rtol=1e-4, atol=1e-7)
    A = Laplacian((12, 12), bc=bc, obstacles=mask)
    exact = InverseNet(A)
    batch64 = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    assert float(dcdm_loss(exact, batch64)) < 1e-20


def test_batch_weights_reproduce_the_operator():
    batch, bc, mask = _batch(n=2)
    W = batch_weights(batch["fluid"], batch["bc_dirichlet"], dtype=torch.float64)
    A = Laplacian((12, 12), bc=bc, obstacles=mask)
    u = torch.randn(2, 12, 12, dtype=torch.float64) * (~mask)
    torch.testing.assert_close(st.apply_weights(u, W) * (~mask), (A @ u) * (~mask))


def test_directions_are_a_orthogonal_and_perfect_network_converges_in_one_step():
    A = Laplacian((10, 9), obstacles=torch.zeros(10, 9, dtype=torch.bool))
    b = torch.rand(10, 9, dtype=torch.float64)
    res = DCDM(InverseNet(A), variant="paper", rtol=1e-10).solve(A, b)
    assert bool(res.converged) and int(res.iterations) == 1
    # an imperfect network: record directions and check A-orthogonality to the previous k=2
    torch.manual_seed(1)
    net = DCDMNet(dim=2).double()
    solver = DCDM(net, variant="paper", k=2, rtol=1e-6, maxiter=6)
    orig = solver.direction

    def spy(A_, r):
        q = orig(A_, r)
        return q

    solver.direction = spy
    xs = []
    solver.solve(A, b, callback=lambda s: xs.append(s.x.clone()))
    steps = [xs[0]] + [xs[i] - xs[i - 1] for i in range(1, len(xs))]
    M = torch.from_numpy(A.to_scipy().toarray())
    for i in range(2, len(steps)):
        for j in (i - 1, i - 2):
            pi, pj = steps[i].reshape(-1), steps[j].reshape(-1)
            if pi.norm() > 0 and pj.norm() > 0:
                assert abs(float(pi @ M @ pj)) <= 1e-8 * float((pi @ M @ pi).sqrt() * (pj @ M @ pj).sqrt())


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    torch.manual_seed(2)
    s = DCDM(DCDMNet(dim=2))
    s.save(tmp_path / "m.pt")
    t = DCDM.load(tmp_path / "m.pt")
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(s.model(x), t.model(x))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        DCDM.load(tmp_path / "bad.pt")
    torch.save({"state_dict": DCDMNet(dim=2, width=8).state_dict(), "config": json.dumps({"dim": 2})}, tmp_path / "mis.pt")
    with pytest.raises(ValueError, match="do not match"):
        DCDM.load(tmp_path / "mis.pt")
    with pytest.raises(FileNotFoundError):
        DCDM.load(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="available"):
        DCDM.pretrained("poisson4d")


def test_bad_operators():
    s = DCDM(DCDMNet(dim=2))
    with pytest.raises(ValueError, match="2-D"):
        s.solve(Laplacian((6, 6, 6)), torch.rand(6, 6, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="stencil"):
        s.solve(aslinearoperator(torch.eye(4, dtype=torch.float64), tags=("symmetric",)), torch.ones(4, dtype=torch.float64))


def test_data_generation_resumes_identically(tmp_path, monkeypatch):
    kw = dict(shape=(10, 10), n_geometries=2, rhs_per_geometry=3, lanczos=30, seed=4, white_fraction=0.34)
    full = dcdm_data.generate(tmp_path / "a.h5", **kw)
    ref = open_dataset(full)
    # interrupted run: the 5th write raises (mid-geometry), then the same call resumes
    from krylon.datasets import DatasetWriter

    real_write, calls = DatasetWriter.write, []

    def crashing_write(self, i, sample):
        calls.append(i)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_write(self, i, sample)

    path = tmp_path / "b.h5"
    monkeypatch.setattr(DatasetWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        dcdm_data.generate(path, **kw)
    assert not path.exists() and calls == [0, 1, 2, 3, 4]
    calls.clear()
    dcdm_data.generate(path, **kw)
    assert calls == [4, 5]  # finished samples are not generated again
    got = open_dataset(path)
    for i in range(6):
        for k in ("b", "fluid", "dirichlet", "bc_dirichlet"):
            assert torch.equal(got[i][k], ref[i][k])
    norms = ref[0:6]["b"].reshape(6, -1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(6))
    assert not bool((ref[0]["b"] * ~ref[0]["fluid"]).any())


def test_lanczos_ritz_values_match_eigenvalues():
    A = Laplacian((8, 7), spacing=(1.0, 1.37))  # anisotropic: no repeated eigenvalues for Lanczos to miss
    M = A.to_scipy().toarray()
    vals, vecs = dcdm_data.lanczos_ritz(lambda u: A @ u, (8, 7), 56, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.sort(vals.numpy()), np.linalg.eigvalsh(M), rtol=1e-8)
    V = vecs.reshape(len(vals), -1)
    torch.testing.assert_close(V @ V.T, torch.eye(len(vals), dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.slow
def test_tiny_training_reduces_loss_and_helps_the_iteration(tmp_path):
    from krylon.solvers.training import TrainConfig, train

    path = dcdm_data.generate(tmp_path / "d.h5", shape=(16, 16), n_geometries=6, rhs_per_geometry=8, lanczos=60, seed=0)
    ds = open_dataset(path)
    torch.manual_seed(0)
    net = DCDMNet(dim=2, width=8, blocks=(1, 1, 1))
    hist = train(net, dcdm_loss, ds, tmp_path / "run", TrainConfig(epochs=3, batch_size=8, lr=3e-3), progress=False,
                 log=lambda s: None, name="t")
    assert hist["train"][-1] < hist["train"][0]
    # resume: a second call continues from the checkpoint (finished: the same history); other epochs are refused
    hist2 = train(net, dcdm_loss, ds, tmp_path / "run", TrainConfig(epochs=3, batch_size=8, lr=3e-3), progress=False,
                  log=lambda s: None, name="t")
    assert hist2["train"] == hist["train"]
    with pytest.raises(ValueError, match="epochs 3 -> 4"):
        train(net, dcdm_loss, ds, tmp_path / "run", TrainConfig(epochs=4, batch_size=8, lr=3e-3), progress=False,
              log=lambda s: None, name="t")
    assert (tmp_path / "run" / "losses.png").exists()


# ----------------------------------------------------------------------------- network options
@pytest.mark.parametrize("dim, shape", [(2, (37, 20)), (3, (10, 9, 12))])
@pytest.mark.parametrize("levels", [1, 3, "auto"])
def test_odd_network_is_exactly_odd_in_the_residual(dim, shape, levels):
    torch.manual_seed(0)
    net = DCDMNet(dim=dim, levels=levels, odd=True, coarsest=4).double()
    x = torch.randn((2, 3) + shape, dtype=torch.float64)
    neg = torch.cat([-x[:, :1], x[:, 1:]], dim=1)
    y = net(x)
    assert y.shape == (2, 1) + shape
    torch.testing.assert_close(net(neg), -y, rtol=0, atol=1e-12)
    zero = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], dim=1)
    assert float(net(zero).detach().abs().max()) == 0.0  # no r-independent output: the stall's cause is gone


def test_auto_levels_follow_the_grid_and_share_weights():
    net = DCDMNet(dim=2, levels="auto", coarsest=8)
    assert [net.n_levels((n, n)) for n in (8, 16, 64, 1024)] == [1, 1, 3, 7]
    assert net.n_levels((64, 1024)) == 3  # the smallest axis decides
    # one set of coarse-level weights whatever the depth: the parameter count does not depend on the grid
    n1 = net.n_parameters
    net(torch.randn(1, 3, 128, 128))
    assert net.n_parameters == n1
    assert DCDMNet(dim=2, levels=3).n_parameters > DCDMNet(dim=2, levels=1).n_parameters
    with pytest.raises(ValueError, match="levels"):
        DCDMNet(dim=2, levels=0)
    with pytest.raises(ValueError, match="input channels"):
        DCDMNet(dim=2, in_channels=3)(torch.randn(1, 2, 8, 8))


class _Recorder(torch.nn.Module):
    """Identity on the residual channel; records what the network was fed."""

    def __init__(self, dim=2):
        super().__init__()
        self.config = {"dim": dim, "in_channels": 3}
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x[:, :1] * self.w


def test_network_input_is_unit_rms_over_the_fluid_on_any_grid():
    for n in (16, 64):
        mask = torch.zeros(n, n, dtype=torch.bool)
        mask[: n // 4, : n // 4] = True
        A = Laplacian((n, n), obstacles=mask)
        rec = _Recorder()
        s = DCDM(rec)
        r = 123.0 * torch.randn(2, n, n, dtype=torch.float64) * (~mask)
        s.direction(A, r)
        x = rec.seen[-1][:, 0]
        rms = (x.pow(2).sum(dim=(1, 2)) / (~mask).sum()).sqrt()
        torch.testing.assert_close(rms, torch.ones(2, dtype=torch.float64))


def test_identity_network_reproduces_cg():
    # q = r A-orthogonalised against the previous direction is exactly CG's direction
    from krylon.solvers import CG

    mask, bc = dcdm_data.scene((24, 24), 3, 1, max_obstacles=3)
    A = Laplacian((24, 24), bc=bc, obstacles=mask)
    b = torch.randn(24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (~mask)
    ref = CG(rtol=1e-8).solve(A, b)
    res = DCDM(_Recorder(), variant="paper", k=1, rtol=1e-8, maxiter=1000).solve(A, b)
    assert bool(res.converged)
    assert abs(int(res.iterations) - int(ref.iterations)) <= 2


class _Stuck(torch.nn.Module):
    """Ignores the residual: always the same smooth field (what an undertrained network drifts to)."""

    def __init__(self):
        super().__init__()
        self.config = {"dim": 2, "in_channels": 3}
        self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        n = x.shape[-1]
        s = torch.sin(torch.linspace(0, 3.14159, n, dtype=x.dtype))
        return (s[:, None] * s[None, :] * self.w).expand(x.shape[0], 1, *x.shape[2:]).clone()


def test_stalled_network_stops_with_a_reason_not_maxiter():
    A = Laplacian((16, 16))
    b = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # (the paper's iteration: the default multilevel one does not stall here, see the next tests)
    res = DCDM(_Stuck(), variant="paper", rtol=1e-8, maxiter=500, stall_window=10).solve(A, b)
    assert not bool(res.converged)
    assert int(res.status) == 4  # stagnation
    assert int(res.iterations) < 30
    assert "variant='multilevel'" in res.reason and "stalled" in res.reason
    with pytest.raises(ValueError, match="stall_window"):
        DCDM(_Stuck(), stall_window=0)


def test_network_as_flexible_preconditioner():
    from krylon.solvers import CG

    mask, bc = dcdm_data.scene((20, 20), 4, 2, max_obstacles=3)
    A = Laplacian((20, 20), bc=bc, obstacles=mask)
    b = torch.randn(20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * (~mask)
    x_ref = torch.linalg.solve(torch.from_numpy(A.to_scipy().toarray()), b.reshape(-1)).reshape(20, 20)
    # a perfect network: flexible PCG converges in one iteration
    perfect = DCDM(InverseNet(A)).preconditioner()
    res = CG(M=perfect, flexible=True, rtol=1e-10).solve(A, b)
    assert bool(res.converged) and int(res.iterations) == 1
    torch.testing.assert_close(res.x, x_ref, rtol=1e-8, atol=1e-8)
    # the preconditioner refuses operators its network cannot read
    with pytest.raises(ValueError, match="2-D"):
        CG(M=perfect, flexible=True).solve(Laplacian((4, 4, 4)), torch.ones(4, 4, 4, dtype=torch.float64))


def test_flexible_cg_matches_pcg_for_a_fixed_preconditioner_and_survives_a_varying_one():
    import scipy.sparse.linalg as spla

    from krylon.solvers import CG, Jacobi

    torch.manual_seed(0)
    n = 30
    coef = torch.exp(torch.randn(n, n, dtype=torch.float64))
    A = Diffusion(coef)
    b = torch.randn(n, n, dtype=torch.float64)
    x_ref = torch.from_numpy(spla.spsolve(A.to_scipy().tocsc(), b.reshape(-1).numpy())).reshape(n, n)
    plain = CG(M=Jacobi(), rtol=1e-10).solve(A, b)
    flex = CG(M=Jacobi(), flexible=True, rtol=1e-10).solve(A, b)
    assert bool(flex.converged) and abs(int(flex.iterations) - int(plain.iterations)) <= 2
    torch.testing.assert_close(flex.x, x_ref, rtol=1e-7, atol=1e-7)

    # a preconditioner that changes every call (Notay's test): Jacobi with random factors in [0.5, 1.5]
    d = A.diagonal()
    g = torch.Generator().manual_seed(5)

    def varying(r):
        return r / d * (0.5 + torch.rand(r.shape, generator=g, dtype=r.dtype))

    flex = CG(M=varying, flexible=True, rtol=1e-9, maxiter=1500).solve(A, b)
    assert bool(flex.converged)
    torch.testing.assert_close(flex.x, x_ref, rtol=1e-6, atol=1e-6)
    rigid = CG(M=varying, rtol=1e-9, maxiter=1500).solve(A, b)
    assert not bool(rigid.converged)  # plain PCG loses conjugacy and crawls


def test_smooth_training_fields_are_smooth_and_mixed_in_as_asked(tmp_path):
    g = torch.Generator().manual_seed(3)
    u = dcdm_data.smooth_rhs(64, (32, 32), generator=g, slopes=(3.0, 3.0), offset_probability=0.0)
    spec = np.abs(np.fft.fft2(u.numpy())) ** 2
    k = np.abs(np.fft.fftfreq(32, 1 / 32))
    low = (k[:, None] <= 4) & (k[None, :] <= 4)
    frac = spec[:, low].sum() / spec.sum()
    assert frac > 0.6  # white noise would put (9*9)/(32*32) ~ 8 % there
    np.testing.assert_allclose(u.mean(dim=(1, 2)).numpy(), 0, atol=1e-12)  # no offset asked for
    v = dcdm_data.smooth_rhs(200, (16, 16), generator=g, offset_probability=1.0)
    assert float((v.mean(dim=(1, 2)).abs() > 0.2 * v.std(dim=(1, 2))).float().mean()) > 0.7
    with pytest.raises(ValueError, match="<= 1"):
        dcdm_data.generate(tmp_path / "x.h5", shape=(8, 8), n_geometries=1, rhs_per_geometry=4, white_fraction=0.6,
                           smooth_fraction=0.6)
    path = dcdm_data.generate(tmp_path / "m.h5", shape=(16, 16), n_geometries=1, rhs_per_geometry=8, lanczos=40,
                              white_fraction=0.25, smooth_fraction=0.5, seed=1)
    ds = open_dataset(path)
    b = ds[0:8]["b"].double()
    torch.testing.assert_close(b.reshape(8, -1).norm(dim=1), torch.ones(8, dtype=torch.float64), rtol=1e-5, atol=0)
    # layout: Ritz (2), smooth (4), white (2); smooth ones are much smoother than white ones
    f = ds[0]["fluid"]
    both = f[:, 1:] & f[:, :-1]  # differences between fluid neighbours (the mask itself cuts the fields)
    rough = lambda t: float(((t[:, 1:] - t[:, :-1])[both] ** 2).sum() / (t ** 2).sum())  # noqa: E731
    smooth, white = [rough(b[i]) for i in range(2, 6)], [rough(b[i]) for i in range(6, 8)]
    assert sum(smooth) / 4 < sum(white) / 2 / 3 and max(smooth) < min(white)


def test_augmented_dcdm_survives_a_useless_network_and_keeps_a_perfect_one():
    from krylon.solvers import CG

    mask, bc = dcdm_data.scene((24, 24), 3, 5, max_obstacles=3)
    A = Laplacian((24, 24), bc=bc, obstacles=mask)
    b = torch.randn(3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * (~mask)
    ref = CG(rtol=1e-8).solve(A, b)
    # the paper's iteration stalls on a network that ignores the residual; with the residual in the search
    # space it converges at (at worst) about CG's pace, and checks convergence on the true residual
    assert not bool(DCDM(_Stuck(), variant="paper", rtol=1e-8, maxiter=500).solve(A, b).converged.any())
    res = DCDM(_Stuck(), variant="paper", augment=True, rtol=1e-8, maxiter=1000).solve(A, b)
    assert bool(res.converged.all())
    assert int(res.iterations.max()) <= 1.5 * int(ref.iterations.max())
    rel = torch.linalg.vector_norm(b - A @ res.x, dim=(1, 2)) / torch.linalg.vector_norm(b, dim=(1, 2))
    assert bool((rel <= 1e-8).all())
    # a perfect network (exact A^{-1}): one iteration, and the residual direction is then dependent (no harm)
    Ad = torch.from_numpy(A.to_scipy().toarray())

    class Exact(torch.nn.Module):
        config = {"dim": 2, "in_channels": 3}

        def forward(self, x):
            r = x[:, 0].reshape(x.shape[0], -1)
            return torch.linalg.solve(Ad, r.T).T.reshape(x.shape[0], 1, 24, 24)

    res = DCDM(Exact(), variant="paper", augment=True, rtol=1e-10).solve(A, b)
    assert bool(res.converged.all()) and int(res.iterations.max()) == 1


def test_bench_dcdm_runs_with_a_given_model_and_skips_tighter_tolerances_after_a_failure(tmp_path):
    from krylon.bench import dcdm as bench

    DCDM(DCDMNet(dim=2, width=4, levels=2, odd=True)).save(tmp_path / "m.pt")  # untrained: fails, as it should
    res = bench.run("quick", models=[tmp_path / "m.pt"], out=tmp_path / "out", peers=False, maxiter_dcdm=5)
    rows = res["rows"]
    by = {(r["grid"], r["rtol"], r["solver"]): r for r in rows}
    # rows by variant: "DCDM" is the default (multilevel) iteration, "DCDM (paper)" the paper's
    assert {r["solver"] for r in rows} == {"DCDM", "DCDM (paper)", "DCDM-FPCG", "CG", "Jacobi-PCG", "IC0-PCG", "DST-PCG"}
    assert all(r["net_passes"] > r["iterations"] for r in rows if r["solver"] == "DCDM" and r["status"] != "skipped")
    assert all(r["net_passes"] == r["iterations"] for r in rows if r["solver"] == "DCDM (paper)" and r["status"] != "skipped")
    for grid in ("64x64", "128x128"):
        assert by[(grid, 1e-4, "CG")]["converged"] and by[(grid, 1e-6, "CG")]["converged"]
        assert by[(grid, 1e-6, "CG")]["true_rel_res"] <= 1e-6
        for name in ("DCDM", "DCDM (paper)"):
            assert not by[(grid, 1e-4, name)]["converged"] and by[(grid, 1e-6, name)]["status"] == "skipped"
    for name in ("DCDM", "DCDM (paper)"):
        assert by[("64x64", 1e-4, name)]["status"] == "maxiter" and by[("128x128", 1e-4, name)]["status"] == "skipped"
    assert (tmp_path / "out" / "dcdm.json").exists() and (tmp_path / "out" / "dcdm_iterations.png").exists()


@pytest.mark.parametrize("name, shape, seed", [("poisson2d", (64, 64), 4242), ("poisson3d", (24, 24, 24), 4243)])
def test_shipped_models_solve_unseen_scenes(name, shape, seed):
    """The shipped weights load (weights_only) and beat plain CG on a scene they never saw."""
    from krylon.datasets.geometry import random_obstacles
    from krylon.solvers import CG

    mask = random_obstacles(shape, 5, seed=seed, min_size=0.08, max_size=0.2)
    A = Laplacian(shape, spacing=1.0 / (shape[0] + 1), bc="dirichlet", obstacles=mask)
    b = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).masked_fill(mask, 0)
    cg = CG(rtol=1e-4).solve(A, b)
    for solver in (DCDM.pretrained(name, rtol=1e-4, variant="paper"), DCDM.pretrained(name, rtol=1e-4)):
        res = solver.solve(A, b)
        assert bool(res.converged), res.reason
        assert int(res.iterations) <= int(cg.iterations) / 3
        assert float(torch.linalg.vector_norm(b - A @ res.x) / torch.linalg.vector_norm(b)) <= 1e-4


class _NaNNet(torch.nn.Module):
    """Returns NaN for the second system of a batch (a network blown up by a bad input)."""

    config = {"dim": 2, "in_channels": 3}

    def forward(self, x):
        out = x[:, :1].clone()
        out[1:2] = float("nan")
        return out


@pytest.mark.parametrize("augment", [False, True])
def test_nan_input_is_an_error_and_a_nan_direction_a_reason(augment):
    A = Laplacian((16, 16))
    b = torch.randn(2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bad = b.clone()
    bad[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        DCDM(_NaNNet(), variant="paper", augment=augment).solve(A, bad)
    res = DCDM(_NaNNet(), variant="paper", augment=augment, rtol=1e-8, maxiter=400).solve(A, b)
    assert int(res.status[1]) == 3 and "nan" in res.reason.lower()  # Status.NAN, reported
    assert bool(res.converged[0]) and bool(torch.isfinite(res.x[0]).all())  # the other system is unaffected


@pytest.mark.parametrize("dim,level", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_prolongation_reproduces_linear_fields_between_coarse_centres(dim, level):
    from krylon.solvers.dcdm import prolong

    nc, w = 6, 2 ** level  # coarse cells, fine cells per coarse cell
    coef = torch.tensor([0.7, -1.3, 2.1][:dim], dtype=torch.float64)

    def f(centres):  # an affine field evaluated at cell centres given in fine-cell units
        grids = torch.meshgrid(*([centres] * dim), indexing="ij")
        return 1.5 + sum(c * g for c, g in zip(coef, grids))

    fine = prolong(f((torch.arange(nc, dtype=torch.float64) + 0.5) * w)[None], level, (nc * w - 1,) * dim)
    assert fine.shape == (1,) + (nc * w - 1,) * dim  # cropped to an odd fine grid
    exact = f(torch.arange(nc * w - 1, dtype=torch.float64) + 0.5)
    inner = tuple(slice(w // 2, nc * w - w // 2 - 1) for _ in range(dim))  # between the outermost coarse centres
    torch.testing.assert_close(fine[(0,) + inner], exact[inner])


def test_coarse_level_directions_on_odd_grids_and_as_safe_extra_directions():
    from krylon.solvers import CG

    mask, bc = dcdm_data.scene((37, 50), 3, 7, max_obstacles=4)
    A = Laplacian((37, 50), bc=bc, obstacles=mask)
    b = torch.randn(2, 37, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * (~mask)
    net = DCDMNet(dim=2, width=4, levels=2, odd=True).double()
    solver = DCDM(net, coarse="auto")
    hier = solver._hierarchy(A, "auto", torch.float64, "cpu")
    assert len(hier) == 1  # 37 -> 19 (>= 16) -> 10 (< 16): one coarse level
    assert len(solver._hierarchy(A, 3, torch.float64, "cpu")) == 3
    assert tuple(hier[0][1].shape_in) == (19, 25)
    for lv in (1, 2, 3):
        d = solver._coarse_direction(A, b, solver._hierarchy(A, 3, torch.float64, "cpu"), lv)
        assert d.shape == b.shape and bool(torch.isfinite(d).all())
        assert not bool(d[:, mask].any())  # masked to the fluid
    # the transfer divides by the interpolated coarse fluid indicator: a direction that is constant on the
    # coarse fluid cells comes back constant on every fine fluid cell, obstacles or not
    const = DCDM(net, coarse="auto")
    const.direction = lambda Ac, r: torch.ones_like(r).masked_fill(Ac.obstacles, 0) if Ac.obstacles is not None else torch.ones_like(r)
    for lv in (1, 2):
        d = const._coarse_direction(A, b, const._hierarchy(A, 2, torch.float64, "cpu"), lv)
        torch.testing.assert_close(d[:, ~mask], torch.ones_like(d[:, ~mask]))
    # an untrained network with every extra direction still converges (exact line searches, true residual)
    ref = CG(rtol=1e-8).solve(A, b)
    res = DCDM(net, rtol=1e-8, maxiter=2000).solve(A, b)  # the default: multilevel, residual, k = 2
    assert bool(res.converged.all())
    assert int(res.iterations.max()) <= 1.5 * int(ref.iterations.max())
    rel = torch.linalg.vector_norm(b - A @ res.x, dim=(1, 2)) / torch.linalg.vector_norm(b, dim=(1, 2))
    assert bool((rel <= 1e-8).all())
    with pytest.raises(ValueError, match="coarse"):
        DCDM(net, coarse=-1)
    with pytest.raises(ValueError, match="coarse"):
        DCDM(net, coarse="all")


def test_coarse_levels_of_a_diffusion_operator_carry_the_coarsened_coefficient():
    from krylon.solvers import CG

    g = torch.Generator().manual_seed(3)
    kappa = torch.exp(torch.randn(40, 36, dtype=torch.float64, generator=g))
    mask = torch.zeros(40, 36, dtype=torch.bool)
    mask[10:18, 5:30] = True
    A = Diffusion(kappa, obstacles=mask)
    torch.manual_seed(0)
    net = DCDMNet(dim=2, in_channels=4, width=4, levels=2, odd=True).double()
    solver = DCDM(net, rtol=1e-8, maxiter=2000)  # the default: multilevel, residual, k = 2
    (_, Ac, _), = solver._hierarchy(A, "auto", torch.float64, "cpu")
    assert isinstance(Ac, Diffusion) and tuple(Ac.shape_in) == (20, 18)
    # geometric mean over each 2x2 block
    torch.testing.assert_close(Ac.coefficient, torch.exp(torch.log(kappa).reshape(20, 2, 18, 2).mean(dim=(1, 3))))
    assert bool(Ac.obstacles[5:9, 3:15].all()) and not bool(Ac.obstacles[:5].any())
    b = torch.randn(40, 36, dtype=torch.float64, generator=g) * (~mask)
    res = solver.solve(A, b)
    ref = CG(rtol=1e-8).solve(A, b)
    # an untrained network's directions are noise; the residual direction (and k = 2 kept iterations) still
    # converges at a rate comparable to CG's on this badly conditioned variable-coefficient problem
    assert bool(res.converged) and int(res.iterations) <= 3 * int(ref.iterations)
    assert float(torch.linalg.vector_norm(b - A @ res.x) / torch.linalg.vector_norm(b)) <= 1e-8


# ----------------------------------------------------------------------------- variants (issue #9: best by default)
def test_the_default_is_the_multilevel_iteration_and_the_paper_one_is_an_explicit_variant():
    from krylon.solvers.dcdm import AUGMENTED

    net = DCDMNet(dim=2, width=4)
    opts = lambda s: {k: s.options[k] for k in ("k", "augment", "coarse")}  # noqa: E731
    assert opts(DCDM(net)) == {"k": 2, "augment": True, "coarse": "auto"} == VARIANTS["multilevel"]
    assert DCDM(net).variant == "multilevel"
    assert opts(DCDM(net, variant="paper")) == {"k": 2, "augment": False, "coarse": 0}
    # an option given explicitly overrides the variant's default
    assert opts(DCDM(net, variant="paper", augment=True)) == {"k": 2, "augment": True, "coarse": 0}
    assert opts(DCDM(net, coarse=3, k=1)) == {"k": 1, "augment": True, "coarse": 3}
    # the old spelling of the multilevel iteration still runs and is the default now
    assert opts(DCDM(net, **AUGMENTED)) == opts(DCDM(net))
    for name in ("poisson2d", "poisson3d"):
        assert opts(DCDM.pretrained(name)) == VARIANTS["multilevel"]
        assert opts(DCDM.pretrained(name, variant="paper")) == VARIANTS["paper"]
    with pytest.raises(ValueError, match="variant"):
        DCDM(net, variant="augmented")


def test_shipped_2d_model_converges_by_default_on_a_bench_scene_larger_than_its_training_grid():
    """``krylon bench dcdm``'s unseen 128^2 scene: the default converges in a few iterations; ``variant="paper"``
    is the plain iteration (one network pass, one direction per iteration)."""
    from krylon.bench.dcdm import _scene

    A, b = _scene(2, 128, "cpu", torch.float64)
    res = DCDM.pretrained("poisson2d").solve(A, b, rtol=1e-4)
    assert bool(res.converged) and int(res.iterations) <= 10, res.reason
    assert float(torch.linalg.vector_norm(b - A @ res.x) / torch.linalg.vector_norm(b)) <= 1e-4
    paper = DCDM.pretrained("poisson2d", variant="paper").solve(A, b, rtol=1e-4, maxiter=5)
    assert int(paper.iterations) == 5 and paper.extras["network_passes"] == 5


# ----------------------------------------------------------------------------- one input path (issue #9)
def test_training_feeds_the_network_the_channels_inference_builds(tmp_path):
    """For a batch from the training data generator, dcdm_loss gives the model exactly what DCDM.direction (through
    network_inputs) gives it for the same operator and residual."""
    path = dcdm_data.generate(tmp_path / "d.h5", shape=(14, 12), n_geometries=3, rhs_per_geometry=2, lanczos=20,
                              seed=5, white_fraction=0.5)
    ds = open_dataset(path)
    batch = ds[0:6]
    rec = _Recorder()
    dcdm_loss(rec, batch)
    trained = rec.seen[-1]
    assert trained.shape == (6, 3, 14, 12)
    solver = DCDM(rec)
    for i in range(6):
        flags = batch["bc_dirichlet"][i].tolist()
        bc = [tuple("dirichlet" if flags[2 * a + s] else "neumann" for s in (0, 1)) for a in range(2)]
        fluid = batch["fluid"][i].bool()
        A = Laplacian((14, 12), bc=bc, obstacles=~fluid)
        r = batch["b"][i].double()[None]
        solver.direction(A, r)
        torch.testing.assert_close(rec.seen[-1][0], trained[i], rtol=1e-6, atol=1e-6)
        scaled = r * (fluid.sum().double().sqrt() / r.norm())
        torch.testing.assert_close(network_inputs(A, scaled, 3)[0], trained[i], rtol=1e-6, atol=1e-6)
    assert bool((trained[:, 2] <= trained[:, 1]).all()) and bool(trained[:, 2].any())  # marker on fluid cells only


def test_input_channels_for_variable_coefficients_and_fewer_channels():
    from krylon.operators.learned.dcdm import input_channels

    kappa = torch.exp(torch.randn(9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    A = Diffusion(kappa, bc="dirichlet")
    r = torch.randn(2, 9, 8, dtype=torch.float64)
    x = network_inputs(A, r, 4)
    logk = torch.log(kappa)
    torch.testing.assert_close(x[:, 3], (logk - logk.mean()).expand(2, 9, 8))
    assert float(network_inputs(Laplacian((9, 8)), r, 4)[:, 3].abs().max()) == 0.0
    assert network_inputs(A, r, 1).shape == (2, 1, 9, 8) and torch.equal(network_inputs(A, r, 1)[:, 0], r)
    with pytest.raises(ValueError, match="Dirichlet marker"):
        input_channels(r, torch.ones(9, 8, dtype=torch.bool), in_channels=3)


def test_dirichlet_marker_lives_in_the_operators_layer():
    """datasets re-exports the marker the network input uses (solvers once imported it from datasets)."""
    from krylon.datasets import dcdm as data
    from krylon.operators.learned import dcdm as learned

    assert data.dirichlet_marker is learned.dirichlet_marker


# ----------------------------------------------------------------------------- shipped weights (issue #9)
def test_registry_finds_the_shipped_weights_and_their_records():
    from krylon.operators.learned import registry

    assert registry.available("dcdm") == ["poisson2d", "poisson3d"]
    assert registry.available("fno") == []
    for name in ("poisson2d", "poisson3d"):
        rec = registry.record("dcdm", name)
        net = registry.load_pretrained("dcdm", name)
        assert type(net) is DCDMNet and net.config == rec["config"] and not net.training
        assert DCDM.pretrained(name).model.config == rec["config"]
    with pytest.raises(ValueError, match=r"available: \['poisson2d', 'poisson3d'\]"):
        DCDM.pretrained("poisson1d")
    with pytest.raises(ValueError, match="model class"):
        registry.model_class("os.system")


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of the shipped weights folder that the registry reads instead of the installed one."""
    from krylon.operators.learned import registry

    src = registry._weights_root()
    dst = tmp_path / "weights"
    dst.mkdir()
    for entry in src.iterdir():
        if entry.name.endswith((".json", ".pt")):
            (dst / entry.name).write_bytes(entry.read_bytes())
    monkeypatch.setattr(registry, "_weights_root", lambda: dst)
    return dst


def test_missing_truncated_or_mismatched_shipped_weights_are_clear_errors(shipped_copy):
    from krylon.operators.learned import registry

    pt = shipped_copy / "dcdm_poisson2d.pt"
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        DCDM.pretrained("poisson2d")
    pt.unlink()
    with pytest.raises(FileNotFoundError, match="not installed"):
        DCDM.pretrained("poisson2d")
    # a record whose checkpoint holds another network than it says
    rec_path = shipped_copy / "dcdm_poisson3d.json"
    rec = json.loads(rec_path.read_text())
    rec["config"]["width"] = 8
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="does not match its record"):
        DCDM.pretrained("poisson3d")
    # a damaged record is named
    (shipped_copy / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        registry.available("dcdm")


def test_checkpoints_carry_their_class_and_config_and_refuse_other_networks(tmp_path):
    from krylon.operators.learned import registry

    torch.manual_seed(0)
    s = DCDM(DCDMNet(dim=3, width=4, levels="auto", coarsest=4, odd=True))
    s.save(tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    assert ckpt["model"] == "dcdm.DCDMNet" and json.loads(ckpt["config"]) == s.model.config
    t = DCDM.load(tmp_path / "m.pt", variant="paper")
    assert t.model.config == s.model.config and t.dim == 3 and t.variant == "paper"
    # a checkpoint written before checkpoints named their class still loads (DCDMNet is the default)
    del ckpt["model"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert DCDM.load(tmp_path / "old.pt").model.config == s.model.config
    # truncated user checkpoint
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:1000])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        DCDM.load(tmp_path / "cut.pt")
    # a config the class does not take
    torch.save({"state_dict": {}, "config": json.dumps({"dim": 5}), "model": "dcdm.DCDMNet"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not accept"):
        DCDM.load(tmp_path / "bad.pt")
    # a registered class of another family is refused by DCDM.load

    @registry.register_model
    class OtherNet(torch.nn.Module):
        def __init__(self, n=2):
            super().__init__()
            self.config = {"n": n}
            self.lin = torch.nn.Linear(n, n)

    registry.save_checkpoint(OtherNet(), tmp_path / "other.pt")
    assert isinstance(registry.load_checkpoint(tmp_path / "other.pt"), OtherNet)
    with pytest.raises(ValueError, match="not a DCDMNet"):
        DCDM.load(tmp_path / "other.pt")


def test_docstring_examples_run():
    import doctest

    import krylon.operators.learned.dcdm as learned
    import krylon.operators.learned.registry as registry
    import krylon.solvers.dcdm as solver

    for mod in (registry, learned, solver):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_a_variant_given_to_solve_sets_the_options_the_caller_left_unset():
    """``solve(variant="paper")`` runs the paper's iteration for that call; an explicit option still wins."""
    net = DCDMNet(dim=2, width=4)
    s = DCDM(net)
    assert {k: s._resolve({**s.given, "variant": "paper"})[k] for k in ("k", "augment", "coarse")} == VARIANTS["paper"]
    s2 = DCDM(net, augment=True)
    assert s2._resolve({**s2.given, "variant": "paper"})["augment"] is True
    A, b = Laplacian((16, 16)), torch.rand(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    paper = DCDM(net.double(), variant="paper", maxiter=3).solve(A, b)
    override = DCDM(net.double(), maxiter=3).solve(A, b, variant="paper")
    assert torch.equal(paper.x, override.x) and paper.extras["network_passes"] == override.extras["network_passes"]
    assert s.options["variant"] == "multilevel"  # the override was for that call only


@pytest.mark.parametrize("variant", ["paper", "multilevel"])
def test_a_system_stopped_by_a_nan_direction_reports_the_residual_of_the_x_it_returns(variant):
    """The NaN system keeps a finite x, and its recorded residual and iteration count describe that x (a stop
    inside an iteration used to skip the record while earlier directions had already moved x)."""
    A = Laplacian((16, 16))
    b = torch.randn(2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = DCDM(_NaNNet(), variant=variant, rtol=1e-8, maxiter=50).solve(A, b)
    assert int(res.status[1]) == 3 and bool(torch.isfinite(res.x).all())
    true = torch.linalg.vector_norm((b[1] - A @ res.x[1]).flatten())
    torch.testing.assert_close(res.residual_norms[-1, 1], true, rtol=1e-10, atol=1e-12)
    assert int(res.iterations[1]) >= 1


def test_the_network_preconditioner_is_no_linear_operator():
    with pytest.raises(TypeError, match="nonlinear"):
        DCDM(DCDMNet(dim=2, width=4)).preconditioner().setup(Laplacian((8, 8))).as_operator()


def test_checkpoints_are_written_atomically_and_a_damaged_training_checkpoint_is_a_clear_error(tmp_path):
    """One writer (registry.atomic_save) and one reader (registry.read_torch_file) serve the shipped-model
    checkpoints and the training loop's."""
    from krylon.solvers.training import load_checkpoint as load_training

    DCDM(DCDMNet(dim=2, width=4)).save(tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left behind
    (tmp_path / "t.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_training(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="not a krylon training checkpoint"):
        load_training(tmp_path / "m.pt")

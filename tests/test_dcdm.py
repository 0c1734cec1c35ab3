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
from krylon.solvers.dcdm import DCDM, batch_weights, dcdm_loss, network_inputs


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
    res = DCDM(InverseNet(A), rtol=1e-10).solve(A, b)
    assert bool(res.converged) and int(res.iterations) == 1
    # an imperfect network: record directions and check A-orthogonality to the previous k=2
    torch.manual_seed(1)
    net = DCDMNet(dim=2).double()
    dirs = []
    solver = DCDM(net, k=2, rtol=1e-6, maxiter=6)
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


def test_data_generation_resumes_identically(tmp_path):
    kw = dict(shape=(10, 10), n_geometries=2, rhs_per_geometry=3, lanczos=30, seed=4)
    full = dcdm_data.generate(tmp_path / "a.h5", **kw)
    # interrupted run: write 4 samples, crash, resume
    from krylon.datasets import DatasetWriter

    path = tmp_path / "b.h5"
    ref = open_dataset(full)
    fields = {"b": ((10, 10), "float32"), "fluid": ((10, 10), "bool"), "dirichlet": ((10, 10), "bool"),
              "bc_dirichlet": ((4,), "bool")}
    params = {"shape": [10, 10], "n_geometries": 2, "rhs_per_geometry": 3, "lanczos": 30, "max_obstacles": 8,
              "low_fraction": 0.5, "low_weight": 9.0}
    w = DatasetWriter(path, 6, fields, generator=dcdm_data.GENERATOR, parameters=params, seed=4)
    for i in range(4):
        w.write(i, {k: v.numpy() for k, v in ref[i].items()})
    w.f.close()
    w.f = None
    dcdm_data.generate(path, **kw)
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
    # resume: a second call with more epochs continues from the checkpoint
    hist2 = train(net, dcdm_loss, ds, tmp_path / "run", TrainConfig(epochs=4, batch_size=8, lr=3e-3), progress=False,
                  log=lambda s: None, name="t")
    assert len(hist2["train"]) == 4 and hist2["train"][:3] == hist["train"]
    assert (tmp_path / "run" / "losses.png").exists()

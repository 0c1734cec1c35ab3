"""The example scripts run as a user would use them (small sizes)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from krylon.datasets.geometry import random_obstacles
from krylon.solvers import CG

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dim,n", [(2, 32), (3, 16)])
def test_smoke_projection_is_divergence_free_and_smoke_rises(dim, n):
    smoke = _load("smoke_simulation")
    mask = random_obstacles((n,) * dim, 2, seed=1, min_size=0.1, max_size=0.2)
    mask[..., : n // 4] = False
    sim = smoke.Smoke(n, mask)
    heights = []
    z = torch.arange(n, dtype=torch.float64)
    for _ in range(6):
        sim.advect()
        sim.forces_and_sources()
        sim.enforce_walls()
        before = float(sim.divergence().masked_fill(sim.solid, 0).abs().max())
        res = sim.project(CG(maxiter=5000), rtol=1e-10)
        assert bool(res.converged)
        after = sim.divergence().masked_fill(sim.solid, 0)
        assert float(after.abs().max()) <= 1e-7 * max(before, 1e-30)
        for a, v in enumerate(sim.vel):  # no flux through the faces of solid cells
            assert not bool(v.narrow(a, 0, n)[mask].any()) and not bool(v.narrow(a, 1, n)[mask].any())
        heights.append(float((sim.rho * z).sum() / sim.rho.sum()))
    assert heights[-1] > heights[0]  # buoyant smoke rises


def test_smoke_with_the_shipped_model_3d():
    smoke = _load("smoke_simulation")
    n = 32  # one coarse level (16^3)
    mask = random_obstacles((n,) * 3, 2, seed=2, min_size=0.1, max_size=0.2)
    mask[..., : n // 4] = False
    sim = smoke.Smoke(n, mask)
    solver = smoke.make_solver("dcdm", dim=3)
    for _ in range(2):
        res = sim.step(solver, 1e-4)
        assert bool(res.converged) and int(res.iterations) <= 20  # CG needs ~90 here

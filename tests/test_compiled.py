"""The torch.compile-fused CG kernels agree with the eager reference (run on the CPU through inductor)."""

import pytest
import torch

from krylon.kernels import compiled, linalg
from krylon.kernels import stencil as st

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile not available")


@pytest.mark.parametrize("shape, spacing, bc", [
    pytest.param((9, 11), (0.5, 0.25), "dirichlet", id="2d-dirichlet"),
    pytest.param((9, 11), (1.0, 1.0), "neumann", id="2d-neumann"),
    pytest.param((9, 11), (1.0, 2.0), (("dirichlet", "neumann"), "periodic"), id="2d-mixed"),
    pytest.param((5, 6, 7), (1.0, 1.0, 0.5), "periodic", id="3d-periodic"),
])
def test_fused_stencil_and_dot_match_eager(shape, spacing, bc):
    g = torch.Generator().manual_seed(0)
    u = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    sides = st.parse_bc(bc, len(shape))
    ref = st.apply_constant(u, spacing, sides)
    out, d = compiled.stencil_dot(u, spacing, sides)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(d, (u * ref).sum(tuple(range(1, u.dim()))), rtol=1e-12, atol=1e-10)


def test_fused_update_matches_eager():
    g = torch.Generator().manual_seed(1)
    x, r, p, Ap = (torch.randn(3, 8, 9, generator=g, dtype=torch.float64) for _ in range(4))
    alpha = torch.tensor([0.5, 0.0, -1.5], dtype=torch.float64)  # 0 freezes system 1
    xn, rn, rr = compiled.cg_update(x, r, p, Ap, alpha, 2)
    x2, r2 = x.clone(), r.clone()
    rr2 = linalg.cg_step_(x2, r2, p, Ap, alpha, 2)
    torch.testing.assert_close(xn, x2)
    torch.testing.assert_close(rn, r2)
    torch.testing.assert_close(rr, rr2)
    torch.testing.assert_close(xn[1], x[1], rtol=0, atol=0)


def test_enabled_only_on_cuda(monkeypatch):
    assert not compiled.enabled(torch.zeros(3))
    monkeypatch.setenv("KRYLON_COMPILE", "0")
    assert not compiled.enabled(torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cg_uses_fused_path_and_matches_cpu():
    from krylon.operators import Laplacian
    from krylon.solvers import CG

    b = torch.rand(2, 64, 64, dtype=torch.float64)
    res_cpu = CG(rtol=1e-10).solve(Laplacian((64, 64)), b)
    res_gpu = CG(rtol=1e-10).solve(Laplacian((64, 64), device="cuda"), b.cuda())
    assert bool(res_gpu.converged.all())
    torch.testing.assert_close(res_gpu.x.cpu(), res_cpu.x, rtol=1e-7, atol=1e-9)


def test_apply_constant_dot_takes_the_compiled_kernel_where_enabled(monkeypatch):
    # on CUDA apply_constant_dot returns compiled.stencil_dot's result; run that branch on the CPU via inductor
    g = torch.Generator().manual_seed(2)
    u = torch.randn(2, 9, 11, generator=g, dtype=torch.float64)
    sides = st.parse_bc((("dirichlet", "neumann"), "periodic"), 2)
    ref = st.apply_constant(u, (1.0, 0.5), sides)
    monkeypatch.setattr(compiled, "enabled", lambda t: True)
    out, d = st.apply_constant_dot(u, (1.0, 0.5), sides, out=torch.empty_like(u))
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(d, linalg.dot(u, ref, 2), rtol=1e-12, atol=1e-10)

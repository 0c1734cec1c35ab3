"""A 2-D incompressible smoke simulation whose pressure solve is one line that takes any krylon solver.

    python examples/smoke_simulation.py --solver pcg-ic0 --frames 40 --n 128 --out smoke-frames

Staggered (MAC) grid: velocities on cell faces, pressure and density at cell centres.
Each frame: semi-Lagrangian advection (bilinear back-tracing), buoyancy from the density,
then a pressure projection with solid obstacles -- closed walls (Neumann), an open top
(p = 0 beyond the last row) and zero flux through every obstacle face, which is exactly
``Laplacian(..., bc=[("neumann", "neumann"), ("neumann", "dirichlet")], obstacles=mask)``.
After the projection the discrete divergence is zero up to the solver's tolerance
(printed each frame).
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from krylon.datasets.geometry import random_obstacles
from krylon.operators import Laplacian
from krylon.solvers import CG, DCDM, IC0
from krylon.solvers.dcdm import AUGMENTED


def sample(field, x, y):
    """Bilinear interpolation of a cell-array ``field`` (nx, ny) at fractional index positions (x, y)."""
    nx, ny = field.shape
    gx = 2 * x / max(nx - 1, 1) - 1
    gy = 2 * y / max(ny - 1, 1) - 1
    grid = torch.stack([gy, gx], dim=-1).unsqueeze(0).to(field.dtype)
    return F.grid_sample(field[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]


class Smoke:
    def __init__(self, n, obstacles, dt=1.0, buoyancy=0.25, device="cpu"):
        self.n, self.dt, self.buoy = n, dt, buoyancy
        d = dict(dtype=torch.float64, device=device)
        self.u = torch.zeros(n + 1, n, **d)  # x-faces
        self.v = torch.zeros(n, n + 1, **d)  # y-faces
        self.rho = torch.zeros(n, n, **d)
        self.solid = obstacles.to(device)
        self.A = Laplacian((n, n), bc=[("neumann", "neumann"), ("neumann", "dirichlet")], obstacles=self.solid, device=device)
        self.p = torch.zeros(n, n, **d)
        ii, jj = torch.meshgrid(torch.arange(n, **d), torch.arange(n, **d), indexing="ij")
        self.ii, self.jj = ii, jj

    def divergence(self):
        return (self.u[1:] - self.u[:-1]) + (self.v[:, 1:] - self.v[:, :-1])

    def enforce_walls(self):
        self.u[0], self.u[-1], self.v[:, 0] = 0, 0, 0
        s = self.solid
        self.u[1:-1][s[1:] | s[:-1]] = 0
        self.v[:, 1:-1][s[:, 1:] | s[:, :-1]] = 0
        self.u[:-1][s], self.u[1:][s], self.v[:, :-1][s], self.v[:, 1:][s] = 0, 0, 0, 0

    def advect(self):
        n, dt = self.n, self.dt
        uc = 0.5 * (self.u[1:] + self.u[:-1])
        vc = 0.5 * (self.v[:, 1:] + self.v[:, :-1])
        x = (self.ii - dt * uc).clamp(0, n - 1)
        y = (self.jj - dt * vc).clamp(0, n - 1)
        self.rho = sample(self.rho, x, y)
        # velocities: back-trace from face positions
        iu, ju = torch.meshgrid(torch.arange(n + 1, dtype=self.u.dtype), torch.arange(n, dtype=self.u.dtype), indexing="ij")
        vu = sample(vc, (iu - 0.5).clamp(0, n - 1), ju)
        self.u = sample(self.u, (iu - dt * self.u).clamp(0, n), (ju - dt * vu).clamp(0, n - 1))
        iv, jv = torch.meshgrid(torch.arange(n, dtype=self.v.dtype), torch.arange(n + 1, dtype=self.v.dtype), indexing="ij")
        uv = sample(uc, iv, (jv - 0.5).clamp(0, n - 1))
        self.v = sample(self.v, (iv - dt * uv).clamp(0, n - 1), (jv - dt * self.v).clamp(0, n))

    def forces_and_sources(self):
        n = self.n
        src = slice(n // 2 - n // 16, n // 2 + n // 16)
        self.rho[src, 2:4] = 1.0
        rho_face = torch.zeros_like(self.v)
        rho_face[:, 1:-1] = 0.5 * (self.rho[:, 1:] + self.rho[:, :-1])
        self.v = self.v + self.dt * self.buoy * rho_face

    def project(self, solver, rtol):
        """The pressure solve: one line, any krylon solver."""
        div = self.divergence().masked_fill(self.solid, 0)
        res = solver.solve(self.A, -div / self.dt, x0=self.p, rtol=rtol)  # <- the pressure solve
        self.p = res.x
        p = self.p
        self.u[1:-1] -= self.dt * (p[1:] - p[:-1])
        self.v[:, 1:-1] -= self.dt * (p[:, 1:] - p[:, :-1])
        self.v[:, -1] -= self.dt * (0 - p[:, -1])  # open top: p = 0 beyond the last row
        self.enforce_walls()
        return res

    def step(self, solver, rtol):
        self.advect()
        self.forces_and_sources()
        self.enforce_walls()
        return self.project(solver, rtol)


def make_solver(name, model=None):
    if name == "cg":
        return CG(maxiter=20000)
    if name == "pcg-ic0":
        return CG(M=IC0(), maxiter=5000)
    if name in ("dcdm", "dcdm+r", "fpcg-dcdm"):
        kw = dict(AUGMENTED, maxiter=200) if name == "dcdm+r" else {"maxiter": 200}
        dcdm = DCDM.load(model, **kw) if model else DCDM.pretrained("poisson2d", **kw)
        if name == "fpcg-dcdm":  # the network as the preconditioner of flexible CG
            return CG(M=dcdm.preconditioner(), flexible=True, maxiter=500)
        return dcdm
    raise ValueError(f"unknown solver {name!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--solver", default="pcg-ic0", choices=("cg", "pcg-ic0", "dcdm", "dcdm+r", "fpcg-dcdm"))
    ap.add_argument("--model", default=None, help="a DCDM checkpoint (krylon train dcdm); default: the shipped one")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--obstacles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default="smoke-frames")
    ap.add_argument("--every", type=int, default=5, help="write a PNG every this many frames")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mask = random_obstacles((args.n, args.n), args.obstacles, seed=args.seed, min_size=0.08, max_size=0.18)
    mask[:, : args.n // 8] = False  # keep the source region open
    sim = Smoke(args.n, mask)
    solver = make_solver(args.solver, args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total_it, total_t = 0, 0.0
    for f in range(1, args.frames + 1):
        t0 = time.perf_counter()
        res = sim.step(solver, args.rtol)
        dt = time.perf_counter() - t0
        it = int(res.iterations)
        total_it += it
        total_t += dt
        div = float(sim.divergence().masked_fill(sim.solid, 0).abs().max())
        print(f"frame {f:4d}  {args.solver}: {it:4d} iterations  {1e3 * dt:8.1f} ms  max|div u| {div:.2e}  {res.reason.split(' (')[0]}")
        if f % args.every == 0 or f == args.frames:
            img = sim.rho.T.flip(0).cpu().numpy()
            plt.imsave(out / f"density_{f:04d}.png", img, cmap="inferno", vmin=0, vmax=1)
    print(f"{args.solver}: {total_it / args.frames:.1f} iterations and {1e3 * total_t / args.frames:.1f} ms per frame on average")


if __name__ == "__main__":
    main()

"""An incompressible smoke simulation (2-D, or 3-D with ``--dim 3``) whose pressure solve is one line that takes any krylon solver.

    python examples/smoke_simulation.py --solver pcg-ic0 --frames 40 --n 128 --out smoke-frames
    python examples/smoke_simulation.py --dim 3 --n 64 --solver dcdm --frames 10

Staggered (MAC) grid: velocities on cell faces, pressure and density at cell centres.
Each frame: semi-Lagrangian advection (multilinear back-tracing), buoyancy from the density,
then a pressure projection with solid obstacles -- closed walls (Neumann), an open top
(p = 0 beyond the last layer of the last axis) and zero flux through every obstacle face, which is exactly
``Laplacian(..., bc=[("neumann", "neumann"), ..., ("neumann", "dirichlet")], obstacles=mask)``.
After the projection the discrete divergence is zero up to the solver's tolerance
(printed each frame).  The PNG frames show the density (in 3-D: its average over the depth axis).
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from krylon.datasets.geometry import random_obstacles
from krylon.operators import Laplacian
from krylon.solvers import CG, DCDM, IC0


def sample(field, coords):
    """Multilinear interpolation of a cell array ``field`` at fractional index positions ``coords`` (one per axis)."""
    grid = [2 * c / max(n - 1, 1) - 1 for c, n in zip(coords, field.shape)]
    grid = torch.stack(grid[::-1], dim=-1).unsqueeze(0).to(field.dtype)  # grid_sample wants (x=last axis, ...)
    return F.grid_sample(field[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]


class Smoke:
    def __init__(self, n, obstacles, dt=1.0, buoyancy=0.25, device="cpu"):
        self.n, self.dt, self.buoy = n, dt, buoyancy
        self.dim = obstacles.dim()
        d = dict(dtype=torch.float64, device=device)
        # vel[a]: the velocity component along axis a, on the faces normal to a (n + 1 of them along a)
        self.vel = [torch.zeros(tuple(n + (b == a) for b in range(self.dim)), **d) for a in range(self.dim)]
        self.rho = torch.zeros((n,) * self.dim, **d)
        self.solid = obstacles.to(device)
        bc = [("neumann", "neumann")] * (self.dim - 1) + [("neumann", "dirichlet")]  # open top: p = 0 above
        self.A = Laplacian((n,) * self.dim, bc=bc, obstacles=self.solid, device=device)
        self.p = torch.zeros((n,) * self.dim, **d)

    def _index(self, shape):
        return torch.meshgrid(*(torch.arange(m, dtype=self.rho.dtype) for m in shape), indexing="ij")

    def divergence(self):
        return sum(v.narrow(a, 1, self.n) - v.narrow(a, 0, self.n) for a, v in enumerate(self.vel))

    def enforce_walls(self):
        n, s = self.n, self.solid
        for a, v in enumerate(self.vel):
            v.narrow(a, 0, 1).zero_()  # closed walls; the top (high end of the last axis) stays open
            if a < self.dim - 1:
                v.narrow(a, n, 1).zero_()
            v.narrow(a, 0, n)[s] = 0  # no flux through any face of a solid cell
            v.narrow(a, 1, n)[s] = 0

    def advect(self):
        n, dt = self.n, self.dt
        centre = [0.5 * (v.narrow(a, 1, n) + v.narrow(a, 0, n)) for a, v in enumerate(self.vel)]
        idx = self._index(self.rho.shape)
        self.rho = sample(self.rho, [(idx[a] - dt * centre[a]).clamp(0, n - 1) for a in range(self.dim)])
        new = []
        for a, v in enumerate(self.vel):  # back-trace from the face positions of component a
            fidx = self._index(v.shape)
            at_face = [(fidx[b] - 0.5).clamp(0, n - 1) if b == a else fidx[b] for b in range(self.dim)]
            vel_here = [v if b == a else sample(centre[b], at_face) for b in range(self.dim)]
            new.append(sample(v, [(fidx[b] - dt * vel_here[b]).clamp(0, n if b == a else n - 1) for b in range(self.dim)]))
        self.vel = new

    def forces_and_sources(self):
        n = self.n
        src = slice(n // 2 - n // 16, n // 2 + n // 16)
        self.rho[(src,) * (self.dim - 1) + (slice(2, 4),)] = 1.0
        up = self.vel[-1]
        up[..., 1:-1] += self.dt * self.buoy * 0.5 * (self.rho[..., 1:] + self.rho[..., :-1])

    def project(self, solver, rtol):
        """The pressure solve: one line, any krylon solver."""
        div = self.divergence().masked_fill(self.solid, 0)
        res = solver.solve(self.A, -div / self.dt, x0=self.p, rtol=rtol)  # <- the pressure solve
        self.p = p = res.x
        n = self.n
        for a, v in enumerate(self.vel):
            v.narrow(a, 1, n - 1).sub_(self.dt * (p.narrow(a, 1, n - 1) - p.narrow(a, 0, n - 1)))
        self.vel[-1][..., -1] -= self.dt * (0 - p[..., -1])  # open top: p = 0 beyond the last layer
        self.enforce_walls()
        return res

    def step(self, solver, rtol):
        self.advect()
        self.forces_and_sources()
        self.enforce_walls()
        return self.project(solver, rtol)


def make_solver(name, dim=2, model=None):
    if name == "cg":
        return CG(maxiter=20000)
    if name == "pcg-ic0":
        return CG(M=IC0(), maxiter=5000)
    if name in ("dcdm", "dcdm-paper", "dcdm+r", "fpcg-dcdm"):  # dcdm+r: the old name of dcdm
        kw = {"variant": "paper" if name == "dcdm-paper" else "multilevel", "maxiter": 200}
        dcdm = DCDM.load(model, **kw) if model else DCDM.pretrained(f"poisson{dim}d", **kw)
        if name == "fpcg-dcdm":  # the network as the preconditioner of flexible CG
            return CG(M=dcdm.preconditioner(), flexible=True, maxiter=500)
        return dcdm
    raise ValueError(f"unknown solver {name!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=2, choices=(2, 3))
    ap.add_argument("--n", type=int, default=None, help="cells per axis (default 128 in 2-D, 64 in 3-D)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--solver", default="pcg-ic0", choices=("cg", "pcg-ic0", "dcdm", "dcdm-paper", "dcdm+r", "fpcg-dcdm"))
    ap.add_argument("--model", default=None, help="a DCDM checkpoint (krylon train dcdm); default: the shipped one")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--obstacles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default="smoke-frames")
    ap.add_argument("--every", type=int, default=5, help="write a PNG every this many frames")
    args = ap.parse_args()
    n = args.n or (128 if args.dim == 2 else 64)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    mask = random_obstacles((n,) * args.dim, args.obstacles, seed=args.seed, min_size=0.08, max_size=0.18)
    mask[..., : n // 8] = False  # keep the source region open
    sim = Smoke(n, mask)
    solver = make_solver(args.solver, args.dim, args.model)
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
            rho = sim.rho if args.dim == 2 else sim.rho.mean(dim=1)  # 3-D: average over the depth axis
            img = rho.T.flip(0).cpu().numpy()
            plt.imsave(out / f"density_{f:04d}.png", img, cmap="inferno", vmin=0, vmax=1 if args.dim == 2 else max(float(rho.max()), 1e-6))
    print(f"{args.solver}: {total_it / args.frames:.1f} iterations and {1e3 * total_t / args.frames:.1f} ms per frame on average")


if __name__ == "__main__":
    main()

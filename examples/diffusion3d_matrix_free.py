"""Variable-coefficient 3-D diffusion, solved matrix-free with krylon CG (on the GPU when there is one).

    python examples/diffusion3d_matrix_free.py [--n 64] [--device auto]

-div(k grad u) = f on the unit cube, u = 0 on the boundary, with a log-normal
coefficient k (contrast ~1e3) and a few solid obstacles.  Compares plain CG,
Jacobi-PCG and the spectral (DST) preconditioner, all matrix-free.
"""

import argparse
import math
import time

import torch

from krylon.datasets.geometry import random_obstacles
from krylon.kernels import fft
from krylon.operators import Diffusion
from krylon.solvers import CG, Jacobi, SpectralPoisson


def lognormal_coefficient(n, device, seed=0, contrast=1e3):
    """A smooth random field exp(g) with g a Gaussian random field (spectral filter of white noise)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, n, n), generator=g, dtype=torch.float64)
    k2 = sum(kk ** 2 for kk in fft.wavenumber_grid((n, n, n), (1.0, 1.0, 1.0), real=False))
    smooth = torch.fft.ifftn(torch.fft.fftn(noise) * torch.exp(-k2 / (2 * (4 * 2 * torch.pi) ** 2))).real
    smooth = (smooth - smooth.mean()) / smooth.std()
    return torch.exp(smooth * math.log(contrast) / 6).to(device)  # +-3 sigma spans the contrast


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--rtol", type=float, default=1e-8)
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    n = args.n
    k = lognormal_coefficient(n, device)
    solid = random_obstacles((n, n, n), 6, kind="spheres", seed=1, min_size=0.1, max_size=0.25).to(device)
    A = Diffusion(k, spacing=1.0 / (n + 1), bc="dirichlet", obstacles=solid)
    f = torch.where(solid, 0.0, 1.0).to(torch.float64)
    print(f"grid {n}^3, device {device}, k in [{float(k.min()):.3g}, {float(k.max()):.3g}], {int(solid.sum())} solid cells")
    for name, M in [("CG", None), ("Jacobi-PCG", Jacobi()), ("spectral-PCG", SpectralPoisson())]:
        t0 = time.perf_counter()
        res = CG(rtol=args.rtol, M=M).solve(A, f)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rel = float(torch.linalg.vector_norm(f - A @ res.x) / torch.linalg.vector_norm(f))
        print(f"{name:13s} iterations {int(res.iterations):5d}  time {dt:7.3f} s  true rel. residual {rel:.2e}  ({res.reason.split(' (')[0]})")


if __name__ == "__main__":
    main()

"""Hand krylon's scipy drop-in to code written for scipy: an implicit heat-equation time stepper.

    python examples/scipy_dropin_time_stepper.py

The stepper below is ordinary scipy code: it assembles a finite-element-style
CSR matrix (backward Euler, (M + dt K) u^{n+1} = M u^n) and calls a CG function
with scipy's signature.  Passing ``krylon.solvers.cg`` instead of
``scipy.sparse.linalg.cg`` changes nothing else.
"""

import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import krylon.solvers


def assemble_p1_1d(n, length=1.0):
    """Mass and stiffness matrices of linear finite elements on [0, L], Dirichlet end nodes removed."""
    h = length / (n + 1)
    K = sp.diags([np.full(n - 1, -1.0), np.full(n, 2.0), np.full(n - 1, -1.0)], [-1, 0, 1]) / h
    M = sp.diags([np.full(n - 1, h / 6), np.full(n, 2 * h / 3), np.full(n - 1, h / 6)], [-1, 0, 1])
    return M.tocsr(), K.tocsr()


def assemble_heat_2d(n):
    """Bilinear (Q1) elements on the unit square as tensor products: M = M1 x M1, K = K1 x M1 + M1 x K1."""
    M1, K1 = assemble_p1_1d(n)
    return sp.kron(M1, M1, format="csr"), (sp.kron(K1, M1) + sp.kron(M1, K1)).tocsr()


def time_step(cg, n=96, steps=20, dt=1e-3):
    """A user's stepper: nothing krylon-specific in here."""
    M, K = assemble_heat_2d(n)
    A = (M + dt * K).tocsr()
    x = np.linspace(0, 1, n + 2)[1:-1]
    u = np.outer(np.sin(np.pi * x), np.sin(2 * np.pi * x)).ravel()
    for _ in range(steps):
        u, info = cg(A, M @ u, x0=u, rtol=1e-10, atol=0.0)
        if info != 0:
            raise RuntimeError(f"CG failed with info={info}")
    return u


if __name__ == "__main__":
    for name, solver in [("scipy.sparse.linalg.cg", spla.cg), ("krylon.solvers.cg", krylon.solvers.cg)]:
        t0 = time.perf_counter()
        u = time_step(solver)
        print(f"{name:24s} {time.perf_counter() - t0:6.2f} s   max|u| = {np.abs(u).max():.8f}")
    u_ref, u_kry = time_step(spla.cg), time_step(krylon.solvers.cg)
    print(f"max difference between the two runs: {np.abs(u_ref - u_kry).max():.2e}")

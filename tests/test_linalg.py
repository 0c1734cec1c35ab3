"""Batched linear-algebra kernels against dense numpy references."""

import numpy as np
import pytest
import torch

from krylon.kernels import linalg


def _spd(n, seed):
    g = np.random.default_rng(seed)
    B = g.standard_normal((n, n))
    return B @ B.T + n * np.eye(n)


@pytest.mark.parametrize("with_aq", [False, True])
def test_a_orthogonalize_against_stored_directions(with_aq):
    n, k, batch = 12, 4, 3
    A = _spd(n, 0)
    g = np.random.default_rng(1)
    # k mutually A-orthogonal directions per system (dense Gram-Schmidt as the reference)
    P = np.zeros((k, batch, n))
    for b in range(batch):
        for j in range(k):
            v = g.standard_normal(n)
            for i in range(j):
                v -= P[i, b] * (P[i, b] @ A @ v) / (P[i, b] @ A @ P[i, b])
            P[j, b] = v
    q = g.standard_normal((batch, n))
    Pt = [torch.from_numpy(p) for p in P]
    APt = [torch.from_numpy(p @ A) for p in P]  # A symmetric: (A p)^T = p^T A
    qt = torch.from_numpy(q)
    if with_aq:
        out, aout, qaq = linalg.a_orthogonalize(qt, Pt, APt, 1, a_q=torch.from_numpy(q @ A))
        np.testing.assert_allclose(aout.numpy(), out.numpy() @ A, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(qaq.numpy(), np.einsum("bi,ij,bj->b", out.numpy(), A, out.numpy()), rtol=1e-10)
    else:
        out = linalg.a_orthogonalize(qt, Pt, APt, 1)
    o = out.numpy()
    for j in range(k):
        coupling = np.einsum("bi,ij,bj->b", P[j], A, o) / np.sqrt(np.einsum("bi,ij,bj->b", P[j], A, P[j]))
        np.testing.assert_allclose(coupling, 0, atol=1e-10 * np.abs(q).max() * np.abs(A).max())
    # q_new - q lies in the span of the stored directions
    for b in range(batch):
        coef, *_ = np.linalg.lstsq(P[:, b].T, q[b] - o[b], rcond=None)
        np.testing.assert_allclose(P[:, b].T @ coef, q[b] - o[b], atol=1e-10)
    # a zero placeholder direction is skipped, and mismatched lists are an error
    same = linalg.a_orthogonalize(qt, [torch.zeros_like(qt)], [torch.zeros_like(qt)], 1)
    torch.testing.assert_close(same, qt)
    with pytest.raises(ValueError, match="directions"):
        linalg.a_orthogonalize(qt, Pt, APt[:2], 1)

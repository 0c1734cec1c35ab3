"""Stochastic EnKF against the exact Kalman filter on a linear Gaussian problem."""

import math

import pytest
import torch

from krylon.solvers.assimilation import EnKF

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _linear_gaussian(n=5, p=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    P = B @ B.T / n + 0.5 * torch.eye(n, dtype=torch.float64)
    mu = torch.randn(n, generator=g, dtype=torch.float64)
    H = torch.randn(p, n, generator=g, dtype=torch.float64)
    r = torch.rand(p, generator=g, dtype=torch.float64) + 0.2
    y = torch.randn(p, generator=g, dtype=torch.float64) * 2
    K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + torch.diag(r))
    return P, mu, H, r, y, mu + K @ (y - H @ mu), (torch.eye(n, dtype=torch.float64) - K @ H) @ P


def _ensemble(mu, P, m, seed):
    g = torch.Generator().manual_seed(seed)
    return mu + torch.randn(m, mu.numel(), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(P).T


@pytest.mark.parametrize("operator", ["matrix", "indices", "mask", "identity"])
def test_enkf_mean_and_covariance_match_kalman(operator):
    n, m = 5, 40000
    P, mu, H, r, y, mean_a, cov_a = _linear_gaussian(n, 3 if operator != "identity" else n)
    if operator in ("indices", "mask", "identity"):  # a selection H: rows of the identity
        idx = torch.tensor([0, 2, 4]) if operator != "identity" else torch.arange(n)
        H = torch.eye(n, dtype=torch.float64)[idx]
        r = r[: len(idx)]
        y = y[: len(idx)]
        K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + torch.diag(r))
        mean_a, cov_a = mu + K @ (y - H @ mu), (torch.eye(n, dtype=torch.float64) - K @ H) @ P
        op = {"indices": idx, "mask": torch.isin(torch.arange(n), idx), "identity": None}[operator]
    else:
        op = H
    xa = EnKF(seed=3).analyse(_ensemble(mu, P, m, seed=1), y, r.sqrt(), operator=op)
    # sampling error of an m-member estimate: a few standard errors of the prior spread
    tol = 5 * math.sqrt(float(P.diagonal().max()) / m)
    assert float((xa.mean(0) - mean_a).abs().max()) < tol
    cov = torch.cov(xa.T)
    assert float((cov - cov_a).abs().max()) < 10 * float(P.diagonal().max()) / math.sqrt(m)


def test_woodbury_path_equals_observation_space_path():
    # more observations than members uses the ensemble-space solve: same analysis as the direct formula
    n, m = 30, 10
    g = torch.Generator().manual_seed(0)
    X = torch.randn(m, n, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    r = torch.full((n,), 0.3, dtype=torch.float64)
    xa = EnKF(seed=5).analyse(X, y, r.sqrt())
    e = torch.randn(m, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * r.sqrt()
    A = X - X.mean(0)
    P = A.T @ A / (m - 1)
    K = P @ torch.linalg.inv(P + torch.diag(r))
    expected = X + (y + e - X) @ K.T
    assert torch.allclose(xa, expected, atol=1e-10)


def test_inflation_scales_the_anomalies():
    P, mu, H, r, y, *_ = _linear_gaussian()
    ens = _ensemble(mu, P, 20000, seed=2)
    xa = EnKF(inflation=2.0, seed=0).analyse(ens, y, r.sqrt(), operator=H)
    K = (4 * P) @ H.T @ torch.linalg.inv(H @ (4 * P) @ H.T + torch.diag(r))
    assert float((xa.mean(0) - (mu + K @ (y - H @ mu))).abs().max()) < 5 * math.sqrt(4 * float(P.diagonal().max()) / 20000)


def test_bad_input():
    f = EnKF(seed=0)
    X = torch.randn(1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2 members"):
        f.analyse(X, torch.zeros(4), 1.0)
    X = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="maps the state to 4"):
        f.analyse(X, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="noise_std"):
        f.analyse(X, torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="mask has shape"):
        f.analyse(X, torch.zeros(2), 1.0, operator=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="inflation"):
        EnKF(inflation=0.5)

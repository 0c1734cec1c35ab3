"""RVM against scikit-learn's ARDRegression (test-only oracle) and STLSQ against plain least squares."""

import numpy as np
import pytest
import torch

from krylon.solvers.sparse_regression import check_columns, rvm, stlsq

sklearn_linear = pytest.importorskip("sklearn.linear_model")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _problem(seed=0, n=400, m=8, noise=0.05):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m)) * rng.uniform(0.1, 10.0, m)  # columns of very different scales
    w = np.zeros(m)
    w[[1, 4, 6]] = [1.5 / X[:, 1].std(), -0.8 / X[:, 4].std(), 2.0 / X[:, 6].std()]
    y = X @ w + noise * rng.standard_normal(n)
    return X, y, w


@pytest.mark.parametrize("seed,noise", [pytest.param(0, 0.05, id="noisy"), pytest.param(1, 0.3, id="noisier"),
                                         pytest.param(2, 1e-4, id="nearly-exact")])
def test_rvm_matches_sklearn_ard(seed, noise):
    X, y, _ = _problem(seed, noise=noise)
    fit = rvm(X, y, threshold=1e2, tol=1e-10, max_iter=1000)
    scale = np.sqrt((X**2).mean(0))
    ard = sklearn_linear.ARDRegression(fit_intercept=False, threshold_lambda=1e2, tol=1e-10, max_iter=1000,
                                       alpha_1=1e-12, alpha_2=1e-12, lambda_1=1e-12, lambda_2=1e-12)
    yscale = np.sqrt((y**2).mean())
    ard.fit(X / scale, y / yscale)
    coef_ref = ard.coef_ * yscale / scale
    std_ref = np.sqrt(np.diag(ard.sigma_)) * yscale / scale[ard.lambda_ < 1e2]
    assert fit.active.numpy().tolist() == (ard.lambda_ < 1e2).tolist() == [False, True, False, False, True, False, True, False]
    np.testing.assert_allclose(fit.coef.numpy(), coef_ref, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(fit.std.numpy()[fit.active.numpy()], std_ref, rtol=1e-4)
    np.testing.assert_allclose(fit.noise_std, yscale * ard.alpha_ ** -0.5, rtol=1e-4)


def test_rvm_posterior_std_is_the_least_squares_std_for_the_true_support():
    # with a well-determined support the ARD prior is negligible: the posterior covariance -> sigma^2 (X^T X)^-1
    X, y, w = _problem(3, n=2000, noise=0.1)
    fit = rvm(X, y)
    Xs = X[:, w != 0]
    coef, *_ = np.linalg.lstsq(Xs, y, rcond=None)
    sigma2 = ((y - Xs @ coef) ** 2).sum() / (len(y) - Xs.shape[1])
    np.testing.assert_allclose(fit.coef.numpy()[w != 0], coef, rtol=1e-4)
    np.testing.assert_allclose(fit.std.numpy()[w != 0], np.sqrt(sigma2 * np.diag(np.linalg.inv(Xs.T @ Xs))), rtol=1e-2)


def test_stlsq_recovers_support_and_least_squares_coefficients():
    X, y, w = _problem(4, noise=0.01)
    fit = stlsq(X, y, threshold=0.5 * np.abs(w[w != 0]).min())
    assert fit.active.numpy().tolist() == (w != 0).tolist()
    Xs = X[:, w != 0]
    np.testing.assert_allclose(fit.coef.numpy()[w != 0], np.linalg.lstsq(Xs, y, rcond=None)[0], rtol=1e-9)
    assert fit.converged


def test_singular_library_is_refused_with_names():
    X, y, _ = _problem(5)
    dup = np.column_stack([X, -3 * X[:, 2]])
    names = [f"t{j}" for j in range(dup.shape[1])]
    with pytest.raises(ValueError, match="'t2' and 't8'"):
        rvm(dup, y, names=names)
    with pytest.raises(ValueError, match="singular"):
        stlsq(dup, y)
    zero = X.copy()
    zero[:, 3] = 0
    with pytest.raises(ValueError, match="column 3 is identically zero"):
        check_columns(torch.as_tensor(zero))


def test_bad_shapes_and_values():
    X, y, _ = _problem(6)
    with pytest.raises(ValueError, match="match theta"):
        rvm(X, y[:-1])
    with pytest.raises(ValueError, match="n_samples, n_terms"):
        rvm(X[:, 0], y)
    bad = y.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        rvm(X, bad)
    with pytest.raises(ValueError, match="threshold"):
        stlsq(X, y, threshold=-1)

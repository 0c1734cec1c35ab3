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
    fit = rvm(X, y, threshold=1e2, noise_threshold=0.0, tol=1e-10, max_iter=1000)  # sklearn's pruning rule
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


def test_rvm_type_ii_updates_match_sklearn_without_pruning():
    # no column pruned by either rule: the fixed point of the evidence updates alone, against sklearn's
    X, y, _ = _problem(7, noise=0.5)
    y = y + X @ (1.0 / X.std(0))  # every term relevant
    fit = rvm(X, y, threshold=1e300, tol=1e-12, max_iter=3000)
    scale, yscale = np.sqrt((X**2).mean(0)), np.sqrt((y**2).mean())
    ard = sklearn_linear.ARDRegression(fit_intercept=False, threshold_lambda=1e300, tol=1e-12, max_iter=3000,
                                       alpha_1=1e-12, alpha_2=1e-12, lambda_1=1e-12, lambda_2=1e-12).fit(X / scale, y / yscale)
    assert fit.active.all()
    np.testing.assert_allclose(fit.coef.numpy(), ard.coef_ * yscale / scale, rtol=1e-6)


def test_rvm_keeps_a_small_exact_term_next_to_a_large_one():
    # regression (#12): the relative threshold alone pruned true terms below ~10% of the target's RMS even
    # when the data determine them exactly (missing u_xx next to 0.02 u_xxx)
    rng = np.random.default_rng(8)
    X = rng.standard_normal((2000, 6))
    y = X[:, 0] + 0.02 * X[:, 3] + 1e-5 * rng.standard_normal(2000)
    assert rvm(X, y, noise_threshold=0.0).active.numpy().tolist() == [True, False, False, False, False, False]
    fit = rvm(X, y)
    assert fit.active.numpy().tolist() == [True, False, False, True, False, False]
    np.testing.assert_allclose(fit.coef.numpy()[[0, 3]], np.linalg.lstsq(X[:, [0, 3]], y, rcond=None)[0], rtol=1e-6)
    # with noise of the small term's size the data cannot confirm it: the relative rule decides as before
    noisy = X[:, 0] + 0.02 * X[:, 3] + 0.5 * rng.standard_normal(2000)
    assert rvm(X, noisy).active.numpy().tolist() == [True, False, False, False, False, False]


def test_stlsq_refits_the_final_support_when_stopped_by_max_iter():
    # regression (#12): stopping at max_iter returned the coefficients of the previous (larger) support
    X, y, w = _problem(9, noise=0.01)
    fit = stlsq(X, y, threshold=0.5 * np.abs(w[w != 0]).min(), max_iter=1)
    keep = fit.active.numpy()
    assert not fit.converged and keep.tolist() == (w != 0).tolist()
    np.testing.assert_allclose(fit.coef.numpy()[keep], np.linalg.lstsq(X[:, keep], y, rcond=None)[0], rtol=1e-9)


def test_a_dependency_among_three_columns_is_refused():
    # regression (#12): no two columns are parallel, but t8 = t0 + 2 t5 makes the normal equations singular
    X, y, _ = _problem(10)
    dep = np.column_stack([X, X[:, 0] + 2 * X[:, 5]])
    names = [f"t{j}" for j in range(dep.shape[1])]
    with pytest.raises(ValueError, match="'t0', 't5', 't8' are linearly dependent"):
        rvm(dep, y, names=names)
    with pytest.raises(ValueError, match="linearly dependent"):
        stlsq(dep, y)
    check_columns(torch.as_tensor(X))  # independent columns pass

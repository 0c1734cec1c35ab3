"""Sparse linear regression of a target on named library columns: the relevance vector machine and STLSQ.

* :func:`rvm` — sparse Bayesian regression (Tipping 2001; MacKay's type-II maximum-likelihood updates):
  a zero-mean Gaussian prior with its own precision ``alpha_i`` on every coefficient (automatic relevance
  determination), the evidence maximised over the precisions and the noise precision, columns whose
  precision passes a threshold pruned.  It returns posterior means and standard deviations.
* :func:`stlsq` — sequentially thresholded least squares (Brunton, Proctor, Kutz 2016, SINDy), the baseline.

Both take ``theta`` of shape ``(n_samples, n_terms)`` and ``y`` of shape ``(n_samples,)`` (torch or numpy)
and return a :class:`SparseFit`.  Columns are standardised (scaled to unit root-mean-square, not centred:
the regression has no intercept) before fitting and the coefficients mapped back, so a threshold means the
same whatever the units of a term.  A zero or duplicated column makes the problem singular and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..kernels import backend, validate

__all__ = ["SparseFit", "rvm", "stlsq", "check_columns"]


@dataclass
class SparseFit:
    """Result of a sparse regression.

    Attributes
    ----------
    coef : torch.Tensor
        Coefficients in the units of the original columns (``0`` for pruned terms), shape ``(n_terms,)``.
    std : torch.Tensor
        Posterior (RVM) or least-squares (STLSQ) standard deviations of the coefficients (``0`` when pruned).
    active : torch.Tensor
        Boolean mask of the kept terms.
    noise_std : float
        Estimated standard deviation of the residual.
    iterations : int
    converged : bool
    precisions : torch.Tensor
        The RVM's prior precisions ``alpha_i`` of the standardised coefficients (``inf`` when pruned); STLSQ: empty.
    """

    coef: torch.Tensor
    std: torch.Tensor
    active: torch.Tensor
    noise_std: float
    iterations: int
    converged: bool
    precisions: torch.Tensor = field(default_factory=lambda: torch.empty(0))


def _inputs(theta, y, names=None) -> tuple[torch.Tensor, torch.Tensor]:
    theta = backend.as_tensor(theta, name="theta")
    y = backend.as_tensor(y, name="y")
    if theta.is_complex() or y.is_complex():
        raise TypeError("theta and y must be real")
    theta = theta.to(torch.float64)
    y = y.to(device=theta.device, dtype=torch.float64)
    if theta.dim() != 2:
        raise ValueError(f"theta must have shape (n_samples, n_terms), got {tuple(theta.shape)}")
    if y.dim() != 1 or y.shape[0] != theta.shape[0]:
        raise ValueError(f"y must have shape ({theta.shape[0]},) to match theta {tuple(theta.shape)}, got {tuple(y.shape)}")
    if names is not None and len(names) != theta.shape[1]:
        raise ValueError(f"{len(names)} names for {theta.shape[1]} columns")
    validate.finite(theta, "theta")
    validate.finite(y, "y")
    return theta, y


def check_columns(theta: torch.Tensor, names=None, *, tol: float = 1e-10) -> torch.Tensor:
    """Root-mean-square of every column; ``ValueError`` naming a zero column or two (anti)parallel ones.

    Two columns whose normalised inner product is within ``tol`` of +-1 make the normal equations singular:
    the data cannot tell their coefficients apart, so the regression would return an arbitrary split.
    """
    label = (lambda j: repr(names[j])) if names is not None else (lambda j: f"column {j}")
    scale = theta.square().mean(0).sqrt()
    zero = (scale <= torch.finfo(theta.dtype).tiny).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"the library is singular: {', '.join(label(j) for j in zero)} is identically zero on the data")
    unit = theta / scale
    cos = (unit.T @ unit) / theta.shape[0]
    cos.fill_diagonal_(0)
    i, j = divmod(int(cos.abs().argmax()), cos.shape[0])
    if cos.shape[0] > 1 and float(cos[i, j].abs()) > 1 - tol:
        raise ValueError(f"the library is singular: {label(i)} and {label(j)} are the same column up to a factor on the data "
                         "(duplicate or linearly dependent terms); drop one of them")
    return scale


def rvm(theta, y, *, threshold: float = 1e2, max_iter: int = 300, tol: float = 1e-6, names=None) -> SparseFit:
    r"""Relevance vector machine: sparse Bayesian regression with ARD priors, type-II maximum likelihood.

    Parameters
    ----------
    theta : (n_samples, n_terms) array
        Library columns.
    y : (n_samples,) array
        Target.
    threshold : float
        Prune a term when the precision of its standardised coefficient reaches this (default ``1e2``, the
        MEDIDA papers').  Columns and target are scaled to unit root-mean-square, so the threshold is
        relative: a term whose contribution is well below ~10% of the target's RMS is dropped, whatever the
        units (without scaling ``y`` a KS model error of ``0.1 u_xxx`` would be pruned for being small).
    max_iter : int
    tol : float
        Stop when the standardised coefficients change by less than ``tol`` (sum of absolute changes).
    names : sequence of str, optional
        Term names, for error messages.

    Returns
    -------
    SparseFit

    Notes
    -----
    With standardised columns ``X``, for the kept set the posterior is
    :math:`\Sigma = (\beta X^T X + \mathrm{diag}\,\alpha)^{-1}`, :math:`m = \beta \Sigma X^T y`; then
    :math:`\gamma_i = 1 - \alpha_i \Sigma_{ii}`, :math:`\alpha_i \leftarrow \gamma_i / m_i^2`,
    :math:`\beta \leftarrow (n - \sum\gamma) / \lVert y - X m\rVert^2` (MacKay's fixed point; no hyperpriors).
    ``sklearn.linear_model.ARDRegression(fit_intercept=False, threshold_lambda=threshold)`` on the same
    standardised columns and target runs the same iteration (with tiny Gamma hyperpriors).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(200, 5, generator=g, dtype=torch.float64)
    >>> y = 2 * X[:, 1] - 0.5 * X[:, 3] + 1e-3 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> fit = rvm(X, y)
    >>> fit.active.tolist(), [round(c, 3) for c in fit.coef.tolist()]
    ([False, True, False, True, False], [0.0, 2.0, 0.0, -0.5, 0.0])
    """
    theta, y = _inputs(theta, y, names)
    threshold = validate.real_number(threshold, "threshold", minimum=0.0)
    max_iter = validate.integer(max_iter, "max_iter")
    tol = validate.tolerance(tol, "tol")
    n, m = theta.shape
    scale = check_columns(theta, names)
    X = theta / scale
    yscale = float(y.square().mean().sqrt())
    if yscale == 0:  # no model error at all: nothing to discover
        zeros = torch.zeros(m, dtype=torch.float64, device=X.device)
        return SparseFit(coef=zeros, std=zeros.clone(), active=zeros.bool(), noise_std=0.0, iterations=0, converged=True,
                         precisions=torch.full_like(zeros, math.inf))
    y = y / yscale
    XtX, Xty = X.T @ X, X.T @ y
    tiny = torch.finfo(torch.float64).tiny
    alpha = torch.ones(m, dtype=torch.float64, device=X.device)
    beta = 1.0 / max(float(y.var()), tiny) if n > 1 else 1.0
    keep = torch.ones(m, dtype=torch.bool, device=X.device)
    coef = torch.zeros(m, dtype=torch.float64, device=X.device)
    converged, it = False, 0

    def posterior(keep, alpha, beta):
        A = beta * XtX[keep][:, keep] + torch.diag(alpha[keep])
        Sigma = torch.linalg.inv(A)
        Sigma = 0.5 * (Sigma + Sigma.T)
        mu = beta * Sigma @ Xty[keep]
        return Sigma, mu

    for it in range(1, max_iter + 1):
        old = coef.clone()
        if not bool(keep.any()):
            converged = True
            break
        Sigma, mu = posterior(keep, alpha, beta)
        coef = torch.zeros_like(coef)
        coef[keep] = mu
        rss = float((y - X[:, keep] @ mu).square().sum())
        gamma = 1 - alpha[keep] * torch.diagonal(Sigma)
        alpha[keep] = gamma / mu.square().clamp_min(tiny)
        beta = (n - float(gamma.sum())) / max(rss, tiny)
        if it > 1 and float((old - coef).abs().sum()) < tol:
            converged = True
            break
        keep = keep & (alpha < threshold)
    keep = keep & (alpha < threshold)
    coef = torch.zeros(m, dtype=torch.float64, device=X.device)
    std = torch.zeros(m, dtype=torch.float64, device=X.device)
    if bool(keep.any()):
        Sigma, mu = posterior(keep, alpha, beta)
        coef[keep] = mu
        std[keep] = torch.diagonal(Sigma).clamp_min(0).sqrt()
    precisions = torch.where(keep, alpha, torch.full_like(alpha, math.inf))
    return SparseFit(coef=coef * yscale / scale, std=std * yscale / scale, active=keep,
                     noise_std=yscale * float(beta) ** -0.5 if beta > 0 else math.inf,
                     iterations=it, converged=converged, precisions=precisions)


def stlsq(theta, y, *, threshold: float = 0.1, ridge: float = 0.0, max_iter: int = 20, names=None) -> SparseFit:
    """Sequentially thresholded least squares (SINDy): fit, zero ``|coef| < threshold``, refit the rest, repeat.

    Parameters
    ----------
    threshold : float
        On the coefficients in the columns' own units (as pysindy's ``STLSQ(threshold=...)``).
    ridge : float
        Ridge penalty on the standardised coefficients (0: plain least squares).
    max_iter : int
        Thresholding rounds; stops early when the kept set no longer changes.

    Returns
    -------
    SparseFit
        ``std`` are the least-squares standard deviations of the kept coefficients.
    """
    theta, y = _inputs(theta, y, names)
    threshold = validate.real_number(threshold, "threshold", minimum=0.0)
    ridge = validate.real_number(ridge, "ridge", minimum=0.0)
    max_iter = validate.integer(max_iter, "max_iter")
    n, m = theta.shape
    scale = check_columns(theta, names)
    X = theta / scale
    keep = torch.ones(m, dtype=torch.bool, device=X.device)
    coef = torch.zeros(m, dtype=torch.float64, device=X.device)
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        coef = torch.zeros_like(coef)
        if bool(keep.any()):
            Xk = X[:, keep]
            A = Xk.T @ Xk + ridge * torch.eye(int(keep.sum()), dtype=X.dtype, device=X.device)
            coef[keep] = torch.linalg.solve(A, Xk.T @ y)
        new = keep & ((coef / scale).abs() >= threshold)
        if bool((new == keep).all()):
            converged = True
            break
        keep = new
    coef = torch.where(keep, coef, torch.zeros_like(coef))
    std = torch.zeros(m, dtype=torch.float64, device=X.device)
    k = int(keep.sum())
    resid = y - X[:, keep] @ coef[keep] if k else y
    sigma2 = float(resid.square().sum()) / max(n - k, 1)
    if k:
        std[keep] = (sigma2 * torch.diagonal(torch.linalg.inv(X[:, keep].T @ X[:, keep]))).clamp_min(0).sqrt()
    return SparseFit(coef=coef / scale, std=std / scale, active=keep, noise_std=math.sqrt(sigma2), iterations=it,
                     converged=converged)

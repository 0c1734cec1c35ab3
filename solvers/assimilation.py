"""Stochastic ensemble Kalman filter (Evensen 1994; Burgers, van Leeuwen, Evensen 1998): the analysis step.

The forecast ensemble ``(members, *state)`` and an observation ``y = H x + e``, ``e ~ N(0, R)`` with a diagonal
``R``, give the analysis ensemble ``x_a = x_f + K (y + e_j - H x_f)``: every member assimilates its own
perturbed copy of the observation, so the analysis spread is the Kalman filter's in expectation.  The gain
``K = P H^T (H P H^T + R)^{-1}`` uses the ensemble covariance ``P``; the linear system is solved in observation
space or, when there are more observations than members, in ensemble space (Sherman–Morrison–Woodbury), so
either shape is cheap.  Everything is one batched tensor computation over the members.
"""

from __future__ import annotations

import torch

from ..kernels import backend, validate

__all__ = ["EnKF"]


class EnKF:
    """Stochastic (perturbed-observation) EnKF analysis.

    Parameters
    ----------
    inflation : float
        Multiplicative inflation of the forecast anomalies (``>= 1``; 1 = none).
    seed : int, optional
        Seed of the observation perturbations (a fresh generator per filter: reproducible runs).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> ens = 1.0 + torch.randn(4000, 2, generator=g, dtype=torch.float64)   # prior N(1, I)
    >>> xa = EnKF(seed=1).analyse(ens, torch.tensor([3.0, 3.0], dtype=torch.float64), noise_std=1.0)
    >>> [round(v, 1) for v in xa.mean(0).tolist()]                         # exact posterior mean: 2, 2
    [2.0, 2.0]
    """

    def __init__(self, *, inflation: float = 1.0, seed: int | None = None):
        self.inflation = validate.real_number(inflation, "inflation", minimum=1.0)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(validate.integer(seed, "seed", minimum=0))
        else:
            self.generator.seed()

    def _observe(self, X: torch.Tensor, operator) -> torch.Tensor:
        """``H x`` for every row of ``X`` (members x n)."""
        if operator is None:
            return X
        if operator.dtype == torch.bool:
            return X[:, operator.flatten()]
        if operator.dtype in (torch.int64, torch.int32):
            return X[:, operator]
        return X @ operator.T

    def analyse(self, forecast, observation, noise_std, *, operator=None) -> torch.Tensor:
        """The analysis ensemble, shape of ``forecast``.

        Parameters
        ----------
        forecast : tensor (members, *state)
            The forecast ensemble (at least 2 members).
        observation : tensor
            ``(p,)`` observed values, or the state's shape when ``operator`` is None (everything observed).
        noise_std : float or tensor (p,)
            Standard deviation of the observation errors (``R = diag(noise_std^2)``), > 0.
        operator : None, bool mask, index tensor or (p, n) matrix
            ``H``: the identity, the observed entries of the state (a mask of the state's shape or flat
            indices), or a dense linear map of the flattened state.
        """
        X = backend.as_tensor(forecast, name="forecast")
        if X.dim() < 2:
            raise ValueError(f"forecast must have shape (members, *state), got {tuple(X.shape)}")
        members = X.shape[0]
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members to estimate a covariance, got {members}")
        validate.finite(X, "the forecast ensemble")
        shape = X.shape[1:]
        X = X.reshape(members, -1)
        n = X.shape[1]
        y = backend.as_tensor(observation, name="observation").to(dtype=X.dtype, device=X.device)
        given = tuple(y.shape)  # the observation may be a list: name its shape from the tensor
        if operator is not None:
            operator = torch.as_tensor(operator, device=X.device)
            if operator.dtype == torch.bool and tuple(operator.shape) != tuple(shape):
                raise ValueError(f"the observation mask has shape {tuple(operator.shape)}, the state {tuple(shape)}")
            if operator.is_floating_point():
                operator = operator.to(X.dtype)
                if operator.dim() != 2 or operator.shape[1] != n:
                    raise ValueError(f"the observation matrix must have shape (p, {n}), got {tuple(operator.shape)}")
            if operator.dtype in (torch.int64, torch.int32) and operator.numel() and (int(operator.min()) < 0 or int(operator.max()) >= n):
                raise ValueError(f"observation indices must lie in 0..{n - 1}")
        p = self._observe(X[:1], operator).shape[1]
        y = y.reshape(-1) if operator is None and tuple(y.shape) == tuple(shape) else y
        if y.dim() != 1 or y.shape[0] != p:
            raise ValueError(f"the observation has shape {given} but H maps the state to {p} values")
        validate.finite(y, "the observation")
        r = torch.as_tensor(noise_std, dtype=X.dtype, device=X.device).expand(p) ** 2
        if not bool(torch.isfinite(r).all()) or not bool((r > 0).all()):
            raise ValueError(f"noise_std must be positive and finite, got {noise_std!r} (a perfect observation needs no filter)")

        mean = X.mean(0)
        A = (X - mean) * self.inflation
        X = mean + A
        HA = self._observe(A, operator)
        HX = self._observe(mean[None], operator)[0] + HA  # H x_f of the inflated ensemble
        e = torch.randn(members, p, generator=self.generator, dtype=X.dtype).to(X.device) * r.sqrt()
        D = y + e - HX  # innovations, one perturbed observation per member
        S = HA / (members - 1) ** 0.5
        if p <= members:  # (S^T S + R) in observation space
            C = S.T @ S + torch.diag(r)
            W = torch.linalg.solve(C, D.T).T
        else:  # Woodbury: (S^T S + R)^{-1} = R^{-1} - R^{-1} S^T (I + S R^{-1} S^T)^{-1} S R^{-1}
            Dr = D / r
            Sr = S / r
            inner = torch.eye(members, dtype=X.dtype, device=X.device) + Sr @ S.T
            W = Dr - torch.linalg.solve(inner, Sr @ D.T).T @ S / r
        # the gain applied to every member's innovation, K d_j = A^T HA W_j / (m - 1), grouped so that no
        # members x members matrix is ever formed
        update = W @ (HA.T @ A) / (members - 1)
        return (X + update).reshape(members, *shape)

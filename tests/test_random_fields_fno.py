"""The NS initial vorticity has the statistics of FNO's ``GaussianRF`` (an independent numpy replica of its
recipe: real part of complex iid coefficients, explicit sqrt(2)); ``gaussian_random_field`` keeps its own
documented covariance exactly."""

import math

import numpy as np
import pytest
import torch

from krylon.datasets.navier_stokes import initial_amplitude, initial_vorticity
from krylon.datasets.random_fields import gaussian_random_field

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _fno_grf(n, batch, alpha=2.5, tau=7.0, seed=0):
    """FNO's 2-D GaussianRF sample recipe, written from its description in numpy."""
    sigma = tau ** (0.5 * (2 * alpha - 2))
    k = np.fft.fftfreq(n, 1.0 / n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    sqrt_eig = n**2 * math.sqrt(2.0) * sigma * (4 * math.pi**2 * k2 + tau**2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    rng = np.random.default_rng(seed)
    coeff = rng.standard_normal((batch, n, n)) + 1j * rng.standard_normal((batch, n, n))
    return np.fft.ifft2(sqrt_eig * coeff).real


def test_ns_initial_vorticity_has_the_variance_of_fnos_generator():
    n, batch = 64, 300
    ours = initial_vorticity(0, range(batch), n).numpy()
    theirs = _fno_grf(n, batch)
    # both against FNO's covariance 2 sigma^2 sum_k lambda_k (0.0701) and each other; the long-wave modes carry
    # most of the variance, so 300 fields pin it to ~5%; the old amplitude gave half (0.033)
    k = 2 * math.pi * np.fft.fftfreq(n, 1.0 / n)
    lam = (k[:, None] ** 2 + k[None, :] ** 2 + 49.0) ** (-2.5)
    lam[0, 0] = 0.0
    exact = 2 * 7.0**3 * lam.sum()
    assert abs(ours.var() / exact - 1) < 0.1 and abs(theirs.var() / exact - 1) < 0.1, (ours.var(), theirs.var())
    assert abs(ours.var() / theirs.var() - 1) < 0.15
    # the spectra agree mode by mode (shell averages), not only in total
    def shells(w):
        p = (np.abs(np.fft.fft2(w)) ** 2).mean(axis=0)
        k = np.fft.fftfreq(n, 1.0 / n)
        r = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)).astype(int)
        return np.bincount(r.ravel(), p.ravel())[1:8] / np.bincount(r.ravel())[1:8]
    np.testing.assert_allclose(shells(ours), shells(theirs), rtol=0.15)
    assert initial_amplitude(2.5, 7.0) == pytest.approx(math.sqrt(2) * 7.0**1.5)


def test_gaussian_random_field_default_covariance_is_exact_and_half_fnos():
    n, alpha, tau = 32, 2.5, 7.0
    k = 2 * math.pi * np.fft.fftfreq(n, 1.0 / n)
    lam = (k[:, None] ** 2 + k[None, :] ** 2 + tau**2) ** (-alpha)
    lam[0, 0] = 0.0
    expected = tau ** (2 * alpha - 2) * lam.sum()
    w = gaussian_random_field((n, n), alpha=alpha, tau=tau, batch=4000, generator=torch.Generator().manual_seed(3))
    assert abs(float(w.var()) / expected - 1) < 0.03
    assert abs(_fno_grf(n, 4000, seed=3).var() / (2 * expected) - 1) < 0.03

"""Gaussian and discrete Gaussian noise: calibration, exact pmf, errors (the byte sources and
exact samplers they draw from: tests/strategies/test_randomness.py)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from strategies.dp.noise import discrete_gaussian, discrete_gaussian_var, gaussian_noise, snap_to_grid
from strategies.randomness import KeystreamSource
from xsilo.errors import ConfigError


def src(i: int = 0) -> KeystreamSource:
    return KeystreamSource(bytes([i]) * 32)


def test_gaussian_noise_std_matches_sigma():
    sigma, n = 2.5, 400_000
    x = gaussian_noise(n, sigma, rng=src())
    # the sample std of n normals has sd ~ sigma/sqrt(2n); allow 5 of them
    assert abs(x.std() - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)
    assert stats.kstest(x / sigma, "norm").pvalue > 1e-4


def test_snap_to_grid_power_of_two():
    v = snap_to_grid(np.array([0.3, -1.7]), grid=0.3)
    assert np.all(v / 0.5 == np.round(v / 0.5))


def test_bad_noise_settings_are_config_errors():
    with pytest.raises(ConfigError, match="sigma must be finite and >= 0, got -1.0"):
        gaussian_noise(3, -1.0, rng=src())
    with pytest.raises(ConfigError, match="sigma must be finite"):
        gaussian_noise(3, float("nan"), rng=src())
    with pytest.raises(ConfigError, match="grid > 0, got 0.0"):
        snap_to_grid(np.zeros(2), grid=0.0)


def _dg_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    ks = np.arange(-60 * int(math.sqrt(sigma2) + 1), 60 * int(math.sqrt(sigma2) + 1) + 1)
    norm = np.exp(-(ks**2) / (2 * sigma2)).sum()
    return np.exp(-(support**2) / (2 * sigma2)) / norm


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_discrete_gaussian_matches_exact_pmf(sigma):
    n = 100_000
    x = discrete_gaussian(n, sigma, rng=src(3))
    lim = int(4 * sigma) + 1
    support = np.arange(-lim, lim + 1)
    expected = _dg_pmf(sigma * sigma, support) * n
    observed = np.array([(x == k).sum() for k in support], dtype=float)
    # fold the tails into the extreme bins so totals match
    expected[0] += (n - expected.sum()) / 2
    expected[-1] += n - expected.sum()
    observed[0] += (x < -lim).sum()
    observed[-1] += (x > lim).sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-4


@pytest.mark.parametrize("sigma", [7.0, 1234.5])
def test_discrete_gaussian_variance_large_sigma(sigma):
    n = 100_000
    x = discrete_gaussian(n, sigma, rng=src(4)).astype(float)
    var_ratio = x.var() / sigma**2
    assert abs(var_ratio - 1) < 5 * math.sqrt(2 / n)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)


def test_discrete_gaussian_rational_variance_and_shape():
    x = discrete_gaussian_var((3, 4), Fraction(10**12 + 1, 1024), rng=src())
    assert x.shape == (3, 4) and x.dtype == np.int64
    with pytest.raises(ConfigError, match="sigma_squared must be > 0"):
        discrete_gaussian_var(3, Fraction(0), rng=src())

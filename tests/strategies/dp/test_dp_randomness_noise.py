"""Secure byte sources, exact Bernoulli samplers, Gaussian and discrete Gaussian calibration."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from strategies.dp.noise import discrete_gaussian, discrete_gaussian_var, gaussian_noise, snap_to_grid
from strategies.dp.randomness import (
    AesCtrSource,
    SystemSource,
    bernoulli_exp_neg,
    bernoulli_rational,
    uniform01,
    uniform_below,
)


def src(i: int = 0) -> AesCtrSource:
    return AesCtrSource(bytes([i]) * 32)


def test_aes_source_is_deterministic_and_system_source_is_not():
    assert src(1).read(64) == src(1).read(64)
    assert src(1).read(64) != src(2).read(64)
    s = SystemSource()
    assert s.read(32) != s.read(32)
    assert len(s.read(100_000)) == 100_000


def test_uniform01_open_interval_and_uniform():
    u = uniform01(200_000, src())
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_uniform_below_is_unbiased():
    b = np.full(120_000, 6, dtype=np.int64)
    counts = np.bincount(uniform_below(b, src()), minlength=6)
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("num,den", [(1, 3), (2**70 + 1, 3 * 2**70)])
def test_bernoulli_rational_small_and_big_ints(num, den):
    n = 100_000
    nums = np.array([num] * n, dtype=object)
    dens = np.array([den] * n, dtype=object)
    p = num / den
    mean = bernoulli_rational(nums, dens, src()).mean()
    assert abs(mean - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("num,den", [(0, 1), (1, 4), (1, 1), (5, 2), (7, 1)])
def test_bernoulli_exp_neg(num, den):
    n = 100_000
    p = math.exp(-num / den)
    got = bernoulli_exp_neg(np.full(n, num), np.full(n, den), src()).mean()
    assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12


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
    with pytest.raises(ValueError):
        discrete_gaussian_var(3, Fraction(0), rng=src())

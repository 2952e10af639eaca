"""Noise for DP: continuous Gaussian (central DP) and exact discrete Gaussian (distributed DP).

Continuous Gaussian
    Box–Muller on secure 53-bit uniforms: ``Z = sqrt(-2 ln U1) * cos(2 pi U2)`` (and the sine
    twin). Floating-point noise is not the ideal mechanism (Mironov 2012, "On significance of
    the least significant bits for differential privacy"): the output set is finite and
    non-uniformly spaced, and the tails stop at about 8.6 sigma. We mitigate as Mironov
    suggests for Laplace: :func:`snap_to_grid` rounds the *released* noisy value to a
    power-of-two grid much coarser than the float spacing of the noise, which removes the
    low-order bits an attacker would read. The tail cut-off moves mass of order 1e-17 per
    coordinate, negligible next to any delta we account. Where an exact guarantee is
    required use the discrete Gaussian (the distributed mechanism always does).

Discrete Gaussian
    ``N_Z(0, sigma^2)``: P[X = x] proportional to exp(-x^2 / (2 sigma^2)) on the integers,
    sampled exactly with rational arithmetic: Canonne, Kamath & Steinke (2020), "The
    Discrete Gaussian for Differential Privacy", Algorithm 2 (discrete Laplace with integer
    scale t) and Algorithm 3 (rejection to the discrete Gaussian with t = floor(sigma) + 1).
    The loops run vectorized over all pending coordinates; every accept/reject decision is an
    exact Bernoulli with rational parameter (:mod:`strategies.randomness`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from strategies.randomness import (
    ByteSource,
    bernoulli_exp_neg,
    random_signs,
    uniform01_open,
    uniform_below,
)
from xsilo.errors import ConfigError

__all__ = [
    "GAUSSIAN_TAIL",
    "MAX_NOISE_STDDEV",
    "MIN_NOISE_STDDEV",
    "discrete_gaussian",
    "discrete_gaussian_var",
    "discrete_laplace",
    "gaussian_noise",
    "snap_to_grid",
]

MAX_NOISE_STDDEV = 1e300
"""The largest noise scale (and sensitivity ``w_max · C``) a DP setting may imply, in model
units. A round adds up to :data:`xsilo.terms.MAX_SILOS` (2^20) clipped terms and a Box–Muller
draw of under 9 sigma (:data:`GAUSSIAN_TAIL`). 1e300 leaves float64 (max 1.8e308) eight
decimal orders for both: past it a round would meet an inf mid-run."""
MIN_NOISE_STDDEV = 1e-300
"""The smallest noise standard deviation a DP setting may imply: the central release snaps to
a grid of ``sigma · 2^-20`` (:func:`snap_to_grid`), which must stay a positive float."""

GAUSSIAN_TAIL = math.sqrt(-2.0 * math.log(2.0**-53))
"""About 8.57: no draw of :func:`gaussian_noise` exceeds ``GAUSSIAN_TAIL * sigma`` in magnitude
(the Box–Muller radius ``sqrt(-2 ln U1)`` with ``U1 >= 2^-53``)."""


def gaussian_noise(shape: int | tuple[int, ...], sigma: float, *, rng: ByteSource) -> np.ndarray:
    """Continuous ``N(0, sigma^2)`` float64 noise by Box–Muller on secure uniforms."""
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ConfigError(f"Gaussian noise sigma must be finite and >= 0, got {sigma!r}; it is "
                          "the noise standard deviation (noise_multiplier × the clip norm): "
                          "check those settings")
    size = int(np.prod(shape))
    half = (size + 1) // 2
    u1 = uniform01_open(half, rng=rng)  # open interval: log(u1) is finite
    u2 = uniform01_open(half, rng=rng)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
    return (sigma * z).reshape(shape)


def snap_to_grid(values: np.ndarray, *, grid: float) -> np.ndarray:
    """Round values to the nearest multiple of ``grid`` (rounded up to a power of two).

    Applied to a *released* noisy value (post-processing, so privacy is unaffected); it
    destroys the float low-order bits that leak the noiseless value (Mironov 2012, §5).
    A good grid is about ``sigma * 2**-20``: far above float spacing, far below the noise.
    """
    if not grid > 0:
        raise ConfigError(f"snap_to_grid needs grid > 0, got {grid!r}; use about sigma · 2^-20 "
                          "(sigma > 0, the noise standard deviation)")
    lam = 2.0 ** math.ceil(math.log2(grid))
    return np.round(np.asarray(values, dtype=np.float64) / lam) * lam


def _geometric_exp_neg1(n: int, rng: ByteSource) -> np.ndarray:
    """V = number of Bernoulli(exp(-1)) successes before the first failure (P[V >= v] = e^-v)."""
    v = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    one = np.ones(1, dtype=np.int64)
    while todo.size:
        a = bernoulli_exp_neg(np.repeat(one, todo.size), np.repeat(one, todo.size), rng=rng)
        v[todo[a]] += 1
        todo = todo[a]
    return v


def discrete_laplace(n: int, t: int, rng: ByteSource) -> np.ndarray:
    """Exact discrete Laplace, P[Y = y] proportional to exp(-|y|/t), integer ``t >= 1``.

    CKS 2020, Algorithm 2: U ~ Unif{0..t-1}, keep with prob exp(-U/t); V ~ geometric as above;
    X = U + t V; a fair sign B, rejecting (B = 1, X = 0) so that 0 is not counted twice.
    """
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        m = n - filled
        u = uniform_below(np.full(m, t, dtype=np.int64), rng=rng)
        keep = bernoulli_exp_neg(u, np.full(m, t, dtype=np.int64), rng=rng)
        u = u[keep]
        x = u + t * _geometric_exp_neg1(u.size, rng)
        sign = random_signs(u.size, rng=rng)
        ok = ~((sign < 0) & (x == 0))
        y = (sign[ok].astype(np.int64) * x[ok])
        out[filled : filled + y.size] = y
        filled += y.size
    return out


def discrete_gaussian_var(
    shape: int | tuple[int, ...], sigma_squared: Fraction, *, rng: ByteSource
) -> np.ndarray:
    """Exact ``N_Z(0, sigma^2)`` int64 samples for a rational ``sigma_squared > 0``.

    CKS 2020, Algorithm 3: t = floor(sigma) + 1; Y ~ DLap(t); accept Y with probability
    exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)). With sigma^2 = p/q that exponent is the rational
    (|Y| q t - p)^2 / (2 p q t^2), evaluated in Python integers.
    """
    s2 = Fraction(sigma_squared)
    if s2 <= 0:
        raise ConfigError(f"discrete Gaussian sigma_squared must be > 0, got {s2}; it is the "
                          "local noise variance of the DDG calibration: check noise_multiplier "
                          "and clip_norm")
    p, q = s2.numerator, s2.denominator
    t = math.isqrt(p // q) + 1
    size = int(np.prod(shape))
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        m = size - filled
        y = discrete_laplace(m, t, rng)
        a = np.abs(y).astype(object)
        num = (a * (q * t) - p) ** 2
        den = np.full(m, 2 * p * q * t * t, dtype=object)
        keep = bernoulli_exp_neg(num, den, rng=rng)
        y = y[keep]
        out[filled : filled + y.size] = y
        filled += y.size
    return out.reshape(shape)


def discrete_gaussian(
    shape: int | tuple[int, ...], sigma: float | Fraction, *, rng: ByteSource
) -> np.ndarray:
    """Exact ``N_Z(0, sigma^2)`` samples; ``sigma`` is taken as the exact rational it represents."""
    return discrete_gaussian_var(shape, Fraction(sigma) ** 2, rng=rng)

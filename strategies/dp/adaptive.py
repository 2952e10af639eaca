"""Adaptive clipping to a target quantile of update norms (Andrew, Thakkar, McMahan &
Ramaswamy 2021, "Differentially Private Learning with Adaptive Clipping", Alg. 1 and Thm. 1).

Each round, every silo reports b_i = 1 if ``||Delta_i|| <= C`` (its update was *not*
clipped) next to its clipped update. The coordinator releases the noisy fraction

    b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2

(centering makes the sensitivity 1/2 instead of 1) and updates geometrically

    C <- C * exp(-eta * (b_bar - gamma)),

which moves C up while fewer than a fraction gamma of updates fit, down otherwise, so C
tracks the gamma-quantile of the norms. Privacy (Thm. 1): the pair (update sum with noise
z_Delta * C, count with noise sigma_b) is a Gaussian mechanism with noise multiplier z where

    z^-2 = z_Delta^-2 + (2 sigma_b)^-2,   i.e.   z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).

So the accountant records a Gaussian event with the *total* z; the update sum gets the
larger z_Delta. ``m`` (how many silos reported) is treated as public.

Float range. One step moves ``log C`` by at most ``eta (1 + GAUSSIAN_TAIL sigma_b / m)``
(|b_bar - gamma| < 1 plus the largest noise draw over m >= 1): :func:`check_clip_step` refuses
settings where that alone could overflow ``exp`` (:class:`~strategies.dp.DPConfig` calls it).
Steps still accumulate over a run, so :func:`next_clip_norm` keeps C within
``[min_clip_norm, max_clip_norm]``, the range where the round's noise standard deviation stays
a usable float (the DP config derives it). Clamping C is post-processing of the released
b_bar, so it costs no privacy, and a C inside the range is the plain update bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from strategies.dp.noise import GAUSSIAN_TAIL, gaussian_noise
from strategies.randomness import ByteSource
from xsilo.errors import ConfigError

__all__ = [
    "AdaptiveClipState",
    "check_clip_step",
    "next_clip_norm",
    "noisy_unclipped_fraction",
    "split_noise_multiplier",
]

_MAX_LOG_STEP = math.log(sys.float_info.max)  # about 709.78: exp() of more overflows float64
_EXP_SAFE = 700.0  # |exponent| up to which C * exp(exponent) is taken as published


def split_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``: the update's share of total multiplier z."""
    if not noise_multiplier > 0:
        raise ConfigError(f"noise_multiplier must be > 0, got {noise_multiplier!r}")
    if not 2.0 * count_stddev > noise_multiplier:
        raise ConfigError(
            f"clip_count_stddev={count_stddev!r} leaves no budget for the update: it must be "
            f"> z/2 = {noise_multiplier / 2.0:.4g} (z_Delta = (z^-2 - (2 sigma_b)^-2)^-1/2); "
            "use max(number_of_silos / 20, z), or lower noise_multiplier"
        )
    return (noise_multiplier**-2 - (2.0 * count_stddev) ** -2) ** -0.5


def noisy_unclipped_fraction(
    unclipped: Sequence[bool], *, count_stddev: float, rng: ByteSource
) -> float:
    """``b_bar = (sum(b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2`` (Andrew et al. 2021, Alg. 1)."""
    m = len(unclipped)
    if m == 0:
        raise ConfigError("adaptive clipping needs at least one reporting silo")
    centered = float(np.sum(np.asarray(unclipped, dtype=np.float64) - 0.5))
    noise = float(gaussian_noise(1, count_stddev, rng=rng)[0])
    return (centered + noise) / m + 0.5


def check_clip_step(*, learning_rate: float, fraction_stddev: float) -> None:
    """Refuse a clip update whose single step could overflow float64.

    ``fraction_stddev`` bounds ``sigma_b / m`` (the noise on b_bar) over every m >= 1 the
    run may see; the step's exponent is then below ``eta (1 + GAUSSIAN_TAIL fraction_stddev)``.
    """
    step = learning_rate * (1.0 + GAUSSIAN_TAIL * fraction_stddev)
    if not step <= _MAX_LOG_STEP:
        raise ConfigError(
            f"dp.clip_learning_rate={learning_rate!r} with a count noise of up to "
            f"{fraction_stddev:.4g} per reporting silo (sigma_b/m) lets one round move the clip "
            f"norm by a factor up to e^{step:.4g}, past float range (e^{_MAX_LOG_STEP:.2f}): "
            "the clip norm would track noise, not a quantile; lower dp.clip_learning_rate, "
            "dp.noise_multiplier or dp.clip_count_stddev, or use dp.clipping = 'fixed'")


def next_clip_norm(
    clip_norm: float, *, noisy_fraction: float, target_quantile: float, learning_rate: float,
    min_clip_norm: float = sys.float_info.min, max_clip_norm: float = sys.float_info.max,
) -> float:
    """Geometric update ``C * exp(-eta * (b_bar - gamma))``, kept in the clip range.

    A step too large for ``exp`` is taken in logs (it ends at a bound of the range anyway);
    see the module docstring for why clamping is sound.
    """
    exponent = -learning_rate * (noisy_fraction - target_quantile)
    if abs(exponent) <= _EXP_SAFE:
        c = clip_norm * math.exp(exponent)  # may be inf or 0: clamped below
    else:
        log_c = math.log(clip_norm) + exponent
        c = (max_clip_norm if log_c >= math.log(max_clip_norm) else
             min_clip_norm if log_c <= math.log(min_clip_norm) else math.exp(log_c))
    return min(max(c, min_clip_norm), max_clip_norm)


@dataclass(frozen=True)
class AdaptiveClipState:
    """The coordinator's adaptive-clipping state: one per run, checkpointable via ``asdict``."""

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 1.0
    min_clip_norm: float = sys.float_info.min
    max_clip_norm: float = sys.float_info.max

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"initial clip_norm must be > 0, got {self.clip_norm!r}")
        if not 0.0 < self.min_clip_norm <= self.clip_norm <= self.max_clip_norm < math.inf:
            raise ConfigError(
                f"clip_norm={self.clip_norm!r} must lie in its finite positive range "
                f"[{self.min_clip_norm!r}, {self.max_clip_norm!r}], where the round's noise "
                "stays a usable float; resume from this run's own checkpoint, or lower "
                "dp.clip_norm")
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(
                f"target_quantile must be in (0, 1), got {self.target_quantile!r}; 0.5 is typical"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"clip learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.count_stddev > 0:
            raise ConfigError(f"count_stddev must be > 0, got {self.count_stddev!r}")

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """The multiplier for the update sum, ``z_Delta``, given the run's total ``z``."""
        return split_noise_multiplier(
            noise_multiplier=noise_multiplier, count_stddev=self.count_stddev
        )

    def step(self, unclipped: Sequence[bool], *, rng: ByteSource) -> tuple[AdaptiveClipState, float]:
        """Release the noisy fraction of unclipped updates and return (next state, b_bar)."""
        b_bar = noisy_unclipped_fraction(unclipped, count_stddev=self.count_stddev, rng=rng)
        c = next_clip_norm(
            self.clip_norm,
            noisy_fraction=b_bar,
            target_quantile=self.target_quantile,
            learning_rate=self.learning_rate,
            min_clip_norm=self.min_clip_norm,
            max_clip_norm=self.max_clip_norm,
        )
        return replace(self, clip_norm=c), b_bar

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from strategies.dp.noise import gaussian_noise
from strategies.randomness import ByteSource
from xsilo.errors import ConfigError

__all__ = [
    "AdaptiveClipState",
    "next_clip_norm",
    "noisy_unclipped_fraction",
    "split_noise_multiplier",
]


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


def next_clip_norm(
    clip_norm: float, *, noisy_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """Geometric update ``C * exp(-eta * (b_bar - gamma))``."""
    return clip_norm * math.exp(-learning_rate * (noisy_fraction - target_quantile))


@dataclass(frozen=True)
class AdaptiveClipState:
    """The coordinator's adaptive-clipping state: one per run, checkpointable via ``asdict``."""

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 1.0

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"initial clip_norm must be > 0, got {self.clip_norm!r}")
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
        )
        return replace(self, clip_norm=c), b_bar

"""Adaptive clipping converges to the target quantile; the noise split keeps total z."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from strategies.dp.adaptive import AdaptiveClipState, split_noise_multiplier
from strategies.randomness import KeystreamSource
from xsilo.errors import ConfigError


def test_noise_split_recombines_to_total_z():
    z, sb = 1.0, 2.0
    zd = split_noise_multiplier(noise_multiplier=z, count_stddev=sb)
    assert zd > z
    assert zd**-2 + (2 * sb) ** -2 == pytest.approx(z**-2)
    with pytest.raises(ConfigError, match="count_stddev"):
        split_noise_multiplier(noise_multiplier=1.0, count_stddev=0.5)


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_clip_converges_to_target_quantile(quantile):
    """Norms ~ lognormal(mu=0, s=0.5): the gamma-quantile is exp(0.5 * Phi^-1(gamma))."""
    silos, rounds = 100, 600
    g = np.random.default_rng(1)  # data, not noise
    rng = KeystreamSource(bytes(32))
    state = AdaptiveClipState(clip_norm=0.05, target_quantile=quantile, learning_rate=0.2,
                              count_stddev=silos / 20)
    history = []
    for _ in range(rounds):
        norms = np.exp(0.5 * g.standard_normal(silos))
        state, _ = state.step(norms <= state.clip_norm, rng=rng)
        history.append(state.clip_norm)
    target = math.exp(0.5 * stats.norm.ppf(quantile))
    late = np.array(history[-200:])
    assert abs(np.median(late) / target - 1) < 0.08
    # fraction of norms under the final C is near the quantile
    frac = stats.norm.cdf(np.log(np.median(late)) / 0.5)
    assert abs(frac - quantile) < 0.05

"""Clipping is real (norm <= C exactly), and DP without clipping is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from strategies.dp.central import add_central_noise, clip_and_sum
from strategies.dp.clipping import clip_update, l2_norm, weighted_sum_sensitivity
from strategies.dp.config import DPConfig
from strategies.randomness import KeystreamSource
from xsilo.errors import ConfigError, UpdateRejected

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(
    a=arrays(np.float32, st.integers(1, 40), elements=finite),
    b=arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=finite),
    c=st.floats(1e-6, 1e4),
)
def test_clipped_norm_never_exceeds_c(a, b, c):
    res = clip_update({"a": a, "b": b}, clip_norm=c)
    flat = np.concatenate([res.update["a"].astype(np.float64).ravel(), res.update["b"].ravel()])
    assert l2_norm(res.update) <= c
    assert math.sqrt(float(np.sum(flat * flat))) <= c
    assert res.update["a"].dtype == np.float32
    assert res.clipped == (res.norm > c)
    if not res.clipped:
        assert np.array_equal(res.update["a"], a)
    else:  # direction kept, norm essentially C
        assert l2_norm(res.update) >= c * (1 - 1e-6)


def test_clip_rejects_bad_input():
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_update({"a": np.ones(3)}, clip_norm=0.0)
    with pytest.raises(UpdateRejected, match="NaN"):
        clip_update({"a": np.array([1.0, np.nan])}, clip_norm=1.0)


def test_dp_without_clipping_is_refused():
    with pytest.raises(ConfigError, match="without clipping"):
        DPConfig(mechanism="central", noise_multiplier=1.0, clip_norm=None)
    with pytest.raises(ConfigError, match="without clipping"):
        DPConfig.from_mapping({"mechanism": "distributed", "noise_multiplier": 1.0})
    with pytest.raises(ConfigError, match="without clipping"):
        DPConfig(mechanism="central", noise_multiplier=1.0, clip_norm=float("inf"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mechanism": "local"}, "mechanism"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"mechanism": "distributed", "clipping": "adaptive"}, "adaptive"),
        ({"mechanism": "distributed", "accounting": "pld"}, "pld"),
        ({"delta": 0.0}, "delta"),
        ({"clipping": "adaptive", "clip_count_stddev": 0.1}, "clip_count_stddev"),
        ({"max_weight": -1.0}, "max_weight"),
    ],
)
def test_config_refusals_name_the_key(kwargs, match):
    base = {"mechanism": "central", "noise_multiplier": 1.0, "clip_norm": 1.0}
    with pytest.raises(ConfigError, match=match):
        DPConfig(**{**base, **kwargs})


@pytest.mark.parametrize(("key", "value", "match"), [
    ("sampling_probability", 0.01, "xsilo asks every silo every round.*leave "
                                   "dp.sampling_probability at 1"),
    ("sampling_probability", 0.0, "sampling_probability"),
    ("sampling_probability", float("nan"), "expected a finite number"),
    ("k_stddevs", float("inf"), "dp.k_stddevs = inf .*expected a finite number"),
    ("k_stddevs", "6", "dp.k_stddevs = '6' .*expected a finite number"),
    ("k_stddevs", 1.5, r"dp.k_stddevs = 1.5: must be a number in \[2, 40\]"),
    ("k_stddevs", 1e300, r"dp.k_stddevs = 1e\+300: must be a number in \[2, 40\]"),
    ("modulus_bits", 32.5, "dp.modulus_bits = 32.5 .*expected an integer"),
    ("modulus_bits", "32", "dp.modulus_bits = '32' .*expected an integer"),
    ("modulus_bits", True, "dp.modulus_bits = True .*expected an integer"),
    ("modulus_bits", 7, "dp.modulus_bits = 7: must be an integer in 8..64"),
    ("modulus_bits", 65, "dp.modulus_bits = 65: must be an integer in 8..64"),
    ("noise_multiplier", "1", "dp.noise_multiplier = '1' .*expected a finite number"),
    ("max_epsilon", "8", "dp.max_epsilon = '8' .*expected a finite number or nothing"),
])
def test_a_setting_of_the_wrong_type_or_range_is_refused_before_any_arithmetic(key, value, match):
    """Refused where the table is read, naming the key and the fix, for both mechanisms: never
    a TypeError or ZeroDivisionError later, in the DDG calibration or the encoder."""
    for mechanism in ("central", "distributed"):
        table = {"mechanism": mechanism, "noise_multiplier": 1.0, "clip_norm": 1.0, key: value}
        with pytest.raises(ConfigError, match=match):
            DPConfig.from_mapping(table)


def test_every_round_is_accounted_without_subsampling():
    """Every silo is asked every round, so a round is the Gaussian itself; the key stays
    (at 1) so that run records and terms written with it still parse."""
    cfg = DPConfig.from_mapping({"mechanism": "central", "noise_multiplier": 1.0,
                                 "clip_norm": 1.0, "sampling_probability": 1.0})
    assert cfg.round_event().sampling_probability == 1.0
    assert DPConfig.from_mapping(cfg.to_mapping()) == cfg


def test_unknown_key_refused():
    with pytest.raises(ConfigError, match="unknown"):
        DPConfig.from_mapping({"mechanism": "central", "noise_multiplier": 1, "clip_norm": 1, "sigma": 2})


def test_weighted_sensitivity():
    assert weighted_sum_sensitivity(clip_norm=2.0, max_weight=3.0) == 6.0
    assert weighted_sum_sensitivity(clip_norm=2.0, max_weight=3.0, neighboring="replace_one") == 12.0


def test_central_noise_calibrated():
    """The noise added at the coordinator has std z * w_max * C."""
    cfg = DPConfig(mechanism="central", noise_multiplier=1.3, clip_norm=0.7, max_weight=2.0)
    std = cfg.sum_noise_stddev(clip_norm=0.7, num_silos=5)
    assert std == pytest.approx(1.3 * 0.7 * 2.0)
    g = np.random.default_rng(0)
    deltas = [{"w": g.normal(size=1000) * s} for s in (0.01, 1.0, 5.0)]
    cs = clip_and_sum(deltas, [1.0, 5.0, 0.5], clip_norm=0.7, max_weight=2.0)
    assert cs.unclipped == (True, False, False)
    noisy = add_central_noise(cs.total, stddev=std, rng=KeystreamSource(bytes(32)))
    big = add_central_noise({"w": np.zeros(300_000)}, stddev=std, rng=KeystreamSource(bytes(32)))["w"]
    assert abs(big.std() / std - 1) < 5 / math.sqrt(2 * 300_000)
    assert noisy["w"].shape == (1000,)


@pytest.mark.parametrize("z", [1e7, 1e308])
def test_a_noise_multiplier_past_any_use_is_refused_before_the_accountant_overflows(
        z: float) -> None:
    with pytest.raises(ConfigError, match=r"dp.noise_multiplier must be > 0 and ≤ 1e\+06"):
        DPConfig(mechanism="central", noise_multiplier=z, clip_norm=1.0)
    assert DPConfig(mechanism="central", noise_multiplier=1e6, clip_norm=1.0).accountant()

"""Edge values of DP settings: every refusal is a ConfigError naming the setting, at config time,
never an OverflowError/TypeError from the arithmetic, nor an inf (or a zero) mid-run."""

from __future__ import annotations

import math
import sys
import tomllib

import numpy as np
import pytest

from strategies.dp import DPConfig
from strategies.dp.accounting import Accountant, GaussianRound, PrivacyBudget, ZCDPRound
from strategies.dp.adaptive import AdaptiveClipState, next_clip_norm
from strategies.dp.central import add_central_noise
from strategies.dp.noise import MAX_NOISE_STDDEV
from strategies.randomness import KeystreamSource
from xsilo.errors import ConfigError
from xsilo.terms import MAX_ROUNDS

CENTRAL = {"mechanism": "central", "noise_multiplier": 1.0, "clip_norm": 1.0}
HUGE = 10**400  # a TOML integer past float range


# -- 1. adaptive clipping: no overflow of the geometric update -----------------------------
@pytest.mark.parametrize("extra", [
    {"noise_multiplier": 1e5},  # the default sigma_b >= z: one step could move C by e^1.7e5
    {"noise_multiplier": 1.0, "clip_count_stddev": 1e4},
    {"noise_multiplier": 1.0, "clip_learning_rate": 1e3},
])
def test_adaptive_clipping_whose_one_step_could_overflow_is_refused_at_config(extra):
    with pytest.raises(ConfigError, match=r"dp.clip_learning_rate=.*past float range.*"
                                          r"dp.clipping = 'fixed'"):
        DPConfig(**{**CENTRAL, "clipping": "adaptive", "accounting": "rdp", **extra})


def test_adaptive_clip_norm_stays_finite_and_positive_whatever_the_noise():
    """A state built directly (no DPConfig bound on its step): a count noise of 1e6 on five
    silos moves log C by ~4e4 a round, and C stays a positive float instead of math.exp
    raising OverflowError (or C reaching 0)."""
    state = AdaptiveClipState(clip_norm=1.0, count_stddev=1e6)
    rng = KeystreamSource(b"adaptive-overflow".ljust(32, b"0"))
    seen = []
    for _ in range(40):
        state, b_bar = state.step([True, False, True, True, False], rng=rng)
        seen.append(state.clip_norm)
    assert all(sys.float_info.min <= c <= sys.float_info.max for c in seen)
    assert {sys.float_info.min, sys.float_info.max} <= set(seen)  # both ends were hit


def test_the_run_clip_norm_stays_where_its_noise_is_a_usable_float():
    """At the largest accepted step, a run's C is kept where ``z_Delta w_max C`` stays within
    the noise limits, and that noise can be drawn, round after round."""
    dp = DPConfig(**{**CENTRAL, "clipping": "adaptive", "accounting": "rdp",
                     "noise_multiplier": 400.0, "clip_learning_rate": 0.2})
    state = dp.adaptive_state(num_silos=2)
    rng = KeystreamSource(b"adaptive-range".ljust(32, b"0"))
    for _ in range(300):
        state, _ = state.step([True, False], rng=rng)
        assert state.min_clip_norm <= state.clip_norm <= state.max_clip_norm
        sigma = dp.sum_noise_stddev(clip_norm=state.clip_norm, num_silos=2)
        assert 0 < sigma <= MAX_NOISE_STDDEV
    noisy = add_central_noise({"w": np.zeros(4)}, stddev=sigma, rng=rng)["w"]
    assert np.all(np.isfinite(noisy))


def test_next_clip_norm_inside_the_range_is_the_published_update_bit_for_bit():
    for c, b_bar in [(1.0, 0.9), (0.37, -3.2), (12.5, 7.75), (1e-3, 0.5)]:
        got = next_clip_norm(c, noisy_fraction=b_bar, target_quantile=0.5, learning_rate=0.2)
        assert got == c * math.exp(-0.2 * (b_bar - 0.5))
    # a step exp cannot take ends at the range's bound; so does an inf or 0 product
    big = dict(target_quantile=0.5, learning_rate=1.0, min_clip_norm=1e-10, max_clip_norm=1e10)
    assert next_clip_norm(1.0, noisy_fraction=-1e6, **big) == 1e10
    assert next_clip_norm(1.0, noisy_fraction=1e6, **big) == 1e-10
    assert next_clip_norm(1e300, noisy_fraction=-600.0, target_quantile=0.5,
                          learning_rate=1.0) == sys.float_info.max


def test_a_valid_adaptive_run_computes_what_it_did():
    """The clamp never touches a usable run: every C is the plain geometric update."""
    dp = DPConfig(**{**CENTRAL, "clipping": "adaptive", "noise_multiplier": 2.0})
    state = dp.adaptive_state(num_silos=5)
    rng = KeystreamSource(b"adaptive-valid".ljust(32, b"0"))
    for _ in range(50):
        before = state.clip_norm
        state, b_bar = state.step([True, False, True, True, False], rng=rng)
        assert state.clip_norm == before * math.exp(-0.2 * (b_bar - 0.5))


# -- 2. a [dp] table with an integer past float range --------------------------------------
@pytest.mark.parametrize("key", ["clip_norm", "noise_multiplier", "max_weight", "delta",
                                 "max_epsilon", "k_stddevs", "clip_learning_rate",
                                 "target_quantile", "sampling_probability"])
@pytest.mark.parametrize("value", [HUGE, -HUGE])
def test_an_integer_past_float_range_is_a_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"dp.{key}"):
        DPConfig.from_mapping({**CENTRAL, key: value})


def test_a_toml_clip_norm_past_float_range_is_a_config_error():
    table = tomllib.loads('mechanism = "central"\nnoise_multiplier = 1.0\nclip_norm = 1'
                          + "0" * 400)
    with pytest.raises(ConfigError, match="dp.clip_norm=1000"):
        DPConfig.from_mapping(table)


@pytest.mark.parametrize("value", [HUGE, "1", True, None, [1.0], {"a": 1}, float("nan"),
                                   float("inf"), -1.0, 0])
@pytest.mark.parametrize("key", ["clip_norm", "noise_multiplier", "max_weight", "delta",
                                 "clip_learning_rate", "clip_count_stddev", "target_quantile"])
def test_only_config_errors_come_out_of_a_bad_adaptive_table(key, value):
    """What a silo parses from the coordinator's table: a ConfigError (its ProtocolError),
    never a TypeError, OverflowError or ValueError."""
    table = {**CENTRAL, "clipping": "adaptive", key: value}
    try:
        DPConfig.from_mapping(table)
    except ConfigError:
        pass


# -- 3. accounting -------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    pytest.param(lambda: GaussianRound(HUGE), id="gaussian-z-huge"),
    pytest.param(lambda: GaussianRound("1"), id="gaussian-z-text"),
    pytest.param(lambda: GaussianRound(True), id="gaussian-z-bool"),
    pytest.param(lambda: GaussianRound(float("inf")), id="gaussian-z-inf"),
    pytest.param(lambda: GaussianRound(1.0, "0.5"), id="gaussian-q-text"),
    pytest.param(lambda: GaussianRound(1.0, HUGE), id="gaussian-q-huge"),
    pytest.param(lambda: ZCDPRound(HUGE), id="zcdp-huge"),
    pytest.param(lambda: ZCDPRound("0.1"), id="zcdp-text"),
    pytest.param(lambda: ZCDPRound(None), id="zcdp-none"),
    pytest.param(lambda: PrivacyBudget("x", 1e-5), id="budget-text"),
    pytest.param(lambda: PrivacyBudget(HUGE, 1e-5), id="budget-huge"),
    pytest.param(lambda: PrivacyBudget(float("inf"), 1e-5), id="budget-inf"),
    pytest.param(lambda: PrivacyBudget(8.0, "1e-5"), id="budget-delta-text"),
    pytest.param(lambda: PrivacyBudget(8.0, 2.0), id="budget-delta-range"),
    pytest.param(lambda: PrivacyBudget(8.0, 1e-320), id="budget-delta-subnormal"),
    pytest.param(lambda: Accountant(1e-320), id="accountant-delta-subnormal"),  # eps = inf
])
def test_an_accounting_value_of_the_wrong_type_or_range_is_a_config_error(make):
    with pytest.raises(ConfigError, match="must be a"):
        make()


@pytest.mark.parametrize("rounds", [HUGE, 10**18, MAX_ROUNDS + 1, -1, 2.0, True])
@pytest.mark.parametrize("method,event", [("pld", GaussianRound(2.0)),
                                          ("rdp", GaussianRound(2.0)),
                                          ("rdp", ZCDPRound(0.1))])
def test_epsilon_if_refuses_more_rounds_than_a_run_may_state(method, event, rounds):
    with pytest.raises(ConfigError, match=f"rounds must be an integer >= 0 and <= {MAX_ROUNDS}"):
        Accountant(1e-5, method).epsilon_if(event, rounds=rounds)


def test_valid_accounting_values_still_work():
    assert GaussianRound(2) == GaussianRound(2.0)
    assert GaussianRound(np.float64(1.5), np.float32(0.25)).noise_multiplier == 1.5
    assert PrivacyBudget(8, 1e-5).max_epsilon == 8
    assert Accountant(1e-5, "rdp").epsilon_if(ZCDPRound(0.1), rounds=100) > 0


# -- 4. the noise a config implies must be a usable float ------------------------------------
@pytest.mark.parametrize("mechanism", ["central", "distributed"])
@pytest.mark.parametrize("extra", [
    {"clip_norm": 1e308},  # z w_max C = inf
    {"clip_norm": 1e300, "noise_multiplier": 2.0},  # 2e300: no headroom for the round's sum
    {"clip_norm": 1e200, "max_weight": 1e200},  # the sensitivity itself is inf
    {"clip_norm": 1e-200, "noise_multiplier": 1e-200, "accounting": "rdp"},  # sigma underflows
])
def test_a_noise_std_outside_float_range_is_refused_at_config(mechanism, extra):
    with pytest.raises(ConfigError, match=r"noise standard deviation.*dp.clip_norm"):
        DPConfig(**{**CENTRAL, "mechanism": mechanism, **extra})


def test_adaptive_counts_its_larger_update_multiplier():
    """``z_Delta`` is up to ``z sqrt(4/3)``: a C whose noise fits with z but not z_Delta."""
    c = MAX_NOISE_STDDEV / 1.1
    assert DPConfig(**{**CENTRAL, "clip_norm": c})
    with pytest.raises(ConfigError, match="noise standard deviation"):
        DPConfig(**{**CENTRAL, "clip_norm": c, "clipping": "adaptive"})


def test_the_largest_accepted_noise_can_be_drawn_and_released():
    dp = DPConfig(**{**CENTRAL, "clip_norm": MAX_NOISE_STDDEV})
    sigma = dp.sum_noise_stddev(clip_norm=dp.clip_norm, num_silos=3)
    total = {"w": np.full(8, 3 * MAX_NOISE_STDDEV)}
    out = add_central_noise(total, stddev=sigma, rng=KeystreamSource(bytes(32)))["w"]
    assert np.all(np.isfinite(out))


def test_a_distributed_sum_past_float_range_is_refused_when_calibrated():
    dp = DPConfig(**{**CENTRAL, "mechanism": "distributed", "clip_norm": 1e299})
    with pytest.raises(ConfigError, match="decoded sum span.*dp.clip_norm"):
        dp.ddg_params(num_silos=3, min_survivors=2, dimension=2**20)
    wide = DPConfig(**{**CENTRAL, "mechanism": "distributed", "clip_norm": 1e-3,
                       "max_weight": 1e300})
    with pytest.raises(ConfigError, match="dp.max_weight"):
        wide.ddg_params(num_silos=3, min_survivors=2, dimension=2**20)
    assert DPConfig(**{**CENTRAL, "mechanism": "distributed"}).ddg_params(
        num_silos=3, min_survivors=2, dimension=1024).calibrate().rho > 0


@pytest.mark.parametrize("state", [
    {"delta": 1e-5, "method": "pld"},  # no events
    {"delta": 1e-5, "method": "pld", "events": [{"kind": "nope"}]},
    {"delta": 1e-5, "method": "pld", "events": [{"kind": "gaussian", "bogus": 1}]},
    {"delta": 1e-5, "method": "pld", "events": 5},
    {"delta": "x", "method": "pld", "events": []},
    [],
], ids=["no-events", "unknown-kind", "unknown-field", "events-not-a-list", "delta-text",
        "not-a-mapping"])
def test_a_damaged_accountant_state_is_a_config_error(state):
    with pytest.raises(ConfigError, match="saved state is damaged|delta must be"):
        Accountant.from_state_dict(state)


def test_a_checkpoints_damaged_dp_state_is_a_config_error_naming_it():
    import json

    from coordinator.privacy import RunPrivacy
    from strategies.dp import DPConfig

    privacy = RunPrivacy(DPConfig(mechanism="central", noise_multiplier=1.0, clip_norm=1.0),
                         num_silos=3)
    arrays = privacy.state_arrays()
    (key,) = arrays
    for state in ({"accountant": {"delta": 1e-5}}, {"accountant": privacy.accountant.state_dict()},
                  "[" * 100_000):
        damaged = {key: np.asarray(state if isinstance(state, str) else json.dumps(state))}
        with pytest.raises(ConfigError, match=r"checkpoint's DP state \(dp/state\) is unreadable"):
            privacy.load_state_arrays(damaged)

"""End to end: the unmasked sum equals the plain weighted sum, over many random federations.

Silo counts 3–20, every threshold a silo accepts (a strict majority), dropouts at every stage (before keys, after keys, after the
masked input, during unmasking) up to n − t, several consecutive rounds of one run with keys
agreed once. Set XSILO_SECAGG_SLOW=1 for hundreds of cases.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from secagg_helpers import prop_settings
from hypothesis import strategies as st

from strategies.secagg import make_config
from strategies.secagg.simulate import LocalFederation
from xsilo.errors import SecureAggregationError


def _clipped_weighted_sum(updates, weights, silos, clip):
    return sum(weights[s] * np.clip(updates[s], -clip, clip) for s in silos)


@st.composite
def scenarios(draw):
    n = draw(st.integers(3, 20))
    t = draw(st.integers(n // 2 + 1, n))  # silos refuse t ≤ n/2 (test_equivocation.py)
    rounds = draw(st.integers(1, 3))
    before_keys = draw(st.sets(st.sampled_from(range(n)), max_size=n - t))
    keyed = [s for s in range(n) if s not in before_keys]
    plan = []
    for _ in range(rounds):
        budget = len(keyed) - t  # dropouts allowed this round
        no_input = draw(st.sets(st.sampled_from(keyed), max_size=budget))
        rest = [s for s in keyed if s not in no_input]
        no_unmask = draw(st.sets(st.sampled_from(rest), max_size=budget - len(no_input)))
        plan.append((no_input, no_unmask))
    length = draw(st.integers(1, 8))
    bits = draw(st.integers(2, 20))
    return n, t, sorted(before_keys), plan, length, bits, draw(st.integers(0, 2**32 - 1))


@prop_settings(120)
@given(scenarios())
def test_unmasked_sum_matches_plain_weighted_sum(scenario):
    n, t, before_keys, plan, length, bits, seed = scenario
    config = make_config(run_id=f"prop-{seed}", roster=list(range(n)), threshold=t,
                         length=length, clip=1.0, bits=bits, max_weight=1000)
    fed = LocalFederation(config, seed=seed.to_bytes(8, "big"))
    fed.setup(drop=before_keys)
    gen = np.random.default_rng(seed)  # test data only
    for round_, (no_input, no_unmask) in enumerate(plan, start=1):
        updates = {s: gen.uniform(-1.5, 1.5, length) for s in range(n)}
        weights = {s: int(gen.integers(0, 1001)) for s in range(n)}
        result = fed.run_round(round_, updates, weights, drop_before_input=no_input,
                               drop_before_unmask=no_unmask)
        expected_silos = sorted(set(range(n)) - set(before_keys) - set(no_input))
        assert list(result.contributors) == expected_silos
        assert result.total_weight == sum(weights[s] for s in expected_silos)
        exact = _clipped_weighted_sum(updates, weights, expected_silos, 1.0)
        err = np.abs(result.weighted_sum - exact)
        assert np.all(err <= result.error.max_abs_bound + 1e-9 * (1 + np.abs(exact)))


@pytest.mark.parametrize("stage", ["before_keys", "before_input", "before_unmask"])
def test_fewer_than_t_survivors_fails_loudly_and_next_round_works(stage):
    config = make_config(run_id="fail", roster=list(range(6)), threshold=4, length=3, clip=1.0,
                         bits=8, max_weight=10)
    fed = LocalFederation(config, seed=b"fail")
    fed.setup(drop=[0, 1, 2] if stage == "before_keys" else [])
    updates = {s: np.full(3, 0.5) for s in range(6)}
    weights = dict.fromkeys(range(6), 2)
    kwargs = {"before_input": {"drop_before_input": [0, 1, 2]},
              "before_unmask": {"drop_before_unmask": [0, 1, 2]}}.get(stage, {})
    with pytest.raises(SecureAggregationError, match="threshold=4"):
        fed.run_round(1, updates, weights, **kwargs)
    if stage != "before_keys":
        result = fed.run_round(2, updates, weights)  # the run goes on, with a fresh round number
        assert result.total_weight == 12
        np.testing.assert_allclose(result.weighted_sum, 6.0, atol=result.error.max_abs_bound)


def test_twenty_silos_three_rounds_with_rejoining_dropouts():
    config = make_config(run_id="big", roster=list(range(100, 120)), threshold=11, length=50,
                         clip=2.0, bits=16, max_weight=500)
    fed = LocalFederation(config, seed=b"big")
    fed.setup(drop=[100])
    gen = np.random.default_rng(7)
    for round_, (no_input, no_unmask) in enumerate(
            [([101, 102, 103], [104, 105]), ([104, 105], [101, 102, 103, 106]), ([], [])], start=1):
        updates = {s: gen.normal(0, 1, 50) for s in config.roster}
        weights = {s: int(gen.integers(1, 501)) for s in config.roster}
        result = fed.run_round(round_, updates, weights, drop_before_input=no_input,
                               drop_before_unmask=no_unmask)
        silos = [s for s in config.roster if s != 100 and s not in no_input]
        assert list(result.contributors) == silos
        exact = _clipped_weighted_sum(updates, weights, silos, 2.0)
        assert np.max(np.abs(result.weighted_sum - exact)) <= result.error.max_abs_bound

"""Pre-encoded mode: the masking layer sums the silos' own integer vectors mod 2^b exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from secagg_helpers import seeded

from strategies.secagg import coordinator as co
from strategies.secagg import make_config, message_from_record, silo_step
from strategies.secagg.config import make_encoded_config
from strategies.secagg.encoded import encoded_input, encoded_sum
from strategies.secagg.messages import KeyRequest
from strategies.secagg.simulate import LocalFederation
from strategies.secagg.silo import silo_state_from_record, silo_state_to_record
from xsilo.errors import ConfigError, ProtocolError, SecureAggregationError, UpdateRejected

ROSTER = [10, 11, 12, 13, 14]


def _fed(bits: int, length: int = 33) -> LocalFederation:
    config = make_encoded_config(run_id="enc", roster=ROSTER, threshold=3, length=length,
                                 modulus_bits=bits)
    fed = LocalFederation(config, seed=b"encoded")
    fed.setup()
    return fed


def _vectors(bits: int, length: int, seed: int) -> dict[int, np.ndarray]:
    # numpy.random only makes up test data (the "encoded" vectors), never masks or secrets.
    gen = np.random.default_rng(seed)
    return {s: gen.integers(0, 1 << bits, length, dtype=np.uint64, endpoint=False)
            for s in ROSTER}


def _round(fed: LocalFederation, r: int, vectors: dict[int, np.ndarray], *,
           drop_input=(), drop_unmask=()) -> tuple[co.RoundResult, list]:
    state, requests = co.begin_round(fed.coordinator, round_=r)
    masked_seen = []
    for s, req in requests.items():
        if s in drop_input:
            continue
        fed.silos[s], reply = silo_step(fed.silos[s], message_from_record(req.to_record()),
                                        encoded=vectors[s], rng=seeded(f"{s}/{r}"))
        masked_seen.append(reply.masked.copy())
        state = co.receive_masked(state, message_from_record(reply.to_record()))
    state, unmask = co.request_unmask(state)
    for s, req in unmask.items():
        if s in drop_unmask:
            continue
        fed.silos[s], reply = silo_step(fed.silos[s], message_from_record(req.to_record()))
        state = co.receive_unmask(state, message_from_record(reply.to_record()))
    fed.coordinator, result = co.finish_round(state)
    return result, masked_seen


def _modsum(vectors, silos, bits):
    total = np.zeros_like(vectors[silos[0]])
    for s in silos:
        total = total + vectors[s]
    return total & np.uint64((1 << bits) - 1) if bits < 64 else total


@pytest.mark.parametrize("bits, drop_input, drop_unmask", [
    (32, (), ()), (20, (14,), ()), (64, (13, 14), ()), (16, (), (10, 11)), (8, (12,), (13,))])
def test_unmasked_sum_is_the_exact_modular_sum(bits, drop_input, drop_unmask):
    fed = _fed(bits)
    vectors = _vectors(bits, 33, seed=bits)
    result, seen = _round(fed, 1, vectors, drop_input=drop_input, drop_unmask=drop_unmask)
    contributors = [s for s in ROSTER if s not in drop_input]
    assert result.contributors == tuple(contributors) and result.total_weight == len(contributors)
    assert result.weighted_sum.dtype == np.uint64
    np.testing.assert_array_equal(result.weighted_sum, _modsum(vectors, contributors, bits))
    assert result.error.max_abs_bound == 0.0 and result.error.std_bound == 0.0
    for s, y in zip(contributors, seen):  # what the coordinator received is masked
        assert y.dtype == (np.uint32 if bits <= 32 else np.uint64)
        assert np.count_nonzero(y[1:].astype(np.uint64) == vectors[s]) <= 2


def test_several_rounds_with_the_same_keys():
    fed = _fed(32, length=8)
    for r in (1, 2, 5):
        vectors = _vectors(32, 8, seed=r)
        result, _ = _round(fed, r, vectors)
        np.testing.assert_array_equal(result.weighted_sum, _modsum(vectors, ROSTER, 32))


def test_the_mode_travels_in_the_key_request_and_the_silo_state():
    config = make_encoded_config(run_id="enc", roster=ROSTER, threshold=3, length=8,
                                 modulus_bits=24)
    request = message_from_record(KeyRequest.for_config(config, epoch=1).to_record())
    assert request.encoded == 1 and request.config() == config and config.encoded
    fed = _fed(24, length=8)
    stored = silo_state_to_record(fed.silos[10])
    assert silo_state_from_record(stored).config.encoded is True
    float_config = make_config(run_id="f", roster=ROSTER, threshold=3, length=8, clip=1.0,
                               bits=8, max_weight=3)
    assert not float_config.encoded
    assert KeyRequest.for_config(float_config, epoch=1).config() == float_config


@pytest.mark.parametrize("bits, message", [
    (1, "integer in 2..64"), (65, "integer in 2..64"), (True, "integer in 2..64"),
    (2, "cannot count 5 silos.*≥ 4")])
def test_bad_moduli_are_refused(bits, message):
    with pytest.raises(ConfigError, match=message):
        make_encoded_config(run_id="e", roster=ROSTER, threshold=3, length=4, modulus_bits=bits)


def test_roster_and_threshold_are_validated_as_on_the_float_path():
    with pytest.raises(ConfigError, match="threshold must be in 2..5"):
        make_encoded_config(run_id="e", roster=ROSTER, threshold=6, length=4, modulus_bits=16)


def test_the_encoded_vector_is_checked():
    config = make_encoded_config(run_id="e", roster=ROSTER, threshold=3, length=4,
                                 modulus_bits=16)
    np.testing.assert_array_equal(encoded_input(np.arange(4), config=config), [1, 0, 1, 2, 3])
    for bad, match in [(None, "pass encoded="), (np.arange(5), "length 4"),
                       (np.array([0, 1, 2, 1 << 16]), "outside 0..2"),
                       (np.array([0, -1, 2, 3]), "outside 0..2"),
                       (np.zeros(4, dtype=float), "integers")]:
        with pytest.raises(UpdateRejected, match=match):
            encoded_input(bad, config=config)
    with pytest.raises(SecureAggregationError, match="did not cancel"):
        encoded_sum(np.array([4, 1, 2, 3, 4], dtype=np.uint32), config=config, expected_count=5)


def test_the_wrong_input_for_the_mode_is_refused():
    """(run mode, what the silo passes) — a transition table over both modes."""
    enc = _fed(16, length=4)
    flt = LocalFederation(make_config(run_id="f", roster=ROSTER, threshold=3, length=4, clip=1.0,
                                      bits=8, max_weight=3), seed=b"float")
    flt.setup()
    cases = {("encoded", "float"): UpdateRejected, ("float", "encoded"): ProtocolError}
    for (mode, given), error in cases.items():
        fed = enc if mode == "encoded" else flt
        _, requests = co.begin_round(fed.coordinator, round_=1)
        kwargs = ({"update": np.zeros(4), "weight": 1} if given == "float"
                  else {"encoded": np.zeros(4, dtype=np.uint64)})
        before = fed.silos[10]
        with pytest.raises(error):
            silo_step(before, requests[10], **kwargs)
    for mode, given in itertools.product(("encoded", "float"), repeat=2):
        if mode == given:  # the matching input is accepted
            fed = enc if mode == "encoded" else flt
            _, requests = co.begin_round(fed.coordinator, round_=1)
            kwargs = ({"update": np.zeros(4), "weight": 1} if given == "float"
                      else {"encoded": np.zeros(4, dtype=np.uint64)})
            silo_step(fed.silos[10], requests[10], **kwargs)

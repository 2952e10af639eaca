"""Peer input that used to escape the error tree or break the math (each failed before the
hardening): every one is now a ProtocolError or ConfigError naming what is wrong."""

from __future__ import annotations

import dataclasses

import pytest
from secagg_helpers import random_inputs, small_federation

from strategies.secagg import coordinator as co
from strategies.secagg import message_from_record, silo_step
from xsilo.errors import ProtocolError


def test_a_kind_that_is_a_list_is_a_protocol_error_not_a_type_error() -> None:
    """Flower records carry lists of strings; a list is unhashable (TypeError before)."""
    for kind in (["secagg/key_advert"], [b"x"], 3, None):
        with pytest.raises(ProtocolError, match="not a secure-aggregation message"):
            message_from_record({"kind": kind, "run_id": "r"})


@pytest.mark.parametrize("value", [1 << 64, 1 << 63, -1])
def test_a_round_beyond_64_bits_is_refused(value: int) -> None:
    fed = small_federation()
    _, requests = co.begin_round(fed.coordinator, round_=1)
    record = requests[10].to_record()
    record["round"] = value
    with pytest.raises(ProtocolError, match=r"field 'round' = .*expected an integer in 0\.\."):
        message_from_record(record)
    if value > 0:  # constructed past the parser: the key derivation refuses (struct.error before)
        updates, weights = random_inputs(fed, 1)
        huge = dataclasses.replace(requests[10], round=1 << 64)
        with pytest.raises(ProtocolError, match="not a 64-bit unsigned id or round number"):
            silo_step(fed.silos[10], huge, update=updates[10], weight=weights[10])


@pytest.mark.parametrize("key", [bytes(32), b"\x01" + bytes(31), bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")])  # order 8
def test_an_all_zero_or_low_order_key_is_refused_at_the_advert(key: bytes) -> None:
    fed = small_federation()
    state = co.request_rekey(fed.coordinator, [10])[0]
    _, advert = silo_step(fed.silos[10], co.KeyRequest.for_config(fed.config, epoch=2))
    for field in ("enc_pk", "mask_pk"):
        bad = dataclasses.replace(advert, **{field: key})
        with pytest.raises(ProtocolError, match="not a valid key of large order"):
            co.receive_advert(state, bad)
    assert 10 in co.receive_advert(state, advert).directory  # the real keys are fine


def _unmasking(drop: int | None = None):
    fed = small_federation()
    updates, weights = random_inputs(fed, 3)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        if s == drop:
            continue
        fed.silos[s], masked = silo_step(fed.silos[s], req, update=updates[s], weight=weights[s])
        state = co.receive_masked(state, masked)
    state, unmask = co.request_unmask(state)
    return fed, state, unmask


def test_parallel_share_lists_of_different_lengths_are_refused() -> None:
    """A zip over pair_owners and pair_peers truncated silently before."""
    fed, state, unmask = _unmasking(drop=14)
    _, response = silo_step(fed.silos[10], unmask[10])
    assert len(response.pair_owners) == 4  # four survivors' seeds with the dropped silo
    longer = dataclasses.replace(response, pair_owners=response.pair_owners + (10,))
    with pytest.raises(ProtocolError, match="pair_owners, pair_peers, pair_shares must have "
                                            "the same length"):
        co.receive_unmask(state, longer)
    with pytest.raises(ProtocolError, match="same length"):
        message_from_record({**response.to_record(), "pair_peers": [14, 14, 14]})
    assert co.receive_unmask(state, response).responses  # the true one is accepted


@pytest.mark.parametrize("field, value, rule", [
    ("enc_pk", b"\x00" * 31, "32 bytes"),
    ("silo", 2**63, "an integer in 0.."),
    ("silo", True, "an integer"),
    ("run_id", "", "non-empty string"),
    ("run_id", "r" * 257, "at most 256"),
])
def test_advert_fields_are_checked_for_type_range_and_length(field, value, rule) -> None:
    fed = small_federation()
    _, advert = silo_step(fed.silos[10], co.KeyRequest.for_config(fed.config, epoch=2))
    with pytest.raises(ProtocolError, match=f"field '{field}' = .*expected .*{rule}"):
        message_from_record({**advert.to_record(), field: value})


def test_masked_input_commitments_must_cover_every_share() -> None:
    fed = small_federation()
    updates, weights = random_inputs(fed, 1)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    _, masked = silo_step(fed.silos[10], requests[10], update=updates[10], weight=weights[10])
    assert len(masked.commitments) == 5 and all(len(c) == 16 * 5 for c in masked.commitments)
    for bad in (masked.commitments[:-1], (masked.commitments[0][:-16],) + masked.commitments[1:]):
        with pytest.raises(ProtocolError, match="commitments"):
            co.receive_masked(state, dataclasses.replace(masked, commitments=bad))
    with pytest.raises(ProtocolError, match="commitments"):  # a peer from before commitments
        message_from_record({k: v for k, v in masked.to_record().items() if k != "commitments"})


def test_a_response_revealing_another_silos_shares_is_checked_share_by_share() -> None:
    """Swapping two shares inside a valid response (both well formed) is caught."""
    fed, state, unmask = _unmasking()
    _, response = silo_step(fed.silos[11], unmask[11])
    swapped = dataclasses.replace(response, self_shares=(
        response.self_shares[1], response.self_shares[0], *response.self_shares[2:]))
    with pytest.raises(ProtocolError, match="silo 10's self-mask seed it revealed does not "
                                            "match the commitment silo 10 sent"):
        co.receive_unmask(state, swapped)
    assert co.receive_unmask(state, response).responses.keys() == {11}

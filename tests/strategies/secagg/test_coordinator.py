"""The coordinator state machine: stage × call table, input checks, failures, re-keying."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from secagg_helpers import random_inputs, seeded, small_federation

from strategies.secagg import coordinator as co
from strategies.secagg import message_from_record, silo_step
from strategies.secagg.simulate import LocalFederation
from xsilo.errors import ProtocolError, SecureAggregationError

S = co.CoordinatorStage


def _states():
    fed = small_federation()
    keys = co.start_run(fed.config)[0]
    idle = fed.coordinator
    masking, _ = co.begin_round(idle, round_=1)
    return fed, {S.KEYS: keys, S.IDLE: idle, S.MASKING: masking}


def _dealing():
    """A round-keys run's coordinator in its dealing stage, and one silo's Dealt."""
    fed = small_federation(round_keys=True)
    dealing, requests = co.begin_round(fed.coordinator, round_=1)
    _, dealt = silo_step(fed.silos[10], requests[10], rng=seeded("d10"))
    return dealing, dealt


CALLS = {
    "begin_round": lambda st, m: co.begin_round(st, round_=5),
    "receive_advert": lambda st, m: co.receive_advert(st, m["advert"]),
    "receive_dealt": lambda st, m: co.receive_dealt(st, m["dealt"]),
    "begin_masking": lambda st, m: co.begin_masking(st),
    "receive_masked": lambda st, m: co.receive_masked(st, m["masked"]),
    "request_unmask": lambda st, m: co.request_unmask(st),
    "request_more_unmask": lambda st, m: co.request_more_unmask(st),
    "receive_unmask": lambda st, m: co.receive_unmask(st, m["response"]),
    "finish_round": lambda st, m: co.finish_round(st),
    "abort_round": lambda st, m: co.abort_round(st),
    "request_rekey": lambda st, m: co.request_rekey(st, [10]),
}
ALLOWED = {(S.KEYS, "receive_advert"), (S.KEYS, "request_rekey"),
           (S.KEYS, "begin_round"),  # with too few adverts it fails later, with SecureAggregationError
           (S.IDLE, "begin_round"), (S.IDLE, "request_rekey"), (S.IDLE, "receive_advert"),
           (S.MASKING, "receive_masked"), (S.MASKING, "request_unmask"), (S.MASKING, "abort_round"),
           (S.UNMASKING, "receive_unmask"), (S.UNMASKING, "finish_round"),
           (S.UNMASKING, "request_more_unmask"),
           (S.UNMASKING, "abort_round"),
           (S.DEALING, "receive_dealt"), (S.DEALING, "begin_masking"), (S.DEALING, "abort_round")}


@pytest.fixture(scope="module")
def table():
    fed, states = _states()
    masking = states[S.MASKING]
    _, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        fed.silos[s], masked = silo_step(fed.silos[s], req, update=np.zeros(6), weight=1,
                                         rng=seeded(str(s)))
        if s != 14:
            masking = co.receive_masked(masking, masked)
    unmasking, unmask_requests = co.request_unmask(masking)
    states[S.UNMASKING] = unmasking
    _, response = silo_step(fed.silos[10], unmask_requests[10])
    advert = fed.coordinator_view[0]
    states[S.DEALING], dealt = _dealing()
    return states, {"advert": message_from_record(advert), "masked": masked, "response": response,
                    "dealt": dealt}


@pytest.mark.parametrize("stage,call", list(itertools.product(S, CALLS)))
def test_transition_table(table, stage, call):
    states, messages = table
    if (stage, call) in ALLOWED:
        try:
            CALLS[call](states[stage], messages)
        except ProtocolError as exc:  # the stage allows the call; it may still refuse the content
            assert "in stage" not in str(exc)
    else:
        with pytest.raises(ProtocolError, match="in stage"):
            CALLS[call](states[stage], messages)


def test_masked_input_checks():
    fed, states = _states()
    masking = states[S.MASKING]
    _, requests = co.begin_round(fed.coordinator, round_=1)
    fed.silos[10], good = silo_step(fed.silos[10], requests[10], update=np.zeros(6), weight=1)
    masking = co.receive_masked(masking, good)
    with pytest.raises(ProtocolError, match="already sent"):
        co.receive_masked(masking, good)
    for bad, match in [(dataclasses.replace(good, silo=11, round=2), "round 1"),
                       (dataclasses.replace(good, silo=11, masked=good.masked.astype(np.uint64)),
                        "expected uint32"),
                       (dataclasses.replace(good, silo=11, recipients=(10, 11)), "address exactly"),
                       (dataclasses.replace(good, silo=99), "not active")]:
        with pytest.raises(ProtocolError, match=match):
            co.receive_masked(masking, bad)
    assert masking.bundles[10].masked.size == 0  # the coordinator keeps routing data, not y_i


def test_unmask_response_must_match_the_request():
    fed = small_federation()
    updates, weights = random_inputs(fed, 0)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        fed.silos[s], m = silo_step(fed.silos[s], req, update=updates[s], weight=weights[s])
        if s != 14:
            state = co.receive_masked(state, m)
    state, unmask = co.request_unmask(state)
    _, resp = silo_step(fed.silos[10], unmask[10])
    with pytest.raises(ProtocolError, match="do not match"):
        co.receive_unmask(state, dataclasses.replace(resp, pair_peers=(13,) * len(resp.pair_peers)))
    with pytest.raises(ProtocolError, match="duplicate"):
        co.receive_unmask(co.receive_unmask(state, resp), resp)


def test_asking_some_survivors_to_unmask_then_the_rest():
    """Any t responses unmask: ask t survivors; when one of them is lost, ask the others."""
    fed = small_federation()  # silos 10..14, t = 3
    updates, weights = random_inputs(fed, 2)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        fed.silos[s], m = silo_step(fed.silos[s], req, update=updates[s], weight=weights[s])
        if s != 14:  # 14 drops before its masked input: its pair masks must be removed too
            state = co.receive_masked(state, m)
    for bad, match in [([10, 11], "at least threshold=3"), ([10, 11, 14], "survivors")]:
        with pytest.raises(ProtocolError, match=match):
            co.request_unmask(state, ask=bad)
    state, unmask = co.request_unmask(state, ask=[13, 11, 10])
    assert list(unmask) == [13, 11, 10] and state.asked == (13, 11, 10)
    assert state.survivors == (10, 11, 12, 13) and state.dropped == (14,)
    for s in (13, 11):  # 10 is lost during unmasking
        fed.silos[s], resp = silo_step(fed.silos[s], unmask[s])
        state = co.receive_unmask(state, resp)
    with pytest.raises(SecureAggregationError, match="fewer than threshold=3"):
        co.finish_round(state)
    # 12 was never asked: it revealed nothing, and its response is refused until it is asked.
    _, early = silo_step(fed.silos[12], co.request_more_unmask(state)[1][12])
    with pytest.raises(ProtocolError, match="not a survivor asked"):
        co.receive_unmask(state, early)
    state, more = co.request_more_unmask(state)
    assert list(more) == [12] and state.asked == (13, 11, 10, 12)
    fed.silos[12], resp = silo_step(fed.silos[12], more[12])
    state = co.receive_unmask(state, resp)
    assert co.request_more_unmask(state)[1] == {}
    state, result = co.finish_round(state)
    exact = sum(weights[s] * np.clip(updates[s], -1.0, 1.0) for s in (10, 11, 12, 13))
    assert result.contributors == (10, 11, 12, 13) and result.dropped == (14,)
    assert result.total_weight == sum(weights[s] for s in (10, 11, 12, 13))
    assert np.abs(result.weighted_sum - exact).max() <= result.error.max_abs_bound
    # 10, never answered, is still MASKED and takes the next round's mask request.
    _, again = co.begin_round(state, round_=2)
    fed.silos[10], _ = silo_step(fed.silos[10], again[10], update=updates[10], weight=1)


def test_a_corrupted_share_is_detected_when_extra_shares_exist():
    fed = small_federation()
    updates, weights = random_inputs(fed, 1)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        fed.silos[s], m = silo_step(fed.silos[s], req, update=updates[s], weight=weights[s])
        state = co.receive_masked(state, m)
    state, unmask = co.request_unmask(state)
    for s, req in unmask.items():
        fed.silos[s], resp = silo_step(fed.silos[s], req)
        if s == 12:
            bad = bytearray(resp.self_shares[0])
            bad[-1] ^= 1
            resp = dataclasses.replace(resp, self_shares=(bytes(bad), *resp.self_shares[1:]))
            # the dealer's commitment catches it at once, naming the holder and the dealer
            with pytest.raises(ProtocolError, match="silo 12 for round 1: the share of silo "
                               "10's self-mask seed it revealed does not match the commitment"):
                co.receive_unmask(state, resp)
            # past the commitments (a dealer that committed to inconsistent shares), the
            # extra share still fails Shamir's consistency check
            state = dataclasses.replace(state, responses=co._frozen({**state.responses, s: resp}))
            continue
        state = co.receive_unmask(state, resp)
    with pytest.raises(SecureAggregationError, match="silo 10's self-mask seed.*inconsistent"):
        co.finish_round(state)


def test_a_corrupted_share_among_exactly_t_answers_never_gives_a_wrong_sum():
    """With exactly t answers Shamir has nothing to cross-check; the commitment does."""
    fed = small_federation()
    updates, weights = random_inputs(fed, 1)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        fed.silos[s], m = silo_step(fed.silos[s], req, update=updates[s], weight=weights[s])
        state = co.receive_masked(state, m)
    t = state.config.threshold
    state, unmask = co.request_unmask(state, ask=[10, 11, 12, 13])  # t + 1 asked
    answered, refused = [], []
    for s, req in unmask.items():
        fed.silos[s], resp = silo_step(fed.silos[s], req)
        if s == 11:  # one holder lies about its share of silo 14's self-mask seed
            bad = bytearray(resp.self_shares[-1])
            bad[5] ^= 0x40
            resp = dataclasses.replace(resp, self_shares=(*resp.self_shares[:-1], bytes(bad)))
        try:
            state = co.receive_unmask(state, resp)
            answered.append(s)
        except ProtocolError as exc:
            refused.append((s, str(exc)))
    assert [s for s, _ in refused] == [11] and "silo 14's self-mask seed" in refused[0][1]
    assert len(answered) == t  # exactly t honest answers remain: the sum is the true one
    _, result = co.finish_round(state)
    exact = sum(weights[s] * np.clip(updates[s], -1.0, 1.0) for s in requests)  # clip 1.0
    assert np.max(np.abs(result.weighted_sum - exact)) <= result.error.max_abs_bound


def test_begin_round_needs_t_keyed_available_silos_and_increasing_rounds():
    fed = small_federation()
    with pytest.raises(SecureAggregationError, match="at least threshold=3"):
        co.begin_round(fed.coordinator, round_=1, available=[10, 11])
    state, requests = co.begin_round(fed.coordinator, round_=1, available=[10, 11, 12, 99])
    assert sorted(requests) == [10, 11, 12]
    idle = co.abort_round(state)
    with pytest.raises(ProtocolError, match="not after the last round 1"):
        co.begin_round(idle, round_=1)


def test_advert_checks():
    fed = small_federation()
    advert = next(r for r in fed.coordinator_view if r["kind"] == "secagg/key_advert")
    msg = message_from_record(advert)
    with pytest.raises(ProtocolError, match="expected a first advert"):
        co.receive_advert(fed.coordinator, msg)
    with pytest.raises(ProtocolError, match="does not belong"):
        co.receive_advert(fed.coordinator, dataclasses.replace(msg, run_id="x"))


def test_rekey_after_state_loss_then_rejoin():
    fed = small_federation()
    updates, weights = random_inputs(fed, 2)
    fed.run_round(1, updates, weights)
    fed.rekey([12])  # silo 12 restarted and lost its keys
    assert fed.coordinator.directory[12].epoch == 2 and fed.silos[12].epoch == 2
    result = fed.run_round(2, updates, weights, drop_before_input=[13])
    exact = sum(weights[s] * np.clip(updates[s], -1, 1) for s in result.contributors)
    assert 12 in result.contributors
    assert np.max(np.abs(result.weighted_sum - exact)) <= result.error.max_abs_bound
    with pytest.raises(ProtocolError, match="not in the roster"):
        co.request_rekey(fed.coordinator, [99])


def test_a_silo_with_stale_keys_refuses_to_mask():
    fed = small_federation()
    state, _ = co.request_rekey(fed.coordinator, [11])
    # the coordinator forgot 11's keys; a new advert never came: 11 is simply not active
    state, requests = co.begin_round(state, round_=1)
    assert 11 not in requests


def test_fresh_secrets_by_default():
    config = small_federation().config
    a, b = LocalFederation(config), LocalFederation(config)
    a.setup()
    b.setup()
    assert a.coordinator.directory[10].enc_pk != b.coordinator.directory[10].enc_pk

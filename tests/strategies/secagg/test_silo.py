"""The silo state machine: a transition table over stage × message, and the privacy refusals."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from secagg_helpers import seeded

from strategies.secagg import coordinator as co
from strategies.secagg import make_config, new_silo, silo_step
from strategies.secagg import message_from_record
from strategies.secagg.messages import PROTOCOL_VERSION, KeyRequest, MaskRequest, UnmaskRequest
from strategies.secagg.silo import SiloStage, silo_state_from_record, silo_state_to_record
from xsilo.errors import ProtocolError, SecureAggregationError, UpdateRejected

CONFIG = make_config(run_id="run-s", roster=[1, 2, 3, 4], threshold=3, length=3, clip=1.0,
                     bits=8, max_weight=10)
X = np.array([0.1, -0.2, 0.3])


def _keyed():
    state, requests = co.start_run(CONFIG)
    silos = {}
    for s, req in requests.items():
        silos[s], advert = silo_step(new_silo(s), req, rng=seeded(f"k{s}"))
        state = co.receive_advert(state, advert)
    return state, silos, requests[1]


def _masked(round_=1, drop=()):
    state, silos, key_request = _keyed()
    state, requests = co.begin_round(state, round_=round_)
    for s, req in requests.items():
        silos[s], masked = silo_step(silos[s], req, update=X, weight=2, rng=seeded(f"m{s}"))
        if s not in drop:
            state = co.receive_masked(state, masked)
    return state, silos, key_request, requests[1]


@pytest.fixture(scope="module")
def world():
    state, silos, key_request, mask_request = _masked()
    state, unmask_requests = co.request_unmask(state)
    stages = {SiloStage.NEW: new_silo(1),
              SiloStage.READY: _keyed()[1][1],
              SiloStage.MASKED: silos[1]}
    messages = {"key": key_request, "mask": mask_request, "unmask": unmask_requests[1]}
    return stages, messages, unmask_requests, silos


ALLOWED = {(SiloStage.NEW, "key"), (SiloStage.READY, "mask"), (SiloStage.MASKED, "unmask")}


# (a silo is DEALT only in a round-keys run: test_round_keys.py has that table)
@pytest.mark.parametrize("stage,kind", list(itertools.product(
    [s for s in SiloStage if s is not SiloStage.DEALT], ["key", "mask", "unmask"])))
def test_transition_table(world, stage, kind):
    stages, messages, _, _ = world
    state = stages[stage]
    if (stage, kind) in ALLOWED:
        new, _reply = silo_step(state, messages[kind], update=X, weight=1, rng=seeded("t"))
        assert new.stage is {"key": SiloStage.READY, "mask": SiloStage.MASKED,
                             "unmask": SiloStage.READY}[kind]
    else:
        with pytest.raises(ProtocolError):
            silo_step(state, messages[kind], update=X, weight=1, rng=seeded("t"))


def test_later_round_after_being_dropped_and_rekey_with_higher_epoch(world):
    stages, messages, _, _ = world
    later = dataclasses.replace(messages["mask"], round=2)
    new, _ = silo_step(stages[SiloStage.MASKED], later, update=X, weight=1, rng=seeded("r2"))
    assert new.last_round == 2
    rekey = dataclasses.replace(messages["key"], epoch=2)
    new, advert = silo_step(stages[SiloStage.READY], rekey, rng=seeded("e2"))
    assert new.epoch == advert.epoch == 2 and new.stage is SiloStage.READY


def test_second_unmask_for_the_same_round_is_refused(world):
    _, _, unmask_requests, silos = world
    done, _ = silo_step(silos[2], unmask_requests[2])
    with pytest.raises(ProtocolError, match="cannot accept a UnmaskRequest"):
        silo_step(done, unmask_requests[2])


def test_refuses_to_reveal_both_shares_for_one_silo(world):
    _, _, unmask_requests, silos = world
    req = unmask_requests[1]
    both = dataclasses.replace(req, survivors=(1, 2, 3, 4), dropped=(4,))
    with pytest.raises(ProtocolError, match=r"silos \[4\].*refusing to reveal both"):
        silo_step(silos[1], both)


def test_survivors_and_dropped_must_partition_the_active_set(world):
    _, _, unmask_requests, silos = world
    req = unmask_requests[1]
    with pytest.raises(ProtocolError, match="do not partition"):
        silo_step(silos[1], dataclasses.replace(req, survivors=(1, 2, 3), dropped=()))


def test_refuses_with_fewer_than_t_survivors():
    state, silos, _, _ = _masked(drop=(3, 4))
    forged = UnmaskRequest(run_id=CONFIG.run_id, round=1, survivors=(1, 2), dropped=(3, 4),
                           senders=(1, 2), bundles=state.bundles[1].bundles[:2])
    with pytest.raises(SecureAggregationError, match="2 survivors < threshold 3"):
        silo_step(silos[1], forged)


def test_tampered_bundle_is_rejected(world):
    _, _, unmask_requests, silos = world
    req = unmask_requests[1]
    blob = bytearray(req.bundles[1])
    blob[-1] ^= 0x80
    tampered = dataclasses.replace(req, bundles=(req.bundles[0], bytes(blob), *req.bundles[2:]))
    with pytest.raises(ProtocolError, match="tampered or replayed share message from silo 2 to silo 1"):
        silo_step(silos[1], tampered)


def test_bundle_for_another_recipient_is_rejected(world):
    _, _, unmask_requests, silos = world
    req = unmask_requests[1]
    swapped = dataclasses.replace(req, bundles=(unmask_requests[2].bundles[0], *req.bundles[1:]))
    with pytest.raises(ProtocolError, match="from silo 1 to silo 1"):
        silo_step(silos[1], swapped)


def test_bundle_replayed_from_an_earlier_round_is_rejected():
    state, silos, _, _ = _masked()
    state, round1 = co.request_unmask(state)
    for s, req in round1.items():
        silos[s], reply = silo_step(silos[s], req)
        state = co.receive_unmask(state, reply)
    state, _ = co.finish_round(state)
    state, requests = co.begin_round(state, round_=2)
    for s, req in requests.items():
        silos[s], masked = silo_step(silos[s], req, update=X, weight=1, rng=seeded(f"n{s}"))
        state = co.receive_masked(state, masked)
    state, round2 = co.request_unmask(state)
    replayed = dataclasses.replace(round2[1], bundles=(round1[1].bundles[0], *round2[1].bundles[1:]))
    with pytest.raises(ProtocolError, match="tampered or replayed"):
        silo_step(silos[1], replayed)


def test_repeated_round_number_and_foreign_run_are_refused(world):
    stages, messages, _, _ = world
    ready = stages[SiloStage.READY]
    masked, _ = silo_step(ready, messages["mask"], update=X, weight=1, rng=seeded("a"))
    with pytest.raises(ProtocolError, match="rounds never repeat"):
        silo_step(masked, messages["mask"], update=X, weight=1)
    with pytest.raises(ProtocolError, match="run 'other'"):
        silo_step(ready, dataclasses.replace(messages["mask"], run_id="other"), update=X, weight=1)


def test_directory_must_hold_the_silos_own_keys(world):
    stages, messages, _, _ = world
    req: MaskRequest = messages["mask"]
    fake = dataclasses.replace(req, dir_enc_pks=(b"\x09" * 32, *req.dir_enc_pks[1:]))
    with pytest.raises(ProtocolError, match="current keys"):
        silo_step(stages[SiloStage.READY], fake, update=X, weight=1)


def test_wrong_update_length_and_missing_update(world):
    stages, messages, _, _ = world
    with pytest.raises(ProtocolError, match="length=3"):
        silo_step(stages[SiloStage.READY], messages["mask"], update=np.zeros(4), weight=1)
    with pytest.raises(UpdateRejected, match="needs the local update"):
        silo_step(stages[SiloStage.READY], messages["mask"])


def test_key_request_for_a_silo_outside_the_roster():
    request = KeyRequest.for_config(CONFIG, epoch=1)
    with pytest.raises(ProtocolError, match="not in the roster"):
        silo_step(new_silo(99), request)


def test_both_sides_refuse_a_peer_of_another_protocol_version():
    # An older release sends no version (1): its masks would not cancel with this one's, so
    # the key setup fails with the fix named instead of every round failing later.
    old = KeyRequest.for_config(CONFIG, epoch=1).to_record()
    del old["protocol"]
    with pytest.raises(ProtocolError, match="the coordinator speaks secure-aggregation protocol 1"):
        silo_step(new_silo(1), message_from_record(old))
    state, requests = co.start_run(CONFIG)
    _, advert = silo_step(new_silo(1), requests[1])
    assert advert.protocol == PROTOCOL_VERSION
    other = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match=rf"silo 1 speaks .* protocol {other}.*same xsilo release"):
        co.receive_advert(state, dataclasses.replace(advert, protocol=other))
    with pytest.raises(ProtocolError, match=r"silo 1 speaks .* protocol 2.*same xsilo release"):
        co.receive_advert(state, dataclasses.replace(advert, protocol=2))  # before commitments
    assert 1 in co.receive_advert(state, advert).directory


def test_state_roundtrips_through_a_plain_record(world):
    stages, _, _, _ = world
    for state in stages.values():
        record = silo_state_to_record(state)
        assert all(isinstance(v, (int, float, str, bytes, list)) for v in record.values())
        assert silo_state_from_record(record) == state
    assert "enc_sk" not in repr(stages[SiloStage.MASKED])


def test_pair_keys_are_derived_once_then_reused_and_cleared_by_a_rekey(world, monkeypatch):
    """Keys are agreed once per run: after the first round no X25519 agreement is redone,
    the cached keys are exactly the derived ones, and a re-key throws them away."""
    from strategies.secagg import crypto

    stages, messages, unmask_requests, silos = world
    masked = silos[1]
    assert {p for p, _, _, _ in masked.pair_keys} == {"mask", "enc"}
    directory = messages["mask"].directory()
    for purpose, peer, public, key in masked.pair_keys:
        assert public == getattr(directory[peer], f"{purpose}_pk")
        assert key == crypto.derive_pair_key(
            private=masked.mask_sk if purpose == "mask" else masked.enc_sk, peer_public=public,
            purpose=purpose, run_id=CONFIG.run_id, me=1, peer=peer)
    assert silo_state_from_record(silo_state_to_record(masked)).pair_keys == masked.pair_keys

    calls = []
    real = crypto.derive_pair_key
    monkeypatch.setattr(crypto, "derive_pair_key", lambda **kw: calls.append(kw) or real(**kw))
    ready, _ = silo_step(masked, unmask_requests[1])
    later = dataclasses.replace(messages["mask"], round=2)
    again, _ = silo_step(ready, later, update=X, weight=2)
    assert calls == []  # unmask and the next round reuse every key
    # A peer that re-keyed (new public key) gets a fresh derivation, only that one.
    d = dataclasses.replace(later, round=3, dir_mask_pks=tuple(
        b"\x09" + pk[1:] if s == 2 else pk for s, pk in zip(later.dir_silos, later.dir_mask_pks)))
    _, _ = silo_step(dataclasses.replace(again, stage=SiloStage.READY), d, update=X, weight=2)
    assert [(c["purpose"], c["peer"]) for c in calls] == [("mask", 2)]
    rekeyed, _ = silo_step(ready, dataclasses.replace(messages["key"], epoch=2))
    assert rekeyed.pair_keys == ()


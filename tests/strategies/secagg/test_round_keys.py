"""Round-keys mode: every round deals a fresh masking key, a dropped silo is recovered from
its round key, and a silo's dealing is two secrets instead of one per peer.

The same guarantees as the pair-seed mode, checked the same ways: the unmasked sum is the
contributors' sum under dropouts at every stage (the dealing included); the silo's state
machine refuses what is out of order or substituted; a corrupted share is caught by its
dealer's commitment; an equivocating coordinator recovers nothing at any threshold a silo
accepts (and does when the majority rule is bypassed); and across rounds, every masked
input the coordinator ever received keeps a mask it cannot reconstruct.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest
from secagg_helpers import lax_limits, seeded

from strategies.secagg import coordinator as co
from strategies.secagg import make_config, message_from_record, new_silo, silo_step
from strategies.secagg.crypto import round_key_seed
from strategies.secagg.masking import PAIR_LABEL, SELF_LABEL, pair_sign, share_bytes
from strategies.secagg.messages import Dealt, DealRequest, UnmaskRequest
from strategies.secagg.prg import add_mask
from strategies.secagg.quantize import decode_sum
from strategies.secagg.shamir import SHARE_BYTES, int_to_secret, reconstruct, share_from_bytes
from strategies.secagg.silo import SiloLimits, SiloStage
from strategies.secagg.simulate import LocalFederation
from xsilo.errors import PolicyRefusal, ProtocolError, SecureAggregationError

N, T, D = 6, 4, 16


def _config(n: int = N, t: int = T, run_id: str = "rk") -> object:
    return make_config(run_id=run_id, roster=list(range(n)), threshold=t, length=D, clip=1.0,
                       bits=12, max_weight=100, round_keys=True)


def _fed(seed: bytes = b"rk", **kw) -> LocalFederation:
    fed = LocalFederation(_config(**kw), seed=seed)
    fed.setup()
    return fed


def _inputs(seed: int, n: int = N) -> tuple[dict, dict]:
    gen = np.random.default_rng(seed)  # test data only
    return ({s: gen.uniform(-1, 1, D) for s in range(n)},
            {s: int(gen.integers(1, 101)) for s in range(n)})


STAGES = [((), (), ()), ((5,), (), ()), ((), (1,), ()), ((), (), (2,)), ((4,), (0,), ()),
          ((3,), (), (1,)), ((), (2, 5), ())]


@pytest.mark.parametrize("no_deal,no_input,no_unmask", STAGES)
def test_the_sum_is_the_contributors_sum_whoever_drops_at_whichever_stage(
        no_deal, no_input, no_unmask) -> None:
    fed = _fed()
    updates, weights = _inputs(sum(no_deal + no_input + no_unmask))
    result = fed.run_round(1, updates, weights, drop_before_deal=no_deal,
                           drop_before_input=no_input, drop_before_unmask=no_unmask)
    contributors = [s for s in range(N) if s not in no_deal + no_input]
    assert list(result.contributors) == contributors
    assert list(result.dropped) == sorted(no_input)  # not dealt: never in the round
    expected = sum(weights[s] * updates[s] for s in contributors)
    assert result.total_weight == sum(weights[s] for s in contributors)
    assert np.max(np.abs(result.weighted_sum - expected)) <= result.error.max_abs_bound
    # the next round is unaffected, and every silo is back in it
    again = fed.run_round(2, updates, weights)
    assert list(again.contributors) == list(range(N))


def test_too_few_dealings_fail_the_round_and_the_next_one_goes_on() -> None:
    fed = _fed()
    updates, weights = _inputs(0)
    with pytest.raises(SecureAggregationError, match="3 silos dealt their round keys"):
        fed.run_round(1, updates, weights, drop_before_deal=(0, 1, 2))
    assert fed.coordinator.stage is co.CoordinatorStage.IDLE
    assert list(fed.run_round(2, updates, weights).contributors) == list(range(N))


def test_a_silo_deals_two_secrets_to_each_silo_not_one_per_peer() -> None:
    fed = _fed()
    state, requests = co.begin_round(fed.coordinator, round_=1)
    assert all(isinstance(r, DealRequest) for r in requests.values())
    _, dealt = silo_step(fed.silos[0], requests[0], rng=seeded("d"))
    assert isinstance(dealt, Dealt) and dealt.recipients == tuple(range(N))
    sealed = 2 * SHARE_BYTES + 12 + 16  # two shares, the nonce and the tag
    assert [len(b) for b in dealt.bundles] == [sealed] * N
    assert [len(c) for c in dealt.commitments] == [32] * N
    per_silo = sum(map(len, dealt.bundles)) + sum(map(len, dealt.commitments))
    assert share_bytes(N, round_keys=True) == (per_silo, N * per_silo)
    assert share_bytes(200, round_keys=True)[0] * 50 < share_bytes(200)[0]
    # and it round-trips through its record like every message
    assert message_from_record(dealt.to_record()) == dealt


def _dealt_world():
    """Round 1 of a round-keys run up to the mask requests: (fed, dealing state, masking
    state, mask requests)."""
    fed = _fed(seed=b"world")
    dealing, requests = co.begin_round(fed.coordinator, round_=1)
    for s, req in requests.items():
        fed.silos[s], dealt = silo_step(fed.silos[s], req, rng=seeded(f"d{s}"))
        dealing = co.receive_dealt(dealing, dealt)
    masking, masks = co.begin_masking(dealing)
    return fed, dealing, masking, masks


MESSAGES = ["key", "deal", "mask", "unmask"]
ALLOWED = {(SiloStage.NEW, "key"), (SiloStage.READY, "key"), (SiloStage.DEALT, "key"),
           (SiloStage.MASKED, "key"), (SiloStage.READY, "deal"), (SiloStage.MASKED, "deal"),
           (SiloStage.DEALT, "deal"),  # a later round's dealing: this round's masking never came
           (SiloStage.DEALT, "mask"), (SiloStage.MASKED, "unmask")}


@pytest.mark.parametrize("stage,kind", list(itertools.product(SiloStage, MESSAGES)))
def test_the_silo_state_machine_in_round_keys_mode(stage, kind) -> None:
    fed, _, masking, masks = _dealt_world()
    updates, weights = _inputs(1)
    ready = LocalFederation(fed.config, seed=b"world")
    ready.setup()
    for s, req in masks.items():
        fed.silos[s], masked = silo_step(fed.silos[s], req, update=updates[s], weight=1,
                                         rng=seeded(f"m{s}"))
        masking = co.receive_masked(masking, masked)
    unmasking, unmask = co.request_unmask(masking)
    _, key_requests = co.request_rekey(fed.coordinator, [0])
    dealt_silo = _dealt_world()[0].silos[0]
    stages = {SiloStage.NEW: new_silo(0), SiloStage.READY: ready.silos[0],
              SiloStage.DEALT: dealt_silo, SiloStage.MASKED: fed.silos[0]}
    later_deal = co.begin_round(dataclasses.replace(fed.coordinator, last_round=1), round_=2)[1]
    messages = {"key": key_requests[0], "deal": later_deal[0], "mask": masks[0],
                "unmask": unmask[0]}
    state = stages[stage]
    if (stage, kind) in ALLOWED:
        new, _ = silo_step(state, messages[kind], update=updates[0], weight=1, rng=seeded("t"))
        assert new.stage is {"key": SiloStage.READY, "deal": SiloStage.DEALT,
                             "mask": SiloStage.MASKED, "unmask": SiloStage.READY}[kind]
    else:
        with pytest.raises(ProtocolError):
            silo_step(state, messages[kind], update=updates[0], weight=1, rng=seeded("t"))


def test_a_silo_refuses_substituted_round_keys_and_sets_it_did_not_deal_to() -> None:
    fed, _, _, masks = _dealt_world()
    updates, _ = _inputs(2)
    silo, request = fed.silos[0], masks[0]
    other = tuple(reversed(request.round_pks))  # its own entry replaced by another's key
    for bad, match in [
            (dataclasses.replace(request, round_pks=other), "another round key for this silo"),
            (dataclasses.replace(request, round=2), "dealt round keys for round 1"),
            (dataclasses.replace(request, active=(0, 1, 2, 3, 4, 5, 7)),
             "masks only with the whole set it dealt to"),
            # a subset of the dealt set: the first step of a coordinator that masks one silo
            # with few peers and tells each holder another dropped set, to rebuild its masks
            (dataclasses.replace(request, active=(0, 1, 2)),
             "masks only with the whole set it dealt to"),
            (dataclasses.replace(request, round_pks=(), round_signatures=()),
             "no round keys in the mask request")]:
        with pytest.raises(ProtocolError, match=match):
            silo_step(silo, bad, update=updates[0], weight=1)
    with pytest.raises(PolicyRefusal, match="fewer than this site's minimum 7"):
        silo_step(silo, request, update=updates[0], weight=1, limits=SiloLimits(min_active=7))
    # a pair-seed run's silo refuses round-key messages, and the reverse
    plain = LocalFederation(make_config(run_id="rk", roster=list(range(N)), threshold=T,
                                        length=D, clip=1.0, bits=12, max_weight=100), seed=b"p")
    plain.setup()
    deal = DealRequest(**{f.name: getattr(request, f.name)
                          for f in dataclasses.fields(DealRequest)
                          if f.name not in ("round_pks", "round_signatures")})
    with pytest.raises(ProtocolError, match="this run masks with pair seeds"):
        silo_step(plain.silos[0], deal)
    with pytest.raises(ProtocolError, match="carries round keys"):
        silo_step(plain.silos[0], request, update=updates[0], weight=1)


def test_the_coordinator_checks_every_dealing_and_masked_input() -> None:
    fed = _fed(seed=b"checks")
    dealing, requests = co.begin_round(fed.coordinator, round_=1)
    fed.silos[0], good = silo_step(fed.silos[0], requests[0])
    dealing = co.receive_dealt(dealing, good)
    for bad, match in [(good, "already dealt"),
                       (dataclasses.replace(good, silo=1, round=2), "round 1"),
                       (dataclasses.replace(good, silo=1, recipients=(1, 2)), "address exactly"),
                       (dataclasses.replace(good, silo=1, signature=b"x"), "signed exactly"),
                       (dataclasses.replace(good, silo=1, round_pk=bytes(32)), "low-order")]:
        with pytest.raises(ProtocolError, match=match):
            co.receive_dealt(dealing, bad)
    with pytest.raises(ProtocolError, match="each bundle's commitments"):
        message_from_record({**good.to_record(), "commitments": [b"c" * 16] * N})
    with pytest.raises(ProtocolError, match="carries round keys before"):
        message_from_record({**requests[0].to_record(), "round_pks": [b"k" * 32] * N,
                             "round_signatures": [b""] * N})
    # a round-keys masked input carries no share bundles
    _, _, masking, masks = _dealt_world()
    updates, _ = _inputs(3)
    _, masked = silo_step(_dealt_world()[0].silos[1], masks[1], update=updates[1], weight=1)
    assert masked.bundles == () and masked.commitments == ()
    with pytest.raises(ProtocolError, match="dealt in the round's dealing"):
        co.receive_masked(masking, dataclasses.replace(masked, recipients=(0,), bundles=(b"",),
                                                       commitments=(b"",)))


def test_a_corrupted_round_key_share_is_caught_by_its_commitment() -> None:
    fed, _, masking, masks = _dealt_world()
    updates, weights = _inputs(4)
    for s, req in masks.items():
        fed.silos[s], masked = silo_step(fed.silos[s], req, update=updates[s],
                                         weight=weights[s])
        if s != 5:  # 5 dropped after dealing: its round key is revealed
            masking = co.receive_masked(masking, masked)
    state, unmask = co.request_unmask(masking)
    _, reply = silo_step(fed.silos[0], unmask[0])
    assert reply.key_owners == (5,) and reply.pair_owners == ()
    bad = bytearray(reply.key_shares[0])
    bad[-1] ^= 1
    with pytest.raises(ProtocolError, match="silo 5's round key it revealed does not match"):
        co.receive_unmask(state, dataclasses.replace(reply, key_shares=(bytes(bad),)))


# ---- an equivocating coordinator (as test_equivocation.py, for round keys) ----

TARGET = 0


def _round(n: int, t: int, limits: SiloLimits):
    config = make_config(run_id=f"rk-eq-{n}-{t}", roster=list(range(n)), threshold=t, length=4,
                         clip=1.0, bits=12, max_weight=10, round_keys=True)
    fed = LocalFederation(config, seed=f"{n}-{t}".encode())
    state, requests = co.start_run(config)
    for s, req in requests.items():
        fed.silos[s], advert = silo_step(fed.silos[s], req, limits=limits)
        state = co.receive_advert(state, advert)
    state, deals = co.begin_round(state, round_=1)
    dealt = {}
    for s, req in deals.items():
        fed.silos[s], dealt[s] = silo_step(fed.silos[s], req, limits=limits)
        state = co.receive_dealt(state, dealt[s])
    state, masks = co.begin_masking(state)
    gen = np.random.default_rng(n * 100 + t)  # test data only
    x0 = gen.uniform(-1, 1, config.length)
    inputs = {}
    for s, req in masks.items():
        update = x0 if s == TARGET else gen.uniform(-1, 1, config.length)
        fed.silos[s], inputs[s] = silo_step(fed.silos[s], req, update=update, weight=3,
                                            limits=limits)
    return config, fed, dealt, inputs, x0


def _view(config, dealt, recipient: int, survivors: list[int]) -> UnmaskRequest:
    active = list(config.roster)
    return UnmaskRequest(
        run_id=config.run_id, round=1, survivors=tuple(survivors),
        dropped=tuple(s for s in active if s not in survivors), senders=tuple(active),
        bundles=tuple(dealt[k].bundles[active.index(recipient)] for k in active))


def _attack(config, fed, dealt, inputs, group_a, group_b, limits):
    """A is told every silo survived (self-mask shares), B that silo 0 dropped (its round
    key's shares); returns silo 0's update, or the ProtocolError of a short reconstruction."""
    everyone, without = list(config.roster), [s for s in config.roster if s != TARGET]
    self_shares, key_shares = [], []
    for s in group_a:
        fed.silos[s], reply = silo_step(fed.silos[s], _view(config, dealt, s, everyone),
                                        limits=limits)
        self_shares.append((config.x_of(s), share_from_bytes(
            reply.self_shares[reply.self_owners.index(TARGET)])))
    for s in group_b:
        fed.silos[s], reply = silo_step(fed.silos[s], _view(config, dealt, s, without),
                                        limits=limits)
        assert reply.key_owners == (TARGET,)
        key_shares.append((config.x_of(s), share_from_bytes(reply.key_shares[0])))
    t = config.threshold
    y0 = inputs[TARGET].masked.copy()
    add_mask(y0, int_to_secret(reconstruct(self_shares, threshold=t)), label=SELF_LABEL, sign=-1)
    round_key = int_to_secret(reconstruct(key_shares, threshold=t))
    for k in without:
        seed = round_key_seed(private=round_key, peer_public=dealt[k].round_pk,
                              run_id=config.run_id, round_=1, me=TARGET, peer=k)
        add_mask(y0, seed, label=PAIR_LABEL, sign=-pair_sign(TARGET, k))
    y0 &= y0.dtype.type((1 << config.quant.modulus_bits) - 1)
    total, weight = decode_sum(y0, params=config.quant)
    return total / weight


def test_the_attack_is_real_when_the_threshold_is_a_minority() -> None:
    config, fed, dealt, inputs, x0 = _round(6, 3, lax_limits())
    recovered = _attack(config, fed, dealt, inputs, [0, 1, 2], [3, 4, 5], lax_limits())
    assert np.max(np.abs(recovered - x0)) <= config.quant.step  # silo 0's update, alone


@pytest.mark.parametrize("n", range(3, 10))
def test_an_equivocating_coordinator_recovers_nothing_at_any_accepted_threshold(n: int) -> None:
    for t in range(n // 2 + 1, n + 1):
        for split in range(1, n):
            config, fed, dealt, inputs, _ = _round(n, t, SiloLimits())
            with pytest.raises(ProtocolError, match=f"need {t} shares to reconstruct|survivors "
                                                    f"< threshold {t}"):
                _attack(config, fed, dealt, inputs, list(range(split)), list(range(split, n)),
                        SiloLimits())


# ---- across rounds: every received input keeps a mask the coordinator cannot rebuild ----

# (no dealing, no masked input, no unmask, late input) per round: silo 2 is late in round 1
# (declared dropped), survives round 2, then drops before unmasking in round 3; silo 4 does
# not deal in round 2.
PLAN = [((), (0,), (), (2,)), ((4,), (), (1,), ()), ((), (5,), (2,), ())]


def test_every_received_input_keeps_an_unknown_mask_across_rounds() -> None:
    fed = LocalFederation(_config(), seed=b"view")
    fed.setup()
    for round_, (no_deal, no_input, no_unmask, late) in enumerate(PLAN, start=1):
        updates, weights = _inputs(round_)
        fed.run_round(round_, updates, weights, drop_before_deal=no_deal,
                      drop_before_input=no_input, drop_before_unmask=no_unmask,
                      late_input=late)
    view = fed.coordinator_view
    counts: Counter = Counter()
    for r in view:
        if r["kind"] == "secagg/unmask_response":
            counts.update(("self", r["round"], k) for k in r["self_owners"])
            counts.update(("key", r["round"], j) for j in r["key_owners"])
    known = {key for key, c in counts.items() if c >= T}
    assert ("key", 1, 0) in known and ("key", 1, 2) in known  # dropped silos' round keys
    masked = [r for r in view if r["kind"] == "secagg/masked_input"]
    assert len(masked) == 5 + 5 + 5  # round 1's late input was received too
    for r in masked:
        j, round_ = r["silo"], r["round"]
        active = sorted(d["silo"] for d in view
                        if d["kind"] == "secagg/dealt" and d["round"] == round_)
        self_known = ("self", round_, j) in known
        pairs_known = all(("key", round_, j) in known or ("key", round_, k) in known
                          for k in active if k != j)
        assert not (self_known and pairs_known), f"silo {j}'s round-{round_} input is exposed"


def test_a_dealing_that_did_not_arrive_is_dealt_again_among_the_others() -> None:
    """Silo 5's dealing is lost: the coordinator may not mask with fewer silos than dealt
    (begin_masking refuses), so the others deal again, among themselves, in the same round;
    a silo deals again only among fewer of the silos it dealt to, and only before masking."""
    fed = _fed()
    state, requests = co.begin_round(fed.coordinator, round_=1)
    for s, request in requests.items():
        if s != 5:
            fed.silos[s], dealt = silo_step(fed.silos[s], request, rng=seeded(f"d{s}"))
            state = co.receive_dealt(state, dealt)
    with pytest.raises(ProtocolError, match=r"silos \[5\] did not deal; .*\(redeal\)"):
        co.begin_masking(state)
    again, requests = co.redeal(state)
    assert sorted(requests) == [s for s in range(N) if s != 5]
    assert all(r.round == 1 and 5 not in r.active for r in requests.values())
    with pytest.raises(ProtocolError, match="among fewer of the silos it dealt to"):
        silo_step(fed.silos[0], dataclasses.replace(requests[0], **{
            f: getattr(next(iter(co.begin_round(fed.coordinator, round_=1)[1].values())), f)
            for f in ("active", "dir_silos", "dir_epochs", "dir_enc_pks", "dir_mask_pks",
                      "dir_certificates", "dir_signatures")}))  # the same set again
    for s, request in requests.items():
        fed.silos[s], dealt = silo_step(fed.silos[s], request, rng=seeded(f"e{s}"))
        again = co.receive_dealt(again, dealt)
    with pytest.raises(ProtocolError, match="every silo dealt; nothing to deal again"):
        co.redeal(again)
    masking, masks = co.begin_masking(again)
    assert masking.active == tuple(s for s in range(N) if s != 5)
    updates, _ = _inputs(1)
    for s, request in masks.items():
        fed.silos[s], masked = silo_step(fed.silos[s], request, update=updates[s], weight=1,
                                         rng=seeded(f"m{s}"))
        masking = co.receive_masked(masking, masked)
    with pytest.raises(ProtocolError, match="was already masked"):  # no dealing after masking
        silo_step(fed.silos[0], requests[0])


def test_a_round_keys_signed_payload_binds_run_silo_epoch_round_dealt_set_and_key() -> None:
    """Known answer: the bytes a silo signs for a round key (``round_key_payload``), and
    that no two of the values it binds can be traded for one another."""
    from strategies.secagg.messages import round_key_payload

    key = bytes(range(32))
    base = dict(run_id="run-1", silo=2, epoch=3, round_=4, dealt=(0, 2, 5), round_pk=key)
    expected = (b"xsilo-secagg/round-key/v2" + (5).to_bytes(4, "big") + b"run-1"
                + (2).to_bytes(8, "big") + (3).to_bytes(8, "big") + (4).to_bytes(8, "big")
                + (3).to_bytes(4, "big") + b"".join(i.to_bytes(8, "big") for i in (0, 2, 5))
                + key)
    assert round_key_payload(**base) == expected
    changed = [dict(base, run_id="run-2"), dict(base, silo=1), dict(base, epoch=4),
               dict(base, round_=5), dict(base, dealt=(0, 2)), dict(base, dealt=(0, 2, 6)),
               dict(base, round_pk=bytes(32))]
    payloads = {round_key_payload(**c) for c in changed}
    assert len(payloads) == len(changed) and expected not in payloads

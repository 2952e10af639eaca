"""What the coordinator receives never contains an individual update, in any round.

Records every message the coordinator process receives (as the debug hook of a real run
does) and checks it two ways: numerically (no received vector is, or is near, a silo's
quantized ``w·x``), and by accounting for every secret the coordinator could reconstruct
from the shares it was sent: for every masked input it ever saw, at least one mask stays
unknown — across rounds, with dropouts, and with a late input from a silo declared dropped.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from strategies.secagg import coordinator as co
from strategies.secagg import make_config, message_from_record, shamir
from strategies.secagg.simulate import LocalFederation
from xsilo.errors import ProtocolError, SecureAggregationError

N, T, D = 6, 4, 64
CONFIG = make_config(run_id="view", roster=list(range(N)), threshold=T, length=D, clip=1.0,
                     bits=12, max_weight=100)
# (drop_before_input, drop_before_unmask, late_input) per round: silo 2 is late in round 1
# (declared dropped), survives round 2, then drops before unmasking in round 3.
PLAN = [((0,), (), (2,)), ((), (1,), ()), ((5,), (2,), ())]


@pytest.fixture(scope="module")
def run():
    fed = LocalFederation(CONFIG, seed=b"view")
    fed.setup()
    gen = np.random.default_rng(1)  # test data only
    inputs = {}
    for round_, (no_input, no_unmask, late) in enumerate(PLAN, start=1):
        updates = {s: gen.uniform(-1, 1, D) for s in range(N)}
        weights = {s: int(gen.integers(1, 101)) for s in range(N)}
        inputs[round_] = (updates, weights)
        fed.run_round(round_, updates, weights, drop_before_input=no_input,
                      drop_before_unmask=no_unmask, late_input=late)
    return fed, inputs


def test_no_received_vector_is_close_to_an_individual_update(run):
    fed, inputs = run
    masked = [r for r in fed.coordinator_view if r["kind"] == "secagg/masked_input"]
    assert len(masked) == 5 + 6 + 5  # the late input of round 1 was received too
    step = CONFIG.quant.step
    for record in masked:
        words = message_from_record(record).masked  # on the wire: packed to modulus_bits
        assert record["masked"].dtype == np.uint8 and record["masked"].nbytes < words.nbytes
        y = words.astype(np.float64)
        for updates, weights in inputs.values():
            for s in range(N):
                plain = weights[s] * (updates[s] + 1.0) / step  # w·q up to one level per unit weight
                near = np.abs(y[1:] - plain) <= weights[s]
                assert near.mean() < 0.2, f"masked input of silo {record['silo']} resembles silo {s}"
        assert words.max() > (1 << CONFIG.quant.modulus_bits) // 2  # spread over Z_M


def _known_secrets(view):
    counts = Counter()
    for r in view:
        if r["kind"] == "secagg/unmask_response":
            counts.update(("self", r["round"], k) for k in r["self_owners"])
            counts.update(("pair", r["round"], frozenset((k, j)))
                          for k, j in zip(r["pair_owners"], r["pair_peers"]))
    return {key for key, c in counts.items() if c >= T}


def test_every_received_input_keeps_an_unknown_mask(run):
    fed, _ = run
    known = _known_secrets(fed.coordinator_view)
    for r in fed.coordinator_view:
        if r["kind"] != "secagg/masked_input":
            continue
        j, round_ = r["silo"], r["round"]
        masks = [("self", round_, j)] + [("pair", round_, frozenset((j, k)))
                                         for k in r["recipients"] if k != j]
        unknown = [m for m in masks if m not in known]
        assert unknown, f"the coordinator can unmask silo {j}'s input of round {round_}"
    # the late silo's self mask of round 1 was never revealed; in round 2 it was (it survived)
    assert ("self", 1, 2) not in known and ("self", 2, 2) in known


def test_fewer_than_t_shares_reconstruct_nothing(run):
    fed, _ = run
    responses = [message_from_record(r) for r in fed.coordinator_view
                 if r["kind"] == "secagg/unmask_response" and r["round"] == 1]
    points = [(CONFIG.x_of(m.silo), shamir.share_from_bytes(m.self_shares[0]))
              for m in responses[:T - 1]]
    with pytest.raises(ProtocolError, match=f"need {T} shares"):
        shamir.reconstruct(points, threshold=T)


def test_finish_round_with_fewer_than_t_responses_fails():
    fed = LocalFederation(CONFIG, seed=b"few")
    fed.setup()
    updates = {s: np.zeros(D) for s in range(N)}
    with pytest.raises(SecureAggregationError, match="answered the unmask request"):
        fed.run_round(1, updates, dict.fromkeys(range(N), 1), drop_before_unmask=(0, 1, 2))
    assert fed.coordinator is not None and fed.coordinator.stage is co.CoordinatorStage.IDLE
    assert fed.coordinator.last_round == 1  # the failed round's number is never reused

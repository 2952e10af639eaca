"""An equivocating coordinator recovers nothing in any configuration a silo accepts.

The attack (Bonawitz et al. 2017, §3, the active-adversary case): to unmask silo 0's input
``y_0`` alone the coordinator needs ``b_0`` (``t`` shares, from silos told "0 survived") and
every pair seed ``s_k0`` (``t`` shares each, from silos told "0 dropped"). Each silo answers one
unmask request per round and reveals, for silo 0, either its ``b_0`` share or its ``s_k0``
shares, never both; so the two groups are disjoint, and both reach ``t`` only if ``2t ≤ n``.
Silos refuse any run with ``t ≤ n/2``. The attack is run for real: it succeeds at ``n = 6,
t = 3`` when the check is bypassed, and fails for every ``n = 3..12`` and every ``t`` the
silos accept.
"""

from __future__ import annotations

import numpy as np
import pytest
from secagg_helpers import lax_limits

from strategies.secagg import coordinator as co
from strategies.secagg import make_config, silo_step
from strategies.secagg.masking import PAIR_LABEL, SELF_LABEL, pair_sign
from strategies.secagg.messages import UnmaskRequest
from strategies.secagg.prg import add_mask
from strategies.secagg.quantize import decode_sum
from strategies.secagg.shamir import int_to_secret, reconstruct, share_from_bytes
from strategies.secagg.silo import SiloLimits
from strategies.secagg.simulate import LocalFederation
from xsilo.errors import ProtocolError

TARGET = 0


def _masked_round(n: int, t: int, limits: SiloLimits):
    config = make_config(run_id=f"eq-{n}-{t}", roster=list(range(n)), threshold=t, length=4,
                         clip=1.0, bits=12, max_weight=10)
    fed = LocalFederation(config, seed=f"{n}-{t}".encode())
    state, requests = co.start_run(config)
    for s, req in requests.items():
        fed.silos[s], advert = silo_step(fed.silos[s], req, limits=limits)
        state = co.receive_advert(state, advert)
    state, masks = co.begin_round(state, round_=1)
    gen = np.random.default_rng(n * 100 + t)  # test data only
    x0 = gen.uniform(-1, 1, config.length)
    inputs = {}
    for s, req in masks.items():
        update = x0 if s == TARGET else gen.uniform(-1, 1, config.length)
        fed.silos[s], inputs[s] = silo_step(fed.silos[s], req, update=update, weight=3,
                                            limits=limits)
    return config, fed, inputs, x0


def _view(config, inputs, recipient: int, survivors: list[int]) -> UnmaskRequest:
    """The survivor set the coordinator shows ``recipient`` (the rest dropped)."""
    active = list(config.roster)
    return UnmaskRequest(
        run_id=config.run_id, round=1, survivors=tuple(survivors),
        dropped=tuple(s for s in active if s not in survivors), senders=tuple(survivors),
        bundles=tuple(inputs[k].bundles[active.index(recipient)] for k in survivors))


def _attack(config, fed, inputs, group_a: list[int], group_b: list[int], limits):
    """A is told every silo survived, B that silo 0 dropped; returns silo 0's update, or
    the ProtocolError a reconstruction with fewer than t shares raises."""
    everyone, without = list(config.roster), [s for s in config.roster if s != TARGET]
    self_shares, pair_shares = [], {k: [] for k in without}
    for s in group_a:
        fed.silos[s], reply = silo_step(fed.silos[s], _view(config, inputs, s, everyone),
                                        limits=limits)
        self_shares.append((config.x_of(s), share_from_bytes(
            reply.self_shares[reply.self_owners.index(TARGET)])))
    for s in group_b:
        fed.silos[s], reply = silo_step(fed.silos[s], _view(config, inputs, s, without),
                                        limits=limits)
        for k, j, share in zip(reply.pair_owners, reply.pair_peers, reply.pair_shares):
            assert j == TARGET
            pair_shares[k].append((config.x_of(s), share_from_bytes(share)))
    t = config.threshold
    y0 = inputs[TARGET].masked.copy()
    add_mask(y0, int_to_secret(reconstruct(self_shares, threshold=t)), label=SELF_LABEL, sign=-1)
    for k in without:
        seed = int_to_secret(reconstruct(pair_shares[k], threshold=t))
        add_mask(y0, seed, label=PAIR_LABEL, sign=-pair_sign(TARGET, k))
    y0 &= y0.dtype.type((1 << config.quant.modulus_bits) - 1)
    total, weight = decode_sum(y0, params=config.quant)
    return total / weight


def test_the_attack_is_real_when_the_threshold_is_a_minority() -> None:
    n, t = 6, 3
    config, fed, inputs, x0 = _masked_round(n, t, lax_limits())
    recovered = _attack(config, fed, inputs, [0, 1, 2], [3, 4, 5], lax_limits())
    assert np.max(np.abs(recovered - x0)) <= config.quant.step  # silo 0's update, alone


@pytest.mark.parametrize("n", range(3, 13))
def test_silos_refuse_every_threshold_that_permits_the_attack(n: int) -> None:
    for t in range(2, n // 2 + 1):
        config = make_config(run_id="r", roster=list(range(n)), threshold=t, length=4,
                             clip=1.0, bits=12, max_weight=10)
        _, requests = co.start_run(config)
        with pytest.raises(ProtocolError, match=f"t={t} of n={n} .*not a strict majority"):
            silo_step(LocalFederation(config).silos[0], requests[0])


@pytest.mark.parametrize("n", range(3, 13))
def test_an_equivocating_coordinator_recovers_nothing_at_any_accepted_threshold(n: int) -> None:
    for t in range(n // 2 + 1, n + 1):
        for split in range(1, n):  # every way to cut the silos into the two views
            config, fed, inputs, x0 = _masked_round(n, t, SiloLimits())
            group_a, group_b = list(range(split)), list(range(split, n))
            # too few shares for one of the two secrets (or, at t = n, B refuses outright)
            with pytest.raises(ProtocolError, match=f"need {t} shares to reconstruct|survivors "
                                                    f"< threshold {t}"):
                _attack(config, fed, inputs, group_a, group_b, SiloLimits())
        # and one silo cannot be in both views: its second answer is refused
        config, fed, inputs, _ = _masked_round(n, t, SiloLimits())
        everyone = list(config.roster)
        fed.silos[1], _ = silo_step(fed.silos[1], _view(config, inputs, 1, everyone))
        with pytest.raises(ProtocolError, match="cannot accept a UnmaskRequest"):
            silo_step(fed.silos[1], _view(config, inputs, 1, everyone[1:]))

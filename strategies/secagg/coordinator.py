"""The coordinator's side of secure aggregation as a pure state machine.

Every function takes a :class:`CoordinatorState` and returns a new one (plus outgoing
messages or the round's result); the input state is never modified, and an exception leaves
the caller holding the previous, still valid state.

===============  =====================  ==========================================  ==========
stage            call                   does                                        next
===============  =====================  ==========================================  ==========
—                start_run              KeyRequest to every roster silo             KEYS
KEYS / IDLE      receive_advert         store a silo's public keys                  same
KEYS / IDLE      begin_round            MaskRequest to every keyed, available silo  MASKING
MASKING          receive_masked         fold y_i into the running sum               MASKING
MASKING          request_unmask         survivors S_r, dropped D_r; UnmaskRequests  UNMASKING
                                        to the survivors asked (all by default)
UNMASKING        request_more_unmask    UnmaskRequests to the survivors not asked   UNMASKING
UNMASKING        receive_unmask         store an asked survivor's revealed shares   UNMASKING
UNMASKING        finish_round           reconstruct, remove masks, decode           IDLE
MASKING/UNMASK.  abort_round            give the round up (the model is not updated) IDLE
IDLE             request_rekey          forget silos' keys; KeyRequest with epoch+1 IDLE
===============  =====================  ==========================================  ==========

In round-keys mode (``config.round_keys``) :func:`begin_round` sends DealRequests instead
(stage DEALING); :func:`receive_dealt` stores each silo's round key and sealed shares, and
:func:`begin_masking` sends the MaskRequests to the silos dealt to (stage MASKING) once every
one of them dealt. Silos mask only with the whole set they dealt to, so when some dealing
did not arrive :func:`redeal` asks the others to deal again among themselves (stage DEALING,
the same round). A dropped silo ``j`` is then unmasked with its reconstructed round key:
``s_kj,r = HKDF(X25519(rk_j,r, rpk_k,r))`` for each survivor ``k``.

Unmasking (over ``M = 2^k``): ``Σ_{i∈S} x̂_i = Σ_{i∈S} y_i − Σ_{k∈S} PRG(b_k,r)
− Σ_{k∈S, j∈D} sign(k, j) · PRG(s_kj,r)``; pair masks between two survivors cancel, and
pair masks of a dropped silo ``j`` are removed with the seeds its survivor peers dealt.

Any ``t`` unmask responses reconstruct every seed, so the coordinator may ask only some
survivors (``request_unmask(state, ask=…)``) and the rest later, only if too few of those
answered (``request_more_unmask``). A survivor that is never asked reveals nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from strategies.secagg import shamir
from strategies.secagg.aux import PAIR_AUX_LABEL, SELF_AUX_LABEL, decode_aux
from strategies.secagg.crypto import check_public_key, round_key_seed
from strategies.secagg.encoded import encoded_sum
from strategies.secagg.masking import (
    PAIR_LABEL, SELF_LABEL, committed, pair_sign, peers_of, share_commitment)
from strategies.secagg.config import SecAggConfig
from strategies.secagg.messages import (
    DealRequest, Dealt, KeyAdvert, KeyRequest, MaskedInput, MaskRequest, UnmaskRequest,
    UnmaskResponse, check_protocol)
from strategies.secagg.prg import add_mask
from strategies.secagg.quantize import ErrorReport, decode_sum, error_report
from xsilo.errors import ProtocolError, SecureAggregationError

__all__ = [
    "CoordinatorStage",
    "CoordinatorState",
    "RoundResult",
    "abort_round",
    "begin_masking",
    "begin_round",
    "finish_round",
    "receive_advert",
    "receive_dealt",
    "redeal",
    "receive_masked",
    "receive_unmask",
    "request_more_unmask",
    "request_rekey",
    "request_unmask",
    "start_run",
]

_EMPTY: Mapping = MappingProxyType({})


class CoordinatorStage(str, enum.Enum):
    KEYS = "keys"
    IDLE = "idle"
    DEALING = "dealing"
    MASKING = "masking"
    UNMASKING = "unmasking"


@dataclass(frozen=True, repr=False)
class CoordinatorState:
    """The coordinator's view of a run; ``acc`` is the running modular sum of masked inputs."""

    config: SecAggConfig
    stage: CoordinatorStage = CoordinatorStage.KEYS
    directory: Mapping[int, KeyAdvert] = field(default_factory=lambda: _EMPTY)
    epochs: Mapping[int, int] = field(default_factory=lambda: _EMPTY)
    last_round: int = 0
    round: int = 0
    active: tuple[int, ...] = ()
    acc: np.ndarray | None = None
    aux_acc: np.ndarray | None = None  # the running sum of the masked auxiliary statistics
    bundles: Mapping[int, MaskedInput] = field(default_factory=lambda: _EMPTY)
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    asked: tuple[int, ...] = ()
    responses: Mapping[int, UnmaskResponse] = field(default_factory=lambda: _EMPTY)
    # Round-keys mode: the set dealt to, and each dealer's Dealt (round key, bundles).
    dealt_active: tuple[int, ...] = ()
    dealt: Mapping[int, Dealt] = field(default_factory=lambda: _EMPTY)

    def __repr__(self) -> str:
        return (f"CoordinatorState(stage={self.stage.value}, round={self.round}, "
                f"keyed={sorted(self.directory)})")


@dataclass(frozen=True)
class RoundResult:
    """What secure aggregation hands the strategy: ``Σ w_i x_i`` and ``Σ w_i`` over ``contributors``.

    In a pre-encoded run ``weighted_sum`` is the uint64 modular sum ``Σ e_i mod 2^b`` and
    ``total_weight`` the number of summed inputs (:mod:`strategies.secagg.encoded`).
    """

    round: int
    weighted_sum: np.ndarray
    total_weight: int
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    error: ErrorReport
    aux_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # Σ aux (float64)


def _frozen(mapping: dict) -> Mapping:
    return MappingProxyType(mapping)


def _expect(state: CoordinatorState, *stages: CoordinatorStage, action: str) -> None:
    if state.stage not in stages:
        raise ProtocolError(f"coordinator cannot {action} in stage {state.stage.value!r} "
                            f"(expected {' or '.join(s.value for s in stages)})")


def start_run(config: SecAggConfig) -> tuple[CoordinatorState, dict[int, KeyRequest]]:
    """Setup (once per run): ask every roster silo for its public keys (epoch 1)."""
    request = KeyRequest.for_config(config, epoch=1)
    state = CoordinatorState(config=config, epochs=_frozen({s: 1 for s in config.roster}))
    return state, {s: request for s in config.roster}


def receive_advert(state: CoordinatorState, advert: KeyAdvert) -> CoordinatorState:
    """Store a silo's public keys (they must be for this run and the epoch it was asked for)."""
    _expect(state, CoordinatorStage.KEYS, CoordinatorStage.IDLE, action="accept keys")
    if advert.run_id != state.config.run_id or advert.silo not in state.config.roster:
        raise ProtocolError(f"key advert from silo {advert.silo} for run {advert.run_id!r} "
                            "does not belong to this run")
    check_protocol(advert.protocol, peer=f"silo {advert.silo}")
    advert.check()
    if advert.epoch != state.epochs.get(advert.silo) or advert.silo in state.directory:
        raise ProtocolError(f"key advert from silo {advert.silo} has epoch {advert.epoch}; "
                            f"expected a first advert for epoch {state.epochs.get(advert.silo)}")
    if len(advert.enc_pk) != 32 or len(advert.mask_pk) != 32 or advert.enc_pk == advert.mask_pk:
        raise ProtocolError(f"key advert from silo {advert.silo}: public keys must be two "
                            "distinct 32-byte X25519 keys")
    for key, what in ((advert.enc_pk, "encryption"), (advert.mask_pk, "masking")):
        check_public_key(key, owner=f"silo {advert.silo} ({what} key)")
    return replace(state, directory=_frozen({**state.directory, advert.silo: advert}))


def begin_round(state: CoordinatorState, *, round_: int, available: Iterable[int] | None = None
                ) -> tuple[CoordinatorState, dict[int, MaskRequest]]:
    """Round trip 1: send a MaskRequest to every keyed silo (that is ``available``)."""
    _expect(state, CoordinatorStage.KEYS, CoordinatorStage.IDLE, action="begin a round")
    if round_ <= state.last_round:
        raise ProtocolError(f"round {round_} is not after the last round {state.last_round}")
    keyed = set(state.directory) & (set(available) if available is not None else set(state.directory))
    active = tuple(sorted(keyed))
    if len(active) < state.config.threshold:
        raise SecureAggregationError(
            f"round {round_}: only {len(active)} silos have keys and are available "
            f"({list(active)}); at least threshold={state.config.threshold} are needed")
    if state.config.round_keys:  # round trip 0: every active silo deals its round key
        request = DealRequest(**_directory(state, round_, active))
        new = replace(state, stage=CoordinatorStage.DEALING, round=round_, active=active,
                      dealt_active=active, dealt=_EMPTY, acc=None, aux_acc=None,
                      bundles=_EMPTY, survivors=(), dropped=(), asked=(), responses=_EMPTY)
        return new, {s: request for s in active}
    request = MaskRequest(**_directory(state, round_, active))
    return _masking(state, round_, active), {s: request for s in active}


def _directory(state: CoordinatorState, round_: int, active: tuple[int, ...]) -> dict:
    d = state.directory
    return dict(run_id=state.config.run_id, round=round_, active=active,
                dir_silos=active, dir_epochs=tuple(d[s].epoch for s in active),
                dir_enc_pks=tuple(d[s].enc_pk for s in active),
                dir_mask_pks=tuple(d[s].mask_pk for s in active),
                dir_certificates=tuple(d[s].certificate for s in active),
                dir_signatures=tuple(d[s].signature for s in active))


def _masking(state: CoordinatorState, round_: int, active: tuple[int, ...]) -> CoordinatorState:
    return replace(state, stage=CoordinatorStage.MASKING, round=round_, active=active,
                   acc=np.zeros(state.config.length + 1, dtype=state.config.quant.dtype),
                   aux_acc=np.zeros(state.config.aux_length, dtype=np.uint64),
                   bundles=_EMPTY, survivors=(), dropped=(), asked=(), responses=_EMPTY)


def _check_sender(state: CoordinatorState, msg: Dealt | MaskedInput | UnmaskResponse, who: str,
                  *, among: tuple[int, ...], seen: Mapping[int, object], refusal: str) -> None:
    """A silo's reply is for this run and round, from one of ``among``, and its first."""
    if msg.run_id != state.config.run_id or msg.round != state.round:
        raise ProtocolError(f"{who}: expected run {state.config.run_id!r} round {state.round}")
    if msg.silo not in among or msg.silo in seen:
        raise ProtocolError(f"{who}: {refusal}")


def receive_dealt(state: CoordinatorState, msg: Dealt) -> CoordinatorState:
    """Round-keys mode: store one silo's round key and its sealed shares for the round."""
    _expect(state, CoordinatorStage.DEALING, action="accept a dealing")
    who = f"dealing from silo {msg.silo} for round {msg.round}"
    _check_sender(state, msg, who, among=state.dealt_active, seen=state.dealt,
                  refusal="silo is not active this round or already dealt")
    if msg.recipients != state.dealt_active:
        raise ProtocolError(f"{who}: share bundles must address exactly "
                            f"{list(state.dealt_active)}")
    msg.check()
    if bool(msg.signature) != bool(state.directory[msg.silo].certificate):
        raise ProtocolError(f"{who}: its round key must be signed exactly when its key advert "
                            "was (with the same enrollment certificate)")
    check_public_key(msg.round_pk, owner=f"silo {msg.silo} (round key)")
    return replace(state, dealt=_frozen({**state.dealt, msg.silo: msg}))


def _enough_dealt(state: CoordinatorState) -> tuple[int, ...]:
    active = tuple(sorted(state.dealt))
    if len(active) < state.config.threshold:
        raise SecureAggregationError(
            f"round {state.round}: {len(active)} silos dealt their round keys "
            f"({list(active)}), fewer than threshold={state.config.threshold}; the round "
            "fails and the model is not updated")
    return active


def redeal(state: CoordinatorState) -> tuple[CoordinatorState, dict[int, DealRequest]]:
    """Round-keys mode, when some dealing did not arrive: DealRequests for the same round to
    the silos whose dealing did, among themselves (each deals a fresh round key; a silo
    masks only with the whole set it dealt to)."""
    _expect(state, CoordinatorStage.DEALING, action="deal again")
    active = _enough_dealt(state)
    if active == state.dealt_active:
        raise ProtocolError(f"round {state.round}: every silo dealt; nothing to deal again")
    request = DealRequest(**_directory(state, state.round, active))
    return replace(state, active=active, dealt_active=active, dealt=_EMPTY), {
        s: request for s in active}


def begin_masking(state: CoordinatorState) -> tuple[CoordinatorState, dict[int, MaskRequest]]:
    """Round-keys mode, round trip 1: MaskRequests to the silos dealt to, with their round
    keys, once every one of them dealt (else :func:`redeal` first)."""
    _expect(state, CoordinatorStage.DEALING, action="begin masking")
    active = _enough_dealt(state)
    if active != state.dealt_active:
        raise ProtocolError(
            f"round {state.round}: silos {sorted(set(state.dealt_active) - set(active))} did "
            "not deal; the others deal again among themselves first (redeal): a silo masks "
            "only with the whole set it dealt to")
    request = MaskRequest(**_directory(state, state.round, active),
                          round_pks=tuple(state.dealt[s].round_pk for s in active),
                          round_signatures=tuple(state.dealt[s].signature for s in active))
    return _masking(state, state.round, active), {s: request for s in active}


def receive_masked(state: CoordinatorState, msg: MaskedInput) -> CoordinatorState:
    """Fold one masked input into the running sum (memory stays O(model size))."""
    _expect(state, CoordinatorStage.MASKING, action="accept a masked input")
    who = f"masked input from silo {msg.silo} for round {msg.round}"
    _check_sender(state, msg, who, among=state.active, seen=state.bundles,
                  refusal="silo is not active this round or already sent its input")
    if state.config.round_keys:
        if msg.recipients or msg.bundles or msg.commitments:
            raise ProtocolError(f"{who}: carries share bundles, but this run's shares were "
                                "dealt in the round's dealing")
    elif (msg.recipients != state.active or len(msg.bundles) != len(state.active)
            or len(msg.commitments) != len(state.active)):
        raise ProtocolError(f"{who}: share bundles and their commitments must address exactly "
                            f"{list(state.active)}")
    msg.check()  # each bundle's commitments: one per share
    assert state.acc is not None
    if msg.bits not in (0, state.config.quant.modulus_bits):
        raise ProtocolError(f"{who}: packed to {msg.bits} bits, the run's modulus has "
                            f"{state.config.quant.modulus_bits}")
    if msg.masked.dtype != state.acc.dtype or msg.masked.shape != state.acc.shape:
        raise ProtocolError(f"{who}: vector is {msg.masked.dtype}[{msg.masked.size}], expected "
                            f"{state.acc.dtype}[{state.acc.size}]")
    assert state.aux_acc is not None
    if msg.aux.dtype != np.uint64 or msg.aux.shape != state.aux_acc.shape:
        raise ProtocolError(f"{who}: auxiliary sums are {msg.aux.dtype}[{msg.aux.size}], "
                            f"expected uint64[{state.aux_acc.size}]")
    stripped = replace(msg, masked=np.empty(0, dtype=msg.masked.dtype),  # keep bundles, not y_i
                       aux=np.empty(0, dtype=np.uint64))
    return replace(state, acc=state.acc + msg.masked, aux_acc=state.aux_acc + msg.aux,
                   bundles=_frozen({**state.bundles, msg.silo: stripped}))


def request_unmask(state: CoordinatorState, *, ask: Iterable[int] | None = None
                   ) -> tuple[CoordinatorState, dict[int, UnmaskRequest]]:
    """Round trip 2: survivors = silos whose masked input arrived; route their bundles.

    ``ask`` (default: every survivor) names the survivors sent an UnmaskRequest now, in
    order; at least ``t`` of them, since any ``t`` responses unmask the sum. The others can
    be asked later with :func:`request_more_unmask`.
    """
    _expect(state, CoordinatorStage.MASKING, action="request unmasking")
    survivors = tuple(sorted(state.bundles))
    dropped = tuple(s for s in state.active if s not in state.bundles)
    if len(survivors) < state.config.threshold:
        raise SecureAggregationError(
            f"round {state.round}: {len(survivors)} masked inputs arrived ({list(survivors)}), "
            f"fewer than threshold={state.config.threshold}; the round fails and the model "
            "is not updated")
    asked = survivors if ask is None else tuple(dict.fromkeys(ask))
    if not set(asked) <= set(survivors) or len(asked) < state.config.threshold:
        raise ProtocolError(f"round {state.round}: can only ask at least threshold="
                            f"{state.config.threshold} of the survivors {list(survivors)} to "
                            f"unmask, not {list(asked)}")
    new = replace(state, stage=CoordinatorStage.UNMASKING, survivors=survivors,
                  dropped=dropped, asked=asked)
    return new, {i: _unmask_request(new, i) for i in asked}


def request_more_unmask(state: CoordinatorState
                        ) -> tuple[CoordinatorState, dict[int, UnmaskRequest]]:
    """UnmaskRequests to the survivors not asked yet (when too few of those asked answered)."""
    _expect(state, CoordinatorStage.UNMASKING, action="ask more survivors to unmask")
    more = tuple(i for i in state.survivors if i not in state.asked)
    new = replace(state, asked=state.asked + more)
    return new, {i: _unmask_request(new, i) for i in more}


def _unmask_request(state: CoordinatorState, i: int) -> UnmaskRequest:
    if state.config.round_keys:  # every active silo's bundle: a dropped one's round key too
        pos = state.dealt_active.index(i)
        return UnmaskRequest(
            run_id=state.config.run_id, round=state.round, survivors=state.survivors,
            dropped=state.dropped, senders=state.active,
            bundles=tuple(state.dealt[k].bundles[pos] for k in state.active))
    pos = state.active.index(i)
    return UnmaskRequest(
        run_id=state.config.run_id, round=state.round, survivors=state.survivors,
        dropped=state.dropped, senders=state.survivors,
        bundles=tuple(state.bundles[k].bundles[pos] for k in state.survivors))


def receive_unmask(state: CoordinatorState, msg: UnmaskResponse) -> CoordinatorState:
    """Store one survivor's revealed shares after checking they are exactly the ones asked for."""
    _expect(state, CoordinatorStage.UNMASKING, action="accept unmask shares")
    who = f"unmask response from silo {msg.silo} for round {msg.round}"
    _check_sender(state, msg, who, among=state.asked, seen=state.responses,
                  refusal="not a survivor asked to unmask this round, or a duplicate response")
    pairs = [] if state.config.round_keys else [
        (k, j) for k in state.survivors for j in state.dropped]
    keys = state.dropped if state.config.round_keys else ()
    msg.check()  # parallel lists of one length: zip below truncates nothing
    if (msg.self_owners != state.survivors or len(msg.self_shares) != len(state.survivors)
            or list(zip(msg.pair_owners, msg.pair_peers)) != pairs
            or len(msg.pair_shares) != len(pairs)
            or msg.key_owners != keys or len(msg.key_shares) != len(keys)):
        raise ProtocolError(f"{who}: shares do not match the survivors {list(state.survivors)} "
                            f"and dropped silos {list(state.dropped)} of this round")
    _check_commitments(state, msg, who)
    return replace(state, responses=_frozen({**state.responses, msg.silo: msg}))


def _check_commitments(state: CoordinatorState, msg: UnmaskResponse, who: str) -> None:
    """Every revealed share must be the one its dealer committed to for this holder."""
    if state.config.round_keys:
        holder = state.dealt_active.index(msg.silo)
        revealed = [(k, 0, share) for k, share in zip(msg.self_owners, msg.self_shares)]
        revealed += [(j, 1, share) for j, share in zip(msg.key_owners, msg.key_shares)]
        commitments = {k: m.commitments for k, m in state.dealt.items()}
    else:
        holder = state.active.index(msg.silo)
        revealed = [(k, 0, share) for k, share in zip(msg.self_owners, msg.self_shares)]
        revealed += [(k, 1 + peers_of(k, state.active).index(j), share)
                     for k, j, share in zip(msg.pair_owners, msg.pair_peers, msg.pair_shares)]
        commitments = {k: m.commitments for k, m in state.bundles.items()}
    for dealer, position, share in revealed:
        expected = committed(commitments[dealer][holder], position)
        got = share_commitment(share, run_id=state.config.run_id, round_=state.round,
                               dealer=dealer, holder=msg.silo, position=position)
        if got != expected:
            what = ("self-mask seed" if position == 0 else "round key"
                    if state.config.round_keys else "pair seed")
            raise ProtocolError(
                f"{who}: the share of silo {dealer}'s {what} it revealed does not match the "
                f"commitment silo {dealer} sent with its masked input; the response is "
                f"discarded (a corrupted share from silo {msg.silo}, or a false commitment "
                f"from silo {dealer})")


def _reconstruct(state: CoordinatorState, shares: list[tuple[int, bytes]], what: str) -> bytes:
    points = [(state.config.x_of(silo), shamir.share_from_bytes(data)) for silo, data in shares]
    try:
        return shamir.int_to_secret(shamir.reconstruct(points, threshold=state.config.threshold))
    except ProtocolError as exc:
        raise SecureAggregationError(f"round {state.round}: cannot reconstruct {what}: {exc}") from exc


def finish_round(state: CoordinatorState) -> tuple[CoordinatorState, RoundResult]:
    """Reconstruct seeds from ≥ t responses, remove the masks, decode ``(Σ w x, Σ w)``."""
    _expect(state, CoordinatorStage.UNMASKING, action="finish a round")
    cfg, responders = state.config, sorted(state.responses)
    if len(responders) < cfg.threshold:
        raise SecureAggregationError(
            f"round {state.round}: {len(responders)} silos answered the unmask request "
            f"({responders}), fewer than threshold={cfg.threshold}; the round fails and the "
            "model is not updated")
    assert state.acc is not None and state.aux_acc is not None
    total, aux = state.acc.copy(), state.aux_acc.copy()
    for n, k in enumerate(state.survivors):
        seed = _reconstruct(state, [(i, state.responses[i].self_shares[n]) for i in responders],
                            f"silo {k}'s self-mask seed")
        add_mask(total, seed, label=SELF_LABEL, sign=-1)
        add_mask(aux, seed, label=SELF_AUX_LABEL, sign=-1)
    for n, (k, j) in enumerate((k, j) for k in state.survivors for j in state.dropped
                               if not cfg.round_keys):
        seed = _reconstruct(state, [(i, state.responses[i].pair_shares[n]) for i in responders],
                            f"the seed silo {k} shares with dropped silo {j}")
        add_mask(total, seed, label=PAIR_LABEL, sign=-pair_sign(k, j))
        add_mask(aux, seed, label=PAIR_AUX_LABEL, sign=-pair_sign(k, j))
    for n, j in enumerate(state.dropped if cfg.round_keys else ()):
        round_sk = _reconstruct(state, [(i, state.responses[i].key_shares[n])
                                        for i in responders], f"dropped silo {j}'s round key")
        for k in state.survivors:  # the masks survivor k added for j
            seed = round_key_seed(private=round_sk, peer_public=state.dealt[k].round_pk,
                                  run_id=cfg.run_id, round_=state.round, me=j, peer=k)
            add_mask(total, seed, label=PAIR_LABEL, sign=-pair_sign(k, j))
            add_mask(aux, seed, label=PAIR_AUX_LABEL, sign=-pair_sign(k, j))
    if cfg.encoded:  # pre-encoded: the modular sum as uint64 and the count of inputs
        weighted_sum, total_weight = encoded_sum(total, config=cfg,
                                                 expected_count=len(state.survivors))
    else:
        weighted_sum, total_weight = decode_sum(total, params=cfg.quant)
    result = RoundResult(round=state.round, weighted_sum=weighted_sum, total_weight=total_weight,
                         contributors=state.survivors, dropped=state.dropped,
                         error=error_report(cfg.quant, total_weight=total_weight),
                         aux_sum=decode_aux(aux, count=len(state.survivors)))
    return _closed(state), result


def _closed(state: CoordinatorState) -> CoordinatorState:
    return replace(state, stage=CoordinatorStage.IDLE, last_round=state.round, active=(),
                   acc=None, aux_acc=None, bundles=_EMPTY, survivors=(), dropped=(), asked=(),
                   responses=_EMPTY, dealt_active=(), dealt=_EMPTY)


def abort_round(state: CoordinatorState) -> CoordinatorState:
    """Give up the open round after a SecureAggregationError; its number is never reused."""
    _expect(state, CoordinatorStage.DEALING, CoordinatorStage.MASKING,
            CoordinatorStage.UNMASKING, action="abort a round")
    return _closed(state)


def request_rekey(state: CoordinatorState, silos: Iterable[int]
                  ) -> tuple[CoordinatorState, dict[int, KeyRequest]]:
    """Forget ``silos``' keys (they lost their state or are new) and ask for fresh ones."""
    _expect(state, CoordinatorStage.KEYS, CoordinatorStage.IDLE, action="re-key")
    targets = sorted(set(silos))
    unknown = [s for s in targets if s not in state.config.roster]
    if unknown:
        raise ProtocolError(f"cannot re-key silos {unknown}: not in the roster")
    epochs = {**state.epochs, **{s: state.epochs.get(s, 0) + 1 for s in targets}}
    directory = {s: a for s, a in state.directory.items() if s not in targets}
    new = replace(state, epochs=_frozen(epochs), directory=_frozen(directory))
    return new, {s: KeyRequest.for_config(state.config, epoch=epochs[s]) for s in targets}

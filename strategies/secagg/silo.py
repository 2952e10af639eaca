"""The silo's side of secure aggregation as a pure state machine.

``silo_step(state, message, ...) -> (new_state, reply)``; the input state is never modified.

=========  ===============  ======================================================  =========
stage      accepts          does                                                    next
=========  ===============  ======================================================  =========
NEW        KeyRequest       draw two X25519 key pairs, reply KeyAdvert               READY
READY      KeyRequest       (re-key: epoch must increase) fresh key pairs            READY
MASKED     KeyRequest       (re-key: epoch must increase) fresh key pairs            READY
READY      MaskRequest      (round > last) encode + mask, deal shares, MaskedInput   MASKED
MASKED     MaskRequest      (a later round: not asked, or dropped, in the unmask)    MASKED
MASKED     UnmaskRequest    (same round, once) reveal shares, UnmaskResponse         READY
=========  ===============  ======================================================  =========

In round-keys mode (``config.round_keys``) a round starts with a dealing round trip:

=========  ===============  ======================================================  =========
READY      DealRequest      (round > last) fresh round key + self-mask seed, deal   DEALT
MASKED     DealRequest      shares of both among the active set, reply Dealt        DEALT
DEALT      DealRequest      (a later round: this round's mask request never came)   DEALT
DEALT      MaskRequest      (the dealt round) encode + mask with the round keys     MASKED
DEALT      KeyRequest       (re-key) fresh key pairs                                READY
=========  ===============  ======================================================  =========

and an unmask reveals, for a dropped silo, the share of its round key (used for that
round only) instead of shares of the pair seeds.

Anything else raises :class:`~xsilo.errors.ProtocolError` and leaves the state as it was.

What the silo enforces whatever the coordinator asks (the privacy rules):

* the run's threshold is a strict majority of its roster, ``t > n/2`` (or the larger
  fraction the silo's :class:`SiloLimits` demand): then no two disjoint groups of ``t``
  silos exist, so a coordinator that shows some silos "``j`` survived" and others "``j``
  dropped" can never collect ``t`` shares of both ``b_j,r`` and ``j``'s pair seeds
  (docs/secure-aggregation.md, *Equivocation*);
* it masks only with at least ``min_active`` silos and reveals shares only when at least
  that many survived — its own count of the round, not the coordinator's word;
* rounds strictly increase: a round's seeds are used for at most one masked input;
* one unmask response per round, only for the round it masked, only with ≥ t survivors;
* survivors and dropped silos partition the round's active set: for any silo ``j`` it
  reveals **either** the share of ``j``'s self-mask seed ``b_j,r`` (``j`` survived) **or**
  shares of the pair seeds ``s_kj,r`` (``j`` dropped) — never both;
* only bundles that decrypt under AES-GCM with this run, round, sender, recipient and
  active set are used; its own directory entry must be its current keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from strategies.randomness import ByteSource, KeystreamSource, SystemSource
from strategies.secagg import crypto, shamir
from strategies.secagg.aux import PAIR_AUX_LABEL, SELF_AUX_LABEL, encode_aux
from strategies.secagg.encoded import encoded_input
from strategies.secagg.masking import (
    PAIR_LABEL, SELF_LABEL, bundle_ad, bundle_commitments, pack_bundle, pair_sign, peers_of,
    unpack_bundle)
from strategies.secagg.config import SecAggConfig
from strategies.secagg.messages import (
    PROTOCOL_VERSION, DealRequest, Dealt, KeyAdvert, KeyRequest, MaskedInput, MaskRequest,
    Message, UnmaskRequest, UnmaskResponse, advert_payload, check_protocol, round_key_payload)
from strategies.secagg.prg import add_mask
from strategies.secagg.quantize import encode
from xsilo.errors import (ConfigError, KeysMissing, PolicyRefusal, ProtocolError,
                          SecureAggregationError, UpdateRejected)

__all__ = ["SiloIdentity", "SiloLimits", "SiloStage", "SiloState", "new_silo",
           "silo_state_from_record", "silo_state_to_record", "silo_step"]


@dataclass(frozen=True)
class SiloLimits:
    """What a silo demands of every run and round, whatever the coordinator says.

    ``threshold_fraction``: the run's threshold must satisfy ``t > fraction · n`` (``n`` the
    roster size); 0.5 — a strict majority — is the least any silo accepts, because with
    ``t ≤ n/2`` an equivocating coordinator can unmask one silo's update. ``min_active``:
    the fewest silos it masks with, and the fewest survivors it reveals shares for.
    ``max_roster``: the most silos a run's roster may hold (None: no limit of its own); a
    silo deals shares to every active peer every round, ``n² · t`` Shamir evaluations with
    pair seeds, so a larger roster is refused at the key setup, before any work.
    """

    threshold_fraction: float = 0.5
    min_active: int = 2
    max_roster: int | None = None

    def __post_init__(self) -> None:
        if not 0.5 <= self.threshold_fraction < 1:
            raise ConfigError(f"threshold_fraction = {self.threshold_fraction!r}: must be in "
                              "[0.5, 1) (t > fraction·n; 0.5 is a strict majority)")
        if self.min_active < 2:
            raise ConfigError(f"min_active = {self.min_active!r}: a sum needs at least 2 silos")
        if self.max_roster is not None and self.max_roster < 2:
            raise ConfigError(f"max_roster = {self.max_roster!r}: a sum needs at least 2 silos")

    def check_roster(self, roster: int, *, silo: int) -> None:
        if self.max_roster is not None and roster > self.max_roster:
            raise PolicyRefusal("max_silos", (
                f"silo {silo}: the run's secure-aggregation roster holds {roster} silos, more "
                f"than this site's max_silos {self.max_roster} (a silo deals shares to every "
                "peer every round); refusing the key setup. Raise max_silos in the site policy "
                "if the consortium is that large"))

    def check_threshold(self, threshold: int, roster: int, *, silo: int) -> None:
        if threshold <= self.threshold_fraction * roster:
            rule = ("a strict majority" if self.threshold_fraction == 0.5
                    else f"more than {self.threshold_fraction:g} of them, as its site policy asks")
            raise ProtocolError(
                f"silo {silo}: the run's secure-aggregation threshold t={threshold} of n={roster} "
                f"silos is not {rule}; with t ≤ n/2 a coordinator that shows different survivor "
                "sets to different silos can unmask one silo's update. Refusing the key setup; "
                f"the coordinator must use secagg_threshold ≥ {int(self.threshold_fraction * roster) + 1}")


class SiloIdentity(Protocol):
    """A silo's enrollment identity (``silo_client.identity``): it signs this silo's key
    adverts and checks every peer's before the silo masks with it."""

    def sign(self, payload: bytes) -> tuple[bytes, bytes]:
        """``(certificate, signature)`` over ``payload`` (:func:`advert_payload`)."""
        ...

    def check_peer(self, advert: KeyAdvert, payload: bytes) -> None:
        """ProtocolError or PolicyRefusal unless ``advert`` comes from an admitted member."""
        ...


class SiloStage(str, enum.Enum):
    NEW = "new"
    READY = "ready"
    DEALT = "dealt"
    MASKED = "masked"


@dataclass(frozen=True, repr=False)
class SiloState:
    """Everything a silo keeps between messages (persist it with the silo, never send it)."""

    silo: int
    stage: SiloStage = SiloStage.NEW
    config: SecAggConfig | None = None
    epoch: int = 0
    enc_sk: bytes = b""
    mask_sk: bytes = b""
    last_round: int = -1
    active: tuple[int, ...] = ()
    active_enc_pks: tuple[bytes, ...] = ()
    # Pair keys derived from this silo's current private keys: (purpose, peer, peer public
    # key, key). As secret as enc_sk/mask_sk and kept with them; a re-key clears it.
    pair_keys: tuple[tuple[str, int, bytes, bytes], ...] = ()
    # Round-keys mode, between dealing and masking: this round's private round key and
    # self-mask seed (cleared once masked), and the set dealt to with its encryption keys
    # (kept until the unmask: the bundles' associated data names that set).
    round_sk: bytes = b""
    round_seed: bytes = b""
    dealt: tuple[int, ...] = ()
    dealt_enc_pks: tuple[bytes, ...] = ()

    def __repr__(self) -> str:  # keys stay out of logs
        return f"SiloState(silo={self.silo}, stage={self.stage.value}, last_round={self.last_round})"


def silo_state_to_record(state: SiloState) -> dict[str, Any]:
    """Flat plain data (ints, str, bytes, lists) for the silo's local store — it holds secret keys."""
    out: dict[str, Any] = {"silo": state.silo, "stage": state.stage.value, "epoch": state.epoch,
                           "enc_sk": state.enc_sk, "mask_sk": state.mask_sk,
                           "last_round": state.last_round, "active": list(state.active),
                           "active_enc_pks": list(state.active_enc_pks)}
    if state.dealt:
        out.update({"round_sk": state.round_sk, "round_seed": state.round_seed,
                    "dealt": list(state.dealt), "dealt_enc_pks": list(state.dealt_enc_pks)})
    if state.pair_keys:
        out.update({"pair_key_purposes": [p for p, _, _, _ in state.pair_keys],
                    "pair_key_peers": [j for _, j, _, _ in state.pair_keys],
                    "pair_key_publics": [pk for _, _, pk, _ in state.pair_keys],
                    "pair_key_keys": [k for _, _, _, k in state.pair_keys]})
    if state.config is not None:
        cfg = KeyRequest.for_config(state.config, epoch=state.epoch).to_record()
        out.update({f"config.{k}": v for k, v in cfg.items() if k not in ("kind", "epoch")})
    return out


def silo_state_from_record(record: dict[str, Any]) -> SiloState:
    """Inverse of :func:`silo_state_to_record`."""
    config = None
    if "config.run_id" in record:
        cfg = {k.removeprefix("config."): v for k, v in record.items() if k.startswith("config.")}
        config = KeyRequest.from_record(  # type: ignore[attr-defined]
            {"kind": KeyRequest.KIND, "epoch": record["epoch"], **cfg}).config()
    return SiloState(silo=int(record["silo"]), stage=SiloStage(record["stage"]), config=config,
                     epoch=int(record["epoch"]), enc_sk=bytes(record["enc_sk"]),
                     mask_sk=bytes(record["mask_sk"]), last_round=int(record["last_round"]),
                     active=tuple(record["active"]),
                     active_enc_pks=tuple(bytes(b) for b in record["active_enc_pks"]),
                     round_sk=bytes(record.get("round_sk", b"")),
                     round_seed=bytes(record.get("round_seed", b"")),
                     dealt=tuple(int(s) for s in record.get("dealt", ())),
                     dealt_enc_pks=tuple(bytes(b) for b in record.get("dealt_enc_pks", ())),
                     pair_keys=tuple(zip(
                         (str(p) for p in record.get("pair_key_purposes", ())),
                         (int(j) for j in record.get("pair_key_peers", ())),
                         (bytes(pk) for pk in record.get("pair_key_publics", ())),
                         (bytes(k) for k in record.get("pair_key_keys", ())))))


def new_silo(silo: int) -> SiloState:
    """A silo that has not joined a run yet."""
    return SiloState(silo=silo)


def silo_step(state: SiloState, message: Message, *, update: np.ndarray | None = None,
              weight: int | None = None, rng: ByteSource | None = None,
              encoded: np.ndarray | None = None,
              limits: SiloLimits = SiloLimits(),
              identity: SiloIdentity | None = None,
              aux: np.ndarray | None = None) -> tuple[SiloState, Message]:
    """Handle one coordinator message; ``update``/``weight`` are needed for a MaskRequest.

    In a pre-encoded run (``config.encoded``, :mod:`strategies.secagg.encoded`) a MaskRequest
    needs ``encoded`` instead: the silo's integer vector, already reduced mod ``2^b``.

    ``rng`` supplies every secret (keys, seeds, polynomial coefficients, nonces, rounding);
    the default is the operating system's CSPRNG. ``limits`` are the silo's own floor (its
    site policy's): checked on every key request, mask request and unmask request.
    ``identity`` (when the silo has one) signs its key adverts, and every peer in a mask
    request's directory must pass its :meth:`~SiloIdentity.check_peer`. ``aux``: the
    statistics a run with ``aux_length`` slots sums beside the update (:mod:`~.aux`).
    """
    allowed = {
        (SiloStage.NEW, KeyRequest): _on_key_request,
        (SiloStage.READY, KeyRequest): _on_key_request,
        (SiloStage.MASKED, KeyRequest): _on_key_request,
        (SiloStage.DEALT, KeyRequest): _on_key_request,
        (SiloStage.READY, MaskRequest): _on_mask_request,
        (SiloStage.MASKED, MaskRequest): _on_mask_request,
        (SiloStage.DEALT, MaskRequest): _on_mask_request,
        (SiloStage.MASKED, UnmaskRequest): _on_unmask_request,
        (SiloStage.READY, DealRequest): _on_deal_request,
        (SiloStage.MASKED, DealRequest): _on_deal_request,
        (SiloStage.DEALT, DealRequest): _on_deal_request,
    }
    handler = allowed.get((state.stage, type(message)))
    if handler is None:
        raise ProtocolError(f"silo {state.silo} in stage {state.stage.value!r} cannot accept a "
                            f"{type(message).__name__} (out of order or replayed); ignoring it")
    run_id = getattr(message, "run_id", None)
    if state.config is not None and run_id != state.config.run_id:
        raise ProtocolError(f"silo {state.silo}: message for run {run_id!r} "
                            f"but this silo is in run {state.config.run_id!r}")
    return handler(state, message, update=update, weight=weight, rng=rng or SystemSource(),
                   encoded=encoded, limits=limits, identity=identity, aux=aux)


def _on_key_request(state: SiloState, msg: KeyRequest, *, rng: ByteSource, limits: SiloLimits,
                    identity: SiloIdentity | None, **_: object) -> tuple[SiloState, KeyAdvert]:
    check_protocol(msg.protocol, peer="the coordinator")
    limits.check_roster(len(msg.roster), silo=state.silo)
    config = msg.config()
    limits.check_threshold(config.threshold, len(config.roster), silo=state.silo)
    if state.stage is not SiloStage.NEW and msg.epoch <= state.epoch:
        raise ProtocolError(f"silo {state.silo}: re-key request for epoch {msg.epoch}, but this "
                            f"silo already holds epoch {state.epoch} keys (replayed request?)")
    if state.silo not in config.roster:
        raise ProtocolError(f"silo {state.silo} is not in the roster {list(config.roster)}")
    enc, mask = crypto.generate_keypair(rng=rng), crypto.generate_keypair(rng=rng)
    new = replace(state, stage=SiloStage.READY, config=config, epoch=msg.epoch,
                  enc_sk=enc.private, mask_sk=mask.private, pair_keys=(), round_sk=b"",
                  round_seed=b"", dealt=(), dealt_enc_pks=())
    advert = KeyAdvert(run_id=config.run_id, silo=state.silo, epoch=msg.epoch,
                       enc_pk=enc.public, mask_pk=mask.public, protocol=PROTOCOL_VERSION)
    if identity is not None:
        certificate, signature = identity.sign(advert_payload(advert))
        advert = replace(advert, certificate=certificate, signature=signature)
    return new, advert


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


class _PairKeys:
    """The silo's pair keys, derived once per peer key (X25519 + HKDF) and then reused.

    A key is looked up by purpose and peer and used only while the peer's public key is
    the one it was derived from; a peer that re-keyed gets a fresh derivation.
    """

    def __init__(self, state: SiloState) -> None:
        self.state = state
        self.keys = {(p, j): (pk, k) for p, j, pk, k in state.pair_keys}

    def get(self, purpose: str, peer: int, peer_public: bytes) -> bytes:
        hit = self.keys.get((purpose, peer))
        if hit is not None and hit[0] == peer_public:
            return hit[1]
        state, config = self.state, self.state.config
        assert config is not None
        key = crypto.derive_pair_key(
            private=state.mask_sk if purpose == "mask" else state.enc_sk,
            peer_public=peer_public, purpose=purpose, run_id=config.run_id, me=state.silo,
            peer=peer)
        self.keys[(purpose, peer)] = (peer_public, key)
        return key

    def stored(self) -> tuple[tuple[str, int, bytes, bytes], ...]:
        return tuple((p, j, pk, k) for (p, j), (pk, k) in sorted(self.keys.items()))


def _check_active(state: SiloState, round_: int, active: tuple[int, ...], *,
                  within: tuple[int, ...], what: str, limits: SiloLimits) -> None:
    """The round's active set: sorted, within ``within``, this silo in it, and at least
    the run's threshold and this site's minimum."""
    config = state.config
    assert config is not None
    me = state.silo
    if list(active) != sorted(set(active)) or not set(active) <= set(within):
        raise ProtocolError(f"silo {me}: active set {list(active)} is not a sorted subset of "
                            f"{what}")
    if me not in active:
        raise ProtocolError(f"silo {me} was sent a mask request but is not in the active set")
    if len(active) < config.threshold:
        raise SecureAggregationError(f"round {round_}: {len(active)} active silos < threshold "
                                     f"{config.threshold}; refusing to mask")
    if len(active) < limits.min_active:
        raise PolicyRefusal("min_silos_per_round", (
            f"silo {me}: round {round_} would mask with {len(active)} silo(s) "
            f"({list(active)}), fewer than this site's minimum {limits.min_active}; no update "
            "sent"))


def _check_mask_request(state: SiloState, msg: MaskRequest | DealRequest, limits: SiloLimits,
                        identity: SiloIdentity | None, *, again: bool = False
                        ) -> dict[int, KeyAdvert]:
    """``again``: a second dealing of the round this silo last dealt for (checked by the
    caller), which may repeat the round's number."""
    config = state.config
    assert config is not None
    me = state.silo
    if msg.round < state.last_round or (msg.round == state.last_round and not again):
        raise ProtocolError(f"silo {me}: mask request for round {msg.round}, but round "
                            f"{state.last_round} was already masked (rounds never repeat)")
    active = msg.active
    _check_active(state, msg.round, active, within=config.roster, what="the roster",
                  limits=limits)
    directory = msg.directory()
    missing = [s for s in active if s not in directory]
    if missing:
        raise ProtocolError(f"silo {me}: no keys in the directory for active silos {missing}")
    mine = directory[me]
    if (mine.epoch, mine.enc_pk, mine.mask_pk) != (
            state.epoch, _public(state.enc_sk), _public(state.mask_sk)):
        raise KeysMissing(f"silo {me}: the coordinator's directory does not hold this silo's "
                          f"current keys (epoch {state.epoch}); it must re-key this silo")
    if identity is not None:  # every peer it would mask with is an admitted member
        for peer in active:
            if peer != me:
                identity.check_peer(directory[peer], advert_payload(directory[peer]))
    return directory


def _on_mask_request(state: SiloState, msg: MaskRequest, *, update: np.ndarray | None,
                     weight: int | None, rng: ByteSource, limits: SiloLimits,
                     identity: SiloIdentity | None = None,
                     encoded: np.ndarray | None = None,
                     aux: np.ndarray | None = None) -> tuple[SiloState, MaskedInput]:
    config = state.config
    assert config is not None
    if config.round_keys:
        return _mask_with_round_keys(state, msg, update=update, weight=weight, rng=rng,
                                     limits=limits, identity=identity, encoded=encoded, aux=aux)
    if msg.round_pks:
        raise ProtocolError(f"silo {state.silo}: round {msg.round}'s mask request carries round "
                            "keys, but this run masks with pair seeds (no round keys)")
    directory = _check_mask_request(state, msg, limits, identity)
    pre = _unmasked_vector(state, msg, update=update, weight=weight, rng=rng, encoded=encoded)
    me, run, r = state.silo, config.run_id, msg.round
    peers = peers_of(me, msg.active)
    self_seed = rng.read(shamir.SECRET_BYTES)
    keys = _PairKeys(state)
    pair_seeds = [crypto.derive_round_seed(keys.get("mask", j, directory[j].mask_pk),
                                           run_id=run, round_=r, a=me, b=j) for j in peers]
    masked = _masked(config, pre, self_seed, pair_seeds, peers, me)
    aux_words = _masked_aux(config, aux, self_seed, pair_seeds, peers, me, rng)
    bundles, commitments = _deal(state, msg, directory, [self_seed, *pair_seeds], keys=keys,
                                 rng=rng)
    new = replace(state, stage=SiloStage.MASKED, last_round=r, active=msg.active,
                  active_enc_pks=tuple(directory[s].enc_pk for s in msg.active),
                  pair_keys=keys.stored())
    return new, MaskedInput(run_id=run, round=r, silo=me, recipients=msg.active,
                            bundles=bundles, masked=masked, commitments=commitments,
                            aux=aux_words, bits=config.quant.modulus_bits)


def _masked(config: SecAggConfig, vector: np.ndarray, self_seed: bytes,
            pair_seeds: list[bytes], peers: list[int], me: int) -> np.ndarray:
    """``vector + PRG(b) + Σ ±PRG(s_j)`` reduced mod ``2^k`` (in place on ``vector``)."""
    add_mask(vector, self_seed, label=SELF_LABEL)
    for j, seed in zip(peers, pair_seeds):
        add_mask(vector, seed, label=PAIR_LABEL, sign=pair_sign(me, j))
    np.bitwise_and(vector, vector.dtype.type((1 << config.quant.modulus_bits) - 1), out=vector)
    return vector


def _unmasked_vector(state: SiloState, msg: MaskRequest, *, update: np.ndarray | None,
                     weight: int | None, rng: ByteSource,
                     encoded: np.ndarray | None) -> np.ndarray:
    """The silo's integer vector before masking: its encoded update (or its pre-encoded one)."""
    config = state.config
    assert config is not None
    if config.encoded:
        pre = encoded_input(encoded, config=config)
    elif encoded is not None:
        raise ProtocolError(f"silo {state.silo}: this run masks float updates; pass update and "
                            "weight, not a pre-encoded vector")
    elif update is None or weight is None:
        raise UpdateRejected(f"silo {state.silo}: round {msg.round}'s mask request needs the local "
                             "update and its weight; pass silo_step(..., update=<the flat update>, "
                             "weight=<its integer weight>)")
    elif np.asarray(update).size != config.length:
        raise ProtocolError(f"silo {state.silo}: update has {np.asarray(update).size} values, "
                            f"the run declared length={config.length}")
    return pre if config.encoded else encode(update, weight=weight, params=config.quant,
                                             rng=_rounding_source(rng))


def _on_deal_request(state: SiloState, msg: DealRequest, *, rng: ByteSource,
                     limits: SiloLimits, identity: SiloIdentity | None = None,
                     **_: object) -> tuple[SiloState, Dealt]:
    """Round-keys mode, round trip 0: a fresh round key pair and self-mask seed; both
    Shamir-shared t-of-|U_r| among the active set (every peer checked first)."""
    config = state.config
    assert config is not None
    if not config.round_keys:
        raise ProtocolError(f"silo {state.silo}: a deal request, but this run masks with pair "
                            "seeds (no round keys)")
    again = state.stage is SiloStage.DEALT and msg.round == state.last_round
    if again and not set(msg.active) < set(state.dealt):
        raise ProtocolError(f"silo {state.silo}: a second dealing of round {msg.round} must be "
                            f"among fewer of the silos it dealt to {list(state.dealt)} (those "
                            f"whose dealing arrived), not {list(msg.active)}")
    # Again: the round key and seed of the first dealing were never used to mask, and the
    # shares dealt of them name the first set, which opens none of this dealing's bundles.
    directory = _check_mask_request(state, msg, limits, identity, again=again)
    round_key, self_seed = crypto.generate_keypair(rng=rng), rng.read(shamir.SECRET_BYTES)
    keys = _PairKeys(state)
    bundles, commitments = _deal(state, msg, directory, [self_seed, round_key.private],
                                 keys=keys, rng=rng)
    signature = b""
    if identity is not None:
        _, signature = identity.sign(round_key_payload(
            run_id=config.run_id, silo=state.silo, epoch=state.epoch, round_=msg.round,
            dealt=msg.active, round_pk=round_key.public))
    new = replace(state, stage=SiloStage.DEALT, last_round=msg.round, pair_keys=keys.stored(),
                  round_sk=round_key.private, round_seed=self_seed, dealt=msg.active,
                  dealt_enc_pks=tuple(directory[s].enc_pk for s in msg.active))
    return new, Dealt(run_id=config.run_id, round=msg.round, silo=state.silo,
                      round_pk=round_key.public, recipients=msg.active, bundles=bundles,
                      commitments=commitments, signature=signature)


def _mask_with_round_keys(state: SiloState, msg: MaskRequest, *, update: np.ndarray | None,
                          weight: int | None, rng: ByteSource, limits: SiloLimits,
                          identity: SiloIdentity | None, encoded: np.ndarray | None,
                          aux: np.ndarray | None) -> tuple[SiloState, MaskedInput]:
    """Round-keys mode, round trip 1: mask with the seed and round key dealt for this round,
    among exactly the silos it dealt to. A mask set smaller than the dealt set would let a
    coordinator that tells each holder a different dropped set rebuild one silo's masks
    (the holders open its bundles, which name the dealt set, whatever set it masked with);
    a silo whose dealing did not arrive is left out by dealing again among the others."""
    config = state.config
    assert config is not None
    me, r, active = state.silo, msg.round, msg.active
    if state.stage is not SiloStage.DEALT or r != state.last_round:
        raise ProtocolError(f"silo {me}: mask request for round {r}, but this silo dealt round "
                            f"keys for round {state.last_round if state.dealt else 'none'}; "
                            "in a round-keys run a round's dealing comes first")
    if active != state.dealt:
        raise ProtocolError(f"silo {me}: round {r}'s mask request lists {list(active)}, but "
                            f"this silo dealt its round key to {list(state.dealt)}; it masks "
                            "only with the whole set it dealt to (a silo whose dealing did not "
                            "arrive is left out by dealing again)")
    _check_active(state, r, active, within=state.dealt,
                  what=f"the silos it dealt to {list(state.dealt)}", limits=limits)
    round_keys = msg.round_keys()
    missing = [s for s in active if s not in round_keys]
    if missing:
        raise ProtocolError(f"silo {me}: no round keys in the mask request for silos {missing}")
    if round_keys[me][0] != _public(state.round_sk):
        raise ProtocolError(f"silo {me}: the mask request lists another round key for this "
                            f"silo than the one it dealt for round {r} (substituted?); refusing")
    if identity is not None:  # every peer's round key is signed by an admitted member
        directory = msg.directory()
        for peer in active:
            if peer != me:
                pk, signature = round_keys[peer]
                entry = replace(directory[peer], signature=signature)
                identity.check_peer(entry, round_key_payload(
                    run_id=config.run_id, silo=peer, epoch=entry.epoch, round_=r,
                    dealt=active, round_pk=pk))
    pre = _unmasked_vector(state, msg, update=update, weight=weight, rng=rng, encoded=encoded)
    peers = peers_of(me, active)
    pair_seeds = [crypto.round_key_seed(private=state.round_sk, peer_public=round_keys[j][0],
                                        run_id=config.run_id, round_=r, me=me, peer=j)
                  for j in peers]
    masked = _masked(config, pre, state.round_seed, pair_seeds, peers, me)
    aux_words = _masked_aux(config, aux, state.round_seed, pair_seeds, peers, me, rng)
    new = replace(state, stage=SiloStage.MASKED, active=active, round_sk=b"", round_seed=b"")
    return new, MaskedInput(run_id=config.run_id, round=r, silo=me, recipients=(), bundles=(),
                            masked=masked, commitments=(), aux=aux_words,
                            bits=config.quant.modulus_bits)


def _masked_aux(config: SecAggConfig, aux: np.ndarray | None, self_seed: bytes,
                pair_seeds: list[bytes], peers: list[int], me: int,
                rng: ByteSource) -> np.ndarray:
    """The auxiliary statistics, encoded and masked with the round's seeds (own labels)."""
    if not config.aux_length:
        if aux is not None and np.asarray(aux).size:
            raise UpdateRejected(f"silo {me}: this run sums no auxiliary statistics")
        return np.zeros(0, dtype=np.uint64)
    if aux is None:
        raise UpdateRejected(f"silo {me}: this run sums {config.aux_length} auxiliary "
                             "statistics beside the update; pass silo_step(..., aux=...)")
    words = encode_aux(aux, length=config.aux_length, rng=rng)
    add_mask(words, self_seed, label=SELF_AUX_LABEL)
    for j, seed in zip(peers, pair_seeds):
        add_mask(words, seed, label=PAIR_AUX_LABEL, sign=pair_sign(me, j))
    return words


def _rounding_source(rng: ByteSource) -> ByteSource:
    """A fast keystream for stochastic rounding, keyed from ``rng`` (so tests stay seeded)."""
    return KeystreamSource(rng.read(32), label=b"rounding")


def _deal(state: SiloState, msg: MaskRequest | DealRequest, directory: dict[int, KeyAdvert],
          secrets: list[bytes], *, keys: _PairKeys, rng: ByteSource
          ) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """Shamir-share each secret t-of-|U_r| and seal one bundle per active silo (self
    included); with each bundle, the commitments to its shares."""
    config = state.config
    assert config is not None
    xs = [config.x_of(s) for s in msg.active]
    shares = shamir.split_many([shamir.secret_to_int(s) for s in secrets],
                               threshold=config.threshold, xs=xs, rng=rng)
    bundles, commitments = [], []
    for pos, recipient in enumerate(msg.active):
        key = keys.get("enc", recipient, directory[recipient].enc_pk)
        mine = [per_secret[pos] for per_secret in shares]
        plain = pack_bundle(mine[0], mine[1:])
        ad = bundle_ad(run_id=config.run_id, round_=msg.round, sender=state.silo,
                       recipient=recipient, active=msg.active)
        bundles.append(crypto.seal(key, plain, ad=ad, rng=rng))
        commitments.append(bundle_commitments(
            [shamir.share_to_bytes(y) for y in mine], run_id=config.run_id, round_=msg.round,
            dealer=state.silo, holder=recipient))
    return tuple(bundles), tuple(commitments)


def _check_unmask_request(state: SiloState, msg: UnmaskRequest, limits: SiloLimits) -> None:
    config = state.config
    assert config is not None
    me, r = state.silo, msg.round
    if r != state.last_round:
        raise ProtocolError(f"silo {me}: unmask request for round {r}, but the open round is "
                            f"{state.last_round}; refusing")
    both = sorted(set(msg.survivors) & set(msg.dropped))
    if both:
        raise ProtocolError(f"silo {me}: round {r} asks for self-mask and pair-seed shares of "
                            f"silos {both} (listed as survivor and dropped); refusing to reveal both")
    if sorted(msg.survivors + msg.dropped) != list(state.active) or len(set(msg.survivors)) != len(
            msg.survivors):
        raise ProtocolError(f"silo {me}: survivors {list(msg.survivors)} and dropped "
                            f"{list(msg.dropped)} do not partition round {r}'s active set "
                            f"{list(state.active)}")
    if me not in msg.survivors:
        raise ProtocolError(f"silo {me}: asked to unmask round {r} but listed as dropped")
    if len(msg.survivors) < config.threshold:
        raise SecureAggregationError(f"round {r}: only {len(msg.survivors)} survivors < threshold "
                                     f"{config.threshold}; refusing to reveal any share")
    if len(msg.survivors) < limits.min_active:
        raise PolicyRefusal("min_silos_per_round", (
            f"silo {me}: round {r} has {len(msg.survivors)} survivor(s), fewer than this site's "
            f"minimum {limits.min_active}; revealing shares would unmask a sum over too few "
            "silos"))
    # Pair-seed mode: the survivors' bundles (their pair seeds with the dropped); round-keys
    # mode: every active silo's (a dropped silo's round key was dealt before it dropped).
    dealers = list(state.active) if config.round_keys else sorted(msg.survivors)
    what = "active set" if config.round_keys else "survivors"
    if sorted(msg.senders) != dealers or len(msg.bundles) != len(msg.senders):
        raise ProtocolError(f"silo {me}: round {r} bundles come from {sorted(msg.senders)}, "
                            f"expected exactly the {what} {dealers}")


def _on_unmask_request(state: SiloState, msg: UnmaskRequest, *, limits: SiloLimits,
                       **_: object) -> tuple[SiloState, UnmaskResponse]:
    _check_unmask_request(state, msg, limits)
    config = state.config
    assert config is not None
    me, r = state.silo, msg.round
    dealt = state.dealt if config.round_keys else state.active  # the set the bundles name
    enc_pk = dict(zip(dealt, state.dealt_enc_pks if config.round_keys else state.active_enc_pks))
    opened: dict[int, tuple[int, list[int]]] = {}
    keys = _PairKeys(state)
    for sender, blob in zip(msg.senders, msg.bundles):
        key = keys.get("enc", sender, enc_pk[sender])
        ad = bundle_ad(run_id=config.run_id, round_=r, sender=sender, recipient=me,
                       active=dealt)
        plain = crypto.open_sealed(key, blob, ad=ad, sender=sender, recipient=me)
        opened[sender] = unpack_bundle(plain, num_peers=1 if config.round_keys
                                       else len(state.active) - 1, sender=sender)
    survivors, dropped = sorted(msg.survivors), sorted(msg.dropped)
    if config.round_keys:  # a dropped silo's round key, never a survivor's
        reply = UnmaskResponse(
            run_id=config.run_id, round=r, silo=me, self_owners=tuple(survivors),
            self_shares=tuple(shamir.share_to_bytes(opened[k][0]) for k in survivors),
            pair_owners=(), pair_peers=(), pair_shares=(), key_owners=tuple(dropped),
            key_shares=tuple(shamir.share_to_bytes(opened[j][1][0]) for j in dropped))
        return replace(state, stage=SiloStage.READY, active=(), active_enc_pks=(), dealt=(),
                       dealt_enc_pks=(), pair_keys=keys.stored()), reply
    pair_owners, pair_peers, pair_shares = [], [], []
    for k in survivors:
        order = peers_of(k, state.active)
        for j in dropped:
            pair_owners.append(k)
            pair_peers.append(j)
            pair_shares.append(shamir.share_to_bytes(opened[k][1][order.index(j)]))
    reply = UnmaskResponse(
        run_id=config.run_id, round=r, silo=me, self_owners=tuple(survivors),
        self_shares=tuple(shamir.share_to_bytes(opened[k][0]) for k in survivors),
        pair_owners=tuple(pair_owners), pair_peers=tuple(pair_peers),
        pair_shares=tuple(pair_shares))
    return replace(state, stage=SiloStage.READY, active=(), active_enc_pks=(),
                   pair_keys=keys.stored()), reply

"""The six protocol messages, with plain-dict record converters.

Every message is a frozen dataclass whose fields are ``int``, ``float``, ``str``, ``bytes``,
tuples of ``int``/``bytes``, or (only :class:`MaskedInput`) one numpy ``uint32``/``uint64``
vector. :meth:`to_record` gives a flat ``dict`` of those values (tuples become lists) plus
``"kind"``; arrays stay numpy arrays, so a Flower adapter puts the scalars and lists in a
``ConfigRecord`` and the array in an ``ArrayRecord``. :func:`message_from_record` parses such
a dict strictly: every field's type, range (integers 0..2^63−1) and length (keys 32 bytes,
shares 33, commitments 16 per share), and each message's cross-field rules (parallel lists of
one length); anything malformed raises :class:`~xsilo.errors.ProtocolError` naming the field
and the value, never another exception.

=================  =====================  =======================================
message            direction              when
=================  =====================  =======================================
KeyRequest         coordinator → silo     setup (once per run), re-key
KeyAdvert          silo → coordinator     reply to KeyRequest
DealRequest        coordinator → silo     round-keys mode: round trip 0 of a round
Dealt              silo → coordinator     reply: a fresh round key, sealed shares of it
                                          and of the self-mask seed, commitments
MaskRequest        coordinator → silo     round trip 1 of every round
MaskedInput        silo → coordinator     reply: masked vector + encrypted shares
                                          + commitments to the shares
UnmaskRequest      coordinator → silo     round trip 2 (survivors only)
UnmaskResponse     silo → coordinator     reply: revealed shares
=================  =====================  =======================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from strategies.secagg.config import SecAggConfig, make_config, make_encoded_config
from strategies.secagg.packing import pack_bits, unpack_bits
from strategies.secagg.prg import dtype_for_bits
from strategies.secagg.shamir import SHARE_BYTES
from xsilo.errors import ConfigError, ProtocolError

__all__ = [
    "DealRequest",
    "Dealt",
    "KeyAdvert",
    "KeyRequest",
    "MaskRequest",
    "MaskedInput",
    "Message",
    "UnmaskRequest",
    "UnmaskResponse",
    "PROTOCOL_VERSION",
    "advert_payload",
    "check_protocol",
    "message_from_record",
    "round_key_payload",
]

PROTOCOL_VERSION = 6
"""The protocol revision, in every KeyRequest and KeyAdvert: peers that differ would compute
different masks or messages (6: a round key's signature names the silos it was dealt to;
5: the round-keys mode and its dealing round trip; 4: the
auxiliary sum and signed adverts; 3: share commitments in every masked input; 2: the GCTR mask
keystream; 1: releases before it, which sent no version), so the key setup refuses a
mismatch. Bump it with any change to what either side computes or sends."""


def check_protocol(version: int, *, peer: str) -> None:
    """ProtocolError unless ``version`` (sent by ``peer``) is this release's."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{peer} speaks secure-aggregation protocol {version}, this side "
            f"{PROTOCOL_VERSION}: their masks would not cancel; install the same xsilo release "
            "on the coordinator and every silo")


PUBLIC_KEY_BYTES = 32  # X25519
COMMITMENT_BYTES = 16  # a truncated SHA-256 commitment to one share
_MAX_INT = (1 << 63) - 1  # ConfigRecord integers are signed 64-bit; ids, rounds, epochs ≥ 0
_MAX_ITEMS = 1 << 20  # entries in one list field (silos, shares, bundles)
_MAX_TEXT = 256
_MAX_BLOB = 1 << 26  # one bundle or commitment list (64 MiB: far above any real one)
_MAX_IDENTITY = 1 << 14  # a certificate or a signature (16 KiB)
_MAX_WORDS = 1 << 34  # words in one masked vector (a 64 GiB keystream is the PRG's limit)
_IDENTITY_FIELDS = frozenset({"certificate", "signature", "dir_certificates", "dir_signatures",
                              "round_signatures"})


class Message:
    """Base of the protocol messages: ``to_record`` / ``from_record`` over flat plain data.

    ``SIZES`` gives the exact byte length of a ``bytes`` field (or of every item of a
    ``tuple[bytes, ...]`` field); :meth:`check` adds each message's cross-field rules.
    """

    KIND: ClassVar[str] = ""
    SIZES: ClassVar[dict[str, int]] = {}

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Message:
        """Parse and check every field (type, range, length) and the cross-field rules."""
        if not isinstance(record, dict) or record.get("kind") != cls.KIND:
            kind = record.get("kind") if isinstance(record, dict) else type(record).__name__
            raise ProtocolError(f"expected a {cls.KIND!r} message, got kind={_shown(kind)}")
        # A field with a default may be absent (a peer from before the field existed).
        values = {f.name: _parse(cls, f.name, str(f.type), record.get(f.name))
                  for f in fields(cls)  # type: ignore[arg-type]
                  if f.name in record or (f.default is MISSING
                                          and f.default_factory is MISSING)}
        message = cls(**values)
        message.check()
        return message

    def check(self) -> None:
        """Cross-field rules of this message (ProtocolError); none by default."""

    def _same_length(self, *names: str) -> None:
        lengths = {name: len(getattr(self, name)) for name in names}
        if len(set(lengths.values())) > 1:
            raise ProtocolError(f"{self.KIND} message: fields {', '.join(names)} must have the "
                                f"same length, got {lengths}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(cls: type[Message], name: str, type_: str, value: Any) -> Any:
    kind = cls.KIND
    size = cls.SIZES.get(name)

    def bad(rule: str) -> ProtocolError:
        return ProtocolError(f"{kind} message: field {name!r} = {_shown(value)} "
                             f"({type(value).__name__}); expected {rule}")

    limit = _MAX_IDENTITY if name in _IDENTITY_FIELDS else _MAX_BLOB

    def blob(item: Any, what: str) -> bytes:
        if not isinstance(item, bytes):
            raise bad(what)
        if (size is not None and len(item) != size) or len(item) > limit:
            raise bad(what)
        return item

    bytes_rule = f"{size} bytes" if size is not None else f"at most {limit} bytes"
    if type_ == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
            raise bad(f"an integer in 0..{_MAX_INT}")
        return value
    if type_ == "float":
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if type_ == "str":
        if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
            raise bad(f"a non-empty string of at most {_MAX_TEXT} characters")
        return value
    if type_ == "bytes":
        return blob(value, bytes_rule)
    if type_ in ("tuple[int, ...]", "tuple[bytes, ...]"):
        if not isinstance(value, list | tuple) or len(value) > _MAX_ITEMS:
            raise bad(f"a list of at most {_MAX_ITEMS} items")
        if type_ == "tuple[bytes, ...]":
            return tuple(blob(v, f"a list of items of {bytes_rule}") for v in value)
        if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_INT
               for v in value):
            raise bad(f"a list of integers in 0..{_MAX_INT}")
        return tuple(value)
    if type_ == "np.ndarray":
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype not in (
                np.uint32, np.uint64):
            raise bad("a 1-D uint32 or uint64 vector")
        return value
    raise AssertionError(f"unsupported field type {type_}")  # pragma: no cover


@dataclass(frozen=True)
class KeyRequest(Message):
    """Setup: generate key pairs for ``run_id`` (key ``epoch``) and advertise the public keys."""

    KIND: ClassVar[str] = "secagg/key_request"
    run_id: str
    epoch: int
    roster: tuple[int, ...]
    threshold: int
    length: int
    clip: float
    bits: int
    max_weight: int
    modulus_bits: int
    encoded: int = 0  # 1: the run masks pre-encoded vectors (clip, bits, max_weight unused)
    protocol: int = 1  # PROTOCOL_VERSION of the sender; absent (1) from older releases
    aux_length: int = 0  # statistics summed beside the update (strategies.secagg.aux)
    round_keys: int = 0  # 1: every round deals fresh round keys first (SecAggConfig)

    @classmethod
    def for_config(cls, config: SecAggConfig, *, epoch: int) -> KeyRequest:
        q = config.quant
        return cls(run_id=config.run_id, epoch=epoch, roster=config.roster,
                   threshold=config.threshold, length=config.length, clip=q.clip, bits=q.bits,
                   max_weight=q.max_weight, modulus_bits=q.modulus_bits,
                   encoded=int(config.encoded), protocol=PROTOCOL_VERSION,
                   aux_length=config.aux_length, round_keys=int(config.round_keys))

    def config(self) -> SecAggConfig:
        try:
            if self.encoded:
                return make_encoded_config(run_id=self.run_id, roster=self.roster,
                                           threshold=self.threshold, length=self.length,
                                           modulus_bits=self.modulus_bits,
                                           aux_length=self.aux_length,
                                           round_keys=bool(self.round_keys))
            return make_config(run_id=self.run_id, roster=self.roster, threshold=self.threshold,
                               length=self.length, clip=self.clip, bits=self.bits,
                               max_weight=self.max_weight, modulus_bits=self.modulus_bits,
                               aux_length=self.aux_length, round_keys=bool(self.round_keys))
        except ConfigError as exc:
            raise ProtocolError(f"key request carries an invalid configuration: {exc}") from exc


@dataclass(frozen=True)
class KeyAdvert(Message):
    """A silo's two X25519 public keys: ``enc_pk`` (share encryption), ``mask_pk`` (pairwise masks)."""

    KIND: ClassVar[str] = "secagg/key_advert"
    SIZES: ClassVar[dict[str, int]] = {"enc_pk": PUBLIC_KEY_BYTES, "mask_pk": PUBLIC_KEY_BYTES}
    run_id: str
    silo: int
    epoch: int
    enc_pk: bytes
    mask_pk: bytes
    protocol: int = 1  # PROTOCOL_VERSION of the silo; absent (1) from older releases
    # The silo's enrollment certificate (DER) and its signature over advert_payload(): empty
    # when the silo has no identity configured (in-process trials); peers decide.
    certificate: bytes = b""
    signature: bytes = b""

    def check(self) -> None:
        if (not self.certificate) != (not self.signature):
            raise ProtocolError(f"{self.KIND} message: certificate and signature come together "
                                "(both or neither)")


def advert_payload(advert: KeyAdvert) -> bytes:
    """What a silo signs with its enrollment key: run, roster index, epoch and both public
    keys, length-prefixed and fixed-width (no two adverts encode to the same bytes)."""
    run = advert.run_id.encode()
    return (b"xsilo-secagg/key-advert/v1" + len(run).to_bytes(4, "big") + run
            + advert.silo.to_bytes(8, "big") + advert.epoch.to_bytes(8, "big")
            + advert.enc_pk + advert.mask_pk)


def round_key_payload(*, run_id: str, silo: int, epoch: int, round_: int,
                      dealt: Sequence[int], round_pk: bytes) -> bytes:
    """What a silo signs for a round key (round-keys mode): run, roster index, key epoch,
    round, the silos it dealt the key to, and the key. Binding the round means a round key
    the coordinator learned (a dropped silo's, at unmasking) cannot be shown to peers in
    another round; binding the dealt set, that a key of a dealing superseded within the
    round (dealt again among fewer silos) cannot be shown to the silos of the new one."""
    run = run_id.encode()
    return (b"xsilo-secagg/round-key/v2" + len(run).to_bytes(4, "big") + run
            + silo.to_bytes(8, "big") + epoch.to_bytes(8, "big") + round_.to_bytes(8, "big")
            + len(dealt).to_bytes(4, "big") + b"".join(s.to_bytes(8, "big") for s in dealt)
            + round_pk)


@dataclass(frozen=True)
class _DirectoryRequest(Message):
    """A request for ``round`` among ``active`` with the key directory ``dir_*``."""

    SIZES: ClassVar[dict[str, int]] = {"dir_enc_pks": PUBLIC_KEY_BYTES,
                                       "dir_mask_pks": PUBLIC_KEY_BYTES,
                                       "round_pks": PUBLIC_KEY_BYTES}
    run_id: str
    round: int
    active: tuple[int, ...]
    dir_silos: tuple[int, ...]
    dir_epochs: tuple[int, ...]
    dir_enc_pks: tuple[bytes, ...]
    dir_mask_pks: tuple[bytes, ...]
    dir_certificates: tuple[bytes, ...] = ()  # each silo's advert certificate and signature
    dir_signatures: tuple[bytes, ...] = ()  # (empty items: unsigned adverts)
    round_pks: tuple[bytes, ...] = ()  # round-keys mode only
    round_signatures: tuple[bytes, ...] = ()

    def check(self) -> None:
        self._same_length("dir_silos", "dir_epochs", "dir_enc_pks", "dir_mask_pks",
                          "dir_certificates", "dir_signatures")
        if self.round_pks or self.round_signatures:
            self._same_length("dir_silos", "round_pks", "round_signatures")

    def round_keys(self) -> dict[int, tuple[bytes, bytes]]:
        """``{silo: (round key, its signature)}`` (round-keys mode)."""
        return dict(zip(self.dir_silos, zip(self.round_pks, self.round_signatures)))

    def directory(self) -> dict[int, KeyAdvert]:
        self.check()
        # Only adverts the coordinator accepted are listed: all of this protocol version.
        return {s: KeyAdvert(run_id=self.run_id, silo=s, epoch=e, enc_pk=c, mask_pk=m,
                             protocol=PROTOCOL_VERSION, certificate=cert, signature=sig)
                for s, e, c, m, cert, sig in zip(
                    self.dir_silos, self.dir_epochs, self.dir_enc_pks, self.dir_mask_pks,
                    self.dir_certificates, self.dir_signatures)}


@dataclass(frozen=True)
class MaskRequest(_DirectoryRequest):
    """Round trip 1: mask your update for ``round`` among ``active``; ``dir_*`` is the key
    directory. In round-keys mode ``active`` is the silos whose dealing arrived, and
    ``round_pks``/``round_signatures`` their round keys (same order as ``dir_silos``)."""

    KIND: ClassVar[str] = "secagg/mask_request"


@dataclass(frozen=True)
class DealRequest(_DirectoryRequest):
    """Round-keys mode, round trip 0: deal this round's key and self-mask seed among
    ``active`` (the same fields as a MaskRequest, without round keys)."""

    KIND: ClassVar[str] = "secagg/deal_request"

    def check(self) -> None:
        super().check()
        if self.round_pks or self.round_signatures:
            raise ProtocolError(f"{self.KIND} message: carries round keys before any were dealt")


@dataclass(frozen=True)
class Dealt(Message):
    """Reply to round trip 0 (round-keys mode): the silo's fresh X25519 round key
    ``round_pk`` (with its signature over :func:`round_key_payload` when it has an
    identity), and one sealed bundle per silo of ``recipients`` holding that silo's shares
    of the self-mask seed and the private round key, with the commitments to both."""

    KIND: ClassVar[str] = "secagg/dealt"
    SIZES: ClassVar[dict[str, int]] = {"round_pk": PUBLIC_KEY_BYTES}
    run_id: str
    round: int
    silo: int
    round_pk: bytes
    recipients: tuple[int, ...]
    bundles: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    signature: bytes = b""

    def check(self) -> None:
        self._same_length("recipients", "bundles", "commitments")
        if any(len(c) != 2 * COMMITMENT_BYTES for c in self.commitments):
            raise ProtocolError(f"{self.KIND} message: each bundle's commitments must be "
                                f"{2 * COMMITMENT_BYTES} bytes (2 shares of {COMMITMENT_BYTES})")


@dataclass(frozen=True)
class MaskedInput(Message):
    """Reply to round trip 1: the masked vector, one sealed share bundle per active silo, and
    for each bundle the commitments to the shares in it (``COMMITMENT_BYTES`` each, in the
    bundle's order; :func:`strategies.secagg.masking.share_commitment`), so that a share
    revealed later is checked against what its dealer committed to."""

    KIND: ClassVar[str] = "secagg/masked_input"
    run_id: str
    round: int
    silo: int
    recipients: tuple[int, ...]
    bundles: tuple[bytes, ...]
    masked: np.ndarray
    commitments: tuple[bytes, ...] = ()
    aux: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))  # masked
    bits: int = 0  # the run's modulus bits: the record carries `masked` packed to this width

    def to_record(self) -> dict[str, Any]:
        """As every message, but ``masked`` packed to ``bits`` per word (:mod:`~.packing`)
        with its ``count``, when that is narrower than its dtype."""
        out = super().to_record()
        if 0 < self.bits < 8 * self.masked.itemsize:
            out["masked"] = pack_bits(self.masked, self.bits)
            out["count"] = int(self.masked.size)
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Message:
        if isinstance(record, dict) and "count" in record:
            bits, count = record.get("bits"), record.get("count")
            if (not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 64
                    or not isinstance(count, int) or isinstance(count, bool)
                    or not 0 < count <= _MAX_WORDS):
                raise ProtocolError(f"{cls.KIND} message: a packed vector needs bits in 1..64 "
                                    f"and count in 1..{_MAX_WORDS}, got bits={_shown(bits)}, "
                                    f"count={_shown(count)}")
            record = {k: v for k, v in record.items() if k != "count"}
            record["masked"] = unpack_bits(record.get("masked"), bits=bits, count=count,
                                           dtype=dtype_for_bits(bits))
        return super().from_record(record)

    def check(self) -> None:
        self._same_length("recipients", "bundles", "commitments")
        per_bundle = COMMITMENT_BYTES * len(self.recipients)
        if any(len(c) != per_bundle for c in self.commitments):
            raise ProtocolError(f"{self.KIND} message: each bundle's commitments must be "
                                f"{per_bundle} bytes ({len(self.recipients)} shares of "
                                f"{COMMITMENT_BYTES} bytes)")


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Round trip 2: the survivor/dropped split, and the bundles addressed to this silo."""

    KIND: ClassVar[str] = "secagg/unmask_request"
    run_id: str
    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    senders: tuple[int, ...]
    bundles: tuple[bytes, ...]

    def check(self) -> None:
        self._same_length("senders", "bundles")


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Reply to round trip 2: shares of ``b_k,r`` for survivors ``k`` and of ``s_kj,r`` for
    dropped ``j`` — in round-keys mode of dropped ``j``'s round key instead (``key_*``)."""

    KIND: ClassVar[str] = "secagg/unmask_response"
    SIZES: ClassVar[dict[str, int]] = {"self_shares": SHARE_BYTES, "pair_shares": SHARE_BYTES,
                                       "key_shares": SHARE_BYTES}
    run_id: str
    round: int
    silo: int
    self_owners: tuple[int, ...]
    self_shares: tuple[bytes, ...]
    pair_owners: tuple[int, ...]
    pair_peers: tuple[int, ...]
    pair_shares: tuple[bytes, ...]
    key_owners: tuple[int, ...] = ()
    key_shares: tuple[bytes, ...] = ()

    def check(self) -> None:
        self._same_length("self_owners", "self_shares")
        self._same_length("pair_owners", "pair_peers", "pair_shares")
        self._same_length("key_owners", "key_shares")


_KINDS: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (KeyRequest, KeyAdvert, MaskRequest, DealRequest, Dealt,
                              MaskedInput, UnmaskRequest, UnmaskResponse)
}


def message_from_record(record: dict[str, Any]) -> Message:
    """Parse any protocol message from its ``to_record()`` dict (ProtocolError if malformed)."""
    kind = record.get("kind") if isinstance(record, dict) else None
    if not isinstance(kind, str) or kind not in _KINDS:
        shown = _shown(kind) if isinstance(record, dict) else type(record).__name__
        raise ProtocolError(f"not a secure-aggregation message (kind={shown}); "
                            f"expected one of {sorted(_KINDS)}")
    return _KINDS[kind].from_record(record)

"""The six protocol messages, with plain-dict record converters.

Every message is a frozen dataclass whose fields are ``int``, ``float``, ``str``, ``bytes``,
tuples of ``int``/``bytes``, or (only :class:`MaskedInput`) one numpy ``uint32``/``uint64``
vector. :meth:`to_record` gives a flat ``dict`` of those values (tuples become lists) plus
``"kind"``; arrays stay numpy arrays, so a Flower adapter puts the scalars and lists in a
``ConfigRecord`` and the array in an ``ArrayRecord``. :func:`message_from_record` parses and
type-checks such a dict; anything malformed raises :class:`~xsilo.errors.ProtocolError`.

=================  =====================  =======================================
message            direction              when
=================  =====================  =======================================
KeyRequest         coordinator → silo     setup (once per run), re-key
KeyAdvert          silo → coordinator     reply to KeyRequest
MaskRequest        coordinator → silo     round trip 1 of every round
MaskedInput        silo → coordinator     reply: masked vector + encrypted shares
UnmaskRequest      coordinator → silo     round trip 2 (survivors only)
UnmaskResponse     silo → coordinator     reply: revealed shares
=================  =====================  =======================================
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from strategies.secagg.config import SecAggConfig, make_config, make_encoded_config
from xsilo.errors import ConfigError, ProtocolError

__all__ = [
    "KeyAdvert",
    "KeyRequest",
    "MaskRequest",
    "MaskedInput",
    "Message",
    "UnmaskRequest",
    "UnmaskResponse",
    "PROTOCOL_VERSION",
    "check_protocol",
    "message_from_record",
]

PROTOCOL_VERSION = 2
"""The protocol revision, in every KeyRequest and KeyAdvert: peers that differ would compute
different masks (2: the GCTR mask keystream; 1: releases before it, which sent no version), so
the key setup refuses a mismatch. Bump it with any change to what either side computes."""


def check_protocol(version: int, *, peer: str) -> None:
    """ProtocolError unless ``version`` (sent by ``peer``) is this release's."""
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{peer} speaks secure-aggregation protocol {version}, this side "
            f"{PROTOCOL_VERSION}: their masks would not cancel; install the same xsilo release "
            "on the coordinator and every silo")


class Message:
    """Base of the protocol messages: ``to_record`` / ``from_record`` over flat plain data."""

    KIND: ClassVar[str] = ""

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Message:
        if record.get("kind") != cls.KIND:
            raise ProtocolError(f"expected a {cls.KIND!r} message, got kind={record.get('kind')!r}")
        # A field with a default may be absent (a peer from before the field existed).
        values = {f.name: _parse(cls.KIND, f.name, str(f.type), record.get(f.name))
                  for f in fields(cls)  # type: ignore[arg-type]
                  if f.name in record or f.default is MISSING}
        return cls(**values)


def _parse(kind: str, name: str, type_: str, value: Any) -> Any:
    scalar = {"int": int, "str": str, "bytes": bytes, "float": float}
    bad = ProtocolError(f"{kind} message: field {name!r} must be {type_}, got {type(value).__name__}")
    if type_ in scalar:
        if type_ == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, scalar[type_]) or isinstance(value, bool):
            raise bad
        if type_ == "float" and not math.isfinite(value):
            raise bad
        return value
    if type_ in ("tuple[int, ...]", "tuple[bytes, ...]"):
        item = int if "int" in type_ else bytes
        if not isinstance(value, (list, tuple)) or any(
                not isinstance(v, item) or isinstance(v, bool) for v in value):
            raise bad
        return tuple(value)
    if type_ == "np.ndarray":
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype not in (
                np.uint32, np.uint64):
            raise bad
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

    @classmethod
    def for_config(cls, config: SecAggConfig, *, epoch: int) -> KeyRequest:
        q = config.quant
        return cls(run_id=config.run_id, epoch=epoch, roster=config.roster,
                   threshold=config.threshold, length=config.length, clip=q.clip, bits=q.bits,
                   max_weight=q.max_weight, modulus_bits=q.modulus_bits,
                   encoded=int(config.encoded), protocol=PROTOCOL_VERSION)

    def config(self) -> SecAggConfig:
        try:
            if self.encoded:
                return make_encoded_config(run_id=self.run_id, roster=self.roster,
                                           threshold=self.threshold, length=self.length,
                                           modulus_bits=self.modulus_bits)
            return make_config(run_id=self.run_id, roster=self.roster, threshold=self.threshold,
                               length=self.length, clip=self.clip, bits=self.bits,
                               max_weight=self.max_weight, modulus_bits=self.modulus_bits)
        except ConfigError as exc:
            raise ProtocolError(f"key request carries an invalid configuration: {exc}") from exc


@dataclass(frozen=True)
class KeyAdvert(Message):
    """A silo's two X25519 public keys: ``enc_pk`` (share encryption), ``mask_pk`` (pairwise masks)."""

    KIND: ClassVar[str] = "secagg/key_advert"
    run_id: str
    silo: int
    epoch: int
    enc_pk: bytes
    mask_pk: bytes
    protocol: int = 1  # PROTOCOL_VERSION of the silo; absent (1) from older releases


@dataclass(frozen=True)
class MaskRequest(Message):
    """Round trip 1: mask your update for ``round`` among ``active``; ``dir_*`` is the key directory."""

    KIND: ClassVar[str] = "secagg/mask_request"
    run_id: str
    round: int
    active: tuple[int, ...]
    dir_silos: tuple[int, ...]
    dir_epochs: tuple[int, ...]
    dir_enc_pks: tuple[bytes, ...]
    dir_mask_pks: tuple[bytes, ...]

    def directory(self) -> dict[int, KeyAdvert]:
        n = len(self.dir_silos)
        if not len(self.dir_epochs) == len(self.dir_enc_pks) == len(self.dir_mask_pks) == n:
            raise ProtocolError("mask request: key directory columns have different lengths")
        # Only adverts the coordinator accepted are listed: all of this protocol version.
        return {s: KeyAdvert(run_id=self.run_id, silo=s, epoch=e, enc_pk=c, mask_pk=m,
                             protocol=PROTOCOL_VERSION)
                for s, e, c, m in zip(self.dir_silos, self.dir_epochs, self.dir_enc_pks,
                                      self.dir_mask_pks)}


@dataclass(frozen=True)
class MaskedInput(Message):
    """Reply to round trip 1: the masked vector and one sealed share bundle per active silo."""

    KIND: ClassVar[str] = "secagg/masked_input"
    run_id: str
    round: int
    silo: int
    recipients: tuple[int, ...]
    bundles: tuple[bytes, ...]
    masked: np.ndarray


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


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Reply to round trip 2: shares of ``b_k,r`` for survivors ``k`` and of ``s_kj,r`` for dropped ``j``."""

    KIND: ClassVar[str] = "secagg/unmask_response"
    run_id: str
    round: int
    silo: int
    self_owners: tuple[int, ...]
    self_shares: tuple[bytes, ...]
    pair_owners: tuple[int, ...]
    pair_peers: tuple[int, ...]
    pair_shares: tuple[bytes, ...]


_KINDS: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (KeyRequest, KeyAdvert, MaskRequest, MaskedInput, UnmaskRequest,
                              UnmaskResponse)
}


def message_from_record(record: dict[str, Any]) -> Message:
    """Parse any protocol message from its ``to_record()`` dict (ProtocolError if malformed)."""
    if not isinstance(record, dict) or record.get("kind") not in _KINDS:
        kind = record.get("kind") if isinstance(record, dict) else type(record).__name__
        raise ProtocolError(f"not a secure-aggregation message (kind={kind!r}); "
                            f"expected one of {sorted(_KINDS)}")
    return _KINDS[record["kind"]].from_record(record)

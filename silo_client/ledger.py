"""Egress ledger: an append-only, hash-chained JSON-lines record of everything a silo sent.

Each line is one outgoing message::

    {"seq": 1, "timestamp": "...Z", "run_id": ..., "server_round": ..., "message_type": ...,
     "tensors": {name: {"shape": [...], "dtype": "..."}}, "payload_sha256": ...,
     "masked": ..., "clip_norm": ..., "noise_sigma": ..., "epsilon": ..., "extra": {...},
     "prev_hash": <hash of the previous line or 64 zeros>, "hash": sha256(canonical JSON
     of this entry without "hash")}

Canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"), allow_nan=False)``.
A chain detects a modified, deleted, reordered or inserted line; truncating the *tail* is
only detectable against a head hash recorded elsewhere (see :meth:`EgressLedger.head`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xsilo.errors import ConfigError
from xsilo.files import atomic_write

__all__ = ["GENESIS", "LEDGER_FILE", "EgressLedger", "VerifyResult", "entry_hash",
           "payload_digest", "summarize", "verify_ledger"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
LEDGER_FILE = "egress.jsonl"  # the silo's ledger, in its workspace ([silo] workspace)
_FIELDS = ("seq", "timestamp", "run_id", "server_round", "message_type", "tensors",
           "payload_sha256", "masked", "clip_norm", "noise_sigma", "epsilon", "extra",
           "prev_hash", "hash")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8")


def _number(value: object) -> object:
    """A metric value as JSON can hold it: non-finite floats as their names ("nan", "inf")."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_number(v) for v in value]
    return str(value)


def _metric_values(metrics: Mapping[str, object]) -> dict[str, object]:
    return {str(k): _number(v) for k, v in sorted(metrics.items())}


def entry_hash(entry: Mapping[str, object]) -> str:
    """SHA-256 hex of the canonical JSON of ``entry`` without its ``"hash"`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def raw_bytes(arr: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes as a flat memoryview (zero-copy, for hashing)."""
    return memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")


def payload_digest(arrays: Mapping[str, np.ndarray], metrics: Mapping[str, object]) -> str:
    """Stable SHA-256 over what is sent: every array (name, dtype, shape, little-endian
    C-order bytes, in name order) followed by the canonical JSON of ``metrics`` as the
    entry records them (a non-finite value by its name, ``"nan"``, ``"inf"``).

    Each field is length-prefixed so no two different payloads share a byte stream.
    """
    h = hashlib.sha256(b"xsilo-payload-v1")

    def put(data: bytes) -> None:
        h.update(struct.pack(">Q", len(data)))
        h.update(data)

    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        put(name.encode("utf-8"))
        put(arr.dtype.str.encode())
        put(_canonical(list(arr.shape)))
        h.update(struct.pack(">Q", arr.nbytes))
        h.update(raw_bytes(arr))  # the array's own buffer, not a copy
    put(_canonical(_metric_values(metrics)))
    return h.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_ledger`; ``line`` is the first bad 1-based line, if any."""

    ok: bool
    entries: int
    head: str
    line: int | None = None
    reason: str | None = None


def _no_constant(name: str) -> float:
    """NaN and Infinity are not JSON, and the ledger never writes them (``allow_nan=False``)."""
    raise ValueError(f"{name} is not JSON")


def _check_entry(entry: object, lineno: int, prev_hash: str) -> str | None:
    """Why this line breaks the ledger, or None when it is sound."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    missing = [k for k in _FIELDS if k not in entry]
    if missing:
        return f"fields missing: {missing}"
    if entry["hash"] != entry_hash(entry):
        return "entry was modified (its hash does not match its content)"
    if entry["seq"] != lineno:
        return (f"expected seq {lineno}, found seq {entry['seq']}: an entry was deleted, "
                "inserted or reordered before this line")
    if entry["prev_hash"] != prev_hash:
        return ("prev_hash does not match the previous entry's hash: an entry was deleted, "
                "inserted or reordered")
    return None


def verify_ledger(path: str | Path) -> VerifyResult:
    """Check the whole chain; report the first bad line and why."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"egress ledger {p} not found")
    with p.open("rb") as fh:
        return _verify_lines(fh, seq=0, prev=GENESIS)


def _verify_lines(fh: BinaryIO, *, seq: int, prev: str,
                  digest: Any | None = None) -> VerifyResult:
    """Verify the lines from ``fh``'s position on, as continuing a chain at ``(seq, prev)``;
    ``digest`` (a hashlib object), when given, is fed every byte read."""
    count = seq
    for lineno, raw in enumerate(fh, start=seq + 1):
        if digest is not None:
            digest.update(raw)
        try:
            entry = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return VerifyResult(False, count, prev, lineno, "line is not valid JSON")
        reason = _check_entry(entry, lineno, prev)
        if reason:
            return VerifyResult(False, count, prev, lineno, reason)
        prev, count = entry["hash"], lineno
    return VerifyResult(True, count, prev)


def _tensor_table(tensors: Mapping[str, tuple[Sequence[int], str]]) -> dict[str, dict]:
    return {name: {"shape": [int(d) for d in shape], "dtype": str(dtype)}
            for name, (shape, dtype) in tensors.items()}


def _ends_with_entry(fh: BinaryIO, cp: Mapping[str, Any]) -> bool:
    """Whether the first ``cp["bytes"]`` bytes of ``fh`` end with the sound entry ``cp`` names
    (its ``seq`` and ``hash``): the record must agree with the file, not just hash it."""
    end = cp["bytes"]
    if end == 0:
        return cp["seq"] == 0 and cp["hash"] == GENESIS
    window = 1 << 16
    while True:  # read back until the line before the last one ends (or the file starts)
        start = max(0, end - window)
        fh.seek(start)
        data = fh.read(end - start)
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0 or start == 0:
            break
        window *= 4
    try:
        entry = json.loads(data[cut + 1:])
    except ValueError:
        return False
    return (isinstance(entry, dict) and data.endswith(b"\n") and entry.get("seq") == cp["seq"]
            and entry.get("hash") == cp["hash"] == entry_hash(entry))


class EgressLedger:
    """Appends one hash-chained, fsynced line per outgoing message.

    Opening an existing ledger verifies it first: a silo never extends a broken chain. The
    check costs one SHA-256 pass over the file, not a parse of every entry: after each
    append the silo records, next to the ledger (``<ledger>.head``), the file's length, last
    entry and SHA-256 at that point. A ledger whose first bytes still hash to the recorded
    value holds exactly the entries this silo verified and wrote, so only the entries after
    them are parsed and checked; any other ledger (no record, a changed byte anywhere, a
    shorter file) is verified entry by entry, as ``xsilo silo ledger verify`` always does.
    The record is a cache: deleting it costs one full verification.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._end, self._seq, self._head = 0, 0, GENESIS
        self._digest = hashlib.sha256()
        if self.path.exists():
            with self.path.open("rb") as fh:
                self._verify_from_checkpoint(fh)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    def _checkpoint(self) -> dict[str, Any] | None:
        try:
            cp = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
            fields = (cp["bytes"], cp["seq"], cp["hash"], cp["sha256"])
        except (OSError, ValueError, TypeError, KeyError):
            return None  # none yet, or unreadable: verify everything
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields[:2])
        return cp if ints and all(isinstance(v, str) for v in fields[2:]) else None

    def _verify_from_checkpoint(self, fh: BinaryIO) -> None:
        """Verify the ledger and leave ``_end``/``_seq``/``_head``/``_digest`` at its end
        (ConfigError when it is broken): from the checkpoint when the file still starts with
        the checkpointed bytes, else entry by entry."""
        self._raise_if_broken(self._verify(fh))

    def _raise_if_broken(self, result: VerifyResult) -> None:
        if not result.ok:
            raise ConfigError(
                f"egress ledger {self.path} fails verification at line {result.line}: "
                f"{result.reason}. Move it aside and investigate before sending anything.")

    def _verify(self, fh: BinaryIO) -> VerifyResult:
        fh.seek(0)
        cp, size = self._checkpoint(), os.fstat(fh.fileno()).st_size
        if cp is not None and cp["bytes"] <= size:
            digest, left = hashlib.sha256(), cp["bytes"]
            while left:
                block = fh.read(min(left, 1 << 20))
                digest.update(block)
                left -= len(block)
            if digest.hexdigest() == cp["sha256"] and _ends_with_entry(fh, cp):
                fh.seek(cp["bytes"])
                return self._verify_tail(fh, cp["seq"], cp["hash"], digest)
        elif cp is not None:
            log.warning("egress ledger %s is shorter than at its last recorded append (%d < %d "
                        "bytes): its tail may have been cut", self.path, size, cp["bytes"])
        fh.seek(0)
        return self._verify_tail(fh, 0, GENESIS, hashlib.sha256())

    def _verify_tail(self, fh: BinaryIO, seq: int, head: str, digest: Any) -> VerifyResult:
        result = _verify_lines(fh, seq=seq, prev=head, digest=digest)
        if result.ok:
            self._end, self._seq, self._head = fh.tell(), result.entries, result.head
            self._digest = digest
        return result

    def head(self) -> tuple[int, str]:
        """(last seq, last hash): record it elsewhere to make tail truncation detectable."""
        return self._seq, self._head

    def append(self, *, run_id: str | int, server_round: int, message_type: str,
               tensors: Mapping[str, tuple[Sequence[int], str]], payload_sha256: str,
               masked: bool, clip_norm: float | None, noise_sigma: float | None,
               epsilon: float | None, extra: Mapping[str, object] | None = None,
               metrics: Mapping[str, object] | None = None) -> dict:
        """Record one outgoing message durably (fsync) and return the entry written;
        ``metrics`` are the numbers it carries in the clear, recorded as they left."""
        with self._lock, self.path.open("a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # another process writing the same workspace waits
            size = os.fstat(fh.fileno()).st_size
            if size < self._end:  # cut meanwhile: check it all again
                self._verify_from_checkpoint(fh)
            elif size > self._end:  # another writer appended: check what it added
                fh.seek(self._end)
                self._raise_if_broken(
                    self._verify_tail(fh, self._seq, self._head, self._digest.copy()))
            entry = {
                "seq": self._seq + 1,
                "timestamp": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "run_id": run_id, "server_round": int(server_round), "message_type": message_type,
                "tensors": _tensor_table(tensors), "payload_sha256": payload_sha256,
                "masked": bool(masked),
                "clip_norm": None if clip_norm is None else float(clip_norm),
                "noise_sigma": None if noise_sigma is None else float(noise_sigma),
                "epsilon": None if epsilon is None else float(epsilon),
                "metrics": _metric_values(metrics or {}),
                "extra": dict(extra or {}), "prev_hash": self._head,
            }
            entry["hash"] = entry_hash(entry)
            line = _canonical(entry) + b"\n"
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            self._digest.update(line)
            self._end += len(line)
            self._seq, self._head = entry["seq"], entry["hash"]
            self._write_checkpoint()
        log.debug("ledger %s: seq %d %s round %s", self.path, entry["seq"], message_type, server_round)
        return entry

    def _write_checkpoint(self) -> None:
        """Record where the verified chain ends (after the fsync, so it never runs ahead of
        the ledger). Not fsynced: a lost or stale record costs a longer check, not a wrong one."""
        record = {"bytes": self._end, "seq": self._seq, "hash": self._head,
                  "sha256": self._digest.hexdigest()}
        try:
            atomic_write(self.checkpoint_path, json.dumps(record), durable=False)
        except OSError:  # the ledger line is durable; only the shortcut is lost
            log.warning("could not record the egress ledger head in %s", self.checkpoint_path,
                        exc_info=True)


def summarize(path: str | Path) -> list[dict[str, object]]:
    """One display row per entry (no payload): what left the site, when, and how protected."""
    rows = []
    with Path(path).open("rb") as fh:
        for raw in fh:
            try:
                e = json.loads(raw)
                tensors = e.get("tensors", {})
                rows.append({
                    "seq": e.get("seq"), "time": e.get("timestamp"), "run": e.get("run_id"),
                    "round": e.get("server_round"), "type": e.get("message_type"),
                    "tensors": len(tensors),
                    "values": sum(int(np.prod(t["shape"])) for t in tensors.values()),
                    "payload": str(e.get("payload_sha256", ""))[:12], "masked": e.get("masked"),
                    "clip_norm": e.get("clip_norm"), "noise_sigma": e.get("noise_sigma"),
                    "epsilon": e.get("epsilon"),
                    "metrics": e.get("metrics") or {},
                    "summed": (e.get("extra") or {}).get("aggregated"),
                })
            except (ValueError, TypeError, KeyError, AttributeError):
                rows.append({"seq": None, "type": "<unreadable line>"})
    return rows

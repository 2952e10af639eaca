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
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from xsilo.errors import ConfigError

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


def entry_hash(entry: Mapping[str, object]) -> str:
    """SHA-256 hex of the canonical JSON of ``entry`` without its ``"hash"`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def raw_bytes(arr: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes as a flat memoryview (zero-copy, for hashing)."""
    return memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")


def payload_digest(arrays: Mapping[str, np.ndarray], metrics: Mapping[str, object]) -> str:
    """Stable SHA-256 over what is sent: every array (name, dtype, shape, little-endian
    C-order bytes, in name order) followed by the canonical JSON of ``metrics``.

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
    put(_canonical(dict(metrics)))
    return h.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_ledger`; ``line`` is the first bad 1-based line, if any."""

    ok: bool
    entries: int
    head: str
    line: int | None = None
    reason: str | None = None


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
    prev, count = GENESIS, 0
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                entry = json.loads(raw)
            except ValueError:
                return VerifyResult(False, count, prev, lineno, "line is not valid JSON")
            reason = _check_entry(entry, lineno, prev)
            if reason:
                return VerifyResult(False, count, prev, lineno, reason)
            prev, count = entry["hash"], lineno
    return VerifyResult(True, count, prev)


def _tensor_table(tensors: Mapping[str, tuple[Sequence[int], str]]) -> dict[str, dict]:
    return {name: {"shape": [int(d) for d in shape], "dtype": str(dtype)}
            for name, (shape, dtype) in tensors.items()}


class EgressLedger:
    """Appends one hash-chained, fsynced line per outgoing message.

    Opening an existing ledger verifies it first: a silo never extends a broken chain.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.exists():
            result = verify_ledger(self.path)
            if not result.ok:
                raise ConfigError(
                    f"egress ledger {self.path} fails verification at line {result.line}: "
                    f"{result.reason}. Move it aside and investigate before sending anything."
                )
            self._seq, self._head = result.entries, result.head
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._seq, self._head = 0, GENESIS

    def head(self) -> tuple[int, str]:
        """(last seq, last hash): record it elsewhere to make tail truncation detectable."""
        return self._seq, self._head

    def append(self, *, run_id: str | int, server_round: int, message_type: str,
               tensors: Mapping[str, tuple[Sequence[int], str]], payload_sha256: str,
               masked: bool, clip_norm: float | None, noise_sigma: float | None,
               epsilon: float | None, extra: Mapping[str, object] | None = None) -> dict:
        """Record one outgoing message durably (fsync) and return the entry written."""
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # another process writing the same workspace waits
            entry = {
                "seq": self._seq + 1,
                "timestamp": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "run_id": run_id, "server_round": int(server_round), "message_type": message_type,
                "tensors": _tensor_table(tensors), "payload_sha256": payload_sha256,
                "masked": bool(masked),
                "clip_norm": None if clip_norm is None else float(clip_norm),
                "noise_sigma": None if noise_sigma is None else float(noise_sigma),
                "epsilon": None if epsilon is None else float(epsilon),
                "extra": dict(extra or {}), "prev_hash": self._head,
            }
            entry["hash"] = entry_hash(entry)
            fh.write(_canonical(entry).decode("utf-8") + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            self._seq, self._head = entry["seq"], entry["hash"]
        log.debug("ledger %s: seq %d %s round %s", self.path, entry["seq"], message_type, server_round)
        return entry


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
                })
            except (ValueError, TypeError, KeyError, AttributeError):
                rows.append({"seq": None, "type": "<unreadable line>"})
    return rows

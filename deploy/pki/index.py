"""The PKI's index of issued certificates: one JSON file, rewritten atomically.

Stored state is ``valid``, ``superseded`` (renewed; still cryptographically valid until it
expires) or ``revoked``; ``expired`` is derived from ``not_after`` when read.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from xsilo.errors import EnrollmentError
from xsilo.files import atomic_write

__all__ = ["CertRecord", "Index"]

_STATES = ("valid", "superseded", "revoked")
_KINDS = ("silo", "coordinator", "superlink")
_SERIAL = re.compile(r"[0-9A-Fa-f]{1,64}")
_RESTORE = "restore index.json from backup (every issued certificate is under issued/)"


@dataclass(frozen=True)
class CertRecord:
    """One issued certificate."""

    serial: str  # hex, as nginx logs $ssl_client_serial
    name: str
    kind: str  # "silo", "coordinator" or "superlink"
    subject: str
    cert_sha256: str
    node_key_sha256: str | None
    not_before: str
    not_after: str
    state: str = "valid"
    revoked_at: str | None = None

    @property
    def expires(self) -> dt.datetime:
        """``not_after`` as an aware datetime."""
        return dt.datetime.fromisoformat(self.not_after)

    def effective_state(self, now: dt.datetime | None = None) -> str:
        """``revoked`` wins, then ``expired``, then the stored state."""
        now = now or dt.datetime.now(dt.timezone.utc)
        if self.state == "revoked":
            return "revoked"
        return "expired" if self.expires <= now else self.state


class Index:
    """Load, query and atomically rewrite ``index.json``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[CertRecord] = self._load() if self.path.exists() else []

    def _load(self) -> list[CertRecord]:
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8, digits
            raise EnrollmentError(f"PKI index {self.path} is unreadable "
                                  f"({str(exc)[:200]}); {_RESTORE}") from exc
        certs = data.get("certificates") if isinstance(data, dict) else None
        if not isinstance(certs, list):
            raise EnrollmentError(f"PKI index {self.path} has no list 'certificates'; {_RESTORE}")
        return [self._record(i, r) for i, r in enumerate(certs)]

    def _record(self, i: int, raw: object) -> CertRecord:
        """One record, every field checked: a damaged index fails here, before any write."""
        where = f"PKI index {self.path}: certificate record {i}"
        if not isinstance(raw, dict):
            raise EnrollmentError(f"{where} is not an object; {_RESTORE}")
        where += f" ({str(raw.get('name'))[:64]!r})"
        unknown = sorted(str(k)[:64] for k in raw if k not in _FIELDS)
        if unknown:
            raise EnrollmentError(f"{where} has unknown field(s) {unknown}; {_RESTORE}")
        for f in fields(CertRecord):
            if f.name not in raw and f.default is MISSING:
                raise EnrollmentError(f"{where} lacks the field {f.name!r}; {_RESTORE}")
            ok, rule = _FIELDS[f.name]
            if f.name in raw and not ok(raw[f.name]):
                raise EnrollmentError(f"{where}: field {f.name!r} = {str(raw[f.name])[:64]!r} "
                                      f"is not {rule}; {_RESTORE}")
        return CertRecord(**raw)

    def save(self) -> None:
        """Rewrite the file atomically."""
        body = {"format": "xsilo-pki-index/1", "certificates": [asdict(r) for r in self.records]}
        atomic_write(self.path, json.dumps(body, indent=2) + "\n")

    def add(self, record: CertRecord) -> None:
        """Append a record (not saved until :meth:`save`)."""
        self.records.append(record)

    def for_name(self, name: str, *, kind: str = "silo") -> list[CertRecord]:
        """All records of ``name`` (oldest first)."""
        return [r for r in self.records if r.name == name and r.kind == kind]

    def current(self, name: str, *, kind: str = "silo") -> CertRecord | None:
        """The newest non-revoked, non-superseded record of ``name`` (may be expired)."""
        live = [r for r in self.for_name(name, kind=kind) if r.state == "valid"]
        return live[-1] if live else None

    def update(self, serial: str, **changes: str | None) -> None:
        """Replace fields of the record with ``serial``."""
        self.records = [replace(r, **changes) if r.serial == serial else r  # type: ignore[arg-type]
                        for r in self.records]

    def revoked(self) -> list[CertRecord]:
        """Every revoked record (these go into the CRL)."""
        return [r for r in self.records if r.state == "revoked"]


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_serial(value: object) -> bool:
    """Hex digits: the CRL reads the serial with ``int(serial, 16)``."""
    return isinstance(value, str) and bool(_SERIAL.fullmatch(value))


def _is_time(value: object) -> bool:
    """An ISO 8601 time with a timezone (comparisons with aware times need one)."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        return dt.datetime.fromisoformat(value).utcoffset() is not None
    except ValueError:
        return False


_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "serial": (_is_serial, "hex digits (as nginx logs $ssl_client_serial)"),
    "name": (_is_text, "a non-empty string"),
    "kind": (lambda v: v in _KINDS, f"one of {', '.join(_KINDS)}"),
    "subject": (_is_text, "a non-empty string"),
    "cert_sha256": (_is_text, "a non-empty string"),
    "node_key_sha256": (lambda v: v is None or _is_text(v), "null or a non-empty string"),
    "not_before": (_is_time, "an ISO 8601 time with a timezone"),
    "not_after": (_is_time, "an ISO 8601 time with a timezone"),
    "state": (lambda v: v in _STATES, f"one of {', '.join(_STATES)}"),
    "revoked_at": (lambda v: v is None or _is_time(v), "null or an ISO 8601 time with a timezone"),
}

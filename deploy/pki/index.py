"""The PKI's index of issued certificates: one JSON file, rewritten atomically.

Stored state is ``valid``, ``superseded`` (renewed; still cryptographically valid until it
expires) or ``revoked``; ``expired`` is derived from ``not_after`` when read.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from xsilo.errors import EnrollmentError
from xsilo.files import atomic_write

__all__ = ["CertRecord", "Index"]

_STATES = ("valid", "superseded", "revoked")


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
            data = json.loads(self.path.read_text())
            records = [CertRecord(**r) for r in data["certificates"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EnrollmentError(f"PKI index {self.path} is unreadable ({exc}); restore it from "
                                  "backup (every issued certificate is under issued/)") from exc
        for r in records:
            if r.state not in _STATES:
                raise EnrollmentError(f"PKI index {self.path}: unknown state {r.state!r}")
        return records

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

"""Certificates and CRLs that do not lapse silently.

A CRL past its ``nextUpdate`` makes OpenSSL — so both gateways — refuse **every** peer, and
a certificate past ``notAfter`` refuses its holder. Three things here keep that from
happening unnoticed:

* :func:`renewal_margin` — when a CRL is due: less than a third of its validity left, or
  24 h, whichever is larger, but never more than half of it (so a freshly issued CRL is
  never due: a 3-day CRL is renewed with 1 day left, a 30 s test CRL with 15 s left);
* :class:`CrlKeeper` — what a running coordinator calls on every look: re-issue a due CRL
  when the CA key is usable (unencrypted, or its passphrase configured), otherwise warn the
  operator — at start, then at most once a day — with the command that fixes it;
* :func:`pki_notices` — what ``xsilo pki status`` and ``xsilo coordinator status`` warn
  about: every current certificate expiring within ``warn_days`` and a due or lapsed CRL,
  each with its fixing command.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from deploy.pki.authority import Pki
from xsilo.errors import EnrollmentError

__all__ = ["CrlKeeper", "Notice", "crl_command", "crl_due", "passphrase_source", "pki_notices",
           "read_crl", "renewal_margin"]

log = logging.getLogger(__name__)
DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Notice:
    """Something the operator must know: ``level`` is ``info``, ``warning`` or ``error``."""

    level: str
    text: str
    command: str | None = None

    def __str__(self) -> str:
        return self.text + (f": run `{self.command}`" if self.command else "")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def renewal_margin(validity: dt.timedelta) -> dt.timedelta:
    """How long before ``nextUpdate`` a CRL valid for ``validity`` is due for renewal:
    ``max(validity / 3, min(24 h, validity / 2))``."""
    return max(validity / 3, min(DAY, validity / 2))


def read_crl(path: Path) -> x509.CertificateRevocationList:
    """The PEM CRL at ``path`` (ValueError if it is not one, OSError if unreadable)."""
    return x509.load_pem_x509_crl(Path(path).read_bytes())


def crl_due(next_update: dt.datetime, validity: dt.timedelta,
            now: dt.datetime | None = None) -> bool:
    """Whether a CRL lapsing at ``next_update`` is due for renewal (see :func:`renewal_margin`)."""
    return next_update - (now or _now()) <= renewal_margin(validity)


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return f"{_span(-delta)} ago"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds} s"


def crl_command(pki: Pki) -> str:
    """The command that re-issues the CRL of ``pki``."""
    extra = " --passphrase-file FILE" if pki.ca_key_path.is_file() and pki.ca_key_encrypted else ""
    return f"xsilo pki crl --pki-dir {pki.root}{extra}"


class CrlKeeper:
    """Keeps a running coordinator's CRL fresh (called from its periodic reconcile).

    ``passphrase`` returns the CA key's passphrase (or None) each time the key is needed,
    so a passphrase file is read when used and not kept in memory. ``remind_every`` bounds
    how often the same warning is repeated (the first look always warns if it must);
    ``clock`` tells the time (tests pass their own).
    """

    def __init__(self, pki: Pki, *, passphrase: Callable[[], bytes | None] = lambda: None,
                 remind_every: dt.timedelta = DAY,
                 clock: Callable[[], dt.datetime] = _now) -> None:
        self.pki = pki
        self.passphrase = passphrase
        self.remind_every = remind_every
        self.clock = clock
        self._warned_at: dt.datetime | None = None
        self._started = False

    def key_problem(self) -> str | None:
        """Why the CA key cannot sign a CRL here (None when it can)."""
        if not self.pki.ca_key_path.is_file():
            return f"the CA key {self.pki.ca_key_path} is not on this host"
        try:
            self.pki.unlock(self.passphrase())
        except (EnrollmentError, OSError) as exc:
            return str(exc)
        return None

    def tick(self, now: dt.datetime | None = None) -> list[Notice]:
        """Renew the CRL if it is due and the key is usable; else warn (rate-limited)."""
        now = now or self.clock()
        first, self._started = not self._started, True
        try:
            next_update = read_crl(self.pki.crl_path).next_update_utc
        except (OSError, ValueError) as exc:
            next_update, unreadable = None, f"{self.pki.crl_path} is unreadable ({exc})"
        else:
            unreadable = None
        due = next_update is None or crl_due(next_update, self.pki.crl_validity, now)
        if not due and not first:
            return []
        problem = self.key_problem()
        if not due and problem is None:  # the first look: say what will happen
            margin = renewal_margin(self.pki.crl_validity)
            return [Notice("info", f"CRL valid until {next_update:%Y-%m-%d %H:%M:%S} UTC; "
                                   f"re-issued here {_span(margin)} before it lapses")]
        if due and problem is None:
            try:
                self.pki.publish_crl(self.passphrase())
                fresh = self.pki.crl_next_update()
            except (EnrollmentError, OSError) as exc:
                problem = str(exc)
            else:
                was = "was unreadable" if next_update is None else \
                    f"had {_span(next_update - now)} left" if next_update > now else \
                    f"had lapsed {_span(now - next_update)} ago"
                log.info("CRL re-issued (the previous one %s); valid until %s", was, fresh)
                return [Notice("info", f"CRL re-issued (the previous one {was}); valid "
                                       f"until {fresh:%Y-%m-%d %H:%M:%S} UTC")]
        if problem is None:
            return []
        if self._warned_at is not None and now - self._warned_at < self.remind_every:
            return []
        self._warned_at = now
        notice = self._warning(next_update, unreadable, problem, now)
        log.warning("%s", notice)
        return [notice]

    def _warning(self, next_update: dt.datetime | None, unreadable: str | None, problem: str,
                 now: dt.datetime) -> Notice:
        if next_update is None:
            state, level = unreadable or "the CRL is unreadable", "error"
        elif next_update <= now:
            state, level = (f"the CRL LAPSED {_span(now - next_update)} ago "
                            f"({next_update:%Y-%m-%d %H:%M} UTC): the gateway refuses EVERY "
                            "silo until it is re-issued", "error")
        else:
            state, level = (f"the CRL lapses in {_span(next_update - now)} "
                            f"({next_update:%Y-%m-%d %H:%M} UTC), and then the gateway "
                            "refuses every silo", "warning")
        return Notice(level, f"{state}; this coordinator cannot re-issue it by itself "
                             f"({problem}). Give `xsilo coordinator start` the CA passphrase "
                             "(--passphrase-file), or re-issue it by hand at least daily "
                             "(the running coordinator reloads its gateway)",
                      crl_command(self.pki))


def pki_notices(pki: Pki, *, warn_days: float = 7,
                now: dt.datetime | None = None) -> list[Notice]:
    """What ``pki`` needs done soon: the CA, each current certificate (not superseded, not
    revoked) that expires within ``warn_days`` or has expired, and a due or lapsed CRL."""
    now = now or _now()
    soon = now + dt.timedelta(days=warn_days)
    out: list[Notice] = []
    ca_end = pki.ca_cert.not_valid_after_utc
    if ca_end <= soon:
        out.append(Notice("error" if ca_end <= now else "warning",
                          f"the consortium CA {_when(ca_end, now)}; rotate it "
                          "(docs/security.md, \"Rotate the CA\")"))
    current: dict[tuple[str, str], object] = {}
    for rec in pki.records():
        if rec.state == "valid":
            current[(rec.kind, rec.name)] = rec  # newest last
    for (kind, name), rec in sorted(current.items()):
        expires = rec.expires  # type: ignore[attr-defined]
        if expires > soon:
            continue
        level = "error" if expires <= now else "warning"
        if kind == "silo":
            out.append(Notice(level, f"silo {name}'s certificate {_when(expires, now)}; renew "
                                     "it (the silo then installs the bundle with `xsilo silo "
                                     "renew --bundle`)",
                              f"xsilo pki renew {name} --pki-dir {pki.root}"))
        else:
            after = (" (the running coordinator reloads its gateway with it)" if kind ==
                     "coordinator" else ", then restart the coordinator (the SuperLink reads "
                     "its certificate at start)")
            out.append(Notice(level, f"the {kind} certificate {_when(expires, now)}; re-issue "
                                     f"it{after}",
                              f"xsilo pki issue-coordinator --pki-dir {pki.root}"))
    out += _crl_notices(pki, now)
    return out


def _crl_notices(pki: Pki, now: dt.datetime) -> list[Notice]:
    try:
        next_update = read_crl(pki.crl_path).next_update_utc
    except (OSError, ValueError) as exc:
        return [Notice("error", f"the CRL {pki.crl_path} is unreadable ({exc}); every gateway "
                                "refuses its peers", crl_command(pki))]
    if next_update <= now:
        return [Notice("error", f"the CRL LAPSED {_span(now - next_update)} ago: the "
                                "coordinator gateway refuses every silo", crl_command(pki))]
    if crl_due(next_update, pki.crl_validity, now):
        return [Notice("warning", f"the CRL lapses in {_span(next_update - now)} and must be "
                                  "re-issued (a running coordinator with the CA key does it "
                                  "by itself)", crl_command(pki))]
    return []


def _when(moment: dt.datetime, now: dt.datetime) -> str:
    if moment <= now:
        return f"EXPIRED {_span(now - moment)} ago ({moment:%Y-%m-%d %H:%M} UTC)"
    return f"expires in {_span(moment - now)} ({moment:%Y-%m-%d %H:%M} UTC)"


def passphrase_source(passphrase_file: Path | None) -> Callable[[], bytes | None]:
    """Where a long-running process finds the CA passphrase each time it needs it: the
    file (trailing newline dropped, as ``xsilo pki --passphrase-file``), else ``$XSILO_CA_PASSPHRASE``, else none (an unencrypted key)."""

    def read() -> bytes | None:
        if passphrase_file is not None:
            try:
                return Path(passphrase_file).read_bytes().rstrip(b"\r\n")  # as `xsilo pki`
            except OSError as exc:
                raise EnrollmentError(f"cannot read the CA passphrase file {passphrase_file} "
                                      f"({exc})") from exc
        env = os.environ.get("XSILO_CA_PASSPHRASE")
        return env.encode() if env else None

    return read

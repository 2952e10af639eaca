"""A silo keeps its copy of the consortium CRL fresh.

The silo gateway checks the coordinator's certificate against the kit's ``crl.pem``
(``proxy_ssl_crl``), and OpenSSL refuses every peer once that CRL is past its
``nextUpdate``. So ``xsilo silo start`` fetches the coordinator's current CRL — served,
public and CA-signed, at :data:`~deploy.gateway.conf.CRL_PATH` on the coordinator gateway —
over the silo's own mutual-TLS connection (:mod:`deploy.pki.link`), at start and then
periodically (:func:`check_interval`), and installs it only when it is

* a CRL issued by the consortium CA and signed by its key (the TLS channel is not trusted
  for that: a CRL proves itself),
* not lapsed, and
* newer (a higher CRL number, else a later ``lastUpdate``) than the one installed — never
  a replay of an older one,

atomically, then reloads the silo gateway. Every outcome is a :class:`CrlRefresh`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from deploy.gateway.conf import CRL_PATH
from deploy.pki.certs import crl_number, read_certificate
from deploy.pki.kit import KIT_FILES, MemberKit
from deploy.pki.link import get
from xsilo.errors import DeploymentError, EnrollmentError
from xsilo.files import atomic_write

__all__ = ["CrlRefresh", "check_interval", "crl_path", "installed_crl", "lapse_warning",
           "refresh_crl", "verify_crl"]

log = logging.getLogger(__name__)
Fetch = Callable[[], tuple[int, bytes]]
MIN_INTERVAL, MAX_INTERVAL = 2.0, 3600.0  # s between two looks


@dataclass(frozen=True)
class CrlRefresh:
    """What one refresh did. ``outcome``: ``installed`` (a newer CRL), ``current`` (the
    coordinator serves the one installed), ``refused`` (the coordinator gateway refused
    this silo's client certificate: HTTP 400), ``unreachable`` (network, TLS, other HTTP
    status) or ``invalid`` (not a CRL of the CA, lapsed, or older than the installed one)."""

    outcome: str
    detail: str
    next_update: dt.datetime | None  # of the CRL installed after this refresh


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def crl_path(kit: MemberKit) -> Path:
    """The kit's CRL (``KIT/crl.pem``)."""
    return kit.root / KIT_FILES["crl"]


def installed_crl(kit: MemberKit) -> x509.CertificateRevocationList | None:
    """The kit's CRL, or None if it is missing or unreadable."""
    try:
        return x509.load_pem_x509_crl(crl_path(kit).read_bytes())
    except (OSError, ValueError):
        return None


def verify_crl(pem: bytes, ca: x509.Certificate, *,
               current: x509.CertificateRevocationList | None = None,
               now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """Parse ``pem`` and check it is one CRL, the CA's, unexpired, and newer than
    ``current``; :class:`EnrollmentError` naming the rule it breaks otherwise."""
    crl = _parse_crl(pem)
    try:
        _check_crl(crl, ca, current, now or _now())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # a malformed field
        raise EnrollmentError(f"the CRL the coordinator sent cannot be read ({exc}); refused "
                              "(the installed CRL is kept)") from exc
    return crl


def _parse_crl(pem: bytes) -> x509.CertificateRevocationList:
    """The one PEM CRL in ``pem``: nginx loads the kit's crl.pem whole, so a block past the first
    (which ``load_pem_x509_crl`` would not look at) must not ride along."""
    if pem.count(b"-----BEGIN") > 1:
        raise EnrollmentError(f"the coordinator sent {pem.count(b'-----BEGIN')} PEM blocks "
                              "where one CRL belongs; refused (the installed CRL is kept)")
    try:
        return x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise EnrollmentError(f"the coordinator sent something that is not a PEM CRL ({exc})") \
            from exc


def _check_crl(crl: x509.CertificateRevocationList, ca: x509.Certificate,
               current: x509.CertificateRevocationList | None, now: dt.datetime) -> None:
    """The rules of :func:`verify_crl` for a parsed CRL."""
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise EnrollmentError("the CRL the coordinator sent is not signed by the consortium CA; "
                              "refused (the installed CRL is kept)")
    if crl.next_update_utc is None or crl.next_update_utc <= now:
        raise EnrollmentError(f"the CRL the coordinator sent lapsed at {crl.next_update_utc}: "
                              "its operator must re-issue it (`xsilo pki crl`)")
    if current is not None and not _newer(crl, current):
        raise EnrollmentError(f"the CRL the coordinator sent (issued {crl.last_update_utc}, "
                              f"number {crl_number(crl)}) is not newer than the installed one "
                              f"(issued {current.last_update_utc}, number "
                              f"{crl_number(current)}); refused")


def _newer(crl: x509.CertificateRevocationList,
           than: x509.CertificateRevocationList) -> bool:
    """By CRL number when both have one (it orders CRLs of the same second), else by
    ``lastUpdate``."""
    mine, theirs = crl_number(crl), crl_number(than)
    if mine is not None and theirs is not None:
        return mine > theirs
    return crl.last_update_utc > than.last_update_utc


def refresh_crl(kit: MemberKit, *, fetch: Fetch | None = None,
                reload: Callable[[], None] | None = None, now: dt.datetime | None = None,
                timeout: float = 10.0) -> CrlRefresh:
    """Fetch the coordinator's CRL and install it if it passes :func:`verify_crl`; then
    ``reload`` (the running silo gateway). ``fetch`` returns ``(HTTP status, body)``."""
    fetch = fetch or (lambda: get(kit, CRL_PATH, timeout=timeout))
    current = installed_crl(kit)
    have = current.next_update_utc if current is not None else None
    try:
        status, body = fetch()
    except DeploymentError as exc:
        return CrlRefresh("unreachable", str(exc), have)
    if status == 400:
        return CrlRefresh("refused", "the coordinator gateway refused this silo's client "
                          "certificate (HTTP 400: expired, revoked or from another CA — or the "
                          "coordinator's own CRL lapsed)", have)
    if status != 200:
        return CrlRefresh("unreachable", f"GET {CRL_PATH} at {kit.coordinator} answered HTTP "
                          f"{status}", have)
    if current is not None and body.strip() == crl_path(kit).read_bytes().strip():
        return CrlRefresh("current", "the coordinator serves the installed CRL", have)
    try:
        ca = read_certificate(kit.ca_cert, fix="restore the member kit's ca.crt from your "
                              "backup, or import the operator's bundle again")
        crl = verify_crl(body, ca, current=current, now=now)
    except EnrollmentError as exc:
        log.warning("silo %s: %s", kit.name, exc)
        return CrlRefresh("invalid", str(exc), have)
    # What was verified, re-encoded: never the body as served (nginx reads every block).
    atomic_write(crl_path(kit), crl.public_bytes(serialization.Encoding.PEM))
    detail = f"installed a fresh CRL, valid until {crl.next_update_utc:%Y-%m-%d %H:%M:%S} UTC"
    if reload is not None:
        try:
            reload()
            detail += "; silo gateway reloaded"
        except DeploymentError as exc:
            detail += f"; the silo gateway did not reload ({exc})"
    log.info("silo %s: %s", kit.name, detail)
    return CrlRefresh("installed", detail, crl.next_update_utc)


def check_interval(kit: MemberKit, now: dt.datetime | None = None) -> float:
    """Seconds until the next look: an eighth of the installed CRL's remaining validity,
    between 2 s and 1 h (a lapsed or unreadable CRL: 2 s)."""
    crl = installed_crl(kit)
    if crl is None or crl.next_update_utc is None:
        return MIN_INTERVAL
    left = (crl.next_update_utc - (now or _now())).total_seconds()
    return min(MAX_INTERVAL, max(MIN_INTERVAL, left / 8))


def lapse_warning(kit: MemberKit, now: dt.datetime | None = None) -> str | None:
    """What to tell the operator when the kit's CRL is missing, unreadable or lapsed (the
    silo gateway then refuses the coordinator: SuperNodes see 502 and retry)."""
    crl = installed_crl(kit)
    if crl is None:
        return (f"{crl_path(kit)} is missing or not a CRL: the silo gateway cannot check the "
                "coordinator's certificate for revocation")
    if crl.next_update_utc is not None and crl.next_update_utc <= (now or _now()):
        return (f"the CRL {crl_path(kit)} LAPSED at {crl.next_update_utc:%Y-%m-%d %H:%M:%S} "
                "UTC: this silo's gateway refuses the coordinator (its SuperNode retries) "
                "until a fresh CRL is installed; `xsilo silo start` fetches one from the "
                "coordinator as soon as it serves one (its operator: `xsilo pki crl`)")
    return None

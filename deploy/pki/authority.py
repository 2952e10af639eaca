"""The coordinator operator's consortium PKI, kept in one directory (the *pki dir*).

The directory's layout, and everything read from it without the CA key:
:mod:`deploy.pki.directory`.

Nothing is changed until every check passed (:mod:`deploy.pki.checks`) and the CA key was
unlocked: a malformed request or a wrong passphrase leaves the directory as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.pki.certs import (
    CertifiedKey, crl_number, fingerprint, issue_leaf, load_private_key, make_ca, make_crl,
    public_key_fingerprint, write_private_key, write_public_pem,
)
from deploy.pki.checks import (
    check_address, check_common_name, check_crl_days, check_crl_seconds, check_curve,
    check_days, check_hosts, check_name,
    check_new_passphrase, check_organization, check_port, coordinator_server_name,
)
from deploy.pki.directory import RESTORE, CoordinatorFiles, PkiDirectory, validity
from deploy.pki.index import CertRecord, Index
from deploy.pki.messages import Bundle, EnrollmentRequest, node_key_fingerprint, read_request
from xsilo.errors import EnrollmentError
from xsilo.files import atomic_write

__all__ = ["DEFAULT_PKI_DIR", "RESERVED_NAMES", "CoordinatorFiles", "Pki", "RevokeHook"]

log = logging.getLogger(__name__)
DEFAULT_PKI_DIR = Path(os.environ.get("XSILO_PKI_DIR", "xsilo-pki"))
# Index names of the coordinator's own certificates: no silo may enroll under them.
RESERVED_NAMES = frozenset({"coordinator", "superlink"})
RevokeHook = Callable[[str, str], None]
"""Called as ``hook(silo_name, node_public_key_openssh)`` after a revocation is recorded."""


def _nginx_serial(serial: int) -> str:
    """Upper-case hex with an even number of digits, exactly as nginx logs $ssl_client_serial."""
    text = f"{serial:X}"
    return "0" + text if len(text) % 2 else text


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def _record(cert: x509.Certificate, name: str, kind: str, node_key: str | None) -> CertRecord:
    return CertRecord(
        serial=_nginx_serial(cert.serial_number), name=name, kind=kind,
        subject=cert.subject.rfc4514_string(), cert_sha256=fingerprint(cert),
        node_key_sha256=node_key_fingerprint(node_key) if node_key else None,
        not_before=_iso(cert.not_valid_before_utc), not_after=_iso(cert.not_valid_after_utc))


class Pki(PkiDirectory):
    """A consortium PKI directory. Open an existing one with ``Pki(path)``; create with
    :meth:`Pki.init`. ``on_revoke`` lets the coordinator unregister the revoked node key."""

    def __init__(self, root: Path = DEFAULT_PKI_DIR, *, on_revoke: RevokeHook | None = None):
        super().__init__(root)
        self.on_revoke = on_revoke

    # --- creation ----------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path = DEFAULT_PKI_DIR, *, common_name: str = "xsilo consortium CA",
             organization: str | None = None, curve: str = "P-384", days: int = 3650,
             passphrase: bytes | None = None, crl_days: int = 3,
             crl_seconds: int | None = None) -> Pki:
        """Create the root CA (key 0600, optionally encrypted), an empty index and CRL.

        Every CRL is valid ``crl_days`` days, or ``crl_seconds`` seconds when given (short
        validities are for tests and drills)."""
        root = Path(root)
        if (root / "pki.json").exists() or (root / "private" / "ca.key").exists():
            raise EnrollmentError(f"{root} already holds a PKI; refusing to overwrite its CA. "
                                  "To rotate the CA, init a new directory (docs/security.md)")
        check_curve(curve)
        check_days(days)
        check_new_passphrase(passphrase)
        check_organization(organization)
        check_common_name(common_name)
        settings = {"format": "xsilo-pki/1", "organization": organization, "curve": curve,
                    "crl_days": check_crl_days(crl_days), "coordinator": None}
        if crl_seconds is not None:
            settings["crl_seconds"] = check_crl_seconds(crl_seconds)
        ca = make_ca(common_name, curve=curve, days=days, organization=organization)
        crl = make_crl(ca, [], validity=validity(settings), number=time.time_ns() // 1_000_000,
                       ).public_bytes(serialization.Encoding.PEM)  # all checked: now write
        root.mkdir(parents=True, exist_ok=True)
        (root / "private").mkdir(mode=0o700, exist_ok=True)
        write_private_key(root / "private" / "ca.key", ca.key, passphrase=passphrase)
        write_public_pem(root / "ca.crt", ca.cert)
        Index(root / "index.json").save()
        atomic_write(root / "crl.pem", crl)
        atomic_write(root / "pki.json", json.dumps(settings, indent=2) + "\n")
        log.info("created consortium CA %s in %s", fingerprint(ca.cert), root)
        return cls(root)

    def unlock(self, passphrase: bytes | None = None) -> CertifiedKey:
        """Load the CA key; a missing or wrong passphrase is an :class:`EnrollmentError`."""
        self._ca_key_bytes()  # not on this host, or unreadable: say so, not "wrong passphrase"
        try:
            key = load_private_key(self.ca_key_path, passphrase)
        except (TypeError, ValueError) as exc:
            if self.ca_key_encrypted:
                hint = ("the CA key is encrypted: give its passphrase (--passphrase-file or "
                        "XSILO_CA_PASSPHRASE)" if passphrase is None
                        else "wrong CA passphrase (nothing was changed)")
            elif passphrase is not None and isinstance(exc, TypeError):
                hint = ("the CA key is not encrypted: give no passphrase (drop "
                        "--passphrase-file, unset XSILO_CA_PASSPHRASE)")
            else:
                hint = f"it is not a readable private key (damaged?); {RESTORE}"
            raise EnrollmentError(f"cannot unlock {self.ca_key_path}: {hint}") from exc
        if key.public_key() != self.ca_cert.public_key():
            raise EnrollmentError(f"{self.ca_key_path} does not belong to {self.ca_cert_path}")
        return CertifiedKey(key, self.ca_cert)  # type: ignore[arg-type]

    def issue_coordinator(self, *, hosts: list[str], address: str | None = None,
                          port: int = 8443, days: int = 365,
                          passphrase: bytes | None = None) -> CoordinatorFiles:
        """Issue the public gateway certificate (SANs ``hosts``) and the SuperLink's loopback one.

        ``address`` (``host:port`` silos dial) defaults to ``hosts[0]:port``; its host, or
        the first DNS name among ``hosts`` if it is an IP, is the name silos verify. Without
        ``hosts`` it re-issues for the names and address of the current certificate (after
        ``revoke("coordinator")``, or before it expires); the old one is superseded.
        """
        previous = self.settings.get("coordinator") or {}
        if not hosts and previous.get("hosts"):
            hosts, address = list(previous["hosts"]), address or previous["address"]
        hosts = check_hosts(hosts)
        check_days(days)
        check_port(port)
        address = check_address(address or f"{hosts[0]}:{port}")
        ca = self.unlock(passphrase)
        server_name = coordinator_server_name(address, hosts)
        out = self.root / "coordinator"
        index = Index(self.index_path)
        for kind, sans in (("coordinator", hosts), ("superlink", ["localhost", "127.0.0.1"])):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = issue_leaf(ca, f"xsilo-{kind}", public_key=key.public_key(),
                              server_hosts=sans, days=days,
                              organization=self.settings.get("organization"))
            stem = "server" if kind == "coordinator" else "superlink"
            write_private_key(out / f"{stem}.key", key)
            write_public_pem(out / f"{stem}.crt", cert)
            write_public_pem(self.root / "issued" / f"{kind}-{_nginx_serial(cert.serial_number)}.crt", cert)
            for old in index.for_name(kind, kind=kind):
                if old.state == "valid":
                    index.update(old.serial, state="superseded")
            index.add(_record(cert, kind, kind, None))
            if kind == "coordinator":
                coord_fp = fingerprint(cert)
        index.save()
        self.settings["coordinator"] = {"address": address, "server_name": server_name,
                                        "certificate_sha256": coord_fp, "hosts": list(hosts)}
        atomic_write(self.root / "pki.json", json.dumps(self.settings, indent=2) + "\n")
        log.info("issued coordinator certificate for %s (verify name %s)", hosts, server_name)
        return self.coordinator_files()

    # --- silos ---------------------------------------------------------------------------
    def approve(self, request: EnrollmentRequest | Path, *, days: int = 30,
                passphrase: bytes | None = None, out: Path | None = None) -> Path:
        """Sign a silo's request; write and return its bundle. Refuses a name that already
        holds a valid certificate (revoke or renew it instead) and reused keys."""
        req = request if isinstance(request, EnrollmentRequest) else read_request(request)
        check_days(days)
        if req.name in RESERVED_NAMES:
            raise EnrollmentError(f"silo name {req.name!r} is reserved for the coordinator's own "
                                  "certificates; the silo must enroll under another name")
        index = Index(self.index_path)
        current = index.current(req.name)
        if current and current.effective_state() == "valid":
            raise EnrollmentError(f"silo {req.name!r} already holds valid certificate serial "
                                  f"{current.serial}; use `xsilo pki renew {req.name}`, or "
                                  "revoke it first to enroll new keys")
        node_fp = req.node_key_fingerprint
        for r in index.records:
            if r.node_key_sha256 == node_fp and (r.name != req.name or r.state == "revoked"):
                raise EnrollmentError(f"node key {node_fp} was already enrolled for {r.name!r} "
                                      f"(state {r.state}); the silo must generate new keys")
        self._refuse_certified_tls_key(req, index)
        self.coordinator_files()
        ca = self.unlock(passphrase)
        cert = issue_leaf(ca, req.name, public_key=req.csr.public_key(),  # type: ignore[arg-type]
                          client=True, days=days,
                          organization=req.organization or self.settings.get("organization"))
        index.add(_record(cert, req.name, "silo", req.node_public_key))
        return self._finish(ca, index, cert, req.name, req.node_public_key, out, enrolled=True)

    def _refuse_certified_tls_key(self, req: EnrollmentRequest, index: Index) -> None:
        """A TLS key is certified once: a revoked (or anyone else's) key never comes back
        through a new enrollment. The index keeps no key fingerprints: read issued/."""
        tls_fp = req.tls_key_fingerprint
        by_serial = {r.serial: r for r in index.records}
        for path in [self.ca_cert_path, *sorted((self.root / "issued").glob("*.crt"))]:
            cert = self._load_cert(path)
            if public_key_fingerprint(cert.public_key()) != tls_fp:  # type: ignore[arg-type]
                continue
            rec = by_serial.get(_nginx_serial(cert.serial_number))
            whose = f"{rec.name!r} (state {rec.state})" if rec else path.name
            raise EnrollmentError(f"the TLS key {tls_fp} of {req.name!r} was already certified "
                                  f"for {whose}: a key is enrolled once; the silo must "
                                  "generate new keys (`xsilo silo enroll` in a new directory)")

    def renew(self, name: str, *, days: int = 30, passphrase: bytes | None = None,
              out: Path | None = None, request: Path | None = None) -> Path:
        """Re-sign the current certificate's public key with a fresh validity; return the
        bundle. A silo's ``renew-request.json`` (CSR by the same key), if given, must match."""
        check_days(days)
        index = Index(self.index_path)
        current = index.current(check_name(name))
        if current is None:
            raise EnrollmentError(f"silo {name!r} has no certificate to renew (never enrolled, "
                                  "or revoked: a revoked silo must enroll with new keys)")
        old = self._load_cert(self.root / "issued" / f"{name}-{current.serial}.crt")
        node_file = self.root / "nodes" / f"{name}.pub"
        try:
            node_line = node_file.read_text().strip()
        except OSError as exc:
            raise EnrollmentError(f"cannot read {node_file} ({exc.strerror}), the node key of "
                                  f"{name!r}: {RESTORE}") from exc
        if request is not None:
            req = read_request(request)
            if (req.name != name or req.csr.public_key() != old.public_key()
                    or req.node_public_key != node_line):
                raise EnrollmentError(f"renewal request {request} is not signed by the keys "
                                      f"enrolled for {name!r}; a new key needs a new enrollment")
        ca = self.unlock(passphrase)
        org = old.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
        cert = issue_leaf(ca, name, public_key=old.public_key(),  # type: ignore[arg-type]
                          client=True, days=days,
                          organization=str(org[0].value) if org else None)
        index.update(current.serial, state="superseded")
        index.add(_record(cert, name, "silo", node_line))
        return self._finish(ca, index, cert, name, node_line, out)

    def _finish(self, ca: CertifiedKey, index: Index, cert: x509.Certificate, name: str,
                node_line: str, out: Path | None, *, enrolled: bool = False) -> Path:
        """Write what a signed certificate changes, once everything is built: the issued
        certificate, the node key (``enrolled``: a new member), the index, the CRL, the
        bundle."""
        crl = self._crl_bytes(ca, index)
        coord = self.settings["coordinator"]
        bundle = Bundle(name=name, certificate=_pem(cert), ca_certificate=_pem(ca.cert),
                        crl=crl.decode(), coordinator_address=coord["address"],
                        coordinator_server_name=coord["server_name"],
                        coordinator_certificate_sha256=coord["certificate_sha256"],
                        node_public_key_sha256=node_key_fingerprint(node_line)).to_json(ca.key)
        write_public_pem(self.root / "issued" / f"{name}-{_nginx_serial(cert.serial_number)}.crt", cert)
        if enrolled:
            atomic_write(self.root / "nodes" / f"{name}.pub", node_line + "\n")
        index.save()
        atomic_write(self.crl_path, crl)
        path = Path(out) if out else self.root / "bundles" / f"{name}.json"
        atomic_write(path, bundle)
        log.info("issued %s serial %s until %s -> %s", name, _nginx_serial(cert.serial_number),
                 cert.not_valid_after_utc.date(), path)
        return path

    def revoke(self, name: str, *, passphrase: bytes | None = None) -> list[CertRecord]:
        """Revoke every unexpired certificate of ``name``, re-issue the CRL, move its node key
        to ``revoked/`` and call ``on_revoke``. Returns the revoked records.

        ``name`` ``"coordinator"`` revokes the coordinator gateway's certificate (silo
        gateways then refuse it once they hold the new CRL); issue a new one with
        :meth:`issue_coordinator`, and a running coordinator reloads its gateway with it."""
        index = Index(self.index_path)
        kind = "coordinator" if name == "coordinator" else "silo"
        targets = [r for r in index.for_name(name if kind != "silo" else check_name(name),
                                             kind=kind)
                   if r.state != "revoked" and r.effective_state() != "expired"]
        if not targets:
            raise EnrollmentError(f"{kind} {name!r} has no unrevoked, unexpired certificate")
        ca = self.unlock(passphrase)
        when = _iso(dt.datetime.now(dt.timezone.utc))
        for r in targets:
            index.update(r.serial, state="revoked", revoked_at=when)
        crl = self._crl_bytes(ca, index)  # built before anything is written
        index.save()
        atomic_write(self.crl_path, crl)
        if kind == "coordinator":
            log.warning("revoked the coordinator certificate (serials %s); CRL re-issued: "
                        "issue a new one with `xsilo pki issue-coordinator --pki-dir %s`",
                        ", ".join(r.serial for r in targets), self.root)
            return [r for r in Index(self.index_path).records
                    if r.serial in {t.serial for t in targets}]
        node_file = self.root / "nodes" / f"{name}.pub"
        node_line = node_file.read_text().strip() if node_file.exists() else ""
        if node_line:
            atomic_write(self.root / "revoked" / f"{name}.pub", node_line + "\n")
            node_file.unlink()
        log.warning("revoked %s (serials %s); CRL re-issued", name,
                    ", ".join(r.serial for r in targets))
        if self.on_revoke and node_line:
            self.on_revoke(name, node_line)
        return [r for r in Index(self.index_path).records if r.serial in
                {t.serial for t in targets}]

    def publish_crl(self, passphrase: bytes | None = None, *,
                    validity_seconds: int | None = None) -> Path:
        """Re-issue the CRL with a fresh nextUpdate (a running coordinator does it before the
        CRL lapses; gateways then reload). ``validity_seconds`` also becomes the validity of
        every later CRL of this PKI."""
        settings = dict(self.settings)
        if validity_seconds is not None:
            settings["crl_seconds"] = check_crl_seconds(validity_seconds)
        ca = self.unlock(passphrase)
        crl = self._crl_bytes(ca, Index(self.index_path), validity(settings))
        if validity_seconds is not None:
            atomic_write(self.root / "pki.json", json.dumps(settings, indent=2) + "\n")
            self.settings = settings
        atomic_write(self.crl_path, crl)
        return self.crl_path

    def _crl_bytes(self, ca: CertifiedKey, index: Index,
                   valid_for: dt.timedelta | None = None) -> bytes:
        """The CRL of ``index``'s revocations, signed, as PEM (written by the caller)."""
        revoked = [(int(r.serial, 16), dt.datetime.fromisoformat(r.revoked_at or r.not_before))
                   for r in index.revoked()]
        crl = make_crl(ca, revoked, validity=valid_for or self.crl_validity,
                       number=self._next_crl_number())
        return crl.public_bytes(serialization.Encoding.PEM)

    def _next_crl_number(self) -> int:
        """Milliseconds since the epoch, and always above the current CRL's number."""
        try:
            previous = crl_number(x509.load_pem_x509_crl(self.crl_path.read_bytes())) or 0
        except (OSError, ValueError):
            previous = 0
        return max(previous + 1, time.time_ns() // 1_000_000)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()

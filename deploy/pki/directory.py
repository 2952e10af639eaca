"""What a consortium PKI directory (the *pki dir*) holds, read without the CA key:
its settings, the CA certificate, the certificates issued and their states, the enrolled and
revoked node keys, the roster, the coordinator's certificate files. The CA's own operations
(signing, revoking, the CRL) are :class:`deploy.pki.authority.Pki`, which extends this.

Layout::

    PKI_DIR/
      pki.json                 settings: curve, organization, coordinator address/name
      ca.crt                   consortium root CA (give its fingerprint to silos by phone)
      private/ca.key           CA key, 0600 (optionally passphrase-encrypted); dir 0700
      crl.pem                  current CRL, re-issued on every change and by a running
                               coordinator before it lapses (validity: crl_seconds, else
                               crl_days, in pki.json)
      index.json               every issued certificate (deploy.pki.index)
      coordinator/server.{crt,key}     public gateway certificate (SANs from --host/--ip)
      coordinator/superlink.{crt,key}  the SuperLink's loopback certificate (localhost)
      issued/<name>-<serial>.crt       every certificate ever issued
      nodes/<name>.pub         Flower node key of each enrolled silo (register these)
      revoked/<name>.pub       node keys of revoked silos (unregister these)
      bundles/<name>.json      the last bundle for each silo (public; send it back)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from deploy.pki.certs import (
    flower_public_key_header, fingerprint, public_key_fingerprint, read_certificate,
)
from deploy.pki.checks import (check_address, check_crl_days, check_crl_seconds, check_hosts,
                               check_organization)
from deploy.pki.index import CertRecord, Index
from deploy.pki.messages import parse_node_public_key
from xsilo.errors import EnrollmentError

__all__ = ["RESTORE", "CoordinatorFiles", "PkiDirectory", "read_settings", "validity"]

RESTORE = ("restore it from your backup of the PKI directory (an offline CA's coordinator "
           "host: `xsilo pki sync` from the CA host)")


@dataclass(frozen=True)
class CoordinatorFiles:
    """Paths of the coordinator's certificates, for the gateway and the SuperLink."""

    server_cert: Path
    server_key: Path
    superlink_cert: Path
    superlink_key: Path
    address: str
    server_name: str


class PkiDirectory:
    """A consortium PKI directory, read: ``PkiDirectory(path)`` (:class:`EnrollmentError`
    when ``path`` is not one)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / "pki.json").is_file() or not self.ca_cert_path.is_file():
            raise EnrollmentError(f"{self.root} is not an xsilo PKI directory (no pki.json or "
                                  "ca.crt); create one with "
                                  f"`xsilo pki init --pki-dir {self.root}`")
        self.settings = read_settings(self.root / "pki.json")

    # --- paths -------------------------------------------------------------------------
    ca_cert_path = property(lambda self: self.root / "ca.crt")
    ca_key_path = property(lambda self: self.root / "private" / "ca.key")
    crl_path = property(lambda self: self.root / "crl.pem")
    index_path = property(lambda self: self.root / "index.json")

    @property
    def ca_cert(self) -> x509.Certificate:
        """The consortium CA certificate."""
        return self._load_cert(self.ca_cert_path)

    @property
    def ca_fingerprint(self) -> str:
        """SHA-256 fingerprint of the CA certificate (silos check it out of band)."""
        return fingerprint(self.ca_cert)

    @property
    def crl_validity(self) -> dt.timedelta:
        """How long each CRL this PKI issues is valid (``nextUpdate`` − now); read afresh, so
        a running coordinator follows `xsilo pki crl --hours` given in another process."""
        try:
            self.settings = read_settings(self.root / "pki.json")
        except EnrollmentError:
            pass  # a torn or missing file: keep what was read before
        return validity(self.settings)

    @property
    def ca_key_encrypted(self) -> bool:
        """Whether unlocking the CA key needs a passphrase (:class:`EnrollmentError` when
        the key is not on this host)."""
        return b"ENCRYPTED" in self._ca_key_bytes()

    def _ca_key_bytes(self) -> bytes:
        try:
            return self.ca_key_path.read_bytes()
        except FileNotFoundError:
            raise EnrollmentError(
                f"the CA key {self.ca_key_path} is not on this host (an offline CA: this "
                "directory was copied by `xsilo pki sync`): sign on the CA host, in the PKI "
                "directory that holds private/ca.key, then carry the result here with "
                "`xsilo pki sync`") from None
        except OSError as exc:
            raise EnrollmentError(f"cannot read the CA key {self.ca_key_path}: {exc.strerror}; "
                                  "run as the account that owns the PKI directory") from exc

    def coordinator_files(self) -> CoordinatorFiles:
        """Where the coordinator certificates are; :class:`EnrollmentError` before issuing."""
        coord = self.settings.get("coordinator")
        if not coord:
            raise EnrollmentError("no coordinator certificate yet: run "
                                  f"`xsilo pki issue-coordinator --pki-dir {self.root} --host …`")
        d = self.root / "coordinator"
        return CoordinatorFiles(d / "server.crt", d / "server.key", d / "superlink.crt",
                                d / "superlink.key", coord["address"], coord["server_name"])

    def _load_cert(self, path: Path) -> x509.Certificate:
        return read_certificate(path, fix=RESTORE)

    # --- queries -------------------------------------------------------------------------
    def records(self) -> list[CertRecord]:
        """Every issued certificate, oldest first."""
        return list(Index(self.index_path).records)

    def status(self, *, warn_days: int = 7) -> list[tuple[CertRecord, str, bool]]:
        """``(record, effective state, warn)`` for each certificate; ``warn`` when a valid
        one expires within ``warn_days``."""
        now = dt.datetime.now(dt.timezone.utc)
        soon = now + dt.timedelta(days=warn_days)
        return [(r, s := r.effective_state(now), s == "valid" and r.expires <= soon)
                for r in self.records()]

    def crl_next_update(self) -> dt.datetime:
        """When the current CRL stops being accepted."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise EnrollmentError(f"the CRL {self.crl_path} is missing or not a PEM CRL; "
                                  "re-issue it with `xsilo pki crl` where the CA key is (then "
                                  "`xsilo pki sync` to an offline CA's coordinator host)") from exc
        return crl.next_update_utc  # type: ignore[return-value]

    def roster(self) -> dict[str, str]:
        """``{silo: "sha256:<key fingerprint>"}`` of every silo whose current certificate is
        valid: the roster a site pins in its policy (the fingerprint is of the TLS key, so it
        survives certificate renewals with the same key)."""
        latest = {r.name: r for r in self.records() if r.kind == "silo"}  # newest last
        out = {}
        for name, rec in sorted(latest.items()):
            if rec.effective_state() != "valid":  # revoked or expired: not a member
                continue
            cert = self._load_cert(self.root / "issued" / f"{name}-{rec.serial}.crt")
            out[name] = "sha256:" + public_key_fingerprint(cert.public_key())  # type: ignore[arg-type]
        return out

    def enrolled_node_keys(self) -> dict[str, str]:
        """``{silo: OpenSSH node public key}`` of every non-revoked silo (to register)."""
        return {p.stem: p.read_text().strip() for p in sorted((self.root / "nodes").glob("*.pub"))}

    def revoked_node_keys(self) -> dict[str, str]:
        """``{silo: OpenSSH node public key}`` of revoked silos (to unregister)."""
        return {p.stem: p.read_text().strip()
                for p in sorted((self.root / "revoked").glob("*.pub"))}

    def node_key_bindings(self) -> dict[str, str]:
        """``{client certificate subject (as nginx's $ssl_client_s_dn): flwr-public-key
        header}`` for every enrolled silo: binds the Flower node key to the TLS identity."""
        return {subject: flower_public_key_header(parse_node_public_key(line))
                for subject, line in self.silo_bindings().values()}

    def silo_bindings(self) -> dict[str, tuple[str, str]]:
        """``{silo: (current certificate subject, OpenSSH node public key)}`` for every
        enrolled silo, unchecked (the gateway reads each file on its own:
        :func:`deploy.gateway.bindings.node_key_bindings`)."""
        return {name: (rec.subject, path.read_text().strip())
                for name, path, rec in self.enrolled_silos()}

    def enrolled_silos(self) -> list[tuple[str, Path, CertRecord]]:
        """``(silo, its nodes/<silo>.pub, its current certificate record)`` for every silo
        with a node key and a current certificate; the files are not read."""
        index = Index(self.index_path)
        found = [(p.stem, p, index.current(p.stem))
                 for p in sorted((self.root / "nodes").glob("*.pub"))]
        return [(name, path, rec) for name, path, rec in found if rec is not None]


RESTORE = ("restore it from your backup of the PKI directory (an offline CA's coordinator "
            "host: `xsilo pki sync` from the CA host)")


def read_settings(path: Path) -> dict:
    """``pki.json``, checked: every setting a later operation uses has its type and range
    (EnrollmentError naming the setting otherwise, before anything is signed or written)."""
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise EnrollmentError(f"cannot read {path}: {exc.strerror}; {RESTORE}") from exc
    except (ValueError, RecursionError) as exc:
        raise EnrollmentError(f"{path} is not valid JSON ({exc}); {RESTORE}") from exc
    if not isinstance(settings, dict):
        raise EnrollmentError(f"{path} must hold a JSON object; {RESTORE}")
    try:
        check_organization(settings.get("organization"))
        check_crl_days(settings.get("crl_days", 3))
        if settings.get("crl_seconds") is not None:
            check_crl_seconds(settings["crl_seconds"])
        _check_coordinator(settings.get("coordinator"))
    except EnrollmentError as exc:
        raise EnrollmentError(f"{path}: {exc}; {RESTORE}") from None
    return settings


def _check_coordinator(coord: object) -> None:
    """``pki.json``'s ``coordinator``: null before `issue-coordinator`, else its address,
    verified name, certificate digest and hosts."""
    if coord is None:
        return
    if not isinstance(coord, dict) or not all(
            isinstance(coord.get(k), str) for k in ("address", "server_name",
                                                    "certificate_sha256")) or not (
            isinstance(coord.get("hosts"), list) and all(isinstance(h, str)
                                                          for h in coord["hosts"])):
        raise EnrollmentError("setting 'coordinator' must be null or hold the text address, "
                              "server_name, certificate_sha256 and a list of hosts")
    check_address(coord["address"])
    check_hosts(coord["hosts"])


def validity(settings: dict) -> dt.timedelta:
    """Each CRL's validity: ``crl_seconds`` when set, else ``crl_days`` (checked)."""
    if settings.get("crl_seconds") is not None:
        return dt.timedelta(seconds=check_crl_seconds(settings["crl_seconds"]))
    return dt.timedelta(days=check_crl_days(settings.get("crl_days", 3)))

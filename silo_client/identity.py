"""Members are who they say they are: the silo signs its key adverts with its enrollment key
and checks every peer's before it masks with it.

A silo whose ``silo.toml`` has an ``[identity]`` table (the member kit writes one)::

    [identity]
    certificate = "silo.crt"   # this silo's enrollment certificate (from the bundle)
    key = "silo.key"           # its TLS key, 0600 — the same key its gateway presents
    ca = "ca.crt"              # the consortium CA
    crl = "crl.pem"            # optional: the CA's revocation list

signs every KeyAdvert (run, roster index, epoch, both X25519 keys) with ECDSA-SHA256 and
sends its certificate along. Before masking, it checks each peer in the round's directory:
the certificate was issued by the consortium CA, is within its validity and not revoked,
and the signature over that peer's advert verifies. A peer that fails is a
:class:`~xsilo.errors.ProtocolError` naming it: the silo does not mask with a coordinator's
substitute keys.

The coordinator operator runs the CA, so it could mint members. A site that pins the
consortium's **roster** in its policy (``roster = { "hospital-b" = "sha256:AB:…" }``:
member names and their key fingerprints, exchanged out of band — ``xsilo pki list`` prints
them) refuses, with ``PolicyRefusal[roster]``, every round that includes a peer outside it,
so a coordinator cannot shrink a round to one real silo among minted ones.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.pki.certs import load_certificate, load_private_key, public_key_fingerprint
from silo_client.config import SiloConfig
from silo_client.policy import SitePolicy, normalize_fingerprint
from strategies.secagg import KeyAdvert
from xsilo.errors import ConfigError, PolicyRefusal, ProtocolError

__all__ = ["SiteIdentity", "site_identity"]

log = logging.getLogger(__name__)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@dataclass(frozen=True, repr=False)
class SiteIdentity:
    """This silo's enrollment key and certificate, the consortium CA, revoked serials and
    (optionally) the pinned roster (see the module docstring)."""

    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca: x509.Certificate
    revoked: frozenset[int] = frozenset()
    roster: dict[str, str] | None = None  # member name → normalized key fingerprint

    def __repr__(self) -> str:  # the key stays out of logs
        return f"SiteIdentity({self.name!r}, roster={sorted(self.roster or {})})"

    def sign(self, payload: bytes) -> tuple[bytes, bytes]:
        signature = self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
        return self.certificate.public_bytes(serialization.Encoding.DER), signature

    def check_peer(self, advert: KeyAdvert, payload: bytes) -> None:
        who = f"silo {advert.silo}"
        if not advert.certificate:
            raise ProtocolError(f"{who}'s secure-aggregation keys are not signed with an "
                                "enrollment certificate; this site masks only with enrolled "
                                "members (every silo needs an [identity] in its silo.toml)")
        try:
            cert = x509.load_der_x509_certificate(advert.certificate)
        except ValueError:
            raise ProtocolError(f"{who}'s advert carries a malformed certificate") from None
        name = _common_name(cert)
        who = f"silo {advert.silo} ({name or 'no name'})"
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise ProtocolError(f"{who}: its certificate was not issued by this consortium's CA; "
                                "refusing to mask with it") from None
        now = dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ProtocolError(f"{who}: its certificate is not valid now (valid "
                                f"{cert.not_valid_before_utc:%Y-%m-%d} to "
                                f"{cert.not_valid_after_utc:%Y-%m-%d}); it must renew")
        if cert.serial_number in self.revoked:
            raise ProtocolError(f"{who}: its certificate is revoked (serial "
                                f"{cert.serial_number:x} is in the CRL); refusing to mask with it")
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ProtocolError(f"{who}: its certificate does not hold an EC key")
        try:
            public.verify(advert.signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ProtocolError(f"{who}: the signature over its secure-aggregation keys does "
                                "not verify (keys substituted on the way?); refusing to mask "
                                "with them") from None
        if self.roster is not None:
            fingerprint = normalize_fingerprint(public_key_fingerprint(public))
            if self.roster.get(name) != fingerprint:
                raise PolicyRefusal("roster", (
                    f"{who} with key sha256:{fingerprint[:16]}… is not in this site's roster "
                    f"({', '.join(sorted(self.roster))}); the coordinator runs the CA and could "
                    "mint members, so no update is masked with it"))


def _load(path: Path, what: str, loader):  # type: ignore[no-untyped-def]
    if not path.is_file():
        raise ConfigError(f"[identity] {what} {path} does not exist; import the enrollment "
                          "bundle first (`xsilo silo import-bundle`) or fix the path in silo.toml")
    try:
        return loader(path)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[identity] {what} {path} cannot be read ({exc}); re-import the "
                          "bundle") from exc


def _revoked(crl_path: Path | None, ca: x509.Certificate) -> frozenset[int]:
    if crl_path is None or not crl_path.is_file():
        return frozenset()
    crl = _load(crl_path, "crl", lambda p: x509.load_pem_x509_crl(p.read_bytes()))
    if not crl.is_signature_valid(ca.public_key()):
        raise ConfigError(f"[identity] crl {crl_path} is not signed by the consortium CA; "
                          "re-import the bundle")
    return frozenset(entry.serial_number for entry in crl)


def site_identity(config: SiloConfig, policy: SitePolicy) -> SiteIdentity | None:
    """The silo's identity from its ``[identity]`` table, or None without one (then its
    adverts go unsigned and it cannot check peers; a pinned roster requires an identity)."""
    if config.identity_certificate is None:
        if policy.roster is not None:
            raise ConfigError(f"{config.path}: the site policy pins a roster, which needs this "
                              "silo's [identity] (certificate, key, ca) to check its peers")
        return None
    assert config.identity_key is not None and config.identity_ca is not None
    cert = _load(config.identity_certificate, "certificate", load_certificate)
    ca = _load(config.identity_ca, "ca", load_certificate)
    key = _load(config.identity_key, "key", load_private_key)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key().public_numbers() \
            != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(f"[identity] key {config.identity_key} is not the key of certificate "
                          f"{config.identity_certificate}; point both at the member kit's files")
    roster = None if policy.roster is None else dict(policy.roster)
    return SiteIdentity(name=_common_name(cert), key=key, certificate=cert, ca=ca,
                        revoked=_revoked(config.identity_crl, ca), roster=roster)

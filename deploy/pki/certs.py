"""Certificate and key primitives on ``cryptography``.

Small, composable functions: make a CA, issue a server or client leaf, make a Flower
SuperNode authentication key pair (OpenSSH-format ECDSA, as Flower requires). The
consortium PKI (``deploy.pki.authority``) and the throw-away demo CA are built from these.
Private keys are always written with mode 0600, created that way (never chmod-ed after).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xsilo.errors import EnrollmentError
from xsilo.files import atomic_write

__all__ = [
    "CertifiedKey",
    "crl_number",
    "fingerprint",
    "flower_public_key_header",
    "issue_leaf",
    "load_certificate",
    "load_private_key",
    "make_ca",
    "make_crl",
    "make_csr",
    "make_node_auth_key",
    "openssh_public_line",
    "public_key_fingerprint",
    "read_certificate",
    "read_private_key",
    "write_private_bytes",
    "write_private_key",
    "write_public_pem",
]

_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}


@dataclass(frozen=True)
class CertifiedKey:
    """A private key with its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def make_ca(common_name: str, *, curve: str = "P-384", days: int = 3650,
            organization: str | None = None) -> CertifiedKey:
    """Create a self-signed CA (path length 0: it signs leaves only)."""
    key = ec.generate_private_key(_CURVES[curve]())
    name = _name(common_name, organization)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def issue_leaf(ca: CertifiedKey, common_name: str, *, public_key: ec.EllipticCurvePublicKey,
               server_hosts: list[str] | None = None, client: bool = False, days: int = 30,
               organization: str | None = None,
               not_before: dt.datetime | None = None) -> x509.Certificate:
    """Sign a leaf certificate for ``public_key``.

    ``server_hosts`` (DNS names or IP addresses) become SANs and add ``serverAuth``;
    ``client=True`` adds ``clientAuth``.
    """
    start = not_before or (_now() - dt.timedelta(minutes=5))
    usages = []
    if server_hosts:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_hosts:
        builder = builder.add_extension(_san(server_hosts), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, *,
                      openssh: bool = False, passphrase: bytes | None = None) -> None:
    """Write ``key`` to ``path``, created with mode 0600 (never readable by others)."""
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    write_private_bytes(path, key.private_bytes(serialization.Encoding.PEM, fmt, encryption))


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write secret bytes to ``path``: a file that is 0600 from its first byte, renamed into
    place atomically (:func:`xsilo.files.atomic_write`)."""
    atomic_write(path, data, mode=0o600)


def write_public_pem(path: Path, cert: x509.Certificate) -> None:
    """Write a certificate (public) as PEM."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM))


def make_node_auth_key(private_path: Path, public_path: Path) -> str:
    """Create a SuperNode authentication key pair (OpenSSH ECDSA P-384); return the public line."""
    key = ec.generate_private_key(ec.SECP384R1())
    write_private_key(private_path, key, openssh=True)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    atomic_write(public_path, public + "\n")
    return public


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def read_certificate(path: Path, *, fix: str) -> x509.Certificate:
    """:func:`load_certificate`, with an :class:`EnrollmentError` that names the file and
    ``fix`` (how to restore it) when it is missing, unreadable or not a PEM certificate."""
    try:
        return load_certificate(path)
    except FileNotFoundError:
        raise EnrollmentError(f"{path} is missing; {fix}") from None
    except OSError as exc:
        raise EnrollmentError(f"cannot read {path}: {exc.strerror}; {fix}") from exc
    except ValueError as exc:
        raise EnrollmentError(f"{path} is not a PEM certificate (damaged?): {fix}") from exc


def read_private_key(path: Path, *, fix: str) -> ec.EllipticCurvePrivateKey:
    """An unencrypted private key (a kit's), with an :class:`EnrollmentError` that names the
    file and ``fix`` when it is missing, unreadable or not an EC private key."""
    try:
        key = load_private_key(path)
    except FileNotFoundError:
        raise EnrollmentError(f"{path} is missing; {fix}") from None
    except OSError as exc:
        raise EnrollmentError(f"cannot read {path}: {exc.strerror}; {fix}") from exc
    except (ValueError, TypeError) as exc:
        raise EnrollmentError(f"{path} is not a readable private key (damaged?): {fix}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollmentError(f"{path} is not an ECDSA private key: {fix}")
    return key


def load_private_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a PEM (PKCS8) or OpenSSH private key."""
    data = Path(path).read_bytes()
    if b"OPENSSH PRIVATE KEY" in data:
        return serialization.load_ssh_private_key(data, passphrase)  # type: ignore[return-value]
    return serialization.load_pem_private_key(data, passphrase)  # type: ignore[return-value]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate, as ``AB:CD:…`` hex pairs (what ``openssl x509 -fingerprint -sha256`` shows)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


# --- Additions for the consortium PKI (deploy.pki.authority, deploy.pki.enrollment) -------------------

def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str, *,
             organization: str | None = None) -> x509.CertificateSigningRequest:
    """A CSR for ``common_name``, signed by ``key`` (proof of possession)."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(_name(common_name, organization))
            .sign(key, hashes.SHA256()))


def make_crl(ca: CertifiedKey, revoked: list[tuple[int, dt.datetime]], *,
             days: int = 3, validity: dt.timedelta | None = None, number: int | None = None,
             ) -> x509.CertificateRevocationList:
    """A CRL listing ``(serial, revocation time)`` pairs; ``nextUpdate`` is ``validity``
    (default ``days``) ahead, ``lastUpdate`` 5 minutes back (peers' clocks may lag);
    ``number`` (RFC 5280 CRL number, increasing) orders CRLs issued in the same second.

    A CRL past its ``nextUpdate`` makes OpenSSL (and so nginx) refuse every peer: re-issue
    it well before then (a running coordinator does, ``xsilo pki crl`` or any PKI change).
    """
    now = _now()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now - dt.timedelta(minutes=5))
               .next_update(now + (validity if validity is not None
                                   else dt.timedelta(days=days))))
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca.key, hashes.SHA256())


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The CRL's number (RFC 5280, section 5.2.3), None if it has none."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def public_key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 over the DER SubjectPublicKeyInfo, as ``AB:CD:…`` hex pairs."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return ":".join(f"{b:02X}" for b in digest.finalize())


def openssh_public_line(public_key: ec.EllipticCurvePublicKey) -> str:
    """The OpenSSH one-line form of a public key (what ``flwr supernode register`` takes)."""
    return public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode()


def flower_public_key_header(public_key: ec.EllipticCurvePublicKey) -> str:
    """The value a SuperNode sends in its ``flwr-public-key`` header (base64 of the PEM SPKI)."""
    import base64

    pem = public_key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(pem).decode("ascii")

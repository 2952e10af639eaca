"""The two files that cross between a silo and the coordinator operator.

* an **enrollment request** (silo → operator): a CSR signed by the silo's TLS key, the
  silo's Flower node public key (OpenSSH) with a signature by that key over the CSR, and
  contact metadata. Public material only: a request that contains a private key is refused.
* a **bundle** (operator → silo): the signed client certificate, the CA certificate, the
  CRL and where the coordinator is; the whole body is signed with the CA key, so a silo
  that checked the CA fingerprint out of band detects any tampering in transit.

Both are JSON, parsed here into frozen dataclasses; every problem is an
:class:`~xsilo.errors.EnrollmentError` that names the file and the rule it broke.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.pki.certs import fingerprint, public_key_fingerprint
from deploy.pki.checks import (
    check_address, check_contact, check_hosts, check_name, check_organization,
)
from xsilo.errors import EnrollmentError

__all__ = [
    "BUNDLE_FORMAT",
    "REQUEST_FORMAT",
    "Bundle",
    "EnrollmentRequest",
    "node_key_fingerprint",
    "parse_node_public_key",
    "read_bundle",
    "read_request",
]

REQUEST_FORMAT = "xsilo-enrollment-request/1"
BUNDLE_FORMAT = "xsilo-bundle/1"
_PRIVATE_MARKER = re.compile(r"PRIVATE KEY|OPENSSH PRIVATE")


def canonical(body: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_node_public_key(line: str) -> ec.EllipticCurvePublicKey:
    """Parse a Flower node public key (OpenSSH ECDSA on a NIST curve, as Flower requires)."""
    try:
        key = serialization.load_ssh_public_key(line.strip().encode())
    except (ValueError, TypeError, AttributeError, UnsupportedAlgorithm) as exc:
        raise EnrollmentError(f"node public key is not an OpenSSH public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise EnrollmentError("node public key must be ECDSA on a NIST curve "
                              "(Flower rejects Ed25519/RSA node keys)")
    return key


def node_key_fingerprint(line: str) -> str:
    """SHA-256 fingerprint of an OpenSSH public key, as ``ssh-keygen -lf`` prints it.

    The key is parsed first, so a damaged line is an :class:`EnrollmentError`."""
    parse_node_public_key(line)
    blob = base64.b64decode(line.split()[1])
    digest = hashes.Hash(hashes.SHA256())
    digest.update(blob)
    return "SHA256:" + base64.b64encode(digest.finalize()).decode().rstrip("=")


def _load_json(path: Path, what: str) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EnrollmentError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnrollmentError(f"{what} {path} is not UTF-8 text (byte {exc.start}); it was "
                              "damaged in transit: ask for the file again") from exc
    if _PRIVATE_MARKER.search(text):
        raise EnrollmentError(
            f"{what} {path} contains a private key: refused. Treat that key as compromised, "
            "generate new keys on site and send only the request file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EnrollmentError(f"{what} {path} is not valid JSON ({exc.msg} at line "
                              f"{exc.lineno}); re-create it, do not edit it by hand") from exc
    except (ValueError, RecursionError) as exc:  # a huge integer, nesting too deep
        raise EnrollmentError(f"{what} {path} is not JSON that xsilo writes "
                              f"({str(exc)[:120]}); re-create it, do not edit it by hand") from exc
    if not isinstance(data, dict):
        raise EnrollmentError(f"{what} {path} must be a JSON object")
    return data


def _field(data: dict[str, Any], key: str, path: Path, what: str) -> Any:
    if key not in data or data[key] in (None, ""):
        raise EnrollmentError(f"{what} {path} lacks the field {key!r}; re-create it with xsilo")
    return data[key]


@dataclass(frozen=True)
class EnrollmentRequest:
    """A validated enrollment (or renewal) request."""

    name: str
    organization: str | None
    contact: dict[str, str]
    csr: x509.CertificateSigningRequest
    node_public_key: str
    created: str
    kind: str = "enroll"

    @property
    def tls_key_fingerprint(self) -> str:
        """SHA-256 of the TLS public key (SPKI), what the operator compares by phone."""
        return public_key_fingerprint(self.csr.public_key())  # type: ignore[arg-type]

    @property
    def node_key_fingerprint(self) -> str:
        """OpenSSH-style SHA-256 fingerprint of the Flower node key."""
        return node_key_fingerprint(self.node_public_key)

    @property
    def subject(self) -> str:
        """The CSR subject, RFC 4514."""
        return self.csr.subject.rfc4514_string()

    def to_json(self, node_signature: bytes) -> str:
        """Serialize (``node_signature``: the node key's signature over the CSR DER)."""
        body = {
            "format": REQUEST_FORMAT, "kind": self.kind, "name": self.name,
            "organization": self.organization, "contact": self.contact,
            "csr": self.csr.public_bytes(serialization.Encoding.PEM).decode(),
            "node_public_key": self.node_public_key,
            "node_key_signature": base64.b64encode(node_signature).decode(),
            "created": self.created,
        }
        return json.dumps(body, indent=2) + "\n"


def read_request(path: Path) -> EnrollmentRequest:
    """Parse and check a request file: format, name, CSR signature, node-key signature."""
    path, what = Path(path), "enrollment request"
    data = _load_json(path, what)
    try:
        return _parse_request(data, path, what)
    except EnrollmentError as exc:
        if str(path) in str(exc):
            raise
        raise EnrollmentError(f"{what} {path}: {exc}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # cryptography parses lazily
        raise EnrollmentError(f"{what} {path} is damaged: {exc}; re-create it with "
                              "`xsilo silo enroll`") from exc


def _parse_request(data: dict[str, Any], path: Path, what: str) -> EnrollmentRequest:
    if data.get("format") != REQUEST_FORMAT:
        raise EnrollmentError(f"{what} {path}: format {data.get('format')!r} is not "
                              f"{REQUEST_FORMAT!r}")
    name = check_name(_field(data, "name", path, what))
    org = check_organization(data.get("organization"))
    contact = check_contact(_field(data, "contact", path, what))
    try:
        csr = x509.load_pem_x509_csr(str(_field(data, "csr", path, what)).encode())
    except ValueError as exc:
        raise EnrollmentError(f"{what} {path}: the CSR is not a PEM CSR ({exc})") from exc
    if not csr.is_signature_valid:
        raise EnrollmentError(f"{what} {path}: the CSR signature is invalid (tampered?)")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise EnrollmentError(f"{what} {path}: the TLS key must be ECDSA (P-256 or P-384)")
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if [a.value for a in cns] != [name]:
        raise EnrollmentError(f"{what} {path}: CSR common name does not equal name {name!r}")
    orgs = csr.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    if (len(csr.subject) != len(cns) + len(orgs)
            or [a.value for a in orgs] != ([org] if org else [])):
        raise EnrollmentError(f"{what} {path}: CSR subject {csr.subject.rfc4514_string()!r} "
                              f"is not CN={name} with organization {org!r}; re-create the "
                              "request with `xsilo silo enroll`")
    node_line = str(_field(data, "node_public_key", path, what)).strip()
    node_key = parse_node_public_key(node_line)
    try:
        sig = base64.b64decode(str(_field(data, "node_key_signature", path, what)), validate=True)
        node_key.verify(sig, csr.public_bytes(serialization.Encoding.DER),
                        ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise EnrollmentError(f"{what} {path}: the node-key signature over the CSR does not "
                              "verify (tampered, or keys from different enrollments)") from exc
    kind = data.get("kind", "enroll")
    if kind not in ("enroll", "renew"):
        raise EnrollmentError(f"{what} {path}: kind {kind!r} is not 'enroll' or 'renew'")
    created = data.get("created", "")
    try:
        if created:
            dt.datetime.fromisoformat(str(created))
    except ValueError:
        created = None
    if not isinstance(created, str) or len(created) > 40:
        raise EnrollmentError(f"{what} {path}: created {str(data.get('created'))[:64]!r} is "
                              "not an ISO 8601 time; re-create the request with xsilo")
    return EnrollmentRequest(name, org, contact, csr, node_line, created, kind)


@dataclass(frozen=True)
class Bundle:
    """What the operator sends back: certificates, CRL, coordinator location; CA-signed."""

    name: str
    certificate: str
    ca_certificate: str
    crl: str
    coordinator_address: str
    coordinator_server_name: str
    coordinator_certificate_sha256: str
    node_public_key_sha256: str
    issued: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())

    def body(self) -> dict[str, Any]:
        """The signed content."""
        return {"format": BUNDLE_FORMAT, **asdict(self)}

    def to_json(self, ca_key: ec.EllipticCurvePrivateKey) -> str:
        """Serialize and sign with the CA key."""
        body = self.body()
        sig = ca_key.sign(canonical(body), ec.ECDSA(hashes.SHA256()))
        return json.dumps({**body, "signature": base64.b64encode(sig).decode()}, indent=2) + "\n"

    def cert(self) -> x509.Certificate:
        """The silo's client certificate."""
        return x509.load_pem_x509_certificate(self.certificate.encode())

    def ca(self) -> x509.Certificate:
        """The consortium CA certificate."""
        return x509.load_pem_x509_certificate(self.ca_certificate.encode())


def _norm_fp(value: str) -> str:
    return re.sub(r"[^0-9A-F]", "", value.upper().removeprefix("SHA256:").removeprefix("SHA256"))


def read_bundle(path: Path, expected_ca_fingerprint: str) -> Bundle:
    """Parse a bundle, check the CA against the fingerprint received out of band and the
    CA's signature over the bundle. Raises :class:`EnrollmentError` on any mismatch."""
    path, what = Path(path), "bundle"
    data = _load_json(path, what)
    if data.get("format") != BUNDLE_FORMAT:
        raise EnrollmentError(f"{what} {path}: format {data.get('format')!r} is not "
                              f"{BUNDLE_FORMAT!r}")
    names = [f for f in Bundle.__dataclass_fields__]
    try:
        bundle = Bundle(**{k: str(_field(data, k, path, what)) for k in names})
        ca = bundle.ca()
        bundle.cert()
        sig = base64.b64decode(str(_field(data, "signature", path, what)), validate=True)
    except ValueError as exc:
        raise EnrollmentError(f"{what} {path} is damaged: {exc}") from exc
    got = fingerprint(ca)
    if not _norm_fp(expected_ca_fingerprint) or _norm_fp(got) != _norm_fp(expected_ca_fingerprint):
        raise EnrollmentError(
            f"{what} {path}: CA fingerprint {got} does not match the expected "
            f"{expected_ca_fingerprint!r} you received out of band; do not import it, "
            "call the coordinator operator")
    try:
        ca_key = ca.public_key()
        ca_key.verify(sig, canonical(bundle.body()),  # type: ignore[call-arg, union-attr]
                      ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
    except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm) as exc:
        # ValueError: a lone surrogate, which canonical() cannot encode
        raise EnrollmentError(f"{what} {path}: CA signature over the bundle does not verify: "
                              "it was modified after signing; ask for a new one") from exc
    _check_destination(bundle, path)
    return bundle


_DESTINATION: tuple[tuple[str, Callable[[str], object], str], ...] = (
    ("name", check_name, "a silo name (1-63 lowercase letters, digits and '-')"),
    ("coordinator_address", check_address, "host:port with a port in 1-65535"),
    ("coordinator_server_name", lambda host: check_hosts([host]), "a DNS name or IP address"),
)


def _check_destination(bundle: Bundle, path: Path) -> None:
    """The CA's signature vouches for who sent a bundle, not for what it says: the name and
    the coordinator's location go into the kit, silo.toml and service units, so a hostile or
    buggy coordinator must not be able to put anything else there."""
    for key, check, rule in _DESTINATION:
        value = getattr(bundle, key)
        try:
            check(value)
        except EnrollmentError as exc:
            raise EnrollmentError(f"bundle {path}: {key} {value[:80]!r} is not {rule}; do not "
                                  "import it, ask the coordinator operator for a correct "
                                  "bundle") from exc

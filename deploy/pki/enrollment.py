"""Silo side of enrollment: keys are made here and never leave the site.

``enroll`` creates the kit directory with the TLS client key and the Flower node-auth key
(both 0600) and a request file; ``import_bundle`` checks what the operator sent back and
completes the **member kit** (layout in :mod:`deploy.pki.kit`); ``make_renewal_request`` and
``install_renewal`` renew the certificate for the same key, atomically, and reload a
running silo gateway so training continues.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.pki.certs import (
    fingerprint, issue_leaf, make_ca, make_csr, openssh_public_line, read_certificate,
    read_private_key, write_private_key, write_public_pem,
)
from deploy.pki.checks import check_contact, check_curve, check_name, check_organization
from deploy.pki.kit import KIT_FILES, MemberKit, load_kit, write_kit_toml, write_silo_stub
from deploy.pki.messages import (
    Bundle, EnrollmentRequest, node_key_fingerprint, parse_node_public_key, read_bundle,
    read_request,
)
from xsilo.errors import EnrollmentError
from xsilo.files import atomic_write

__all__ = ["enroll", "import_bundle", "install_renewal", "make_renewal_request"]

log = logging.getLogger(__name__)


def enroll(name: str, kit_dir: Path, *, email: str, person: str | None = None,
           phone: str | None = None, organization: str | None = None,
           curve: str = "P-256") -> Path:
    """Generate this silo's keys in ``kit_dir`` (0600) and write ``request.json``.

    Returns the request path: send that file (public material only) to the operator.
    Refuses to overwrite existing keys.
    """
    # every check before the first key is written: a refused enrollment can be retried
    check_name(name)
    check_organization(organization)
    contact = check_contact({"email": email, "person": person, "phone": phone})
    check_curve(curve)
    curves = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
    kit = Path(kit_dir)
    for f in (KIT_FILES["tls_key"], KIT_FILES["node_key"]):
        if (kit / f).exists():
            raise EnrollmentError(f"{kit / f} already exists: this kit is enrolled or in "
                                  "progress; use a new directory or `xsilo silo renew`")
    kit.mkdir(parents=True, exist_ok=True)
    os.chmod(kit, 0o700)
    tls_key = ec.generate_private_key(curves[curve]())
    node_key = ec.generate_private_key(ec.SECP384R1())
    write_private_key(kit / KIT_FILES["tls_key"], tls_key)
    write_private_key(kit / KIT_FILES["node_key"], node_key, openssh=True)
    node_line = openssh_public_line(node_key.public_key())
    atomic_write(kit / KIT_FILES["node_pub"], node_line + "\n")
    path = _write_request(kit, name, organization, contact, tls_key, node_key, "enroll")
    read_request(path)  # the operator will run the same checks; fail here first
    log.info("wrote %s (node key %s)", path, node_key_fingerprint(node_line))
    return path


def _write_request(kit: Path, name: str, organization: str | None, contact: dict[str, str],
                   tls_key: ec.EllipticCurvePrivateKey, node_key: ec.EllipticCurvePrivateKey,
                   kind: str) -> Path:
    csr = make_csr(tls_key, name, organization=organization)
    node_sig = node_key.sign(csr.public_bytes(serialization.Encoding.DER),
                             ec.ECDSA(hashes.SHA256()))
    req = EnrollmentRequest(name, organization, contact, csr,
                            openssh_public_line(node_key.public_key()),
                            dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), kind)
    path = kit / ("request.json" if kind == "enroll" else "renew-request.json")
    atomic_write(path, req.to_json(node_sig))
    return path


_DAMAGED = ("this member kit is damaged: restore the kit directory from your backup (its keys "
            "cannot be re-made: without one, enroll again with `xsilo silo enroll` in a new "
            "directory)")


def _node_line(path: Path) -> str:
    try:
        line = path.read_text().strip()
        parse_node_public_key(line)
    except OSError as exc:
        raise EnrollmentError(f"cannot read {path} ({exc.strerror}): {_DAMAGED}") from exc
    except EnrollmentError as exc:
        raise EnrollmentError(f"{path}: {exc}; {_DAMAGED}") from exc
    return line


def _check_bundle_matches_kit(bundle: Bundle, kit: Path) -> None:
    cert = bundle.cert()
    try:
        cert.verify_directly_issued_by(bundle.ca())
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise EnrollmentError("bundle certificate is not signed by the consortium CA: do not "
                              "import it, ask the coordinator operator for a correct "
                              "bundle") from exc
    tls_key = read_private_key(kit / KIT_FILES["tls_key"], fix=_DAMAGED)
    if _public_key(cert) != tls_key.public_key():
        raise EnrollmentError(f"bundle certificate is not for this kit's key "
                              f"{kit / KIT_FILES['tls_key']}: wrong bundle or wrong kit")
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [bundle.name]:
        raise EnrollmentError(f"bundle certificate CN {cns} does not match name {bundle.name!r}")
    node_line = _node_line(kit / KIT_FILES["node_pub"])
    if node_key_fingerprint(node_line) != bundle.node_public_key_sha256:
        raise EnrollmentError("bundle was issued for another node key "
                              f"({bundle.node_public_key_sha256}); wrong bundle or wrong kit")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise EnrollmentError(f"bundle certificate expired on {cert.not_valid_after_utc}; "
                              "ask the operator to renew")


def _public_key(cert: x509.Certificate) -> object:
    """The certificate's public key, or None where cryptography cannot read it."""
    try:
        return cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None


def _check_bundle_is_ours(bundle: Bundle, bundle_path: Path, kit: Path) -> None:
    """The bundle names the silo this kit enrolled as (``request.json``): the name goes into
    kit.toml, silo.toml and service units, so it must be the one the site chose."""
    request = kit / "request.json"
    try:
        enrolled = read_request(request).name
    except EnrollmentError as exc:
        raise EnrollmentError(f"{exc}; the kit checks the bundle's silo name against the "
                              f"request it sent: copy that request.json back into {kit}") from exc
    if bundle.name != enrolled:
        raise EnrollmentError(f"bundle {bundle_path} is for {bundle.name!r}, but this kit "
                              f"enrolled as {enrolled!r} ({request}): wrong bundle or wrong "
                              "kit; do not import it")


def import_bundle(bundle_path: Path, kit_dir: Path, expected_ca_fingerprint: str, *,
                  local_port: int = 9443) -> MemberKit:
    """Check a bundle (CA fingerprint, CA signature, certificate matches our key) and
    complete the member kit; ``local_port`` is where the silo gateway will listen.

    Nothing in the kit changes unless every check passes.
    """
    kit = Path(kit_dir)
    if not (kit / KIT_FILES["tls_key"]).exists():
        raise EnrollmentError(f"{kit} has no {KIT_FILES['tls_key']}: import the bundle into "
                              "the directory where `xsilo silo enroll` made the keys")
    bundle = read_bundle(Path(bundle_path), expected_ca_fingerprint)
    _check_bundle_matches_kit(bundle, kit)
    _check_bundle_is_ours(bundle, Path(bundle_path), kit)
    atomic_write(kit / KIT_FILES["ca"], bundle.ca_certificate)
    atomic_write(kit / KIT_FILES["crl"], bundle.crl)
    _make_local_tls(kit)
    atomic_write(kit / KIT_FILES["tls_cert"], bundle.certificate)
    write_kit_toml(kit, name=bundle.name, local_port=local_port,
                   coordinator=bundle.coordinator_address,
                   server_name=bundle.coordinator_server_name,
                   coordinator_sha256=bundle.coordinator_certificate_sha256)
    write_silo_stub(kit, name=bundle.name, local_port=local_port)
    log.info("member kit %s complete for %s", kit, bundle.name)
    return load_kit(kit)


def _make_local_tls(kit: Path) -> None:
    """A site-local CA and loopback certificate for the silo gateway's listening side.

    The SuperNode trusts only ``local-ca.crt``; the local CA key is discarded right away.
    """
    ca = make_ca("xsilo silo-local gateway CA", curve="P-256", days=825)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(ca, "xsilo-silo-gateway", public_key=key.public_key(),
                      server_hosts=["127.0.0.1", "localhost"], days=825)
    write_private_key(kit / KIT_FILES["local_key"], key)
    write_public_pem(kit / KIT_FILES["local_cert"], cert)
    write_public_pem(kit / KIT_FILES["local_ca"], ca.cert)


def make_renewal_request(kit_dir: Path) -> Path:
    """Write ``renew-request.json``: a CSR signed by the *current* TLS key (no new keys)."""
    kit = load_kit(Path(kit_dir))
    cert = read_certificate(kit.client_cert, fix=_DAMAGED)
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    req = read_request(kit.root / "request.json") if (kit.root / "request.json").exists() else None
    contact = req.contact if req else {"email": "unknown@invalid.example"}
    return _write_request(kit.root, kit.name, str(org[0].value) if org else None, contact,
                          read_private_key(kit.client_key, fix=_DAMAGED),
                          read_private_key(kit.auth_key, fix=_DAMAGED),
                          "renew")


def install_renewal(bundle_path: Path, kit_dir: Path) -> MemberKit:
    """Install a renewed certificate (same key) atomically and reload a running silo
    gateway; the CA fingerprint is checked against the kit's own ``ca.crt``."""
    from deploy.gateway.nginx import reload_running  # gateway imports kit; keep this edge lazy

    kit = load_kit(Path(kit_dir))
    expected = fingerprint(read_certificate(kit.ca_cert, fix=_DAMAGED))
    bundle = read_bundle(Path(bundle_path), expected)
    if bundle.name != kit.name:
        raise EnrollmentError(f"bundle is for {bundle.name!r}, this kit is {kit.name!r}")
    _check_bundle_matches_kit(bundle, kit.root)
    atomic_write(kit.root / KIT_FILES["crl"], bundle.crl)
    atomic_write(kit.client_cert, bundle.certificate)
    if reload_running(kit.gateway_prefix):
        log.info("silo gateway reloaded with the renewed certificate")
    log.info("installed certificate valid until %s", bundle.cert().not_valid_after_utc)
    return kit

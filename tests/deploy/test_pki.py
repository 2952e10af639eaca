"""deploy.pki.authority: CA, approvals, revocation, renewal, and refusals that change nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.pki.certs import load_certificate
from deploy.pki.enrollment import enroll
from deploy.pki.authority import Pki
from tests.deploy.conftest import make_pki, private_key_leaks
from xsilo.errors import EnrollmentError


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_init_writes_ca_key_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", curve="P-256")
    assert os.stat(pki.ca_key_path).st_mode & 0o777 == 0o600
    assert os.stat(pki.ca_key_path.parent).st_mode & 0o777 == 0o700
    assert isinstance(pki.ca_cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert x509.load_pem_x509_crl(pki.crl_path.read_bytes()).next_update_utc is not None
    with pytest.raises(EnrollmentError, match="already holds a PKI"):
        Pki.init(tmp_path / "pki")
    with pytest.raises(EnrollmentError, match="not an xsilo PKI"):
        Pki(tmp_path / "elsewhere")


def test_approve_signs_the_requested_key_as_a_client_cert(pki: Pki, tmp_path: Path) -> None:
    req = enroll("hospital-a", tmp_path / "kit", email="it@a.example")
    bundle = pki.approve(req)
    data = json.loads(bundle.read_text())
    cert = x509.load_pem_x509_certificate(data["certificate"].encode())
    csr_key = x509.load_pem_x509_csr(json.loads(req.read_text())["csr"].encode()).public_key()
    assert cert.public_key() == csr_key
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)
    (rec,) = [r for r in pki.records() if r.kind == "silo"]
    # nginx's $ssl_client_serial form: upper-case hex, whole bytes (a leading 0 when needed)
    digits = f"{cert.serial_number:X}"
    assert (rec.name, rec.state, rec.serial) == ("hospital-a", "valid",
                                                 digits.rjust(len(digits) + len(digits) % 2, "0"))
    assert rec.node_key_sha256.startswith("SHA256:")
    assert list(pki.enrolled_node_keys()) == ["hospital-a"]
    assert data["coordinator_server_name"] == "localhost"
    assert private_key_leaks([pki.root, tmp_path / "kit"]) == []


def test_second_enrollment_of_a_name_and_reused_node_key_are_refused(pki: Pki,
                                                                    tmp_path: Path) -> None:
    pki.approve(enroll("hospital-a", tmp_path / "a1", email="it@a.example"))
    before = _snapshot(pki.root)
    with pytest.raises(EnrollmentError, match="already holds valid certificate"):
        pki.approve(enroll("hospital-a", tmp_path / "a2", email="it@a.example"))
    assert _snapshot(pki.root) == before


def test_wrong_or_missing_passphrase_changes_nothing(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", passphrase=b"correct horse")
    assert pki.ca_key_encrypted
    req = enroll("hospital-a", tmp_path / "kit", email="it@a.example")
    before = _snapshot(pki.root)
    with pytest.raises(EnrollmentError, match="wrong CA passphrase"):
        pki.approve(req, passphrase=b"wrong")
    with pytest.raises(EnrollmentError, match="encrypted"):
        pki.approve(req)
    with pytest.raises(EnrollmentError, match="wrong CA passphrase"):
        pki.publish_crl(b"nope")
    assert _snapshot(pki.root) == before
    assert pki.approve(req, passphrase=b"correct horse").exists()


def test_revoke_updates_crl_index_node_keys_and_calls_hook(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    make_pki(tmp_path / "pki")
    pki = Pki(tmp_path / "pki", on_revoke=lambda name, key: calls.append((name, key)))
    pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"))
    pki.approve(enroll("hospital-b", tmp_path / "b", email="it@b.example"))
    node_line = (tmp_path / "a" / "node.pub").read_text().strip()
    (rec,) = pki.revoke("hospital-a")
    assert rec.state == "revoked" and rec.revoked_at
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(rec.serial, 16)) is not None
    assert crl.is_signature_valid(pki.ca_cert.public_key())  # type: ignore[arg-type]
    ahead = crl.next_update_utc - dt.datetime.now(dt.timezone.utc)  # type: ignore[operator]
    assert dt.timedelta(days=2) < ahead <= dt.timedelta(days=3)
    assert calls == [("hospital-a", node_line)]
    assert pki.revoked_node_keys() == {"hospital-a": node_line}
    assert list(pki.enrolled_node_keys()) == ["hospital-b"]
    assert all("hospital-a" not in dn for dn in pki.node_key_bindings())
    with pytest.raises(EnrollmentError, match="no unrevoked"):
        pki.revoke("hospital-a")
    with pytest.raises(EnrollmentError, match="no certificate to renew"):
        pki.renew("hospital-a")
    # re-enrolling the revoked node key is refused; new keys are fine
    with pytest.raises(EnrollmentError, match="already enrolled"):
        from deploy.pki.messages import read_request
        req = read_request(tmp_path / "a" / "request.json")
        pki.approve(req)
    pki.approve(enroll("hospital-a", tmp_path / "a-new", email="it@a.example"))


def test_renew_resigns_the_same_key_and_supersedes(pki: Pki, tmp_path: Path) -> None:
    pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"), days=2)
    old = load_certificate(next((pki.root / "issued").glob("hospital-a-*.crt")))
    bundle = pki.renew("hospital-a", days=30)
    new = x509.load_pem_x509_certificate(json.loads(bundle.read_text())["certificate"].encode())
    assert new.public_key() == old.public_key() and new.serial_number != old.serial_number
    assert new.not_valid_after_utc > old.not_valid_after_utc
    states = [(r.state) for r in pki.records() if r.kind == "silo"]
    assert states == ["superseded", "valid"]
    # revocation covers the superseded (still unexpired) certificate too
    assert len(pki.revoke("hospital-a")) == 2


def test_status_warns_under_seven_days(pki: Pki, tmp_path: Path) -> None:
    pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"), days=3)
    pki.approve(enroll("hospital-b", tmp_path / "b", email="it@b.example"), days=30)
    warn = {r.name: w for r, _s, w in pki.status()}
    assert warn["hospital-a"] and not warn["hospital-b"]


def _request(tmp_path: Path, name: str = "hospital-a") -> dict:
    path = enroll(name, tmp_path / f"kit-{name}", email="it@a.example")
    return json.loads(path.read_text())


def _mutations(tmp_path: Path) -> dict[str, str]:
    good = _request(tmp_path)
    other = _request(tmp_path, "hospital-b")
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    csr_body = good["csr"].splitlines()
    csr_body[3] = csr_body[3][:10] + ("A" if csr_body[3][10] != "A" else "B") + csr_body[3][11:]
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    cases = {
        "not json": "{not json",
        "json array": "[]",
        "wrong format": {**good, "format": "something/9"},
        "missing csr": {k: v for k, v in good.items() if k != "csr"},
        "csr garbage": {**good, "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END "
                                       "CERTIFICATE REQUEST-----\n"},
        "tampered csr": {**good, "csr": "\n".join(csr_body) + "\n"},
        "name differs from CN": {**good, "name": "hospital-z"},
        "bad name": {**good, "name": "Hospital A!"},
        "swapped node key": {**good, "node_public_key": other["node_public_key"]},
        "ed25519 node key": {**good, "node_public_key": ed},
        "bad email": {**good, "contact": {"email": "nobody"}},
        "private key inside": {**good, "note": key_pem},
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in cases.items()}


def test_malformed_requests_are_refused_and_change_nothing(pki: Pki, tmp_path: Path) -> None:
    before = _snapshot(pki.root)
    for case, text in _mutations(tmp_path).items():
        path = tmp_path / f"req-{case.replace(' ', '-')}.json"
        path.write_text(text)
        with pytest.raises(EnrollmentError) as err:
            pki.approve(path)
        assert str(path) in str(err.value), case
        assert _snapshot(pki.root) == before, case


@pytest.mark.parametrize("serial, text", [(0xA, "0A"), (0xAB, "AB"), (0xABC, "0ABC"),
                                          (0x1F00, "1F00")])
def test_serials_are_written_as_nginx_logs_them(serial: int, text: str) -> None:
    """Whole bytes, upper case: a record's serial matches $ssl_client_serial in the gateway log
    (a random serial has an odd number of hex digits one time in sixteen)."""
    from deploy.pki.authority import _nginx_serial

    assert _nginx_serial(serial) == text

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
        "name with a final newline": {**good, "name": "hospital-a\n"},
        "organization with a final newline": {**good, "organization": "Acme\n"},
        "organization with a final space": {**good, "organization": "Acme "},
        "organization not in the CSR": {**good, "organization": "Acme"},
        "email with a final newline": {**good, "contact": {"email": "it@a.example\n"}},
        "phone over two lines": {**good, "contact": {"email": "it@a.example",
                                                     "phone": "1\n| TLS key | AB:CD |"}},
        "person too long": {**good, "contact": {"email": "it@a.example", "person": "x" * 200}},
        "contact not text": {**good, "contact": {"email": "it@a.example", "phone": 5550100}},
        "unknown contact field": {**good, "contact": {"email": "it@a.example", "fax": "1"}},
        "created over two lines": {**good, "created": "2025-01-01T00:00:00+00:00\nforged"},
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


@pytest.mark.parametrize("check, value", [
    ("name", "hospital-a\n"), ("name", " hospital-a"), ("organization", "Acme\n"),
    ("organization", " Acme"), ("organization", "Acme "), ("organization", " "),
    ("organization", "x" * 65)])
def test_names_and_organizations_are_matched_whole(check: str, value: str) -> None:
    """`$` also matches before a final newline: a silo named 'hospital-a\\n' would get a
    certificate and could not be revoked by the name the operator sees."""
    from deploy.pki.checks import check_name, check_organization

    with pytest.raises(EnrollmentError, match="is invalid"):
        (check_name if check == "name" else check_organization)(value)


def test_organizations_that_nginx_reads_as_written_are_accepted() -> None:
    from deploy.pki.checks import check_organization

    for org in ("St. Mary's (North) & Co-op", "A", "x" * 64, "", None):
        assert check_organization(org) == (org or None)


def _request_for_keys(path: Path, name: str, tls_key: ec.EllipticCurvePrivateKey) -> Path:
    """An enrollment request by ``tls_key`` and a fresh node key (what a silo that kept its
    TLS key, or stole another's, would send)."""
    from cryptography.hazmat.primitives import hashes

    from deploy.pki.certs import make_csr, openssh_public_line
    from deploy.pki.messages import EnrollmentRequest

    node_key = ec.generate_private_key(ec.SECP384R1())
    csr = make_csr(tls_key, name)
    req = EnrollmentRequest(name, None, {"email": "it@a.example"}, csr,
                            openssh_public_line(node_key.public_key()),
                            "2025-01-01T00:00:00+00:00")
    path.write_text(req.to_json(node_key.sign(csr.public_bytes(serialization.Encoding.DER),
                                              ec.ECDSA(hashes.SHA256()))))
    return path


def test_a_certified_tls_key_is_never_enrolled_again(pki: Pki, tmp_path: Path) -> None:
    """Revoked, or another silo's: a TLS key is certified once, like a node key."""
    from deploy.pki.certs import load_private_key

    pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"))
    tls_key = load_private_key(tmp_path / "a" / "silo.key")
    pki.revoke("hospital-a")
    before = _snapshot(pki.root)
    for name in ("hospital-a", "hospital-b"):
        request = _request_for_keys(tmp_path / f"again-{name}.json", name, tls_key)
        with pytest.raises(EnrollmentError, match="TLS key .* was already certified for "
                                                  "'hospital-a' \\(state revoked\\)"):
            pki.approve(request)
        assert _snapshot(pki.root) == before
    fresh = _request_for_keys(tmp_path / "fresh.json", "hospital-a",
                              ec.generate_private_key(ec.SECP256R1()))
    assert pki.approve(fresh).exists()


@pytest.mark.parametrize("damage, command", [
    ("pki.json", "status"), ("ca.crt", "status"), ("crl.pem", "status"),
    ("issued", "renew"), ("issued", "roster"), ("nodes", "renew"), ("private/ca.key", "crl")])
def test_a_damaged_pki_file_is_named_with_how_to_restore_it(pki: Pki, tmp_path: Path,
                                                            damage: str, command: str) -> None:
    pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"))
    if damage in ("issued", "nodes"):
        (path,) = (pki.root / damage).glob("hospital-a*")
        path.unlink()
    else:
        path = pki.root / damage
        path.write_text("{bad" if damage.endswith(".json") else "junk\n")
    with pytest.raises(EnrollmentError) as err:
        opened = Pki(pki.root)
        {"status": lambda: (opened.ca_fingerprint, opened.crl_next_update()),
         "renew": lambda: opened.renew("hospital-a"), "roster": opened.roster,
         "crl": opened.publish_crl}[command]()
    fix = "re-issue it with `xsilo pki crl`" if damage == "crl.pem" else "restore it from"
    assert str(path) in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize("kw, refusal", [
    ({"days": 0}, "--days 0 is not a lifetime"), ({"days": 10**8}, "not a lifetime"),
    ({"hosts": ["fł.example.org"]}, "xn--"), ({"hosts": ["a b"]}, "not a DNS name"),
    ({"address": "fl.example.org"}, "not host:port"),
    ({"address": "fl.example.org:70000"}, "not host:port"), ({"port": 0}, "--port 0")])
def test_coordinator_certificate_settings_are_checked_first(tmp_path: Path, kw: dict,
                                                            refusal: str) -> None:
    pki = Pki.init(tmp_path / "pki")
    before = _snapshot(pki.root)
    with pytest.raises(EnrollmentError, match=refusal):
        pki.issue_coordinator(**{"hosts": ["fl.example.org"], **kw})
    assert _snapshot(pki.root) == before


def test_certificate_lifetimes_are_checked(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(EnrollmentError, match="--days -1"):
        pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"), days=-1)
    with pytest.raises(EnrollmentError, match="--days 0"):
        Pki.init(tmp_path / "other", days=0)

"""deploy.pki: hostile or damaged peer files (requests, bundles, index.json) are refused with
an EnrollmentError that names the file, and change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.pki.authority import Pki
from deploy.pki.certs import CertifiedKey, issue_leaf, read_private_key
from deploy.pki.enrollment import enroll, import_bundle
from deploy.pki.messages import (
    Bundle, node_key_fingerprint, parse_node_public_key, read_bundle, read_request,
)
from xsilo.errors import EnrollmentError


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _pem(cert: Any) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _forged_bundle(pki: Pki, kit: Path, *, name: str = "hospital-a",
                   signer: CertifiedKey | None = None, **changes: str) -> Path:
    """A bundle the coordinator signed with the real CA key (it holds it), for the kit's own
    keys, whose certificate CN is ``name`` and whose other fields are ``changes``."""
    ca = pki.unlock()
    tls_key = read_private_key(kit / "silo.key", fix="").public_key()
    cert = issue_leaf(signer or ca, name, public_key=tls_key, client=True, days=30)
    coord = pki.settings["coordinator"]
    fields = {"name": name, "certificate": _pem(cert), "ca_certificate": _pem(ca.cert),
              "crl": pki.crl_path.read_text(), "coordinator_address": coord["address"],
              "coordinator_server_name": coord["server_name"],
              "coordinator_certificate_sha256": coord["certificate_sha256"],
              "node_public_key_sha256": node_key_fingerprint((kit / "node.pub").read_text()),
              **changes}
    path = kit.parent / "forged-bundle.json"
    path.write_text(Bundle(**fields).to_json(ca.key))  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(("fields", "match"), [
    ({"name": "b\n[Service]\nExecStartPre=+/bin/sh -c 'id>/tmp/pwned'"}, "name .* is not a silo"),
    ({"name": "hospital-x"}, "is for 'hospital-x', but this kit enrolled as 'hospital-a'"),
    ({"coordinator_address": "fl.example.org:8443\n[Service]"}, "coordinator_address"),
    ({"coordinator_server_name": 'x"; } server { listen 1'}, "coordinator_server_name"),
])
def test_a_ca_signed_bundle_cannot_put_another_name_or_place_into_the_kit(
        pki: Pki, tmp_path: Path, fields: dict[str, str], match: str) -> None:
    kit = tmp_path / "kit"
    enroll("hospital-a", kit, email="it@a.example")
    bundle = _forged_bundle(pki, kit, **fields)
    before = _snapshot(kit)
    with pytest.raises(EnrollmentError, match=match):
        import_bundle(bundle, kit, pki.ca_fingerprint)
    assert _snapshot(kit) == before


def test_a_kit_without_its_request_cannot_import(pki: Pki, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    bundle = pki.approve(enroll("hospital-a", kit, email="it@a.example"))
    (kit / "request.json").unlink()
    before = _snapshot(kit)
    with pytest.raises(EnrollmentError, match="request.json"):
        import_bundle(bundle, kit, pki.ca_fingerprint)
    assert _snapshot(kit) == before


def test_a_certificate_signed_by_another_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    enroll("hospital-a", kit, email="it@a.example")
    other = CertifiedKey(ec.generate_private_key(ec.SECP256R1()), pki.ca_cert)  # same issuer
    bundle = _forged_bundle(pki, kit, signer=other)
    before = _snapshot(kit)
    with pytest.raises(EnrollmentError, match="not signed by the consortium CA"):
        import_bundle(bundle, kit, pki.ca_fingerprint)
    assert _snapshot(kit) == before


def _mutate_bundle(good: bytes) -> dict[str, bytes]:
    data = json.loads(good)
    return {
        "non_utf8": good.replace(b'"hospital-a"', b'"hospital-\xfe"', 1),
        "deep_nesting": b'{"format":' + b"[" * 100000 + b"]" * 100000 + b"}",
        "huge_int": b'{"format": ' + b"9" * 5000 + b"}",
        "lone_surrogate": json.dumps({**data, "issued": "\ud800"}).encode(),
    }


@pytest.mark.parametrize("damage", ["non_utf8", "deep_nesting", "huge_int", "lone_surrogate"])
def test_a_damaged_bundle_is_an_enrollment_error(pki: Pki, tmp_path: Path, damage: str) -> None:
    kit = tmp_path / "kit"
    good = pki.approve(enroll("hospital-a", kit, email="it@a.example"))
    path = tmp_path / "damaged.json"
    path.write_bytes(_mutate_bundle(good.read_bytes())[damage])
    before = _snapshot(kit)
    with pytest.raises(EnrollmentError, match="damaged.json"):
        read_bundle(path, pki.ca_fingerprint)
    with pytest.raises(EnrollmentError, match="damaged.json"):
        import_bundle(path, kit, pki.ca_fingerprint)
    assert _snapshot(kit) == before


def _request_variants(good: bytes) -> dict[str, bytes]:
    data = json.loads(good)
    return {
        "unsupported_node_key": json.dumps(
            {**data, "node_public_key": "ssh-foo AAAAB3NzaC1yc2E="}).encode(),
        "non_utf8": good.replace(b'"hospital-a"', b'"hospital-\xff"', 1),
        "deep_nesting": b'{"format":' + b"[" * 200000 + b"]" * 200000 + b"}",
        "huge_int": b'{"format": ' + b"1" * 5000 + b"}",
    }


@pytest.mark.parametrize("damage", ["unsupported_node_key", "non_utf8", "deep_nesting",
                                    "huge_int"])
def test_a_damaged_request_is_refused_and_changes_nothing(pki: Pki, tmp_path: Path,
                                                          damage: str) -> None:
    good = enroll("hospital-a", tmp_path / "kit", email="it@a.example")
    path = tmp_path / "damaged.json"
    path.write_bytes(_request_variants(good.read_bytes())[damage])
    before = _snapshot(pki.root)
    with pytest.raises(EnrollmentError, match="damaged.json"):
        read_request(path)
    with pytest.raises(EnrollmentError, match="damaged.json"):
        pki.approve(path)
    assert _snapshot(pki.root) == before


@pytest.mark.parametrize("line", ["onlyone", "", "ssh-foo AAAAB3NzaC1yc2E=",
                                  "ecdsa-sha2-nistp256 !!!!"])
def test_a_damaged_node_key_line_is_an_enrollment_error(line: str) -> None:
    with pytest.raises(EnrollmentError, match="node public key"):
        node_key_fingerprint(line)
    with pytest.raises(EnrollmentError, match="node public key"):
        parse_node_public_key(line)


def _silo(index: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in index["certificates"] if r["name"] == "hospital-a")


_INDEX_DAMAGE: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "naive not_after": (lambda d: _silo(d).update(not_after="2030-01-01T00:00:00"), "not_after"),
    "int not_after": (lambda d: _silo(d).update(not_after=5), "not_after"),
    "garbage not_after": (lambda d: _silo(d).update(not_after="soon"), "not_after"),
    "garbage revoked_at": (lambda d: _silo(d).update(state="revoked", revoked_at="yesterday"),
                           "revoked_at"),
    "non-hex serial": (lambda d: _silo(d).update(state="revoked", serial="zz"), "serial"),
    "list state": (lambda d: _silo(d).update(state=["valid"]), "state"),
    "int name": (lambda d: _silo(d).update(name=7), "name"),
    "unknown kind": (lambda d: _silo(d).update(kind="root"), "kind"),
    "missing field": (lambda d: _silo(d).pop("cert_sha256"), "cert_sha256"),
    "extra field": (lambda d: _silo(d).update(owner="me"), "owner"),
    "record is a list": (lambda d: d.update(certificates=[[1, 2]]), "record 0"),
    "certificates is a dict": (lambda d: d.update(certificates={"a": 1}), "certificates"),
    "deep nesting": (lambda d: b'{"certificates":' + b"[" * 100000 + b"]" * 100000 + b"}",
                     "unreadable"),
    "not utf-8": (lambda d: b'{"certificates": "\xff"}', "unreadable"),
}

_OPERATIONS: dict[str, Callable[[Pki, Path], object]] = {
    "status": lambda pki, tmp: pki.status(),
    "roster": lambda pki, tmp: pki.roster(),
    "revoke": lambda pki, tmp: pki.revoke("hospital-a"),
    "approve": lambda pki, tmp: pki.approve(enroll("hospital-b", tmp / "b", email="it@b.example")),
}


@pytest.mark.parametrize("operation", sorted(_OPERATIONS))
@pytest.mark.parametrize("damage", sorted(_INDEX_DAMAGE))
def test_a_damaged_index_is_named_before_anything_is_written(
        pki: Pki, tmp_path: Path, damage: str, operation: str) -> None:
    pki.approve(enroll("hospital-a", tmp_path / "a", email="it@a.example"))
    change, field = _INDEX_DAMAGE[damage]
    data = json.loads(pki.index_path.read_text())
    out = change(data)
    pki.index_path.write_bytes(out if isinstance(out, bytes) else json.dumps(data).encode())
    before = _snapshot(pki.root)
    with pytest.raises(EnrollmentError) as err:
        _OPERATIONS[operation](Pki(pki.root), tmp_path)
    message = str(err.value)
    assert str(pki.index_path) in message and field in message
    assert "restore index.json from backup" in message
    assert _snapshot(pki.root) == before

"""deploy.pki.enrollment / deploy.pki.kit: keys stay on site, bundles are checked, renewal is atomic."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.pki.certs import load_certificate, load_private_key
from deploy.pki.enrollment import enroll, import_bundle, install_renewal, make_renewal_request
from deploy.pki.kit import load_kit
from deploy.pki.authority import Pki
from tests.deploy.conftest import make_pki, private_key_leaks
from xsilo.errors import ConfigError, EnrollmentError


def test_enroll_keeps_keys_local_and_0600(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    req = enroll("hospital-a", kit, email="it@a.example", phone="+1 555 0100")
    assert os.stat(kit).st_mode & 0o777 == 0o700
    for key in ("silo.key", "node.key"):
        assert os.stat(kit / key).st_mode & 0o777 == 0o600
    assert b"OPENSSH PRIVATE KEY" in (kit / "node.key").read_bytes()
    load_private_key(kit / "node.key")
    text = req.read_text()
    assert "PRIVATE" not in text and json.loads(text)["contact"]["phone"] == "+1 555 0100"
    with pytest.raises(EnrollmentError, match="already exists"):
        enroll("hospital-a", kit, email="it@a.example")


def test_import_completes_a_loadable_member_kit(pki: Pki, tmp_path: Path) -> None:
    kit_dir = tmp_path / "kit"
    bundle = pki.approve(enroll("hospital-a", kit_dir, email="it@a.example"))
    kit = import_bundle(bundle, kit_dir, pki.ca_fingerprint.lower().replace(":", ""),
                        local_port=9555)
    assert kit.name == "hospital-a" and kit.superlink == "127.0.0.1:9555"
    assert kit.coordinator == "127.0.0.1:8443" and kit.server_name == "localhost"
    assert load_certificate(kit.client_cert).public_key() == \
        load_private_key(kit.client_key).public_key()
    site = tomllib.loads((kit_dir / "silo.toml").read_text())
    assert set(site) == {"silo", "policy", "identity"} and site["policy"] == {"file": "policy.toml"}
    # the identity that signs its secure-aggregation keys is the kit's enrollment key
    assert (kit_dir / site["identity"]["certificate"]).resolve() == kit.client_cert
    assert (kit_dir / site["identity"]["key"]).resolve() == kit.client_key
    assert (kit_dir / site["identity"]["ca"]).resolve() == kit.ca_cert
    assert set(site["silo"]) == {"name", "superlink", "root_certificates", "auth_key"}
    assert (kit_dir / site["silo"]["auth_key"]).resolve() == kit.auth_key
    assert os.stat(kit.local_key).st_mode & 0o777 == 0o600
    assert private_key_leaks([pki.root, kit_dir]) == []


def test_site_config_is_not_overwritten(pki: Pki, tmp_path: Path) -> None:
    kit_dir = tmp_path / "kit"
    bundle = pki.approve(enroll("hospital-a", kit_dir, email="it@a.example"))
    (kit_dir / "silo.toml").write_text("# mine\n")
    import_bundle(bundle, kit_dir, pki.ca_fingerprint)
    assert (kit_dir / "silo.toml").read_text() == "# mine\n"


def _kit_state(kit_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in kit_dir.rglob("*") if p.is_file()}


def test_wrong_ca_fingerprint_and_foreign_bundles_change_nothing(pki: Pki,
                                                                tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    bundle_a = pki.approve(enroll("hospital-a", a_dir, email="it@a.example"))
    bundle_b = pki.approve(enroll("hospital-b", b_dir, email="it@b.example"))
    before = _kit_state(a_dir)
    other = make_pki(tmp_path / "other-pki")
    with pytest.raises(EnrollmentError, match="does not match the expected"):
        import_bundle(bundle_a, a_dir, other.ca_fingerprint)
    with pytest.raises(EnrollmentError, match="not for this kit's key"):
        import_bundle(bundle_b, a_dir, pki.ca_fingerprint)
    with pytest.raises(EnrollmentError, match="does not match the expected"):
        import_bundle(bundle_a, a_dir, "")
    assert _kit_state(a_dir) == before
    with pytest.raises(ConfigError, match="not a member kit"):
        load_kit(a_dir)


def test_bundle_signed_by_an_impostor_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    kit_dir = tmp_path / "kit"
    req = enroll("hospital-a", kit_dir, email="it@a.example")
    impostor = make_pki(tmp_path / "impostor")
    bundle = impostor.approve(req)
    with pytest.raises(EnrollmentError, match="CA fingerprint"):
        import_bundle(bundle, kit_dir, pki.ca_fingerprint)


@pytest.fixture(scope="module")
def signed_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("tamper")
    pki = make_pki(root / "pki")
    other = enroll("hospital-b", root / "b", email="it@b.example")
    pki.approve(other)
    bundle = pki.approve(enroll("hospital-a", root / "a", email="it@a.example"))
    return bundle, root / "a", pki.ca_fingerprint


_FIELDS = ["name", "certificate", "crl", "coordinator_address", "coordinator_server_name",
           "coordinator_certificate_sha256", "node_public_key_sha256", "issued", "signature"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), pos=st.integers(min_value=0), char=st.sampled_from("AZ09:"))
def test_any_tampered_field_is_refused(signed_bundle: tuple[Path, Path, str], field: str,
                                       pos: int, char: str) -> None:
    bundle, kit_dir, fp = signed_bundle
    data = json.loads(bundle.read_text())
    value = data[field]
    i = pos % len(value)
    if value[i] == char:
        char = "B"
    data[field] = value[:i] + char + value[i + 1:]
    tampered = kit_dir.parent / "tampered.json"
    tampered.write_text(json.dumps(data))
    before = _kit_state(kit_dir)
    with pytest.raises(EnrollmentError):
        import_bundle(tampered, kit_dir, fp)
    assert _kit_state(kit_dir) == before


def test_renewal_keeps_the_key_and_swaps_the_cert(pki: Pki, tmp_path: Path) -> None:
    kit_dir = tmp_path / "kit"
    bundle = pki.approve(enroll("hospital-a", kit_dir, email="it@a.example"), days=2)
    kit = import_bundle(bundle, kit_dir, pki.ca_fingerprint)
    old = load_certificate(kit.client_cert)
    key_before = kit.client_key.read_bytes()
    request = make_renewal_request(kit_dir)
    assert "PRIVATE" not in request.read_text()
    renewed = pki.renew("hospital-a", request=request, days=30)
    install_renewal(renewed, kit_dir)
    new = load_certificate(kit.client_cert)
    assert new.public_key() == old.public_key() and new.not_valid_after_utc > old.not_valid_after_utc
    assert kit.client_key.read_bytes() == key_before
    # a renewal request made with other keys is refused by the operator
    other = enroll("hospital-a", tmp_path / "thief", email="x@y.example")
    with pytest.raises(EnrollmentError, match="not signed by the keys enrolled"):
        pki.renew("hospital-a", request=other)
    assert private_key_leaks([pki.root, kit_dir]) == []


@pytest.mark.parametrize("bad", [{"email": "it@a.example\n"}, {"phone": "+1 555\n0100"},
                                 {"person": "x" * 200}, {"curve": "P-521"}])
def test_a_refused_enrollment_writes_no_key_and_can_be_retried(tmp_path: Path,
                                                               bad: dict[str, str]) -> None:
    kit = tmp_path / "kit"
    with pytest.raises(EnrollmentError):
        enroll("hospital-a", kit, **{"email": "it@a.example", **bad})
    assert not (kit / "silo.key").exists() and not (kit / "node.key").exists()
    assert enroll("hospital-a", kit, email="it@a.example", phone="+1 555 0100").exists()


@pytest.mark.parametrize("damage", ["node.pub", "silo.key", "ca.crt", "kit.toml"])
def test_a_damaged_kit_file_is_named(pki: Pki, tmp_path: Path, damage: str) -> None:
    kit = tmp_path / "kit"
    bundle = pki.approve(enroll("hospital-a", kit, email="it@a.example"))
    import_bundle(bundle, kit, pki.ca_fingerprint)
    if damage == "node.pub":
        (kit / damage).unlink()
    elif damage == "kit.toml":
        text = (kit / damage).read_text()
        (kit / damage).write_text(text.replace('listen = "127.0.0.1:9443"', "listen = 9443"))
    else:
        (kit / damage).write_text("junk\n")
    with pytest.raises((EnrollmentError, ConfigError)) as err:
        if damage == "ca.crt":
            install_renewal(pki.renew("hospital-a"), kit)
        elif damage == "kit.toml":
            load_kit(kit)
        else:
            import_bundle(bundle, kit, pki.ca_fingerprint)
    assert damage in str(err.value) or "gateway.listen = 9443" in str(err.value)

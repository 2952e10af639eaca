"""Certificates and CRLs that do not lapse silently (deploy.pki.freshness): the renewal rule,
the running coordinator's CRL keeper, the status warnings with their commands, and the
coordinator certificate's revocation and re-issue. No network."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from coordinator.cli import app as coordinator_app
from coordinator.home import RunningCoordinator, write_gateway_home, CoordinatorHome
from deploy.pki.authority import Pki
from deploy.pki.certs import (
    crl_number, fingerprint, load_certificate, load_private_key, write_private_key,
)
from deploy.pki.cli import pki_app
from deploy.pki.enrollment import enroll
from deploy.pki.freshness import CrlKeeper, crl_due, passphrase_source, pki_notices, renewal_margin
from tests.deploy.conftest import make_pki
from xsilo.errors import ConfigError, DeploymentError, EnrollmentError

runner = CliRunner(env={"COLUMNS": "250"})
NOW = dt.datetime.now(dt.timezone.utc)
H = dt.timedelta(hours=1)


def _crl(pki: Pki) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pki.crl_path.read_bytes())


@pytest.mark.parametrize("validity, margin", [
    (dt.timedelta(days=3), dt.timedelta(days=1)),        # a third = 24 h
    (dt.timedelta(days=7), dt.timedelta(days=7) / 3),    # a third > 24 h
    (dt.timedelta(hours=12), dt.timedelta(hours=6)),     # 24 h capped at half the validity
    (dt.timedelta(seconds=30), dt.timedelta(seconds=15)),
])
def test_renewal_margin(validity: dt.timedelta, margin: dt.timedelta) -> None:
    assert renewal_margin(validity) == margin
    assert not crl_due(NOW + validity, validity, NOW)  # a fresh CRL is never due
    assert crl_due(NOW + margin, validity, NOW)
    assert not crl_due(NOW + margin + dt.timedelta(seconds=1), validity, NOW)


def test_short_crl_validity_is_kept_for_every_later_crl(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", crl_seconds=40)
    crl = _crl(pki)
    assert crl.next_update_utc - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(seconds=40)
    assert pki.crl_validity == dt.timedelta(seconds=40)
    pki.publish_crl(validity_seconds=90)
    assert Pki(pki.root).crl_validity == dt.timedelta(seconds=90)  # persisted in pki.json
    left = _crl(pki).next_update_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(seconds=80) < left <= dt.timedelta(seconds=90)
    before = {p.name: p.read_bytes() for p in pki.root.iterdir() if p.is_file()}
    for seconds in (0, 10**12, True, 3.5):  # nothing written: pki.json and the CRL as they were
        with pytest.raises(EnrollmentError, match="whole number of seconds from 1 to"):
            pki.publish_crl(validity_seconds=seconds)  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in pki.root.iterdir() if p.is_file()} == before
    assert Pki(tmp_path / "pki").crl_validity == dt.timedelta(seconds=90)
    assert Pki.init(tmp_path / "default").crl_validity == dt.timedelta(days=3)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"crl_seconds": 10**12}, "whole number of seconds"),
    ({"crl_days": "three"}, "whole number of days"),
    ({"crl_days": 0}, "whole number of days"),
    ({"common_name": "x" * 65}, "1 to 64 printable characters"),
])
def test_a_pki_init_refused_writes_nothing(tmp_path: Path, kwargs: dict, says: str) -> None:
    with pytest.raises(EnrollmentError, match=says):
        Pki.init(tmp_path / "pki", **kwargs)
    assert not (tmp_path / "pki").exists()  # so the corrected command can run


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("crl_days", "three", "whole number of days"),
    ("crl_days", 10**9, "whole number of days"),
    ("crl_seconds", [1], "whole number of seconds"),
    ("organization", ["x"], "organization"),
    ("coordinator", ["x"], "setting 'coordinator'"),
    ("coordinator", {"address": "a:1"}, "setting 'coordinator'"),
])
def test_a_damaged_pki_json_is_refused_before_revoke_or_approve_writes(
        tmp_path: Path, setting: str, value: object, says: str) -> None:
    import json

    from tests.deploy.conftest import enroll_silo, make_pki

    pki = make_pki(tmp_path / "pki")
    enroll_silo(pki, "hospital-a", tmp_path / "kit")
    settings = json.loads((pki.root / "pki.json").read_text())
    settings[setting] = value
    (pki.root / "pki.json").write_text(json.dumps(settings))
    files = {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()}
    with pytest.raises(EnrollmentError, match=f"pki.json: .*{says}"):
        Pki(pki.root).revoke("hospital-a")
    assert {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()} == files


def test_keeper_renews_a_due_crl_when_it_holds_the_key(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", crl_seconds=3600)
    keeper = CrlKeeper(pki)
    first = keeper.tick()
    assert [n.level for n in first] == ["info"] and "re-issued here 30.0 min before" in \
        first[0].text
    before = pki.crl_path.read_bytes()
    assert keeper.tick() == [] and pki.crl_path.read_bytes() == before  # not due: untouched
    lapse = _crl(pki).next_update_utc
    (notice,) = keeper.tick(now=lapse - dt.timedelta(minutes=29))  # inside the margin
    assert notice.level == "info" and "CRL re-issued" in notice.text
    assert crl_number(_crl(pki)) > crl_number(x509.load_pem_x509_crl(before))
    (notice,) = keeper.tick(now=lapse + H)  # even after it lapsed
    assert "had lapsed" in notice.text


def _encrypt_ca_key(pki: Pki, passphrase: bytes) -> None:
    key = load_private_key(pki.ca_key_path)
    pki.ca_key_path.unlink()
    write_private_key(pki.ca_key_path, key, passphrase=passphrase)  # type: ignore[arg-type]


def test_keeper_without_the_key_warns_at_start_then_at_most_daily(tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.delenv("XSILO_CA_PASSPHRASE", raising=False)
    pki = make_pki(tmp_path / "pki")
    _encrypt_ca_key(pki, b"s3cret")
    keeper = CrlKeeper(pki, passphrase=passphrase_source(None))
    before = pki.crl_path.read_bytes()
    (start,) = keeper.tick()  # at start, though not due yet
    assert start.level == "warning" and "cannot re-issue it by itself" in start.text
    assert "encrypted" in start.text and "--passphrase-file" in start.text
    assert start.command == f"xsilo pki crl --pki-dir {pki.root} --passphrase-file FILE"
    assert "lapses in 3.0 d" in start.text
    lapse = _crl(pki).next_update_utc
    assert keeper.tick(now=NOW + 23 * H) == []  # not due, and warned today
    (due,) = keeper.tick(now=lapse - 23 * H)  # due (24 h margin), a day after the first
    assert due.level == "warning" and "lapses in 23.0 h" in due.text
    assert keeper.tick(now=lapse - 2 * H) == []  # still due, but warned 21 h ago
    (lapsed,) = keeper.tick(now=lapse + 1 * H + dt.timedelta(minutes=1))
    assert lapsed.level == "error" and "LAPSED" in lapsed.text and "EVERY silo" in lapsed.text
    assert pki.crl_path.read_bytes() == before  # nothing it could do
    # the key is gone from this host altogether: same warning, another reason
    pki.ca_key_path.unlink()
    (gone,) = CrlKeeper(pki).tick()
    assert "is not on this host" in gone.text and gone.command.startswith("xsilo pki crl")


def test_keeper_reads_the_passphrase_file_or_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("XSILO_CA_PASSPHRASE", raising=False)
    pki = make_pki(tmp_path / "pki")
    _encrypt_ca_key(pki, b"s3cret")
    lapse = _crl(pki).next_update_utc
    (wrong,) = CrlKeeper(pki, passphrase=lambda: b"nope").tick(now=lapse - H)
    assert "wrong CA passphrase" in wrong.text
    secret = tmp_path / "passphrase"
    secret.write_bytes(b"s3cret\n")
    (ok,) = CrlKeeper(pki, passphrase=passphrase_source(secret)).tick(now=lapse - H)
    assert ok.level == "info" and "CRL re-issued" in ok.text
    monkeypatch.setenv("XSILO_CA_PASSPHRASE", "s3cret")
    (ok,) = CrlKeeper(pki, passphrase=passphrase_source(None)).tick(
        now=_crl(pki).next_update_utc - H)
    assert "CRL re-issued" in ok.text
    (missing,) = CrlKeeper(pki, passphrase=passphrase_source(tmp_path / "none")).tick()
    assert "cannot read the CA passphrase file" in missing.text


class _Gateway:
    def __init__(self, failures: int = 0) -> None:
        self.reloads, self.failures = 0, failures

    def reload(self) -> None:
        if self.failures:
            self.failures -= 1
            raise DeploymentError("nginx rejected the generated config")
        self.reloads += 1


def test_running_coordinator_renews_and_reloads(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", crl_seconds=30)
    pki.issue_coordinator(hosts=["localhost"], address="localhost:8443")
    write_gateway_home(tmp_path / "home", pki_dir=pki.root)
    gateway, clock = _Gateway(), [dt.datetime.now(dt.timezone.utc)]
    running = RunningCoordinator(CoordinatorHome.load(tmp_path / "home"), superlink=None,  # type: ignore[arg-type]
                                 node_ids={}, gateway=gateway,
                                 crl_keeper=CrlKeeper(pki, clock=lambda: clock[0]))
    running._seen = running._pki_state()
    (start,) = running.reconcile()  # what `coordinator start` prints first
    assert start.startswith("CRL valid until") and "re-issued here 15 s before" in start
    assert gateway.reloads == 0 and running.reconcile() == []
    original, number = _crl(pki).next_update_utc, crl_number(_crl(pki))
    clock[0] = original - dt.timedelta(seconds=14)  # 14 s left of 30: due
    changes = running.reconcile()
    assert changes[0].startswith("CRL re-issued (the previous one had 14 s left); valid until")
    assert changes[-1] == "gateway reloaded (CRL, certificate, node-key bindings)"
    assert gateway.reloads == 1 and crl_number(_crl(pki)) > number
    clock[0] = dt.datetime.now(dt.timezone.utc)
    assert running.reconcile() == []
    # a re-issued gateway certificate is picked up by the same reload path
    pki.issue_coordinator(hosts=[])
    assert running.reconcile() == ["gateway reloaded (CRL, certificate, node-key bindings)"]
    assert gateway.reloads == 2


def test_a_failed_reload_is_reported_and_tried_again(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    write_gateway_home(tmp_path / "home", pki_dir=pki.root)
    gateway = _Gateway(failures=1)
    running = RunningCoordinator(CoordinatorHome.load(tmp_path / "home"), superlink=None,  # type: ignore[arg-type]
                                 node_ids={}, gateway=gateway)
    running._seen = running._pki_state()
    pki.publish_crl()
    (warning,) = running.reconcile()
    assert warning.startswith("warning: the gateway did not reload (nginx rejected")
    assert running.reconcile() == ["gateway reloaded (CRL, certificate, node-key bindings)"]
    assert gateway.reloads == 1 and running.reconcile() == []


class _RefusingGateway:
    """A gateway whose new configuration cannot be rendered, and one that left a silo out."""

    def __init__(self, error: Exception | None = None, problems: tuple[str, ...] = ()) -> None:
        self.error, self.problems, self.reloads = error, list(problems), 0

    def reload(self) -> None:
        if self.error is not None:
            raise self.error
        self.reloads += 1


def test_one_silos_binding_is_reported_by_name_not_fatal(tmp_path: Path) -> None:
    """An approved silo whose subject nginx cannot read must not stop the coordinator: the
    gateway leaves that silo out and reconcile names it with the fix; an error from the PKI
    directory keeps the previous configuration, with a warning, instead of ending the loop."""
    pki = make_pki(tmp_path / "pki")
    write_gateway_home(tmp_path / "home", pki_dir=pki.root)
    home = CoordinatorHome.load(tmp_path / "home")
    left_out = ("silo hospital-a is refused by the gateway (its node-key binding cannot be "
                "used: …); revoke it (`xsilo pki revoke hospital-a`) and have it enroll again")
    gateway = _RefusingGateway(problems=(left_out,))
    running = RunningCoordinator(home, superlink=None, node_ids={},  # type: ignore[arg-type]
                                 gateway=gateway)
    running._seen = running._pki_state()
    pki.publish_crl()
    assert running.reconcile() == ["gateway reloaded (CRL, certificate, node-key bindings)",
                                   f"warning: {left_out}"]
    running.gateway = _RefusingGateway(ConfigError(
        "certificate subject 'O=Acme\\ ,CN=hospital-a' contains characters not allowed"))
    pki.publish_crl()
    (warning,) = running.reconcile()
    assert warning.startswith("warning: the gateway did not reload (certificate subject")
    assert "until the PKI directory is fixed" in warning
    assert running.reconcile() == []  # no warning every 2 s: the next PKI change retries


def test_status_warns_for_every_certificate_and_the_crl_with_its_command(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", organization="C")
    pki.issue_coordinator(hosts=["localhost"], address="localhost:8443", days=5)
    pki.approve(enroll("hospital-a", tmp_path / "a", email="a@a.example"), days=3)
    pki.approve(enroll("hospital-b", tmp_path / "b", email="b@b.example"), days=30)
    pki.approve(enroll("hospital-c", tmp_path / "c", email="c@c.example"), days=2)
    pki.renew("hospital-c", days=30)  # its 2-day certificate is superseded: no warning
    texts = [str(n) for n in pki_notices(pki, warn_days=7)]
    root = pki.root
    assert any("silo hospital-a's certificate expires in" in t
               and t.endswith(f"`xsilo pki renew hospital-a --pki-dir {root}`") for t in texts)
    assert any(t.startswith("the coordinator certificate expires in")
               and t.endswith(f"`xsilo pki issue-coordinator --pki-dir {root}`") for t in texts)
    assert not any("hospital-b" in t or "hospital-c" in t or "CRL" in t for t in texts), texts
    assert [str(n) for n in pki_notices(pki, warn_days=1)] == []
    # the CRL: due inside its renewal margin, an error once lapsed; expired certificates too
    lapse = _crl(pki).next_update_utc
    due = pki_notices(pki, warn_days=0, now=lapse - 2 * H)
    assert [(n.level, n.command) for n in due] == [("warning", f"xsilo pki crl --pki-dir {root}")]
    late = pki_notices(pki, warn_days=0, now=NOW + dt.timedelta(days=6))
    assert {n.level for n in late} == {"error"}
    assert any("LAPSED" in n.text for n in late) and any("EXPIRED" in n.text for n in late)

    res = runner.invoke(pki_app, ["status", "--pki-dir", str(root), "--warn-days", "4"])
    assert res.exit_code == 0, res.output
    assert f"xsilo pki renew hospital-a --pki-dir {root}" in res.output
    assert "issue-coordinator" not in res.output  # its 5 days are outside 4
    assert res.output.count("warning:") == 1, res.output


def test_coordinator_status_warns_from_the_home(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    pki.issue_coordinator(hosts=["localhost"], address="localhost:8443", days=3)
    write_gateway_home(tmp_path / "home", pki_dir=pki.root)
    res = runner.invoke(coordinator_app, ["status", "--home", str(tmp_path / "home")])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "the coordinator certificate expires in" in res.output
    assert f"xsilo pki issue-coordinator --pki-dir {pki.root}" in res.output
    res = runner.invoke(coordinator_app, ["status", "--home", str(tmp_path / "home"),
                                          "--warn-days", "1"])
    assert res.exit_code == 0 and "warning:" not in res.output and "CRL valid" in res.output


def test_the_coordinator_certificate_is_revoked_and_reissued(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    old = load_certificate(pki.coordinator_files().server_cert)
    (record,) = pki.revoke("coordinator")
    assert record.kind == "coordinator" and record.state == "revoked"
    assert _crl(pki).get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert pki.enrolled_node_keys() == {} and not (pki.root / "revoked").exists()
    with pytest.raises(EnrollmentError, match="no unrevoked"):
        pki.revoke("coordinator")
    files = pki.issue_coordinator(hosts=[])  # the recorded names and address
    new = load_certificate(files.server_cert)
    assert new.serial_number != old.serial_number
    sans = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, sans.get_values_for_type(x509.DNSName))) == ["localhost"]
    assert (files.address, files.server_name) == ("127.0.0.1:8443", "localhost")
    assert Pki(pki.root).settings["coordinator"]["certificate_sha256"] == fingerprint(new)
    states = {r.serial: r.state for r in pki.records() if r.kind == "coordinator"}
    assert sorted(states.values()) == ["revoked", "valid"]
    assert new.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) != \
        old.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    res = runner.invoke(pki_app, ["revoke", "coordinator", "--pki-dir", str(pki.root), "--yes"])
    assert res.exit_code == 0, res.output
    assert f"xsilo pki issue-coordinator --pki-dir {pki.root}" in res.output


def test_no_silo_may_enroll_as_the_coordinator(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(EnrollmentError, match="reserved"):
        pki.approve(enroll("coordinator", tmp_path / "kit", email="x@x.example"))

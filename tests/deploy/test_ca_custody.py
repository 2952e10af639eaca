"""CA key custody: a new CA key is encrypted unless the operator says otherwise, nothing waits
on a prompt nobody can answer, and an offline CA's PKI reaches the coordinator host without
its key (`xsilo pki sync`)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.home import CoordinatorHome, write_gateway_home
from deploy.pki.authority import Pki
from deploy.pki.cli import pki_app
from deploy.pki.freshness import CrlKeeper, pki_notices
from deploy.pki.offline import sync_public
from tests.deploy.conftest import enroll_silo, make_pki
from xsilo.errors import EnrollmentError

runner = CliRunner(env={"COLUMNS": "250", "XSILO_CA_PASSPHRASE": None})


def test_a_new_ca_key_is_encrypted_by_default(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    res = runner.invoke(pki_app, ["init", "--pki-dir", str(pki_dir)])  # no terminal, no secret
    assert isinstance(res.exception, EnrollmentError)
    assert "--passphrase-file" in str(res.exception) and "--no-encrypt" in str(res.exception)
    assert not pki_dir.exists()

    res = runner.invoke(pki_app, ["init", "--pki-dir", str(pki_dir)],
                        env={"XSILO_CA_PASSPHRASE": "correct horse"})
    assert res.exit_code == 0 and "encrypted with its passphrase" in res.output, res.output
    pki = Pki(pki_dir)
    assert pki.ca_key_encrypted
    assert b"ENCRYPTED PRIVATE KEY" in pki.ca_key_path.read_bytes()
    res = runner.invoke(pki_app, ["crl", "--pki-dir", str(pki_dir)])  # a timer, no passphrase
    assert isinstance(res.exception, EnrollmentError)
    assert "no terminal" in str(res.exception) and "XSILO_CA_PASSPHRASE" in str(res.exception)
    secret = tmp_path / "ca.pass"
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    res = runner.invoke(pki_app, ["crl", "--pki-dir", str(pki_dir), "--passphrase-file",
                                  str(secret)])
    assert res.exit_code == 0, res.output

    res = runner.invoke(pki_app, ["init", "--pki-dir", str(tmp_path / "clear"), "--no-encrypt"])
    assert res.exit_code == 0 and "NOT encrypted" in res.output
    assert not Pki(tmp_path / "clear").ca_key_encrypted
    res = runner.invoke(pki_app, ["init", "--pki-dir", str(tmp_path / "both"), "--no-encrypt",
                                  "--passphrase-file", str(secret)])
    assert isinstance(res.exception, EnrollmentError) and "contradict" in str(res.exception)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sync_carries_everything_but_the_ca_key(tmp_path: Path) -> None:
    ca = make_pki(tmp_path / "ca-host" / "pki")
    enroll_silo(ca, "hospital-a", tmp_path / "kit-a")
    enroll_silo(ca, "hospital-b", tmp_path / "kit-b")
    medium, coord = tmp_path / "usb" / "pki", tmp_path / "coord-host" / "pki"

    first = sync_public(ca.root, medium)
    assert sync_public(medium, coord).unchanged == 0
    public = {k: v for k, v in _files(ca.root).items() if not k.startswith("private/")}
    assert _files(medium) == public and _files(coord) == public
    assert first.written[:2] == ("coordinator/server.key", "coordinator/superlink.key")
    assert first.written[-2:] == ("crl.pem", "index.json")  # after what they describe
    assert stat.S_IMODE((coord / "coordinator" / "server.key").stat().st_mode) == 0o600
    assert not (coord / "private").exists()

    # the coordinator host runs on the copy: no CA key, so it warns instead of renewing
    write_gateway_home(tmp_path / "coord-host" / "home", pki_dir=coord)
    home = CoordinatorHome.load(tmp_path / "coord-host" / "home")
    assert home.gateway.pki == coord.resolve()
    assert "not on this host" in CrlKeeper(Pki(coord)).key_problem()
    assert pki_notices(Pki(coord), warn_days=7) == []

    ca.revoke("hospital-b")  # on the CA host; then carried over
    sync_public(ca.root, medium)
    report = sync_public(medium, coord)
    assert report.removed == ("nodes/hospital-b.pub",)
    assert set(report.written) >= {"crl.pem", "index.json", "revoked/hospital-b.pub"}
    assert sorted(p.name for p in (coord / "nodes").iterdir()) == ["hospital-a.pub"]
    assert sync_public(medium, coord).written == ()

    with pytest.raises(EnrollmentError, match="holds a CA key"):
        sync_public(medium, ca.root)
    other = make_pki(tmp_path / "other")
    (other.root / "private" / "ca.key").unlink()
    with pytest.raises(EnrollmentError, match="another CA"):
        sync_public(ca.root, other.root)
    with pytest.raises(EnrollmentError, match="not an xsilo PKI"):
        sync_public(tmp_path / "kit-a", tmp_path / "x")


def test_sync_command(tmp_path: Path) -> None:
    ca = make_pki(tmp_path / "pki")
    res = runner.invoke(pki_app, ["sync", "--pki-dir", str(ca.root), "--to",
                                  str(tmp_path / "usb")])
    assert res.exit_code == 0 and "no CA key there" in res.output, res.output
    assert (tmp_path / "usb" / "ca.crt").read_bytes() == ca.ca_cert_path.read_bytes()


def test_an_empty_passphrase_never_stores_the_ca_key_in_the_clear(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pass"
    empty.write_text("\n")
    res = runner.invoke(pki_app, ["init", "--pki-dir", str(tmp_path / "pki"),
                                  "--passphrase-file", str(empty)])
    assert isinstance(res.exception, EnrollmentError), res.output
    assert "passphrase is empty" in str(res.exception) and "--no-encrypt" in str(res.exception)
    assert not (tmp_path / "pki" / "private" / "ca.key").exists()
    with pytest.raises(EnrollmentError, match="passphrase for the new CA key is empty"):
        Pki.init(tmp_path / "lib", passphrase=b"")
    assert not (tmp_path / "lib" / "private" / "ca.key").exists()


def test_signing_on_a_host_without_the_ca_key_says_where_to_sign(tmp_path: Path) -> None:
    ca = make_pki(tmp_path / "ca-host" / "pki")
    enroll_silo(ca, "hospital-a", tmp_path / "kit-a")
    coord = tmp_path / "coord-host" / "pki"
    sync_public(ca.root, coord)
    before = _files(coord)
    for args in (["crl"], ["revoke", "hospital-a", "--yes"],
                 ["issue-coordinator", "--host", "localhost"]):
        res = runner.invoke(pki_app, [*args, "--pki-dir", str(coord)])
        assert isinstance(res.exception, EnrollmentError), (args, res.output)
        assert "is not on this host" in str(res.exception), args
        assert "CA host" in str(res.exception) and "xsilo pki sync" in str(res.exception)
    with pytest.raises(EnrollmentError, match="is not on this host"):
        Pki(coord).revoke("hospital-a")
    assert _files(coord) == before


@pytest.mark.parametrize("link", ["nodes", ".", "ca.crt"])
def test_sync_never_writes_or_chmods_through_a_link(tmp_path: Path, link: str) -> None:
    """A removable medium is not trusted: a planted link would carry the PKI's files, and
    their permission bits, to wherever it points."""
    ca = make_pki(tmp_path / "pki")
    enroll_silo(ca, "hospital-a", tmp_path / "kit-a")
    dest, elsewhere = tmp_path / "usb" / "pki", tmp_path / "elsewhere"
    sync_public(ca.root, dest)
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "keep").write_text("mine\n")
    target = dest if link == "." else dest / link
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(elsewhere / "keep" if link == "ca.crt" else elsewhere)
    with pytest.raises(EnrollmentError, match="is a symbolic link"):
        sync_public(ca.root, dest)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep"]
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700
    assert (elsewhere / "keep").read_text() == "mine\n"

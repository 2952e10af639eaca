"""The coordinator gateway's inputs on disk and in its environment are hostile until parsed:
a damaged ``nodes/<silo>.pub`` leaves out that one silo (reported by name), never the
gateway for every silo; ``XSILO_GATEWAY_USER`` names an account and a group that exist and
that nginx's bare ``user`` line can carry, else a DeploymentError naming the variable."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest
from cryptography.exceptions import UnsupportedAlgorithm

import deploy.gateway.account as gateway_account
import deploy.gateway.bindings as gateway
from deploy.pki.authority import Pki
from tests.deploy.conftest import enroll_silo
from xsilo.errors import DeploymentError


def _two_silos(pki: Pki, tmp_path: Path) -> Path:
    """hospital-a and hospital-b enrolled; hospital-a's node-key file."""
    enroll_silo(pki, "hospital-a", tmp_path / "a")
    enroll_silo(pki, "hospital-b", tmp_path / "b")
    return pki.root / "nodes" / "hospital-a.pub"


def _only_b_is_bound(pki: Pki) -> str:
    bindings, problems = gateway.node_key_bindings(Pki(pki.root))
    assert [dn.rpartition("CN=")[2] for dn in bindings] == ["hospital-b"]
    (problem,) = problems
    assert problem.startswith("silo hospital-a is refused by the gateway"), problem
    assert "xsilo pki revoke hospital-a" in problem
    return problem


def test_a_node_key_file_that_is_not_utf8_leaves_out_that_silo(
        pki: Pki, tmp_path: Path) -> None:
    _two_silos(pki, tmp_path).write_bytes(b"\xff\xfe\n")
    assert "cannot be read" in _only_b_is_bound(pki)


def test_a_node_key_file_that_is_a_directory_leaves_out_that_silo(
        pki: Pki, tmp_path: Path) -> None:
    node_file = _two_silos(pki, tmp_path)
    node_file.unlink()
    node_file.mkdir()
    assert "restore that file" in _only_b_is_bound(pki)


def test_an_unknown_key_type_leaves_out_that_silo(pki: Pki, tmp_path: Path) -> None:
    _two_silos(pki, tmp_path).write_text("ssh-foo AAAAB3NzaC1yc2E=\n")
    _only_b_is_bound(pki)


def test_an_untyped_parse_failure_leaves_out_that_silo(
        pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether or not the key parser turns cryptography's UnsupportedAlgorithm into an
    EnrollmentError, the gateway leaves out only that silo."""
    _two_silos(pki, tmp_path).write_text("ssh-foo AAAAB3NzaC1yc2E=\n")
    real = gateway.parse_node_public_key

    def parse(line: str):  # type: ignore[no-untyped-def]
        if line.startswith("ssh-foo"):
            raise UnsupportedAlgorithm("Unsupported key type: b'ssh-foo'")
        return real(line)

    monkeypatch.setattr(gateway, "parse_node_public_key", parse)
    assert "Unsupported key type" in _only_b_is_bound(pki)


def test_intact_node_keys_are_all_bound(pki: Pki, tmp_path: Path) -> None:
    _two_silos(pki, tmp_path)
    bindings, problems = gateway.node_key_bindings(pki)
    assert bindings == pki.node_key_bindings() and problems == []


# --- XSILO_GATEWAY_USER ------------------------------------------------------------------
@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """worker_account as nginx started by root sees it."""
    monkeypatch.setattr(gateway_account.os, "geteuid", lambda: 0)
    return monkeypatch


@pytest.mark.parametrize("value", [
    "nobody:nogroup; error_log /tmp/x",  # a directive smuggled into `user USER GROUP;`
    "nobody;error_log:nogroup",
    "nobody:no group",
    "nobody:{group}}",
    "-nobody",
])
def test_an_account_name_nginx_cannot_carry_is_refused(
        as_root: pytest.MonkeyPatch, value: str) -> None:
    as_root.setenv("XSILO_GATEWAY_USER", value)
    with pytest.raises(DeploymentError, match="XSILO_GATEWAY_USER"):
        gateway_account.worker_account()


def test_a_group_that_does_not_exist_is_refused(as_root: pytest.MonkeyPatch) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    as_root.setenv("XSILO_GATEWAY_USER", f"{user}:xsilo-no-such-group-zz")
    with pytest.raises(DeploymentError, match="group 'xsilo-no-such-group-zz' does not exist"):
        gateway_account.worker_account()


def test_a_primary_group_without_a_name_is_refused_unless_nogroup_exists(
        as_root: pytest.MonkeyPatch) -> None:
    def missing(_: object) -> grp.struct_group:
        raise KeyError("not found")

    as_root.setenv("XSILO_GATEWAY_USER", pwd.getpwuid(os.getuid()).pw_name)
    as_root.setattr(gateway_account.grp, "getgrgid", missing)
    as_root.setattr(gateway_account.grp, "getgrnam", missing)
    with pytest.raises(DeploymentError, match="XSILO_GATEWAY_USER: group 'nogroup'"):
        gateway_account.worker_account()


def test_an_existing_account_and_group_are_taken(as_root: pytest.MonkeyPatch) -> None:
    entry = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(entry.pw_gid).gr_name
    as_root.setenv("XSILO_GATEWAY_USER", f"{entry.pw_name}:{group}")
    assert gateway_account.worker_account() == (entry.pw_name, group)
    as_root.setenv("XSILO_GATEWAY_USER", entry.pw_name)
    assert gateway_account.worker_account() == (entry.pw_name, group)

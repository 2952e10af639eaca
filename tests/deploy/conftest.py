"""Fixtures for deploy/: a PKI with a coordinator certificate, and enrolled member kits."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from deploy.enrollment import enroll, import_bundle
from deploy.kit import MemberKit
from deploy.pki import Pki

KEY_FILES = {"ca.key", "server.key", "superlink.key", "silo.key", "node.key", "local.key"}


def make_pki(root: Path, *, address: str = "127.0.0.1:8443",
             passphrase: bytes | None = None) -> Pki:
    """A PKI with its coordinator certificates (names localhost, 127.0.0.1)."""
    pki = Pki.init(root, organization="Test Consortium", passphrase=passphrase)
    pki.issue_coordinator(hosts=["localhost", "127.0.0.1"], address=address,
                          passphrase=passphrase)
    return pki


def enroll_silo(pki: Pki, name: str, kit_dir: Path, *, local_port: int = 9443,
                days: int = 30) -> MemberKit:
    """Enroll, approve and import: a complete member kit."""
    request = enroll(name, kit_dir, email=f"it@{name}.example", organization="Hospital")
    bundle = pki.approve(request, days=days)
    return import_bundle(bundle, kit_dir, pki.ca_fingerprint, local_port=local_port)


def private_key_leaks(roots: Iterable[Path]) -> list[str]:
    """Files holding a PEM/OpenSSH private key other than the expected 0600 key files,
    and expected key files that are not 0600."""
    problems = []
    for root in roots:
        for path in Path(root).rglob("*"):
            if not path.is_file():
                continue
            if b"PRIVATE KEY" in path.read_bytes():
                if path.name not in KEY_FILES:
                    problems.append(f"private key in {path}")
                elif os.stat(path).st_mode & 0o777 != 0o600:
                    problems.append(f"{path} mode {oct(os.stat(path).st_mode & 0o777)}")
    return problems


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh PKI with coordinator certificates."""
    return make_pki(tmp_path / "pki")


@pytest.fixture
def kit_factory(pki: Pki, tmp_path: Path) -> Callable[..., MemberKit]:
    """``kit_factory("hospital-a")`` → an enrolled member kit under ``tmp_path``."""
    def make(name: str, **kw: int) -> MemberKit:
        return enroll_silo(pki, name, tmp_path / f"kit-{name}", **kw)
    return make

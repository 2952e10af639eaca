"""Fixtures for deploy/: a PKI with a coordinator certificate, and enrolled member kits."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from deploy.pki.enrollment import enroll, import_bundle
from deploy.pki.kit import MemberKit
from deploy.pki.authority import Pki

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


def _key_body_lines(key_file: Path) -> list[bytes]:
    """The base64 lines of a PEM/OpenSSH private key (header and footer dropped)."""
    return [line.strip() for line in key_file.read_bytes().splitlines()
            if line.strip() and not line.startswith(b"-----")]


def private_key_leaks(roots: Iterable[Path], keys: Iterable[Path] = ()) -> list[str]:
    """Files under ``roots`` that hold a private key, other than the expected 0600 key files
    (which must be 0600).

    A key is found by its PEM/OpenSSH header, or by its base64 body: each key file met
    under ``roots`` and each one in ``keys`` (which may live elsewhere, e.g. in a kit) is
    looked for as its whole body without line breaks and as any one of its full 64-column
    lines, so a key copied into JSON, a log line or a config value is caught too.
    """
    files = [p for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()]
    key_files = {p for p in files if p.name in KEY_FILES} | {Path(k) for k in keys}
    needles: list[tuple[bytes, Path]] = []
    for key in sorted(key_files):
        lines = _key_body_lines(key)
        needles.append((b"".join(lines), key))
        needles += [(line, key) for line in lines if len(line) >= 64]
    problems = []
    for path in files:
        data = path.read_bytes()
        if path in key_files or path.name in KEY_FILES:
            if os.stat(path).st_mode & 0o777 != 0o600:
                problems.append(f"{path} mode {oct(os.stat(path).st_mode & 0o777)}")
            continue
        if b"PRIVATE KEY" in data:
            problems.append(f"private key in {path}")
            continue
        flat = data.replace(b"\\n", b"").replace(b"\n", b"").replace(b"\r", b"")
        leaked = next((key for body, key in needles if body and (body in data or body in flat)),
                      None)
        if leaked is not None:
            problems.append(f"base64 body of {leaked} in {path}")
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

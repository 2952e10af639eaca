"""A silo's own files and its coordinator's answers are hostile until parsed: a damaged
kit.toml, a damaged coordinator address or server name, a CRL with blocks appended. Each is
refused with an xsilo error that names the problem and the fix, never another exception,
and nothing unchecked reaches the kit's crl.pem or nginx's configuration."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.pki.authority import Pki
from deploy.pki.certs import make_crl
from deploy.pki.crl_sync import crl_path, refresh_crl
from deploy.pki.kit import MemberKit, load_kit
from deploy.pki.link import connect
from xsilo.errors import ConfigError, DeploymentError

# (what, regex of the line in kit.toml, its damaged replacement)
DAMAGED_KIT = [
    ("a NUL byte in a path", r'client_key = ".*"', r'client_key = "silo\u0000.key"'),
    ("a path that is not a string", r'client_key = ".*"', "client_key = 5"),
    ("a name that is not a string", r'name = ".*"', "name = 5"),
    ("a name with a newline", r'name = ".*"', r'name = "a\n[Service]"'),
    ("a coordinator that is a list", r'coordinator = ".*"', 'coordinator = ["x"]'),
    ("a coordinator with a huge port", r'coordinator = ".*"',
     'coordinator = "fl.example.org:' + "9" * 5000 + '"'),
    ("a server name with a quote", r'server_name = ".*"', r'server_name = "a\" b"'),
    ("a server name with an IPv6 zone", r'server_name = ".*"',
     'server_name = "fe80::1%a;b"'),
    ("a listen port of 5000 digits", r'listen = ".*"',
     'listen = "127.0.0.1:' + "9" * 5000 + '"'),
    ("a listen port out of range", r'listen = ".*"', 'listen = "127.0.0.1:70000"'),
    ("a superlink that is not host:port", r'superlink = ".*"', 'superlink = "x; y"'),
    ("a fingerprint that is not a string", r'coordinator_certificate_sha256 = ".*"',
     "coordinator_certificate_sha256 = 1"),
    ("a [silo] that is not a table", r"\[silo\]\n", 'silo = "x"\n[xx]\n'),
]


@pytest.fixture
def kit(kit_factory: Callable[..., MemberKit]) -> MemberKit:
    return kit_factory("hospital-a")


@pytest.mark.parametrize(("what", "line", "damaged"), DAMAGED_KIT,
                         ids=[d[0] for d in DAMAGED_KIT])
def test_a_damaged_kit_toml_is_a_config_error_naming_the_file(
        kit: MemberKit, what: str, line: str, damaged: str) -> None:
    toml = kit.root / "kit.toml"
    toml.write_text(re.sub(line, lambda _: damaged, toml.read_text(), count=1))
    with pytest.raises(ConfigError) as err:
        load_kit(kit.root)
    assert "kit.toml" in str(err.value)
    assert "import-bundle" in str(err.value) or "fix" in str(err.value)


def test_a_symlink_loop_in_the_kit_is_a_config_error(kit: MemberKit) -> None:
    kit.client_key.unlink()
    kit.client_key.symlink_to(kit.client_key)
    with pytest.raises(ConfigError, match="client_key"):
        load_kit(kit.root)


def test_an_intact_kit_still_loads(kit: MemberKit) -> None:
    assert load_kit(kit.root) == kit


# --- the silo's own connection to the coordinator (deploy.pki.link) -------------------------
@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts and says nothing (the TLS handshake never gets that far)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(srv.accept()[0])
        except OSError:  # closed at teardown
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize(("coordinator", "server_name"), [
    ("127.0.0.1:" + str(2**70), None),  # OverflowError in the socket layer
    ("127.0.0.1:-1", None),
    ("127.0.0.1:" + "9" * 5000, None),  # ValueError from int()
    ("a..b:{port}", None),  # UnicodeError: an empty DNS label
    ("127.0.0.1:{port}", "fl\0x"),  # TypeError: a NUL in the server name
    ("127.0.0.1:{port}", "a..b"),
    ("127.0.0.1:{port}", "a" * 64 + ".org"),  # UnicodeError: a label over 63
], ids=["port-2**70", "port--1", "port-5000-digits", "host-empty-label", "sni-nul",
        "sni-empty-label", "sni-long-label"])
def test_a_damaged_address_is_a_deployment_error_naming_it(
        kit: MemberKit, listener: int, coordinator: str, server_name: str | None) -> None:
    damaged = dataclasses.replace(kit, coordinator=coordinator.format(port=listener),
                                  server_name=server_name or kit.server_name)
    with pytest.raises(DeploymentError) as err, connect(damaged, timeout=1.0):
        pass
    assert (damaged.coordinator[:40] in str(err.value)
            or repr(damaged.server_name) in str(err.value))
    # ... which `xsilo silo start` sees as an unreachable coordinator, not a traceback
    result = refresh_crl(damaged, timeout=1.0)
    assert result.outcome == "unreachable", result


# --- the CRL the coordinator serves (deploy.pki.crl_sync) -----------------------------------
def _newer_crl(pki: Pki) -> bytes:
    crl = make_crl(pki.unlock(), [], validity=dt.timedelta(days=30), number=2**62)  # above the PKI's own numbers
    return crl.public_bytes(serialization.Encoding.PEM)


def test_a_crl_with_a_block_appended_is_refused(pki: Pki, kit: MemberKit) -> None:
    installed = crl_path(kit).read_bytes()
    body = _newer_crl(pki) + b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    result = refresh_crl(kit, fetch=lambda: (200, body))
    assert result.outcome == "invalid" and "PEM blocks" in result.detail, result
    assert crl_path(kit).read_bytes() == installed


def test_only_the_verified_crl_is_installed(pki: Pki, kit: MemberKit) -> None:
    """Text around the block (no second block) is not installed either: the kit gets the
    verified CRL, re-encoded, never the body as served."""
    crl = _newer_crl(pki)
    body = b"served by: a proxy\n" + crl + b"# user nobody; trailing text\n"
    result = refresh_crl(kit, fetch=lambda: (200, body))
    assert result.outcome == "installed", result
    assert crl_path(kit).read_bytes() == crl
    # ... and the same CRL served again, as is, is the one installed
    assert refresh_crl(kit, fetch=lambda: (200, crl)).outcome == "current"

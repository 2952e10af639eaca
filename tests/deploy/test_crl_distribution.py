"""CRL distribution and the coordinator's live certificate, through real nginx gateways.

One module-scoped pair of gateways: the coordinator gateway (its SuperLink upstream is a
closed port: a request that gets through is answered 502 *by the coordinator gateway* and
logged there) and hospital-a's silo gateway, which checks the coordinator's certificate
against the kit's CRL. The tests that change the PKI run last.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.gateway.conf import CRL_PATH
from deploy.gateway.nginx import CoordinatorGateway, GatewayHandle, SiloGateway
from deploy.launch.processes import free_port
from deploy.pki.authority import Pki
from deploy.pki.certs import (
    CertifiedKey, fingerprint, flower_public_key_header, issue_leaf, load_certificate, make_ca,
    make_crl, write_private_key, write_public_pem,
)
from deploy.pki.crl_sync import crl_path, refresh_crl
from deploy.pki.identity import coordinator_fingerprint
from deploy.pki.kit import MemberKit
from deploy.pki.link import peer_certificate
from deploy.pki.messages import parse_node_public_key
from tests.deploy.conftest import enroll_silo, make_pki
from xsilo.errors import DeploymentError

pytestmark = pytest.mark.e2e
FLEET = "/v1/fleet/pull-messages"


@dataclass
class Fed:
    root: Path
    pki: Pki
    coord: GatewayHandle
    silo: GatewayHandle
    kits: dict[str, MemberKit]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("crl")
    cport = free_port()
    pki = make_pki(root / "pki", address=f"127.0.0.1:{cport}")
    kits = {n: enroll_silo(pki, n, root / n, local_port=free_port())
            for n in ("hospital-a", "hospital-b", "hospital-r")}
    pki.revoke("hospital-r")
    started: list[GatewayHandle] = []
    try:
        started.append(CoordinatorGateway.start(pki_dir=pki.root, port=cport, prefix=root / "cgw",
                                                superlink=f"127.0.0.1:{free_port()}"))
        started.append(SiloGateway.start(kits["hospital-a"]))
        yield Fed(root, pki, started[0], started[1], kits)
    finally:
        for handle in reversed(started):
            handle.stop()


def _ctx(ca: Path, cert: MemberKit | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert.client_cert), str(cert.client_key))
    return ctx


def _raw(fed: Fed, method: str, path: str, kit: MemberKit | None) -> tuple[int, bytes]:
    """A request with the path exactly as given (no client-side normalisation)."""
    ctx = _ctx(fed.pki.ca_cert_path, kit)
    with socket.create_connection(("127.0.0.1", fed.coord.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _through_silo(fed: Fed, kit: MemberKit, gateway: GatewayHandle) -> int:
    key = parse_node_public_key(kit.node_public_key.read_text())
    with httpx.Client(verify=_ctx(kit.root_certificates), timeout=15) as client:
        res = client.post(f"https://{gateway.address}{FLEET}", content=b"",
                          headers={"content-type": "application/protobuf",
                                   "flwr-public-key": flower_public_key_header(key)})
    return res.status_code


def _wait_log(handle: GatewayHandle, needle: str, *, after: int | None = None,
              timeout: float = 3.0) -> str:
    """Until ``needle`` is in the error or access log (only the access log from offset
    ``after`` on, when given); returns the text searched."""
    deadline = time.monotonic() + timeout
    while True:
        logs = handle.logs()
        text = logs["access"][after:] if after is not None else logs["error"] + logs["access"]
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in {handle.name} logs:\n{text[-3000:]}")
        time.sleep(0.05)


def _access(handle: GatewayHandle) -> str:
    return handle.logs()["access"]


def test_the_crl_is_served_to_consortium_members_only(fed: Fed) -> None:
    a = fed.kits["hospital-a"]
    status, body = _raw(fed, "GET", CRL_PATH, a)
    assert status == 200 and body == fed.pki.crl_path.read_bytes()
    with httpx.Client(verify=_ctx(fed.pki.ca_cert_path, a), timeout=10) as client:
        res = client.get(f"https://{fed.coord.address}{CRL_PATH}")
        assert res.headers["content-type"] == "application/x-pem-file"
        assert res.headers["cache-control"] == "no-store"
        assert client.head(f"https://{fed.coord.address}{CRL_PATH}").status_code == 200
    assert _raw(fed, "POST", CRL_PATH, a)[0] == 405
    assert _raw(fed, "GET", CRL_PATH, None)[0] == 400  # no client certificate
    assert _raw(fed, "GET", CRL_PATH, fed.kits["hospital-r"])[0] == 400  # revoked
    _wait_log(fed.coord, "certificate revoked")


@pytest.mark.parametrize("path", [
    "/xsilo/", "/xsilo", "/xsilo/crl.pem/", "/xsilo/crl.pemx", "/xsilo/crl.pem.bak",
    "/xsilo/crl", "/XSILO/CRL.PEM", "/crl.pem", "/xsilo/ca.key", "/xsilo/../v1/control/list-runs",
    "/xsilo/crl.pem/../../v1/control/list-runs", "/xsilo/%2e%2e/v1/control/list-runs",
    "/xsilo/crl.pem%2f..%2f..%2fv1/control/list-runs", "/v1/control/list-runs",
    "/xsilo/planted.txt", "/xsilo/client_body/",
])
def test_nothing_else_opens(fed: Fed, path: str) -> None:
    # a file beside the served copy (the workers' directory also spools request bodies)
    served = fed.coord.scratch or fed.coord.prefix / "tmp"
    (served / "planted.txt").write_text("PLANTED")
    status, body = _raw(fed, "GET", path, fed.kits["hospital-a"])
    assert status in (400, 403, 404), (status, body[:200])
    assert b"BEGIN X509 CRL" not in body and b"PLANTED" not in body
    rows = [r for r in _access(fed.coord).splitlines() if f'"GET {path} HTTP/1.1"' in r]
    assert rows and all("upstream=-" in r for r in rows), rows  # never forwarded


def test_fleet_paths_are_unchanged(fed: Fed) -> None:
    a = fed.kits["hospital-a"]
    assert _raw(fed, "GET", FLEET, a)[0] == 405  # never 403 on a Fleet path
    with httpx.Client(verify=_ctx(a.root_certificates), timeout=10) as client:
        assert client.get(f"https://{fed.silo.address}{CRL_PATH}").status_code == 403
    mark = len(_access(fed.coord))
    assert _through_silo(fed, a, fed.silo) == 502  # the coordinator's: no SuperLink here
    row = _wait_log(fed.coord, f'"POST {FLEET} HTTP/1.1" status=502', after=mark)
    assert 'dn="O=Hospital,CN=hospital-a"' in row


def test_the_silo_installs_the_crl_the_coordinator_enforces(fed: Fed) -> None:
    a = fed.kits["hospital-a"]
    assert crl_path(a).read_bytes() != fed.pki.crl_path.read_bytes()  # before hospital-r's
    result = refresh_crl(a, reload=fed.silo.reload)
    assert result.outcome == "installed" and "silo gateway reloaded" in result.detail
    assert crl_path(a).read_bytes() == fed.pki.crl_path.read_bytes()
    assert refresh_crl(a, reload=fed.silo.reload).outcome == "current"
    fed.pki.publish_crl()  # not loaded by the gateway yet: not served either
    assert refresh_crl(a).outcome == "current"
    fed.coord.reload()
    result = refresh_crl(a, reload=fed.silo.reload)
    assert result.outcome == "installed" and crl_path(a).read_bytes() == \
        fed.pki.crl_path.read_bytes()
    assert _through_silo(fed, a, fed.silo) == 502  # still reaches the coordinator


def _tls_server(cert: Path, key: Path) -> tuple[int, threading.Event]:
    """A TLS server on loopback that completes handshakes with ``cert`` and hangs up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        with sock:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                try:
                    with ctx.wrap_socket(conn, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], stop


def _impostor(root: Path, ca: CertifiedKey, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(ca, "xsilo-coordinator", public_key=key.public_key(),
                      server_hosts=["localhost", "127.0.0.1"])
    write_private_key(root / f"{name}.key", key)
    write_public_pem(root / f"{name}.crt", cert)
    return root / f"{name}.crt", root / f"{name}.key"


def _kit_dialing(fed: Fed, name: str, port: int) -> Path:
    """A copy of hospital-a's kit whose coordinator address is ``127.0.0.1:port``."""
    copy = fed.root / name
    shutil.copytree(fed.kits["hospital-a"].root, copy, ignore=shutil.ignore_patterns("run"))
    toml = copy / "kit.toml"
    toml.write_text(toml.read_text().replace(fed.kits["hospital-a"].coordinator,
                                             f"127.0.0.1:{port}"))
    return copy


def test_the_pinned_fingerprint_is_the_live_certificates(fed: Fed) -> None:
    a = fed.kits["hospital-a"]
    live = coordinator_fingerprint(a.root, None, None)
    assert live == fingerprint(load_certificate(fed.pki.coordinator_files().server_cert))
    # Another certificate at the kit's address — signed by the consortium CA, right name
    # (a re-issued or leaked one) — is what the silo sees, so a pin on the real one fails.
    crt, key = _impostor(fed.root, fed.pki.unlock(), "impostor")
    port, stop = _tls_server(crt, key)
    try:
        seen = coordinator_fingerprint(_kit_dialing(fed, "kit-impostor", port), None, None)
    finally:
        stop.set()
    assert seen == fingerprint(load_certificate(crt)) and seen != live
    # One from another CA is not the consortium's coordinator at all.
    crt, key = _impostor(fed.root, make_ca("impostor CA"), "foreign")
    port, stop = _tls_server(crt, key)
    try:
        with pytest.raises(DeploymentError, match="not the consortium's coordinator"):
            coordinator_fingerprint(_kit_dialing(fed, "kit-foreign", port), None, None)
    finally:
        stop.set()
    with pytest.raises(DeploymentError, match="cannot reach the coordinator gateway"):
        coordinator_fingerprint(_kit_dialing(fed, "kit-nobody", free_port()), None, None)


def _lapsed_crl(pki: Pki) -> bytes:
    crl = make_crl(pki.unlock(), [], validity=dt.timedelta(seconds=-60), number=1)  # an old one
    return crl.public_bytes(serialization.Encoding.PEM)


def test_a_silo_gateway_says_so_when_its_crl_lapsed(fed: Fed, caplog) -> None:
    b = fed.kits["hospital-b"]
    crl_path(b).write_bytes(_lapsed_crl(fed.pki))
    with caplog.at_level(logging.WARNING, logger="deploy.gateway.nginx"):
        gateway = SiloGateway.start(b)
    with gateway:
        assert any("LAPSED" in r.getMessage() and "refuses the coordinator" in r.getMessage()
                   for r in caplog.records), caplog.text
        assert _through_silo(fed, b, gateway) == 502  # Flower retries a 502
        _wait_log(gateway, "CRL has expired")
        result = refresh_crl(b, reload=gateway.reload)
        assert result.outcome == "installed" and "silo gateway reloaded" in result.detail
        mark = len(_access(fed.coord))
        # the reload is in force once it returns: this first request gets the new CRL and
        # reaches the coordinator, whose 502 it is (no SuperLink behind it here)
        assert _through_silo(fed, b, gateway) == 502
        _wait_log(fed.coord, 'dn="O=Hospital,CN=hospital-b"', after=mark)


def test_a_revoked_coordinator_certificate_is_refused_then_reissued(fed: Fed) -> None:
    a = fed.kits["hospital-a"]
    old = load_certificate(fed.pki.coordinator_files().server_cert)
    fed.pki.revoke("coordinator")
    fed.coord.reload()  # what the running coordinator's reconcile does on a new CRL
    result = refresh_crl(a, reload=fed.silo.reload)
    assert result.outcome == "installed" and "silo gateway reloaded" in result.detail
    # the reload is in force once it returns: the very next request is refused
    mark = len(_access(fed.coord))
    assert "certificate revoked" not in fed.silo.logs()["error"]
    assert _through_silo(fed, a, fed.silo) == 502
    _wait_log(fed.silo, "certificate revoked")  # the silo gateway refused the coordinator
    assert 'CN=hospital-a"' not in _access(fed.coord)[mark:]  # nothing reached it

    fed.pki.issue_coordinator(hosts=[])
    fed.coord.reload()  # reconcile: server.crt changed
    new = peer_certificate(a)
    assert new.serial_number != old.serial_number
    assert fingerprint(new) == fed.pki.settings["coordinator"]["certificate_sha256"]
    assert a.coordinator_sha256 == fingerprint(old)  # what the kit recorded at enrollment …
    assert coordinator_fingerprint(a.root, None, None) == fingerprint(new)  # … is not used
    mark = len(_access(fed.coord))
    assert _through_silo(fed, a, fed.silo) == 502
    _wait_log(fed.coord, 'dn="O=Hospital,CN=hospital-a"', after=mark)  # accepted again


def _other_ca_with_the_same_name(pki: Pki) -> CertifiedKey:
    org = pki.ca_cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    return make_ca("xsilo consortium CA", organization=str(org[0].value) if org else None)


def test_bad_older_or_lapsed_crls_are_refused(fed: Fed) -> None:
    b = fed.kits["hospital-b"]
    assert refresh_crl(b).outcome == "installed"
    installed = crl_path(b).read_bytes()
    forged = make_crl(_other_ca_with_the_same_name(fed.pki), [],
                      validity=dt.timedelta(days=30), number=2**60)
    assert forged.issuer == fed.pki.ca_cert.subject  # only the signature tells
    older = make_crl(fed.pki.unlock(), [], validity=dt.timedelta(days=30), number=1)
    reloads: list[int] = []
    for answer, outcome, why in [
        ((200, forged.public_bytes(serialization.Encoding.PEM)), "invalid", "not signed by"),
        ((200, older.public_bytes(serialization.Encoding.PEM)), "invalid", "not newer"),
        ((200, _lapsed_crl(fed.pki)), "invalid", "lapsed"),
        ((200, b"<html>hello</html>"), "invalid", "not a PEM CRL"),
        ((400, b""), "refused", "refused this silo's client certificate"),
        ((404, b""), "unreachable", "HTTP 404"),
    ]:
        result = refresh_crl(b, fetch=lambda a=answer: a, reload=lambda: reloads.append(1))
        assert (result.outcome, why in result.detail) == (outcome, True), result
        assert crl_path(b).read_bytes() == installed and reloads == []

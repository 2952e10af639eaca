"""The coordinator gateway's limits, against the real nginx: slow or silent connections
without a certificate, requests in progress per address, in-flight requests across a
revocation, oversized chunked bodies, and TLS 1.2 cipher suites, in and out.

One module-scoped coordinator (PKI, ``flower-superlink`` on loopback, the coordinator
gateway) and, for what the SuperLink cannot show, a recording TLS backend behind a second
gateway.
"""

from __future__ import annotations

import resource
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.gateway.conf import HEADER_TIMEOUT, PER_ADDRESS, SHUTDOWN_TIMEOUT
from deploy.gateway.nginx import CoordinatorGateway, GatewayHandle
from deploy.launch.processes import ManagedProcess, free_port, start_superlink
from deploy.pki.authority import Pki
from deploy.pki.certs import flower_public_key_header
from deploy.pki.kit import MemberKit
from deploy.pki.messages import parse_node_public_key
from tests.deploy.conftest import enroll_silo, make_pki

pytestmark = pytest.mark.e2e
FLEET = "/v1/fleet/pull-messages"
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]  # limit_conn counts per address


@dataclass
class Coord:
    root: Path
    pki: Pki
    superlink: ManagedProcess
    gateway: GatewayHandle
    kits: dict[str, MemberKit]


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coord]:
    root = tmp_path_factory.mktemp("limits")
    port, sl_port = free_port(), free_port()
    pki = make_pki(root / "pki", address=f"127.0.0.1:{port}")
    kits = {n: enroll_silo(pki, n, root / n, local_port=free_port())
            for n in ("hospital-a", "hospital-b")}
    files = pki.coordinator_files()
    started: list = []
    try:
        started.append(start_superlink(
            flwr_home=root / "flwr", log_path=root / "superlink.log", host="127.0.0.1",
            port=sl_port, ca_cert=pki.ca_cert_path, cert=files.superlink_cert,
            key=files.superlink_key))
        started.append(CoordinatorGateway.start(pki_dir=pki.root, port=port,
                                                superlink=f"127.0.0.1:{sl_port}",
                                                prefix=root / "cgw"))
        yield Coord(root, pki, started[0], started[1], kits)
    finally:
        for proc in reversed(started):
            proc.stop()


def _client_ctx(coord: Coord, kit: MemberKit | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(coord.pki.ca_cert_path))
    if kit is not None:
        ctx.load_cert_chain(str(kit.client_cert), str(kit.client_key))
    return ctx


def _key_header(kit: MemberKit) -> str:
    return flower_public_key_header(parse_node_public_key(kit.node_public_key.read_text()))


def _tls(coord: Coord, kit: MemberKit | None, *, source: str = "127.0.0.1",
         port: int | None = None, timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.socket()
    raw.settimeout(timeout)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port or coord.gateway.port))
    return _client_ctx(coord, kit).wrap_socket(raw, server_hostname="localhost")


def _request(kit: MemberKit, path: str = FLEET, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/protobuf\r\n"
            f"flwr-public-key: {_key_header(kit)}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass
    return data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def _enrolled_status(coord: Coord, kit: MemberKit, timeout: float = 5.0) -> int:
    with _tls(coord, kit, timeout=timeout) as sock:
        sock.sendall(_request(kit))
        return _status(_read_all(sock))


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2048: cannot hold the test connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slowloris_without_a_certificate_does_not_lock_out_silos(
        coord: Coord, many_descriptors: None) -> None:
    """700 connections from 8 addresses, none with a client certificate: most a TLS
    handshake and an unfinished request header, a quarter silent TCP (the old gateway had 512
    connections in one worker). An enrolled silo still gets through, and every such
    connection is dropped after the header timeout."""
    kit = coord.kits["hospital-a"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # an attacker does not care who answers
    attack: list[socket.socket] = []
    try:
        for i in range(700):
            sock = socket.socket()
            attack.append(sock)
            sock.settimeout(3)
            sock.bind((ATTACKERS[i % len(ATTACKERS)], 0))
            sock.connect(("127.0.0.1", coord.gateway.port))
            if i % 4:
                try:
                    attack[-1] = sock = ctx.wrap_socket(sock)
                except (OSError, ssl.SSLError):  # a timeout, or closed unanswered
                    pytest.fail(f"the gateway stopped answering after {i} connections "
                                "without a certificate")
                sock.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\n")
        held = time.monotonic()
        statuses = []
        for _ in range(3):
            statuses.append(_enrolled_status(coord, kit))  # the SuperLink's 401: reached it
            time.sleep(0.5)
        assert statuses == [401, 401, 401], statuses
        assert sum(not _closed_by_server(s) for s in attack) >= 650  # the attack was real
        assert "worker_connections are not enough" not in coord.gateway.logs()["error"]
        deadline = held + HEADER_TIMEOUT + 8
        while time.monotonic() < deadline and not all(_closed_by_server(s) for s in attack):
            time.sleep(0.5)
        left = sum(not _closed_by_server(s) for s in attack)
        assert left == 0, f"{left} unauthenticated connections outlived the header timeout"
    finally:
        for sock in attack:
            sock.close()


def test_requests_in_progress_are_limited_per_address(coord: Coord) -> None:
    """One address may hold PER_ADDRESS requests (here: bodies still being sent); the next
    one gets 503, which Flower retries (never 403 on a Fleet path); other addresses go on."""
    kit = coord.kits["hospital-a"]
    slow: list[ssl.SSLSocket] = []
    try:
        for _ in range(PER_ADDRESS + 2):
            sock = _tls(coord, kit, source="127.0.0.5")
            sock.sendall(_request(kit, body=b"x" * 100)[:-90])  # header + part of the body
            slow.append(sock)
        time.sleep(0.5)
        with _tls(coord, kit, source="127.0.0.5") as sock:
            sock.sendall(_request(kit))
            assert _status(_read_all(sock)) == 503
        assert 'limiting connections by zone "xsilo_per_address"' in coord.gateway.logs()["error"]
        assert _enrolled_status(coord, kit) == 401  # from 127.0.0.1: the SuperLink's answer
    finally:
        for sock in slow:
            sock.close()


def test_a_revoked_silos_request_in_flight_ends_with_the_old_worker(coord: Coord) -> None:
    """A request begun before a revocation (a body still trickling in) is cut off when the
    reload's old worker reaches worker_shutdown_timeout, not minutes later."""
    kit = coord.kits["hospital-b"]
    sock = _tls(coord, kit)
    try:
        sock.sendall(_request(kit, body=b"x" * 1000)[:-1000])
        coord.pki.revoke("hospital-b")
        coord.gateway.reload()
        reloaded = time.monotonic()
        while time.monotonic() - reloaded < SHUTDOWN_TIMEOUT + 6:
            try:
                sock.sendall(b"x")  # keeps the body timeout from firing
            except (OSError, ssl.SSLError):
                break
            if _closed_by_server(sock):
                break
            sock.setblocking(True)
            time.sleep(0.5)
        else:
            pytest.fail("the revoked silo's request was still open "
                        f"{SHUTDOWN_TIMEOUT + 6} s after the reload")
        assert time.monotonic() - reloaded >= SHUTDOWN_TIMEOUT - 1  # ended by that timeout
        assert _enrolled_status(coord, kit) == 400  # and refused from now on (revoked)
    finally:
        sock.close()


class _Backend:
    """A TLS server standing in for the SuperLink: counts the bytes it receives and answers
    200; ``max_tls12_ciphers`` restricts it to TLS 1.2 with those suites."""

    def __init__(self, cert: Path, key: Path, max_tls12_ciphers: str | None = None) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        if max_tls12_ciphers:
            self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            self.ctx.set_ciphers(max_tls12_ciphers)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.handshakes = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    self.received += len(chunk)
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    self.received += len(chunk)
                    body += chunk
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
                            b"\r\nok")
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.listener.close()


@pytest.fixture
def backend_gateway(coord: Coord, tmp_path: Path) -> Iterator[tuple[_Backend, GatewayHandle]]:
    files = coord.pki.coordinator_files()
    backend = _Backend(files.superlink_cert, files.superlink_key)
    gw = CoordinatorGateway.start(pki_dir=coord.pki.root, port=free_port(),
                                  superlink=f"127.0.0.1:{backend.port}", prefix=tmp_path / "gw")
    try:
        yield backend, gw
    finally:
        gw.stop()
        backend.close()


def _chunked_post(coord: Coord, kit: MemberKit, port: int, total: int) -> int:
    """POST ``total`` bytes with Transfer-Encoding: chunked; the HTTP status (0: none)."""
    head = (f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/protobuf\r\nflwr-public-key: {_key_header(kit)}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    chunk = 1 << 20
    frame = f"{chunk:x}\r\n".encode() + b"\0" * chunk + b"\r\n"
    with _tls(coord, kit, port=port, timeout=20) as sock:
        sock.sendall(head)
        try:
            for _ in range(total // chunk):
                sock.sendall(frame)
            sock.sendall(b"0\r\n\r\n")
        except (OSError, ssl.SSLError):
            pass  # nginx answered and closed while the body was still coming
        return _status(_read_all(sock))


def test_an_oversized_chunked_body_never_reaches_the_backend(
        coord: Coord, backend_gateway: tuple[_Backend, GatewayHandle]) -> None:
    backend, gw = backend_gateway
    kit = coord.kits["hospital-a"]
    assert _chunked_post(coord, kit, gw.port, 65 << 20) == 413
    assert backend.handshakes == 0 and backend.received == 0
    assert "client intended to send too large chunked body" in gw.logs()["error"]
    assert _chunked_post(coord, kit, gw.port, 2 << 20) == 200  # the backend does work
    assert backend.received > 2 << 20


AEAD = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
CBC_SHA1 = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"


def _tls12(coord: Coord, ciphers: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", coord.gateway.port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as sock:
            return str(sock.cipher()[0])


def test_tls12_offers_only_aead_suites(coord: Coord) -> None:
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure|NO_SHARED"):
        _tls12(coord, CBC_SHA1)
    assert _tls12(coord, AEAD) in AEAD.split(":")


def test_the_gateway_refuses_a_cbc_sha1_upstream(coord: Coord, tmp_path: Path) -> None:
    files = coord.pki.coordinator_files()
    kit = coord.kits["hospital-a"]
    for ciphers, status in ((CBC_SHA1, 502), (AEAD, 200)):
        backend = _Backend(files.superlink_cert, files.superlink_key, max_tls12_ciphers=ciphers)
        gw = CoordinatorGateway.start(pki_dir=coord.pki.root, port=free_port(),
                                      superlink=f"127.0.0.1:{backend.port}",
                                      prefix=tmp_path / f"gw-{status}")
        try:
            with _tls(coord, kit, port=gw.port) as sock:
                sock.sendall(_request(kit))
                assert _status(_read_all(sock)) == status, ciphers
        finally:
            gw.stop()
            backend.close()

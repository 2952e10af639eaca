"""deploy.gateway.reload: when a reload is in force. The rule over worker snapshots, the
``/proc`` reading on a fake tree, and a real nginx: every connection after a reload gets the
new configuration, a configuration the master refuses is reported with nginx's reason, an old
worker finishing a request does not hold the reload up, and a gateway on a unix socket is
seen to reload as well."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from deploy.gateway.nginx import CoordinatorGateway, GatewayHandle, SiloGateway
from deploy.gateway.reload import Worker, alive, hup_and_wait, listening_inodes, pending, workers
from deploy.launch.processes import free_port
from deploy.pki.authority import Pki
from deploy.pki.kit import MemberKit
from tests.deploy.conftest import enroll_silo, make_pki
from xsilo.errors import DeploymentError

A, B, C, D = (Worker(pid, 100 + pid, True) for pid in (11, 12, 13, 14))


def _quit(w: Worker) -> Worker:
    """The same process after it closed its listening sockets (shutting down)."""
    return Worker(w.pid, w.started, False)


@pytest.mark.parametrize("before, now, waiting", [
    ({A, B}, {A, B}, "old worker(s) 11, 12 still accept"),  # the HUP not acted on yet
    ({A, B}, {A, B, C}, "old worker(s) 11, 12 still accept"),  # new one forked, old not told
    ({A, B}, {_quit(A), B, C, D}, "old worker(s) 12 still accept"),  # one of two has quit
    ({A, B}, {_quit(A), _quit(B)}, "no new worker"),  # a master whose fork failed
    ({A, B}, {Worker(15, 1, False)}, "no new worker"),  # a child without listening sockets
    ({A, B}, {_quit(A), _quit(B), C}, None),  # old ones finish their requests: in force
    ({A, B}, {C, D}, None),  # old ones gone
    ({A}, {Worker(11, 999, True)}, None),  # pid 11 reused by a new worker
    ({_quit(A), B}, {_quit(A), C}, None),  # A lingers from an earlier reload
    (set(), {C}, None),
])
def test_in_force_once_no_old_worker_accepts_and_a_new_one_does(
        before: set[Worker], now: set[Worker], waiting: str | None) -> None:
    said = pending(frozenset(before), frozenset(now))
    assert said == waiting if waiting is None else said is not None and waiting in said


def _process(proc: Path, pid: int, *, ppid: int, state: str = "S", started: int = 500,
             sockets: tuple[int, ...] = (), name: str = "nginx") -> None:
    (proc / str(pid) / "fd").mkdir(parents=True)
    rest = [state, str(ppid), *["0"] * 17, str(started), "0"]  # fields 3-23
    (proc / str(pid) / "stat").write_text(f"{pid} ({name}) {' '.join(rest)}\n")
    os.symlink("pipe:[7]", proc / str(pid) / "fd" / "0")
    for fd, inode in enumerate(sockets, start=3):
        os.symlink(f"socket:[{inode}]", proc / str(pid) / "fd" / str(fd))


TCP = """  sl  local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode
   0: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1
   1: 0100007F:20FB 0100007F:D431 01 00000000:00000000 00:00000000 00000000    65        0 13 1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1
"""
UNIX = """Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 12 /srv/xsilo/gateway.sock
0000000000000000: 00000003 00000000 00000000 0001 03 14 /srv/xsilo/gateway.sock
"""


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A fake /proc: master 100 listens on TCP 11 and unix 12 and holds accepted unix 14;
    101 is a worker, 102 an old one finishing a request on TCP 13, 103 (another parent)
    holds 11 too, 104 a worker whose name has ') (' in it, 105 a master's zombie child."""
    root = tmp_path / "proc"
    _process(root, 100, ppid=1, sockets=(11, 12, 14))
    (root / "100" / "net").mkdir()
    (root / "100" / "net" / "tcp").write_text(TCP)
    (root / "100" / "net" / "unix").write_text(UNIX)
    _process(root, 101, ppid=100, started=601, sockets=(11, 12))
    _process(root, 102, ppid=100, started=602, sockets=(13,))
    _process(root, 103, ppid=1, sockets=(11,))
    _process(root, 104, ppid=100, started=604, sockets=(12,), name="ng) (x")
    _process(root, 105, ppid=100, state="Z", started=605)
    (root / "self").mkdir()
    return root


def test_listening_sockets_are_the_masters_listening_ones(proc: Path) -> None:
    assert listening_inodes(100, proc) == {11, 12}  # not 13/14 (connections), not 99 (not its)


def test_workers_are_the_masters_children_and_whether_they_accept(proc: Path) -> None:
    assert workers(100, proc) == {Worker(101, 601, True), Worker(102, 602, False),
                                  Worker(104, 604, True), Worker(105, 605, False)}
    # the old worker exits and a new one comes: in force
    before = workers(100, proc)
    for pid in ("101", "104"):
        for fd in (proc / pid / "fd").iterdir():
            if os.readlink(fd).startswith("socket:"):
                fd.unlink()
    assert pending(before, workers(100, proc)) == "no new worker has started"
    _process(proc, 106, ppid=100, started=700, sockets=(11, 12))
    assert pending(before, workers(100, proc)) is None


def test_a_zombie_or_missing_master_is_not_alive(proc: Path) -> None:
    assert alive(100, proc) and not alive(105, proc) and not alive(999, proc)


# --- a real nginx ---------------------------------------------------------------------------


@dataclass
class Gateway:
    pki: Pki
    kit: MemberKit
    handle: GatewayHandle


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("reload")
    port = free_port()
    pki = make_pki(root / "pki", address=f"127.0.0.1:{port}")
    kit = enroll_silo(pki, "hospital-a", root / "hospital-a", local_port=free_port())
    handle = CoordinatorGateway.start(pki_dir=pki.root, port=port, prefix=root / "cgw",
                                      superlink=f"127.0.0.1:{free_port()}")
    try:
        yield Gateway(pki, kit, handle)
    finally:
        handle.stop()


def _tls(gw: Gateway, *, client: bool = False) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert_path))
    if client:
        ctx.load_cert_chain(str(gw.kit.client_cert), str(gw.kit.client_key))
    raw = socket.create_connection(("127.0.0.1", gw.handle.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _served_serial(gw: Gateway) -> int:
    with _tls(gw) as sock:
        return x509.load_der_x509_certificate(sock.getpeercert(True)).serial_number


def _issued_serial(gw: Gateway) -> int:
    files = gw.pki.coordinator_files()
    return x509.load_pem_x509_certificate(files.server_cert.read_bytes()).serial_number


@pytest.mark.e2e
def test_every_connection_after_a_reload_gets_the_new_configuration(gw: Gateway) -> None:
    """Before the wait looked at the workers, about 1 reload in 20 returned while an old
    worker still accepted (2 workers, this 2-core host): 25 reloads, 3 connections each."""
    assert gw.handle.proc is not None
    master = gw.handle.proc.pid
    for _ in range(25):
        gw.pki.issue_coordinator(hosts=["localhost", "127.0.0.1"])
        want = _issued_serial(gw)
        before = workers(master)
        gw.handle.reload()
        assert [_served_serial(gw) for _ in range(3)] == [want] * 3  # at once: no delay
        now = workers(master)
        assert not any(w.accepting for w in before & now), (before, now)
        assert any(w.accepting for w in now - before), (before, now)


@pytest.mark.e2e
def test_a_configuration_the_master_refuses_is_reported_at_once(gw: Gateway) -> None:
    """``nginx -t`` runs first, so this takes a config that changed between the check and
    the SIGHUP: the master keeps the old one, and the error says why, without the timeout."""
    assert gw.handle.proc is not None
    conf = gw.handle.prefix / "conf" / "nginx.conf"
    good = conf.read_text()
    serial = _served_serial(gw)
    conf.write_text(good.replace("server_tokens off;", "server_tokens off; xsilo_bogus on;"))
    started = time.monotonic()
    try:
        with pytest.raises(DeploymentError, match=r'refused the new configuration and keeps '
                           r'the previous one in force: .*unknown directive "xsilo_bogus"'):
            hup_and_wait(gw.handle.prefix, gw.handle.proc.pid, timeout=20)
    finally:
        conf.write_text(good)
    assert time.monotonic() - started < 10
    assert _served_serial(gw) == serial  # the old configuration still serves


@pytest.mark.e2e
def test_an_old_worker_finishing_a_request_does_not_hold_the_reload_up(gw: Gateway) -> None:
    """A request begun before the reload stays on its old worker (nginx ends it after
    worker_shutdown_timeout); the reload is in force without waiting for it."""
    assert gw.handle.proc is not None
    master = gw.handle.proc.pid
    with _tls(gw, client=True) as slow:
        slow.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: localhost\r\n")
        time.sleep(0.3)  # its worker has read the start of the request
        busy = {w for w in workers(master) if w.accepting}
        gw.pki.issue_coordinator(hosts=["localhost", "127.0.0.1"])
        started = time.monotonic()
        gw.handle.reload()
        took = time.monotonic() - started
        lingering = {w.pid for w in workers(master)} & {w.pid for w in busy}
        assert lingering, "the old worker holding the request ended before it was answered"
        assert took < 5, took  # worker_shutdown_timeout is 10 s
        assert _served_serial(gw) == _issued_serial(gw)
        slow.sendall(b"Content-Length: 0\r\n\r\n")  # finished on the old worker
        assert slow.recv(100).startswith(b"HTTP/1.1 ")


@pytest.mark.e2e
def test_a_gateway_on_a_unix_socket_reloads_too(gw: Gateway, tmp_path: Path) -> None:
    """A silo gateway listening on a unix socket (its SuperNode in a private namespace):
    its listening socket is found too, so its reload is seen to take."""
    sock = tmp_path / "gateway.sock"
    silo = SiloGateway.start(gw.kit, listen_socket=sock, prefix=tmp_path / "sgw")
    try:
        assert silo.proc is not None
        master = silo.proc.pid
        before = workers(master)
        assert any(w.accepting for w in before), before
        silo.reload()
        now = workers(master)
        assert not any(w.accepting for w in before & now), (before, now)
        assert any(w.accepting for w in now - before), (before, now)
    finally:
        silo.stop()

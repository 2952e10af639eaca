"""deploy.gateway.netns and deploy.gateway.bridge: the SuperLink's private network namespace
and the unix-socket bridge the coordinator gateway reaches it through.

The bridge runs for real here, inside ``unshare``, in front of a stand-in HTTPS server (no
Flower): it must bring loopback up, wait for ``/health``, serve its socket with the right
mode, forward for a child of the "gateway master" named in the pid file, and close on
everyone else.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import coordinator.home as home_mod
from coordinator.home import CoordinatorHome, write_gateway_home
from deploy.gateway import netns
from deploy.gateway.bridge import peer_allowed
from deploy.launch.processes import free_port
from tests.deploy.conftest import make_pki
from xsilo.errors import DeploymentError

# A stand-in for the SuperLink: HTTPS on 127.0.0.1:PORT, /health → 200, anything else echoed.
SERVER = textwrap.dedent("""
    import http.server, ssl, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"ok")
        def do_POST(self):
            body = f"inside {self.path}".encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
    srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()
""")

CLIENT = textwrap.dedent("""
    import socket, ssl, sys
    ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5); raw.connect(sys.argv[1])
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"POST /v1/fleet/x HTTP/1.1\\r\\nHost: x\\r\\n"
                        b"Content-Length: 0\\r\\n\\r\\n")
            data = b""
            while chunk := tls.recv(1000):
                data += chunk
            print(data.decode())
""")


def test_peer_allowed_only_for_children_of_the_named_master(tmp_path: Path) -> None:
    pid_file = tmp_path / "nginx.pid"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not peer_allowed(child.pid, pid_file)  # no pid file: nobody
        pid_file.write_text(f"{os.getpid()}\n")  # this process plays the nginx master
        assert peer_allowed(child.pid, pid_file)
        assert not peer_allowed(os.getpid(), pid_file)  # the master itself is no worker
        pid_file.write_text(f"{child.pid}\n")
        assert not peer_allowed(child.pid, pid_file)
        pid_file.write_text("garbage")
        assert not peer_allowed(child.pid, pid_file)
    finally:
        child.kill()
        child.wait()


def test_bridge_directory_modes(tmp_path: Path) -> None:
    bridge = netns.Bridge.create(tmp_path / "nginx.pid", None)
    try:
        assert stat.S_IMODE(bridge.socket.parent.stat().st_mode) == 0o700
        assert bridge.upstream == f"unix:{bridge.socket}"
    finally:
        bridge.remove()
    assert not bridge.socket.parent.exists()
    if os.geteuid() == 0:
        grouped = netns.Bridge.create(tmp_path / "nginx.pid", 65534)
        try:
            info = grouped.socket.parent.stat()
            assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_gid == 65534
        finally:
            grouped.remove()


def test_a_socket_path_too_long_is_a_clear_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(DeploymentError, match="too long for a unix socket; set TMPDIR"):
        netns.Bridge.create(tmp_path / "nginx.pid", None)
    assert list(deep.iterdir()) == []


def test_a_stale_record_says_the_coordinator_is_not_running(tmp_path: Path) -> None:
    assert netns.read_record(tmp_path) is None
    (tmp_path / netns.RECORD).write_text("{not json")
    assert netns.read_record(tmp_path) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = netns.PrivateNet(dead.pid, 1, False)
    record.write(tmp_path)
    assert netns.read_record(tmp_path) == record
    with pytest.raises(DeploymentError, match="is not running: start it with"):
        record.enter_argv()


def test_a_superlink_that_ends_while_it_is_looked_at_is_not_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # alive at the first look (its start time matched), gone at the second
    monkeypatch.setattr(netns, "start_time", lambda pid: 7)
    with pytest.raises(DeploymentError, match="is not running: start it with"):
        netns.PrivateNet(dead.pid, 7, False).enter_argv()


def test_without_namespaces_the_coordinator_falls_back_loudly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki")
    write_gateway_home(tmp_path / "home", pki_dir=pki.root, public_host="127.0.0.1",
                       gateway_port=free_port(), superlink_port=free_port())
    home = CoordinatorHome.load(tmp_path / "home")
    monkeypatch.setattr(home_mod, "unavailable", lambda: "no user namespaces (test)")
    bridge, warning = home_mod._bridge(home)
    assert bridge is None
    assert "no user namespaces (test)" in warning
    assert "every local account on this host can use its Control API" in warning
    assert f"SuperLink on 127.0.0.1:{home.port}" in warning


def test_the_bridge_serves_the_gateway_workers_only(tmp_path: Path) -> None:
    if (reason := netns.unavailable()) is not None:
        pytest.skip(f"no private network namespace here: {reason}")
    pki = make_pki(tmp_path / "pki")
    files = pki.coordinator_files()
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test process plays the nginx master
    bridge = netns.Bridge.create(pid_file, None)
    port = free_port()  # inside the namespace: free there whatever happens here
    argv = [*netns.create_argv(), *bridge.argv(port=port, ca_cert=pki.ca_cert_path),
            sys.executable, "-c", SERVER, str(port), str(files.superlink_cert),
            str(files.superlink_key)]
    log = tmp_path / "bridge.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not bridge.socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert stat.S_IMODE(bridge.socket.stat().st_mode) == 0o600
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        with pytest.raises(OSError):  # its port is not on this side
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # a child of the "master": forwarded to the server inside
        child = subprocess.run([sys.executable, "-c", CLIENT, str(bridge.socket),
                                str(pki.ca_cert_path)], capture_output=True, text=True,
                               timeout=20)
        assert "inside /v1/fleet/x" in child.stdout, child.stdout + child.stderr
        # this process is no child of itself: closed before a byte of TLS
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
        ctx.check_hostname = False
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(5)
            raw.connect(str(bridge.socket))
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                ctx.wrap_socket(raw)
        assert f"refused a connection from pid {os.getpid()}" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        bridge.remove()
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):  # the stand-in SuperLink went with it
        os.killpg(proc.pid, 0)

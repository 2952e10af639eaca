"""deploy.gateway.netns.Uplink and deploy.gateway.uplink: a silo's SuperNode in a private
network namespace, reaching its silo gateway through a unix socket.

The uplink runs for real here, inside ``unshare``, with a stand-in for the SuperNode (a
child that dials 127.0.0.1:PORT inside the namespace) and for the silo gateway (a unix
socket server in this process). It must bring loopback up, write its ready file, forward
bytes both ways, keep its port off this side, exit with its child's exit code, and keep
forwarding while its child signs off after a stop. The fallback when namespaces are
unavailable must be loud.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import silo_client.member as member_mod
from deploy.gateway import netns
from deploy.launch.processes import free_port
from tests.deploy.conftest import enroll_silo, make_pki
from xsilo.errors import DeploymentError

# The stand-in SuperNode: dials its "silo gateway" inside the namespace, prints the answer.
CHILD = textwrap.dedent("""
    import socket, sys
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as sock:
        sock.sendall(b"ping")
        print(sock.recv(100).decode(), flush=True)
    sys.exit(3)
""")


# The stand-in SuperNode stopped with its silo: on SIGTERM it signs off through the uplink
# (Flower's DeactivateNode), a moment after the signal, as Flower's exit handlers do.
SIGNING_OFF = textwrap.dedent("""
    import signal, socket, sys, time
    def sign_off(*_):
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as sock:
            sock.sendall(b"bye")
            print(sock.recv(100).decode(), flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, sign_off)
    print("supernode ready", flush=True)
    while True:
        time.sleep(0.05)
""")


def _echo_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"gateway saw " + conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_uplink_directory_and_paths() -> None:
    uplink = netns.Uplink.create()
    try:
        assert stat.S_IMODE(uplink.socket.parent.stat().st_mode) == 0o700
        assert uplink.listen == f"unix:{uplink.socket}"
        assert uplink.ready_file.parent == uplink.socket.parent
        argv = uplink.argv(port=9443)
        assert argv[-1] == "--" and "deploy.gateway.uplink" in argv
    finally:
        uplink.remove()
    assert not uplink.socket.parent.exists()


def test_a_socket_path_too_long_is_a_clear_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(DeploymentError, match="too long for a unix socket; set TMPDIR"):
        netns.Uplink.create()
    assert list(deep.iterdir()) == []


@contextlib.contextmanager
def _uplink_running(tmp_path: Path, child: str, until: Callable[[netns.Uplink, Path], bool]
                    ) -> Iterator[tuple[subprocess.Popen, Path, int]]:
    """The uplink in its own namespace and process group with ``child`` as its SuperNode,
    a stand-in gateway on its socket; yields once ``until(uplink, log)``; ends all of it."""
    if (reason := netns.unavailable()) is not None:
        pytest.skip(f"no private network namespace here: {reason}")
    uplink = netns.Uplink.create()
    server = _echo_server(uplink.socket)
    port = free_port()  # inside the namespace: free there whatever happens here
    log = tmp_path / "uplink.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen([*netns.create_argv(), *uplink.argv(port=port),
                                     sys.executable, "-c", child, str(port)],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not until(uplink, log):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield proc, log, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        server.close()
        uplink.remove()


def test_the_uplink_forwards_from_inside_its_namespace(tmp_path: Path) -> None:
    with _uplink_running(tmp_path, CHILD, lambda up, _: up.ready_file.exists()) as (
            proc, log, port):
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert proc.wait(timeout=20) == 3  # the child's exit code, passed on
        assert "gateway saw ping" in log.read_text(), log.read_text()
        with pytest.raises(OSError):  # its port is not on this side
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_stopped_silo_s_supernode_still_signs_off_through_the_uplink(tmp_path: Path) -> None:
    """``ManagedProcess.stop`` signals the uplink's whole process group: the SuperNode's
    sign-off after SIGTERM must still reach the gateway (else the coordinator counts the
    node as connected for a minute and refuses the restarted SuperNode)."""
    with _uplink_running(tmp_path, SIGNING_OFF,
                         lambda _, log: "supernode ready" in log.read_text()) as (proc, log, _):
        os.killpg(proc.pid, signal.SIGTERM)  # as a silo's stop does
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert "gateway saw bye" in log.read_text(), log.read_text()


def test_without_namespaces_a_silo_falls_back_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SimpleNamespace(name="hospital-a")
    monkeypatch.setattr(member_mod, "unavailable", lambda: "no user namespaces (test)")
    uplink, warning = member_mod._uplink(config, True)  # type: ignore[arg-type]
    assert uplink is None
    assert "no user namespaces (test)" in warning and "Falling back" in warning
    assert "every local account on this host can reach them" in warning
    uplink, warning = member_mod._uplink(config, False)  # type: ignore[arg-type]
    assert uplink is None and "on request" in warning


def test_a_kit_silo_starts_in_its_namespace_or_says_why(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """What ``xsilo silo start`` logs when it must fall back, with the real start path up to
    the SuperNode (which is not started: the gateway start is where it stops here)."""
    pki = make_pki(tmp_path / "pki", address=f"127.0.0.1:{free_port()}")  # nothing there
    kit = enroll_silo(pki, "hospital-a", tmp_path / "kit", local_port=free_port())
    config = SimpleNamespace(path=kit.root / "silo.toml", name="hospital-a",
                             workspace=tmp_path / "workspace")
    monkeypatch.setattr(member_mod, "unavailable", lambda: "no user namespaces (test)")
    started: dict[str, object] = {}

    def fake_gateway(kit, *, listen_socket=None):  # type: ignore[no-untyped-def]
        started["listen_socket"] = listen_socket
        raise DeploymentError("stop here")

    import deploy.gateway.nginx as nginx_mod
    monkeypatch.setattr(nginx_mod.SiloGateway, "start", staticmethod(fake_gateway))
    with caplog.at_level(logging.WARNING), pytest.raises(DeploymentError, match="stop here"):
        member_mod.start_member(config)  # type: ignore[arg-type]
    assert started == {"listen_socket": None}  # 127.0.0.1:PORT, as before
    assert "cannot get a private network namespace: no user namespaces (test)" in caplog.text
    # and the first word on the coordinator, before anything else starts
    assert "could not fetch the coordinator's CRL: cannot reach the coordinator" in caplog.text

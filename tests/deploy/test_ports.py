"""Free ports are picked below the ephemeral range and reserved against other processes."""

from __future__ import annotations

import socket
import subprocess
import sys

from deploy.launch import ports
from deploy.launch.ports import free_port


def test_a_free_port_is_below_the_kernels_ephemeral_range_and_bindable():
    low = ports.ephemeral_low()
    assert low - ports.LOW >= 1024, "this host leaves no room below its ephemeral range"
    picks = [free_port() for _ in range(50)]
    assert all(ports.LOW <= p < low for p in picks), picks
    assert len(set(picks)) == len(picks), "one process picked a port twice"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", picks[-1]))


def test_a_port_reserved_by_one_process_is_not_picked_by_another():
    mine = {free_port() for _ in range(ports.HELD)}
    code = ("from deploy.launch.ports import free_port\n"
            "print(' '.join(str(free_port()) for _ in range(400)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout.split()
    assert len(out) == 400
    assert not mine & {int(p) for p in out}


def test_a_port_something_listens_on_is_never_picked(monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        monkeypatch.setattr(ports, "ephemeral_low", lambda: ports.LOW + 1024)
        monkeypatch.setattr(ports, "LOW", taken)
        monkeypatch.setattr(ports._pick, "randrange", lambda lo, hi: taken)
        # every candidate is the taken port: it is refused, and the kernel picks instead
        assert free_port() != taken


def test_a_host_with_no_room_below_its_ephemeral_range_gets_a_kernel_port(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_low", lambda: ports.LOW + 10)
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))

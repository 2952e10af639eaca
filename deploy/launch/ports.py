"""Free loopback ports that stay free until their listener binds them.

A port taken with ``bind(('127.0.0.1', 0))`` comes from the kernel's ephemeral range, the
same range every outgoing connection is given a local port from. Between the moment it
is picked and the moment nginx or a SuperNode binds it (seconds later, after certificates
are issued and configs are written), any client connection on the host may be handed
that very port, and the listener then fails with "already in use" (CI saw it once in
~1,800 tests). So :func:`free_port` picks *below* the ephemeral range, where the kernel
never hands out ports by itself, and reserves its pick against other xsilo processes
(parallel test workers, two silos started at once) with an abstract Unix socket named
after the port: no file to clean up, released when the process ends, and scoped, like the
port itself, to the network namespace.
"""

from __future__ import annotations

import collections
import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_RANGE_PROC = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Lowest port picked: above Ray's worker ports (10002–19999) and the usual services.
LOW = 20000
#: Reservations kept per process. A listener binds its port within seconds of the pick;
#: after this many later picks a reservation is surely stale, and its socket is closed.
HELD = 128

_held: collections.deque[socket.socket] = collections.deque()
_pick = random.Random()  # not a secret: only spreads picks over the range


def ephemeral_low() -> int:
    """Lowest port the kernel hands to outgoing connections (32768 when unreadable)."""
    try:
        return int(_RANGE_PROC.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now that no outgoing connection or xsilo process takes.

    Falls back to a kernel-assigned port when the host's ephemeral range leaves no room
    below it, or when every candidate tried is taken.
    """
    high = ephemeral_low()
    if high - LOW >= 1024:
        for _ in range(256):
            port = _pick.randrange(LOW, high)
            if _reserve(port) and _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _reserve(port: int) -> bool:
    """Hold the abstract socket ``xsilo-port-<port>``; False when another process holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0xsilo-port-{port}")
    except OSError:
        sock.close()
        return False
    _held.append(sock)
    while len(_held) > HELD:
        _held.popleft().close()
    return True


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True

"""When an nginx reload is in force, read from ``/proc`` (Linux).

On SIGHUP the nginx master reads the new configuration, forks new workers and then tells the
old ones to quit. Each old worker, when it gets to it, closes its copies of the listening
sockets and finishes the requests it holds (for at most ``worker_shutdown_timeout``). Until
then it may still accept a new connection and serve it with the *old* configuration (an old
CRL, an old certificate). So a reload is **in force** once

* no worker that accepted before the reload still holds a listening socket, and
* at least one new worker holds them (it accepts what arrives from now on; a connection
  queued before it calls ``accept`` waits in the kernel and is served by it).

Old workers that linger to finish requests begun before the reload ("worker process is
shutting down") do not count: they accept nothing new, and nginx ends them after
``worker_shutdown_timeout``. A worker is known by its pid *and* start time, so a pid the
kernel reuses is never taken for an old one.

:func:`pending` is the rule, a pure function of two :func:`workers` snapshots;
:func:`hup_and_wait` applies it (and reads nginx's error log when the master refused the new
configuration, which nginx then keeps running on the old one).
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from xsilo.errors import DeploymentError
from xsilo.procfs import PROC, is_finished, stat_fields

__all__ = ["Worker", "alive", "hup_and_wait", "listening_inodes", "pending", "workers"]

_SOCKET = re.compile(r"socket:\[(\d+)\]")
_TCP_LISTEN = "0A"
_UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON: a listening unix socket


@dataclass(frozen=True)
class Worker:
    """A child of the nginx master; ``accepting`` when it holds a listening socket."""

    pid: int
    started: int  # clock ticks after boot (/proc/PID/stat field 22)
    accepting: bool


def pending(before: frozenset[Worker], now: frozenset[Worker]) -> str | None:
    """What the reload still waits for (``None``: in force), from the master's children
    just before the SIGHUP (``before``) and now."""
    old = {(w.pid, w.started) for w in before}
    was_accepting = {(w.pid, w.started) for w in before if w.accepting}
    still = sorted(w.pid for w in now if w.accepting and (w.pid, w.started) in was_accepting)
    if still:
        return f"old worker(s) {', '.join(map(str, still))} still accept new connections"
    if not any(w.accepting and (w.pid, w.started) not in old for w in now):
        return "no new worker has started"
    return None


def _socket_inodes(pid: int, proc: Path) -> set[int]:
    found = set()
    try:
        entries = list((proc / str(pid) / "fd").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return found  # exited
    for entry in entries:
        try:
            match = _SOCKET.fullmatch(str(entry.readlink()))
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed meanwhile
        if match:
            found.add(int(match.group(1)))
    return found


def listening_inodes(master: int, proc: Path = PROC) -> frozenset[int]:
    """The listening sockets (inodes) the master holds: TCP in LISTEN state and unix
    sockets that accept, from its network namespace's tables."""
    listening: set[int] = set()
    net = proc / str(master) / "net"
    for table in ("tcp", "tcp6"):
        try:
            rows = (net / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6
        listening |= {int(f[9]) for f in map(str.split, rows) if len(f) > 9 and f[3] == _TCP_LISTEN}
    try:
        rows = (net / "unix").read_text().splitlines()[1:]
    except FileNotFoundError:
        rows = []
    listening |= {int(f[6]) for f in map(str.split, rows)
                  if len(f) > 6 and int(f[3], 16) & _UNIX_ACCEPTCON}
    return frozenset(listening & _socket_inodes(master, proc))


def workers(master: int, proc: Path = PROC) -> frozenset[Worker]:
    """The master's children now, each with whether it holds one of its listening sockets.
    Reading another account's fds needs root or the same account (as signalling it does)."""
    sockets = listening_inodes(master, proc)
    found = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = stat_fields(entry.name, proc)
        if stat is None or int(stat[1]) != master:
            continue
        holds = bool(sockets & _socket_inodes(int(entry.name), proc))
        found.add(Worker(int(entry.name), int(stat[19]), holds))
    return frozenset(found)


def alive(master: int, proc: Path = PROC) -> bool:
    """Whether the master still runs (a zombie, not yet reaped by its parent, does not)."""
    return not is_finished(master, proc)


def _refusals(error_log: Path, offset: int) -> list[str]:
    """The ``[emerg]`` lines logged since ``offset``: why the master kept its old config."""
    try:
        with open(error_log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if " [emerg] " in line]


def hup_and_wait(prefix: Path, pid: int, timeout: float) -> None:
    """SIGHUP the nginx master ``pid`` (its prefix ``prefix``), then return once the new
    configuration is in force (:func:`pending`): before that, an old worker may still take
    a new connection with the old CRL and certificates. Requests begun before the reload
    may finish on old workers (within ``worker_shutdown_timeout``).

    Raises :class:`DeploymentError` at once when the master refused the configuration
    (nginx's ``[emerg]`` line: it keeps the old one in force) or stopped, and when the
    reload is not in force within ``timeout`` s (saying what it still waits for)."""
    error_log = Path(prefix) / "logs" / "error.log"
    offset = error_log.stat().st_size if error_log.exists() else 0
    try:
        before = workers(pid)
    except PermissionError:
        raise DeploymentError(f"cannot see the workers of nginx {pid} ({prefix}) in /proc to "
                              "tell when a reload is in force; reload it as the account that "
                              "started it, or as root") from None
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while (waiting := pending(before, workers(pid))) is not None:
        refused = _refusals(error_log, offset)
        if refused:
            raise DeploymentError(f"nginx in {prefix} refused the new configuration and keeps "
                                  f"the previous one in force: {' | '.join(refused)}; fix "
                                  "that and reload again")
        if not alive(pid):
            raise DeploymentError(f"nginx in {prefix} stopped during the reload; see "
                                  f"{error_log}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"nginx in {prefix} did not put the new configuration in "
                                  f"force within {timeout:.0f} s: {waiting}; see {error_log}")
        time.sleep(0.05)

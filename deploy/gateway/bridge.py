"""Inside the SuperLink's private network namespace: bring loopback up, run the SuperLink,
and let the coordinator gateway's nginx workers — and no one else — reach it.

``python -m deploy.gateway.bridge --socket PATH --port PORT --ca-cert CA
--gateway-pid-file PIDFILE [--group GID] -- flower-superlink …`` (started by
:func:`deploy.launch.processes.start_superlink` under ``unshare``, see
:mod:`deploy.gateway.netns`):

1. sets the namespace's ``lo`` up (a new network namespace starts with it down);
2. starts the SuperLink command, which listens on ``127.0.0.1:PORT`` inside;
3. once ``/health`` answers 200 there, binds ``PATH`` (mode 0600, or 0660 for ``GID``,
   the nginx workers' group when nginx was started by root) and forwards each accepted
   connection, bytes only (TLS stays end to end between nginx and the SuperLink), to
   ``127.0.0.1:PORT``;
4. accepts a connection only from a child of the nginx master whose pid is in
   ``PIDFILE`` and that runs as this account: file modes keep other accounts out, and
   this check keeps out other processes of the workers' account (``nobody`` shares it
   with other daemons);
5. exits with the SuperLink's exit code when it ends, and stops it on SIGTERM/SIGINT.

No private key passes through here; it logs each refused peer.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from xsilo.procfs import parent_pid

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_CHUNK = 1 << 16


def say(message: str) -> None:
    print(f"xsilo bridge: {message}", flush=True)


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCSIFFLAGS on a throw-away socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def peer_allowed(peer_pid: int, gateway_pid_file: Path) -> bool:
    """Whether ``peer_pid`` is a worker of our gateway: its parent is the nginx master
    named in the pid file, and that master runs as this account."""
    try:
        master = int(gateway_pid_file.read_text().strip())
        return parent_pid(peer_pid) == master and os.stat(f"/proc/{master}").st_uid == os.getuid()
    except (OSError, ValueError, IndexError):
        return False


def _peer_pid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return int(pid)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class Forwarder:
    """Unix socket in, ``127.0.0.1:port`` out, for the gateway's workers only."""

    def __init__(self, port: int, gateway_pid_file: Path) -> None:
        self.port = port
        self.gateway_pid_file = gateway_pid_file
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid = _peer_pid(writer)
        if not peer_allowed(pid, self.gateway_pid_file):
            self.refused += 1
            say(f"refused a connection from pid {pid}: not a worker of the coordinator gateway")
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            say(f"the SuperLink on 127.0.0.1:{self.port} refused a connection: {exc}")
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))


def wait_healthy(port: int, ca_cert: Path, child: subprocess.Popen, timeout: float) -> None:
    """Until ``https://127.0.0.1:port/health`` answers 200 (SystemExit if it never does)."""
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    ctx.check_hostname = False  # the certificate names the public host, not 127.0.0.1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(child.returncode or 1)
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx,
                                        timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    say(f"the SuperLink did not answer on 127.0.0.1:{port} within {timeout:.0f} s")
    raise SystemExit(1)


def bind(path: Path, group: int | None) -> socket.socket:
    """The listening unix socket: 0600, or 0660 with ``group`` (mode set before listen)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177 if group is None else 0o117)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, group)
    sock.listen(128)
    return sock


async def serve(args: argparse.Namespace, child: subprocess.Popen) -> int:
    forwarder = Forwarder(args.port, Path(args.gateway_pid_file))
    server = await asyncio.start_unix_server(forwarder.handle,
                                             sock=bind(Path(args.socket), args.group))
    say(f"serving {args.socket} → 127.0.0.1:{args.port}")
    async with server:
        await child_or_signal(child)
    Path(args.socket).unlink(missing_ok=True)
    return end_child(child)


async def child_or_signal(child: subprocess.Popen) -> None:
    """Return when ``child`` exits or this process gets SIGTERM or SIGINT (the wrapper's
    forwarding runs meanwhile in the event loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while child.poll() is None and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            pass


def end_child(child: subprocess.Popen, grace: float = 5.0) -> int:
    """Stop ``child`` (SIGTERM, SIGKILL after ``grace`` s) and return its exit code."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def interrupt(_signum: int, _frame: object) -> None:
    """A SIGTERM handler for before the event loop runs: unwind (``finally`` stops the
    child), as Ctrl-C would."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if "--" not in raw:
        raise SystemExit("usage: … -- SUPERLINK COMMAND")
    cut = raw.index("--")
    parser = argparse.ArgumentParser(prog="python -m deploy.gateway.bridge")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--gateway-pid-file", required=True)
    parser.add_argument("--group", type=int)
    args = parser.parse_args(raw[:cut])
    loopback_up()
    # SIGTERM before the event loop runs: stop the SuperLink too, never leave it behind
    signal.signal(signal.SIGTERM, interrupt)
    child = subprocess.Popen(raw[cut + 1:], stdin=subprocess.DEVNULL)
    try:
        wait_healthy(args.port, Path(args.ca_cert), child, timeout=60)
        return asyncio.run(serve(args, child))
    finally:
        end_child(child)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

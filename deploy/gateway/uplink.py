"""Inside a silo's private network namespace: bring loopback up, give the SuperNode its
silo gateway on ``127.0.0.1:PORT``, run the SuperNode.

``python -m deploy.gateway.uplink --socket PATH --port PORT --ready-file FILE --
flower-supernode …`` (started by :func:`deploy.launch.processes.start_supernode` under
``unshare``, see :mod:`deploy.gateway.netns`):

1. sets the namespace's ``lo`` up (a new network namespace starts with it down);
2. listens on ``127.0.0.1:PORT`` there — the address in the silo's ``silo.toml`` — and
   forwards each connection, bytes only (TLS stays end to end between the SuperNode and
   nginx), to the silo gateway's unix socket ``PATH``: nginx on the host listens there, in
   a directory only the silo's account may enter, and a path-named unix socket is reached
   through the file system whatever the network namespace;
3. writes ``FILE`` (the caller then starts the silo's SuperExec in the same namespace with
   ``nsenter``) and starts the SuperNode command, whose Runtime API port is then on this
   namespace's loopback only;
4. exits with the SuperNode's exit code when it ends, and stops it on SIGTERM/SIGINT,
   forwarding until it has exited: on its way out the SuperNode signs off at the
   coordinator through this uplink, so that a restarted one is let in at once.

Nothing else runs in the namespace, so nothing checks who connects: only the silo's own
processes (and root) are inside.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

from deploy.gateway.bridge import _pump, child_or_signal, end_child, interrupt, loopback_up

_BACKLOG = 128


def say(message: str) -> None:
    print(f"xsilo uplink: {message}", flush=True)


class Forwarder:
    """``127.0.0.1:port`` in, the silo gateway's unix socket out."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.failed = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            self.failed += 1
            if self.failed in (1, 10, 100) or self.failed % 1000 == 0:  # not once per retry
                say(f"the silo gateway at {self.socket_path} refused a connection ({exc}); "
                    f"{self.failed} so far: is its nginx running?")
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        except asyncio.CancelledError:  # the uplink is stopping: close quietly
            writer.close()
            up_writer.close()


def listen(port: int) -> socket.socket:
    """The SuperNode's side: ``127.0.0.1:port`` inside the namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(_BACKLOG)
    return sock


async def serve(sock: socket.socket, socket_path: Path, child: subprocess.Popen, *,
                grace: float = 5.0) -> int:
    server = await asyncio.start_server(Forwarder(socket_path).handle, sock=sock)
    async with server:
        await child_or_signal(child)
        # Stopped: the SuperNode signs off at the coordinator on its way out (Flower's
        # DeactivateNode), through this forwarder, so keep forwarding until it has exited.
        # Without the sign-off the SuperLink counts it as connected for up to a minute and
        # refuses a restarted SuperNode of this silo ("Failed to activate SuperNode"). A
        # silo's stop signals the whole process group, so the SuperNode has its SIGTERM
        # already; a second one would end it mid-sign-off (Flower restores the default
        # handler after the first), so it is told here only if still running after `grace`.
        if not await _exits_within(child, grace):
            child.terminate()
            await _exits_within(child, grace)
    return end_child(child)


async def _exits_within(child: subprocess.Popen, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while child.poll() is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return child.poll() is not None


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if "--" not in raw:
        raise SystemExit("usage: … -- SUPERNODE COMMAND")
    cut = raw.index("--")
    parser = argparse.ArgumentParser(prog="python -m deploy.gateway.uplink")
    parser.add_argument("--socket", required=True, help="the silo gateway's unix socket")
    parser.add_argument("--port", type=int, required=True, help="where the SuperNode dials")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(raw[:cut])
    loopback_up()
    sock = listen(args.port)
    # SIGTERM before the event loop runs: stop the SuperNode too, never leave it behind
    signal.signal(signal.SIGTERM, interrupt)
    child = subprocess.Popen(raw[cut + 1:], stdin=subprocess.DEVNULL)
    try:
        Path(args.ready_file).write_text(f"{child.pid}\n")
        say(f"127.0.0.1:{args.port} → {args.socket}")
        return asyncio.run(serve(sock, Path(args.socket), child))
    finally:
        end_child(child)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

"""The SuperLink's private network namespace, seen from the coordinator's side.

Flower 1.42's SuperLink serves its Fleet, Control and ServerAppIo APIs on one TCP port and
asks the Control API for no credential (OSS build); on ``127.0.0.1`` every local account
could list, register and remove node keys and start runs. Behind a gateway it therefore
runs in a network namespace of its own, where nothing else listens and whose loopback no
other account can reach:

* as root: ``unshare --net`` — entering it takes CAP_SYS_ADMIN in the initial user
  namespace, i.e. root;
* as any other account: ``unshare --user --map-root-user --net`` — the network namespace
  belongs to a user namespace owned by the coordinator's account, so only that account (and
  root) can enter it.

Its processes (the SuperLink, its SuperExec and ServerApps, and :mod:`deploy.gateway.bridge`
which brings the namespace's loopback up) are the only ones inside; ``flwr`` CLI calls join
it with ``nsenter``; the gateway reaches the SuperLink through the bridge's unix socket
(:class:`Bridge`). Where namespaces are unavailable, :func:`unavailable` says why and the
caller falls back to loopback, loudly.

A silo's SuperNode gets the mirror image (:class:`Uplink`): it runs, with the silo's
SuperExec, in a namespace of its own, so its unauthenticated Runtime API port is on that
namespace's loopback only; it reaches the silo gateway, which listens on a unix socket in a
directory only the silo's account may enter, through :mod:`deploy.gateway.uplink`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from xsilo.errors import DeploymentError
from xsilo.files import atomic_write
from xsilo.procfs import is_finished, start_time

__all__ = ["RECORD", "Bridge", "Pinned", "PrivateNet", "Uplink", "create_argv", "end_namespace",
           "read_record", "unavailable"]

RECORD = "superlink.netns"  # in the SuperLink's FLWR_HOME: which process holds the namespace
_SUN_PATH_MAX = 107


def _user_ns() -> bool:
    return os.geteuid() != 0


def create_argv() -> list[str]:
    """The ``unshare`` prefix that starts a command in a new private network namespace."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [unshare, "--user", "--map-root-user", "--net", "--"] if _user_ns() else \
        [unshare, "--net", "--"]


@functools.lru_cache(maxsize=None)
def unavailable() -> str | None:
    """``None`` when this account can create and enter a private network namespace here;
    otherwise why not (the caller falls back to a loopback SuperLink and must say so)."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None and not Path(f"/usr/bin/{tool}").exists():
            return f"`{tool}` (util-linux) is not installed"
    probe = "from deploy.gateway.bridge import loopback_up; loopback_up()"  # as it will run
    try:
        res = subprocess.run([*create_argv(), sys.executable, "-c", probe],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare` failed: {exc}"
    if res.returncode == 0:
        return None
    why = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
    if _user_ns():
        return (f"this account cannot create an unprivileged user namespace ({why}); check "
                "`sysctl user.max_user_namespaces` (must be > 0), "
                "kernel.unprivileged_userns_clone (Debian/Ubuntu kernels, must be 1) and "
                "kernel.apparmor_restrict_unprivileged_userns (Ubuntu ≥ 23.10, must be 0)")
    return f"`unshare --net` failed ({why})"


@dataclass(frozen=True)
class PrivateNet:
    """A process holding the private namespace, identified by pid and start time."""

    pid: int
    start_time: int
    user_ns: bool

    @classmethod
    def of(cls, pid: int) -> PrivateNet:
        start = start_time(pid)
        if start is None:
            raise DeploymentError(f"process {pid} (the SuperLink's namespace) is gone")
        return cls(pid, start, _user_ns())

    def enter_argv(self) -> list[str]:
        """The ``nsenter`` prefix that runs a command inside (a DeploymentError if the
        namespace is gone: the coordinator is not running)."""
        gone = DeploymentError(
            f"the coordinator's SuperLink (pid {self.pid}) is not running: start it with "
            "`xsilo coordinator start --home HOME`")
        if start_time(self.pid) != self.start_time:
            raise gone
        try:
            os.close(os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY))
        except PermissionError:
            try:
                owner = Path(f"/proc/{self.pid}").stat().st_uid
            except OSError:
                raise gone from None
            raise DeploymentError(
                f"the coordinator's SuperLink runs in a network namespace that only its own "
                f"account (uid {owner}) and root may enter; run this as that account") from None
        except OSError:  # it ended between the two looks (the coordinator just stopped)
            raise gone from None
        nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
        argv = [nsenter, "--target", str(self.pid), "--net"]
        if self.user_ns and _user_ns():  # root may enter the network namespace directly
            argv += ["--user", "--preserve-credentials"]
        return [*argv, "--"]

    def ns_id(self) -> str | None:
        """The namespace's identity (``net:[inode]``) while its holder runs."""
        try:
            return os.readlink(f"/proc/{self.pid}/ns/net")
        except OSError:
            return None

    def pin(self) -> Pinned | None:
        """The namespace held open (None once its holder is gone): see :class:`Pinned`."""
        return Pinned.of(self.pid)

    def write(self, flwr_home: Path) -> None:
        atomic_write(Path(flwr_home) / RECORD, json.dumps(
            {"pid": self.pid, "start_time": self.start_time, "user_ns": self.user_ns}))


@dataclass
class Pinned:
    """A network namespace held open by a file descriptor. The kernel hands a freed
    namespace's identity (``net:[inode]``) to the next namespace made on the host; while the
    descriptor is open this one cannot be freed, so :func:`end_namespace` only ever reaches
    processes inside it, never those of a namespace created later by someone else."""

    ident: str
    fd: int

    @classmethod
    def of(cls, pid: int) -> Pinned | None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        return cls(os.readlink(f"/proc/self/fd/{fd}"), fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _members(ns: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and not is_finished(int(entry.name)):
            try:
                if os.readlink(entry / "ns" / "net") == ns:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def end_namespace(pinned: Pinned, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace``, whatever still runs in the ``pinned`` namespace
    once its holder has stopped (a ServerApp winding down would otherwise outlive the
    coordinator: its SuperExec started it in a session of its own); then let it go."""
    ns = pinned.ident
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _members(ns):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while _members(ns) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _members(ns):
                return
    finally:
        pinned.close()


def read_record(flwr_home: Path) -> PrivateNet | None:
    """The namespace a running coordinator recorded in its ``FLWR_HOME``, if any."""
    try:
        data = json.loads((Path(flwr_home) / RECORD).read_text())
        return PrivateNet(int(data["pid"]), int(data["start_time"]), bool(data["user_ns"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Bridge:
    """Where the gateway reaches the private SuperLink: a unix socket in a directory of its
    own, which only the coordinator's account and the gateway workers' group may enter;
    the bridge serves only the workers of the nginx whose pid file is ``gateway_pid_file``.
    """

    socket: Path
    gateway_pid_file: Path
    group: int | None  # the workers' group when they run as another account (root start)

    @classmethod
    def create(cls, gateway_pid_file: Path, group: int | None) -> Bridge:
        directory = Path(tempfile.mkdtemp(prefix="xsilo-link-"))  # 0700, ours
        if group is not None:
            os.chown(directory, -1, group)
            os.chmod(directory, 0o710)
        socket = directory / "superlink.sock"
        if len(str(socket)) > _SUN_PATH_MAX:
            shutil.rmtree(directory, ignore_errors=True)
            raise DeploymentError(f"socket path {socket} is too long for a unix socket; set "
                                  "TMPDIR to a shorter directory")
        return cls(socket, Path(gateway_pid_file).resolve(), group)

    @property
    def upstream(self) -> str:
        """The gateway's upstream address for this bridge."""
        return f"unix:{self.socket}"

    def argv(self, *, port: int, ca_cert: Path) -> list[str]:
        """``python -m deploy.gateway.bridge …`` to run inside the namespace, in front of
        the SuperLink command that follows it."""
        argv = [sys.executable, "-m", "deploy.gateway.bridge", "--socket", str(self.socket),
                "--port", str(port), "--ca-cert", str(Path(ca_cert).resolve()),
                "--gateway-pid-file", str(self.gateway_pid_file)]
        if self.group is not None:
            argv += ["--group", str(self.group)]
        return [*argv, "--"]

    def remove(self) -> None:
        shutil.rmtree(self.socket.parent, ignore_errors=True)


@dataclass(frozen=True)
class Uplink:
    """How a SuperNode in a private namespace reaches its silo gateway: nginx listens on
    ``socket``, in a directory of its own that only this account may enter (0700; nginx's
    master binds it, so workers dropped to another account need no access to the path);
    :mod:`deploy.gateway.uplink`, inside the namespace, forwards the SuperNode's
    ``127.0.0.1:PORT`` to it."""

    socket: Path

    @classmethod
    def create(cls) -> Uplink:
        directory = Path(tempfile.mkdtemp(prefix="xsilo-silo-"))  # 0700, ours
        socket = directory / "gateway.sock"
        if len(str(socket)) > _SUN_PATH_MAX:
            shutil.rmtree(directory, ignore_errors=True)
            raise DeploymentError(f"socket path {socket} is too long for a unix socket; set "
                                  "TMPDIR to a shorter directory")
        return cls(socket)

    @property
    def listen(self) -> str:
        """The silo gateway's ``listen`` address."""
        return f"unix:{self.socket}"

    @property
    def ready_file(self) -> Path:
        """Written by the uplink once its port listens and the SuperNode is started."""
        return self.socket.parent / "uplink.ready"

    def argv(self, *, port: int) -> list[str]:
        """``python -m deploy.gateway.uplink …`` to run inside the namespace, in front of
        the SuperNode command that follows it; ``port`` is where the SuperNode dials."""
        self.ready_file.unlink(missing_ok=True)
        return [sys.executable, "-m", "deploy.gateway.uplink", "--socket", str(self.socket),
                "--port", str(port), "--ready-file", str(self.ready_file), "--"]

    def remove(self) -> None:
        shutil.rmtree(self.socket.parent, ignore_errors=True)

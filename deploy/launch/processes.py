"""Start, watch and stop Flower's own processes: SuperLink, SuperNodes, ``flwr`` CLI calls.

Every process is started in its own session (process group) and stopped with SIGTERM to
the whole group, then SIGKILL after a grace period, so SuperExec and the per-message
``flwr-clientapp``/``flwr-serverapp`` children go with it. Flower never phones home from
here: telemetry, the update check and runtime dependency installation are always off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from deploy import EXECUTORS
from deploy.gateway.netns import (RECORD, Bridge, Pinned, PrivateNet, Uplink, create_argv,
                                  end_namespace)
from deploy.launch.poll import HINT_ENV
from deploy.launch.ports import free_port
from deploy.launch.supernode import budget_from_env
from deploy.pki.certs import write_private_bytes
from xsilo.errors import ConfigError, DeploymentError
from xsilo.files import atomic_write

__all__ = [
    "FlowerCLI",
    "EXECUTORS",
    "ManagedProcess",
    "check_port_free",
    "diagnose",
    "flower_env",
    "free_port",
    "interrupt_on_sigterm",
    "start_superlink",
    "start_supernode",
    "wait_https_ready",
]

log = logging.getLogger(__name__)

_QUIET_FLOWER = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: own ``FLWR_HOME``, no telemetry, venv on PATH."""
    env = dict(os.environ)
    env.update(_QUIET_FLOWER)
    env["FLWR_HOME"] = str(flwr_home)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # SuperExec polls for new ClientApp/ServerApp tasks every 1 s by default; every message
    # a silo receives waits on that poll before its ClientApp process starts. 0.3 s takes
    # ~0.35 s off every message on average; 0.1 s cost ~3 % of a core per SuperExec here.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.3")
    env.update(extra or {})
    return env


def find_binary(name: str) -> str:
    """Absolute path of a Flower executable, preferring this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise DeploymentError(
        f"`{name}` not found: Flower is not installed in this environment. Install xsilo "
        "with its dependencies (`pip install xsilo`, which pins flwr==1.42.*) or activate "
        "the virtual environment that has it (`make demo` creates .venv)")


def quoted(value: str | Path, what: str) -> str:
    """``value`` in double quotes for a Flower ``key="value"`` setting (``--node-config``,
    ``--run-config``, its ``config.toml``). Flower reads such a value up to the next double
    quote and then as TOML, so a quote, a backslash or a control character in it would end
    the value early or change it (and add settings of its own): a ConfigError naming it."""
    text = str(value)
    if any(c in '"\\' or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"{what} {text!r:.200} contains a double quote, a backslash or a "
                          "control character, which Flower's settings cannot carry: rename it")
    return f'"{text}"'


def check_port_free(host: str, port: int, *, what: str = "the SuperLink") -> None:
    """DeploymentError naming the port when something already listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DeploymentError(
                f"port {port} on {host} is already in use ({exc.strerror}); stop whatever "
                f"listens there (`ss -ltnp 'sport = :{port}'`) or choose another port for "
                f"{what}") from None


def interrupt_on_sigterm() -> None:
    """Turn the first SIGTERM into KeyboardInterrupt, so ``try/finally`` clean-up runs.

    Install it *before* starting children: Python's default SIGTERM action ends the
    interpreter without clean-up, and children in their own sessions would outlive it.
    Later SIGTERMs are ignored so that they cannot interrupt the clean-up itself (it is
    bounded: every stop SIGKILLs after a grace period).
    """

    def handler(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    # Processes that serve this one (a SuperNode's SuperExec), each in its own group: stopped
    # with it; one that exits on its own is reported by raise_if_exited.
    companions: list["ManagedProcess"] = field(default_factory=list)
    # Where this process's own output starts in log_path (the file is appended to across
    # restarts), and whether a fatal line in it means "ended" though the process still runs.
    log_offset: int = 0
    hangs_when_done: bool = False
    # The private network namespace (``net:[inode]``) this process holds: whatever still
    # runs in it once the process and its companions are stopped is ended with them.
    netns: Pinned | None = None  # its private network namespace, held open
    _closed: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20, *, max_bytes: int = 256 * 1024) -> str:
        """The last ``lines`` lines this process wrote to its log (not earlier runs')."""
        try:
            with open(self.log_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(self.log_offset, size - max_bytes))
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def raise_if_exited(self) -> None:
        """DeploymentError with a diagnosis when the process has exited, or has ended its
        work while its process stays (a SuperNode whose Fleet connection failed for good)."""
        if self.alive():
            for companion in self.companions:
                if not companion.alive() and not self._closed:
                    tail = companion.log_tail(40)
                    raise DeploymentError(
                        f"{self.name}'s {companion.name} exited (code "
                        f"{companion.popen.returncode}), so this silo cannot run ClientApps; "
                        f"restart the silo. Its log {companion.log_path} ends with:\n{tail}")
            if self.hangs_when_done and not self._closed:
                tail = self.log_tail(40)
                if any(_gave_up(line) for line in tail.splitlines()):
                    raise DeploymentError(
                        f"{self.name} (pid {self.pid}) lost its connection to the "
                        f"coordinator for good and no longer works, though its process still "
                        f"runs: {diagnose(tail)}\nlog {self.log_path} ends with:\n{tail}")
            return
        tail = self.log_tail(40)
        raise DeploymentError(f"{self.name} exited (code {self.popen.returncode}): "
                              f"{diagnose(tail)}\nlog {self.log_path} ends with:\n{tail}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_group(grace)
        finally:
            for companion in self.companions:
                companion.stop(grace)
            if self.netns is not None:
                end_namespace(self.netns)

    def _stop_group(self, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(self.popen.pid):
                self.popen.poll()
                time.sleep(0.05)
            if not _group_alive(self.popen.pid):
                break
        self.popen.poll()


_REFUSED_NODE_KEY = (
    "the coordinator refused this silo's node key (HTTP 401): it is not registered at the "
    "coordinator's SuperLink, or not the node key enrolled with this silo's certificate (the "
    "coordinator gateway's access log shows status=401 for this silo). Fix: the coordinator "
    "operator compares `xsilo pki list` with this silo's node key fingerprint and approves "
    "its current request.json (xsilo pki approve), so the running coordinator registers it; "
    "then restart the silo")

_DIAGNOSES = (
    ("Failed to activate SuperNode", "the coordinator did not let this SuperNode in: either "
     "an earlier SuperNode of this silo still counts as connected there (one that ended "
     "without signing off, killed or cut off, counts for up to a minute: `xsilo silo start` "
     "tries again by itself), or this silo's node key is not registered at the coordinator "
     "(then the coordinator operator must register/approve its node.pub, xsilo pki approve, "
     "and the silo be restarted)"),
    ("401 Unauthorized", _REFUSED_NODE_KEY),
    ("All SuperNodes must be registered", "the coordinator requires node authentication but "
     "this SuperNode has no auth key: set auth_key in silo.toml"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS verification of the coordinator failed: check "
     "root_certificates in silo.toml (the consortium CA) and the coordinator's address/SAN"),
    ("400 Bad Request", "the coordinator's gateway refused this silo's client certificate "
     "(missing, expired, revoked or from another CA): see the gateway log"),
    ("address already in use", "a port is already in use: stop the other process or pick "
     "another port"),
    ("Connection attempt failed", "the coordinator could not be reached: check the address "
     "and that the coordinator (or the local gateway) is running"),
    # Last: Flower answers an HTTP 401 by sending its own SuperNode SIGINT, so it "terminates
    # gracefully" (exit code 0) with no error in its log. Nothing else ends it that way
    # unless it was stopped on purpose, and then nobody asks for a diagnosis.
    ("SuperNode terminated gracefully", _REFUSED_NODE_KEY),
)


def _gave_up(line: str) -> bool:
    """A SuperNode log line after which its Fleet connection is over: Flower logs the error
    and ends its main loop, but its Runtime API thread keeps the process alive, silent."""
    return ("Giving up reconnection after" in line or "SSL/TLS handshake error detected" in line
            or ("ERROR" in line and ("Client error '" in line or "Server error '" in line)))


def diagnose(log_text: str) -> str:
    """A one-line explanation of a Flower process's failure, from its log."""
    for needle, meaning in _DIAGNOSES:
        if needle in log_text:
            return meaning
    return "see its log"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies keep the group "alive" until reaped; reap ours.
    try:
        while True:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
            if pid == 0:
                return True
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def spawn(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout+stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                 start_new_session=True)
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    return ManagedProcess(name, popen, log_path, log_offset=offset)


def wait_https_ready(url: str, ca_file: Path, *, timeout: float, process: ManagedProcess,
                     client_cert: tuple[Path, Path] | None = None) -> None:
    """Poll ``url`` over TLS (verified against ``ca_file``) until it answers 200."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if client_cert:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not process.alive():
            raise DeploymentError(f"{process.name} exited during start-up; its log "
                                  f"({process.log_path}) ends with:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise DeploymentError(f"{process.name} did not become ready at {url} within {timeout:.0f} s "
                          f"(last error: {last}); log: {process.log_path}")


def start_superlink(*, flwr_home: Path, log_path: Path, host: str, port: int, ca_cert: Path,
                    cert: Path, key: Path, node_auth: bool = True, timeout: float = 30.0,
                    bridge: Bridge | None = None,
                    database: Path | None = None) -> ManagedProcess:
    """Start ``flower-superlink`` with TLS (and node authentication); wait until healthy.

    With a ``bridge`` it runs in a private network namespace (:mod:`deploy.gateway.netns`)
    on ``127.0.0.1:port`` there, reachable from outside only through ``bridge.socket``; the
    namespace is recorded in ``flwr_home`` for :class:`FlowerCLI`. State is kept in memory
    unless ``database`` names the SQLite file that keeps it across restarts (node
    registrations included: with node authentication a node's id is its key's, so no stale
    anonymous node can come back from it).
    """
    (Path(flwr_home) / RECORD).unlink(missing_ok=True)
    if bridge is None:
        check_port_free(host, port)
    argv = [find_binary("flower-superlink"), "--host", host, "--port", str(port),
            "--ssl-ca-certfile", str(ca_cert), "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key), "--disable-runtime-dependency-installation"]
    if database is not None:
        argv += ["--database", str(database)]
    if node_auth:
        argv.append("--enable-supernode-auth")
    if bridge is not None:
        argv = [*create_argv(), *bridge.argv(port=port, ca_cert=ca_cert), *argv]
    proc = spawn("flower-superlink", argv, log_path=log_path, env=flower_env(
        flwr_home, {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPERLINK_SUPEREXEC_POLL}))
    try:
        if bridge is None:
            wait_https_ready(f"https://{_url_host(host)}:{port}/health", ca_cert,
                             timeout=timeout, process=proc)
        else:
            _wait_bridged(proc, bridge, timeout)
            PrivateNet.of(proc.pid).write(flwr_home)
    except BaseException:  # Ctrl-C/SIGTERM during start-up too: never leave it running
        proc.stop()
        raise
    return proc


def _wait_bridged(proc: ManagedProcess, bridge: Bridge, timeout: float) -> None:
    """Until the bridge serves its socket (it binds it once the SuperLink is healthy)."""
    deadline = time.monotonic() + timeout
    while not bridge.socket.exists():
        if not proc.alive():
            raise DeploymentError(f"{proc.name} exited during start-up; its log "
                                  f"({proc.log_path}) ends with:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"{proc.name} did not become ready within {timeout:.0f} s; "
                                  f"log: {proc.log_path}")
        time.sleep(0.1)


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def start_supernode(*, flwr_home: Path, log_path: Path, superlink: str, root_cert: Path,
                    auth_key: Path | None, silo_config: Path, clientappio_port: int,
                    max_wait_time: float | None = None, executor: str = EXECUTORS[0],
                    preload: Sequence[str] = (), app_gate: str = "",
                    uplink: Uplink | None = None) -> ManagedProcess:
    """Start ``flower-supernode`` for one silo (TLS, its own auth key, its own config).

    With an ``uplink`` the SuperNode and its SuperExec run in a private network namespace
    (:mod:`deploy.gateway.netns`): the Runtime API port (``clientappio_port``) exists on
    that namespace's loopback only, and ``superlink`` (``127.0.0.1:PORT``) is served there
    by :mod:`deploy.gateway.uplink`, which forwards to the silo gateway's unix socket.

    ``executor="warm"`` (the default) runs the SuperNode in Flower's ``--isolation process``
    mode with xsilo's SuperExec beside it (``deploy.launch.executor``: a process per message,
    forked from a server that has imported Flower, xsilo and ``preload`` once, each task
    answered as the silo's ``app_gate`` decides from the run's app bundle:
    :mod:`deploy.launch.runner`), as a companion process (its own group, stopped with the
    SuperNode, log ``<log>.superexec.log``); the two share a fresh random secret
    (``flwr_home``, 0600) for Flower's SuperExec auth. ``"flower"`` lets the SuperNode start
    Flower's own SuperExec, which runs whatever bundle a run carries.

    Without ``max_wait_time`` the SuperNode retries a lost connection (network errors, 502,
    503, 504) for as long as it takes, with back-off up to 20 s, so it comes back by itself
    after a coordinator restart; other failures end its connection, and
    :meth:`ManagedProcess.raise_if_exited` reports that even though Flower leaves the
    process running.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "warm" and not app_gate:
        raise ConfigError("the warm executor needs an app gate (MODULE:ATTR, e.g. "
                          "silo_client.apps:admit) to decide which app bundles may run")
    if uplink is None:  # in a namespace of its own the port is free whatever runs here
        check_port_free("127.0.0.1", clientappio_port, what="this SuperNode's ClientApp API")
    node_config = f"silo-config={quoted(Path(silo_config).resolve(), 'the silo config path')}"
    find_binary("flower-supernode")  # installed, or say how to install it
    # Flower's SuperNode with an idle poll that is quick right after an answer
    # (deploy.launch.supernode; XSILO_FAST_POLL=0: Flower's fixed 3 s)
    argv = [sys.executable, "-m", "deploy.launch.supernode", "--superlink", superlink,
            "--root-certificates", str(root_cert), "--port", str(clientappio_port),
            "--node-config", node_config]
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    if executor == "warm":
        secret = Path(flwr_home) / "superexec-auth.secret"
        write_private_bytes(secret, os.urandom(32))
        argv += ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
    budget_from_env()  # a bad XSILO_POLL_BUDGET is refused here, not in the child's log
    # the silo's ClientApps note the federation's size here; the SuperNode paces its quick
    # looks by it (deploy.launch.poll)
    env = flower_env(flwr_home, {HINT_ENV: str(Path(flwr_home).resolve() / "poll-hint")})
    inside: list[str] = []
    if uplink is not None:
        argv = [*create_argv(), *uplink.argv(port=_loopback_port(superlink)), *argv]
    node = spawn("flower-supernode", argv, env=env, log_path=log_path)
    node.hangs_when_done = True
    if uplink is not None:
        try:
            _wait_uplink(node, uplink)
            holder = PrivateNet.of(node.pid)
            node.netns = holder.pin()
            inside = holder.enter_argv()
        except BaseException:
            node.stop()
            raise
    if executor == "warm":
        exec_argv = [*inside, sys.executable, "-m", "deploy.launch.executor",
                     "--runtime-api-address",
                     f"127.0.0.1:{clientappio_port}", "--parent-pid", str(node.pid),
                     "--auth-secret-file", str(secret), "--app-gate", app_gate]
        if preload:
            exec_argv += ["--preload", *preload]
        try:
            # Flower's SuperExec asks its SuperNode for a task every 1 s by default; on the
            # node's own loopback, 0.2 s costs little and takes most of that wait off a round
            companion = spawn("SuperExec (deploy.launch.executor)", exec_argv,
                              env={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL, **env},
                              log_path=log_path.with_suffix(".superexec.log"))
        except BaseException:
            node.stop()
            raise
        node.companions.append(companion)
    return node


SUPEREXEC_POLL = "0.2"  # seconds (FLWR_SUPEREXEC_TASK_POLL_INTERVAL; Flower: 1.0)
# The SuperLink's own SuperExec asks it for a task (a ServerApp to start: once per run) the
# whole time it runs, a request each time; Flower's 1 s costs a run's start half a second
# on average and keeps those requests off the SuperLink that every round goes through.
SUPERLINK_SUPEREXEC_POLL = "1.0"


def _loopback_port(superlink: str) -> int:
    host, _, port = superlink.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise ConfigError(f"superlink = {superlink!r}: a SuperNode in a private network "
                          "namespace dials its silo gateway on 127.0.0.1:PORT (the member "
                          "kit's silo.toml says so); re-import the bundle or fix silo.toml")
    return int(port)


def _wait_uplink(node: ManagedProcess, uplink: Uplink, timeout: float = 30.0) -> None:
    """Until the uplink's port listens inside the namespace (it writes its ready file)."""
    deadline = time.monotonic() + timeout
    while not uplink.ready_file.exists():
        if not node.alive():
            raise DeploymentError(f"{node.name} exited during start-up in its private network "
                                  f"namespace; its log ({node.log_path}) ends with:\n"
                                  f"{node.log_tail()}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"{node.name}'s private network namespace was not ready "
                                  f"within {timeout:.0f} s; log: {node.log_path}")
        time.sleep(0.02)


class FlowerCLI:
    """The ``flwr`` CLI against one SuperLink connection in a private ``FLWR_HOME`` (inside
    the SuperLink's private network namespace when ``netns`` is given)."""

    def __init__(self, flwr_home: Path, *, address: str, root_cert: Path,
                 connection: str = "xsilo", netns: PrivateNet | None = None) -> None:
        self.flwr_home = Path(flwr_home)
        self.connection = connection
        self.netns = netns  # the SuperLink's private namespace: calls run inside it
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        atomic_write(self.flwr_home / "config.toml",
            f'[superlink]\ndefault = {quoted(connection, "the connection name")}\n\n'
            f'[superlink.{connection}]\naddress = {quoted(address, "the SuperLink address")}\n'
            f'root-certificates = {quoted(Path(root_cert).resolve(), "the CA certificate path")}\n')

    def _call(self, *args: str, timeout: float = 60.0) -> dict:
        argv = [*(self.netns.enter_argv() if self.netns else []), find_binary("flwr"), *args,
                "--format", "json"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 env=flower_env(self.flwr_home), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"`flwr {args[0]}` did not answer within {timeout:.0f} s") from exc
        try:
            data = json.loads(out.stdout[out.stdout.index("{"):])
        except ValueError:
            raise DeploymentError(f"`flwr {' '.join(args)}` failed (exit {out.returncode}): "
                                  f"{(out.stderr or out.stdout).strip()[-800:]}") from None
        if not data.get("success", False):
            raise DeploymentError(f"`flwr {args[0]}` failed: {data.get('error-message', data)}")
        return data

    def register_node(self, public_key: Path) -> int:
        """Register a SuperNode's public key; return its node id."""
        return int(self._call("supernode", "register", str(public_key), self.connection)["node-id"])

    def unregister_node(self, node_id: int) -> None:
        self._call("supernode", "unregister", str(node_id), self.connection)

    def list_nodes(self) -> list[dict]:
        return list(self._call("supernode", "list", self.connection)["nodes"])

    def submit(self, app_dir: Path, run_config: Mapping[str, str]) -> int:
        """``flwr run``: upload the app and start a run; return the run id."""
        overrides = " ".join(f"{k}={quoted(v, f'run setting {k}')}"
                             for k, v in run_config.items())
        data = self._call("run", str(app_dir), self.connection, "--run-config", overrides,
                          timeout=120.0)
        return int(data["run-id"])

    def status(self, run_id: int) -> str:
        """The run's status, e.g. ``running`` or ``finished:completed``."""
        runs = self._call("ls", self.connection, "--run-id", str(run_id))["runs"]
        return str(runs[0]["status"]) if runs else "unknown"

    def stop_run(self, run_id: int) -> None:
        self._call("stop", str(run_id), self.connection)

    def run_log(self, run_id: int, *, timeout: float = 60.0) -> str:
        """``flwr log RUN_ID --show``: the run's ServerApp output as the SuperLink keeps it."""
        argv = [*(self.netns.enter_argv() if self.netns else []), find_binary("flwr"), "log",
                str(run_id), self.connection, "--show"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 env=flower_env(self.flwr_home), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"`flwr log` did not answer within {timeout:.0f} s") from exc
        if out.returncode != 0:
            raise DeploymentError(f"`flwr log {run_id}` failed (exit {out.returncode}): "
                                  f"{(out.stderr or out.stdout).strip()[-800:]}")
        return out.stdout

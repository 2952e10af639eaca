"""The nginx mTLS gateways: config generation and a foreground, unprivileged nginx per prefix.

* **Coordinator gateway** (public port): requires a client certificate from the consortium
  CA (CRL checked at the handshake, depth 1), forwards only ``POST /v1/fleet/…`` over
  verified HTTPS to the SuperLink (through the unix socket of its private namespace,
  :mod:`deploy.gateway.netns`, or on loopback), answers everything else 403 (a Fleet path
  is never answered 403: Flower reads that as "run not running"; a non-POST gets 405).
  Optionally binds each client certificate subject to its enrolled Flower node key
  (a ``flwr-public-key`` header other than exactly that key gets 401, which ends that
  SuperNode). Serves the CRL it enforces at ``GET /xsilo/crl.pem`` (to the same client
  certificates), a copy refreshed at every start and reload.
* **Silo gateway** (an owner-only unix socket for a SuperNode in its private namespace,
  :class:`deploy.gateway.netns.Uplink`, else loopback): TLS with the kit's local certificate
  towards the SuperNode; upstream it presents the silo's client certificate and verifies the
  coordinator against the consortium CA, its expected name and the kit's CRL (``xsilo silo
  start`` keeps that CRL fresh: :mod:`deploy.pki.crl_sync`; a lapsed one is reported at
  start). Why it cannot reach the coordinator is read from its ``error.log``
  (:meth:`GatewayHandle.upstream_problems`, :mod:`deploy.gateway.upstream`); a coordinator
  name this host cannot resolve fails its start with the fix.

Both run with the limits of :mod:`deploy.gateway.conf` (timeouts, connections, body size,
ciphers). Started by root, nginx's workers run as ``$XSILO_GATEWAY_USER`` (default
``nobody``, with a warning). Handles (:class:`GatewayHandle`) have ``.port``, ``.stop()``,
``.reload()``, ``.logs()``.
"""

from __future__ import annotations

import functools
import grp
import logging
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.pki.crl_sync import crl_path, lapse_warning
from deploy.pki.kit import MemberKit, load_kit
from deploy.gateway.account import warn_if_shared, worker_account
from deploy.gateway.bindings import node_key_bindings
from deploy.gateway.conf import coordinator_conf, silo_conf
from deploy.gateway.reload import hup_and_wait
from deploy.gateway.upstream import UpstreamWatch, unresolved_upstream
from xsilo.errors import DeploymentError
from xsilo.files import atomic_write
from xsilo.procfs import PROC

if TYPE_CHECKING:
    from deploy.pki.authority import Pki

__all__ = ["CoordinatorGateway", "GatewayHandle", "SiloGateway", "find_nginx",
           "nginx_version", "reload_running", "worker_account"]

log = logging.getLogger(__name__)

NGINX_FALLBACKS = ("/usr/sbin/nginx",)  # Debian puts it outside a normal user's PATH
INSTALL_HINT = ("install it with `sudo apt-get install nginx-light` (Debian/Ubuntu; "
                "`dnf install nginx` on RHEL/Fedora, `brew install nginx` on macOS), "
                "or point XSILO_NGINX at the binary")


def find_nginx() -> str:
    """The nginx binary: ``$XSILO_NGINX``, ``PATH``, or ``/usr/sbin/nginx``."""
    candidates = [os.environ.get("XSILO_NGINX"), shutil.which("nginx"), *NGINX_FALLBACKS]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise DeploymentError(f"the nginx gateway binary was not found: {INSTALL_HINT}")


@functools.lru_cache(maxsize=None)
def nginx_version(nginx: str) -> tuple[int, ...]:
    """``(1, 22, 1)`` from ``nginx -v``; ``(0,)`` if it does not say."""
    res = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=30)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", res.stderr + res.stdout)
    return tuple(int(g) for g in found.groups()) if found else (0,)


def _worker_connections() -> int:
    """4096, or what RLIMIT_NOFILE allows (each proxied connection holds two descriptors)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 4096
    return max(512, min(4096, (hard - 64) // 2))


def _nginx_settings(nginx: str) -> dict[str, object]:
    """What the rendered config needs to know about this host and this nginx."""
    return {"worker_user": worker_account(), "worker_connections": _worker_connections(),
            "nginx_version": nginx_version(nginx)}


def _make_scratch(account: tuple[str, str] | None) -> Path | None:
    """When workers drop to another account: a directory that account owns alone for
    request bodies over the in-memory buffer (the prefix's parents may be closed to it)."""
    if account is None:
        return None
    scratch = Path(tempfile.mkdtemp(prefix="xsilo-nginx-"))  # 0700
    os.chown(scratch, pwd.getpwnam(account[0]).pw_uid, grp.getgrnam(account[1]).gr_gid)
    return scratch


def _prepare_prefix(prefix: Path) -> None:
    for sub in ("conf", "logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(prefix, 0o755)


def _nginx_cmd(nginx: str, prefix: Path, *extra: str) -> list[str]:
    return [nginx, "-p", f"{prefix}/", "-e", "logs/error.log", "-c", "conf/nginx.conf", *extra]


def _test_conf(nginx: str, prefix: Path) -> None:
    res = subprocess.run(_nginx_cmd(nginx, prefix, "-t", "-q"), capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        raise DeploymentError(unresolved_upstream(res.stderr) or
                              f"nginx rejected the generated config {prefix}/conf/nginx.conf: "
                              f"{res.stderr.strip()}")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _unix_open(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            return True
    except OSError:
        return False


def _is_master_for(pid: int, prefix: Path, proc: Path = PROC) -> bool:
    """Whether ``pid`` is an nginx master started by :func:`_nginx_cmd` for ``prefix``: a
    stale pid file may name any process by now. nginx rewrites its master's command line
    as ``nginx: master process <argv>``; an unrewritten one is ``<argv>`` with NULs."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    argv = raw.rstrip(b"\0").decode(errors="replace")
    if argv.startswith("nginx: master process "):
        argv = argv.removeprefix("nginx: master process ")
    elif "\0" in argv and Path(argv.split("\0", 1)[0]).name == "nginx":
        argv = argv.replace("\0", " ")
    else:
        return False
    args = f" {argv.partition(' ')[2]}"
    return any(" " + " ".join(_nginx_cmd("", p)[1:]) in args
               for p in {Path(prefix), Path(prefix).resolve()})


def reload_running(prefix: Path, timeout: float = 10.0) -> bool:
    """Reload the nginx whose pid file is under ``prefix`` (after ``nginx -t``) and return
    once the new configuration is in force (new connections get it); False if none runs
    there, or the pid file names a process that is not that nginx (it is not signalled)."""
    pid_file = Path(prefix) / "logs" / "nginx.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    if not _is_master_for(pid, Path(prefix)):
        log.warning("%s names process %d, which is not the nginx gateway of %s (a stale pid "
                    "file): not signalled; the gateway is taken as not running, its next "
                    "start uses the new files", pid_file, pid, prefix)
        return False
    _test_conf(find_nginx(), Path(prefix))
    hup_and_wait(Path(prefix), pid, timeout)
    return True


@dataclass
class GatewayHandle:
    """A running nginx gateway in its own process group."""

    name: str
    prefix: Path
    host: str
    port: int
    render: Callable[[Path | None], str]  # the config, given the workers' scratch directory
    nginx: str
    worker_user: tuple[str, str] | None = None
    scratch: Path | None = None  # the workers' own directory for large bodies, while running
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    socket: Path | None = None  # listens on this unix socket instead of host:port
    upstream: UpstreamWatch | None = None  # a silo gateway: why the coordinator is unreachable
    problems: list[str] = field(default_factory=list)  # silos the last render left out

    @property
    def address(self) -> str:
        """``host:port`` to dial (``unix:PATH`` for a gateway on a unix socket)."""
        return f"unix:{self.socket}" if self.socket is not None else f"{self.host}:{self.port}"

    def _listening(self) -> bool:
        if self.socket is not None:
            return _unix_open(self.socket)
        return _port_open(self.host, self.port)

    def start(self, timeout: float = 15.0) -> GatewayHandle:
        """Write the config, check it with ``nginx -t`` and start nginx in the foreground."""
        try:
            self._check_and_write()
        except BaseException:
            self.stop()
            raise
        stderr = open(self.prefix / "logs" / "stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(_nginx_cmd(self.nginx, self.prefix, "-g", "daemon off;"),
                                     stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                     start_new_session=True)
        stderr.close()
        try:
            self._wait_listening(timeout)
        except BaseException:  # Ctrl-C/SIGTERM during start-up too: never leave nginx behind
            self.stop()
            raise
        log.info("%s gateway listening on %s (prefix %s)", self.name, self.address, self.prefix)
        return self

    def _check_and_write(self) -> None:
        _prepare_prefix(self.prefix)
        self.scratch = _make_scratch(self.worker_user)
        atomic_write(self.prefix / "conf" / "nginx.conf", self.render(self.scratch))
        _test_conf(self.nginx, self.prefix)
        if self._listening():
            raise DeploymentError(f"{self.name} gateway: {self.address} is already in use; "
                                  "choose another port")
        if self.socket is not None:
            self.socket.unlink(missing_ok=True)  # left by a killed nginx: bind would fail

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"{self.name} gateway did not start on {self.address}: "
                                      f"{self._tail('error.log')}{self._tail('stderr.log')}")
            time.sleep(0.05)

    def reload(self, timeout: float = 10.0) -> None:
        """Re-render the config (new CRL, certificates, node-key bindings) and reload
        gracefully; returns once every new connection gets the new config (requests begun
        before finish on the old workers)."""
        if self.proc is None or self.proc.poll() is not None:
            raise DeploymentError(f"{self.name} gateway is not running; start it first")
        conf = self.prefix / "conf" / "nginx.conf"
        old = conf.read_text()
        atomic_write(conf, self.render(self.scratch))
        try:
            _test_conf(self.nginx, self.prefix)
        except DeploymentError:
            atomic_write(conf, old)
            raise
        hup_and_wait(self.prefix, self.proc.pid, timeout)
        log.info("%s gateway reloaded", self.name)

    def stop(self, grace: float = 5.0) -> None:
        """Stop nginx and everything in its process group (idempotent)."""
        if self.proc is None:
            self._remove_scratch()
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers left behind by a killed master
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def upstream_problems(self) -> list[str]:
        """Why requests to the coordinator failed since the last call (a silo gateway's
        error.log read as cause and fix, each cause once: :mod:`deploy.gateway.upstream`)."""
        return self.upstream.poll() if self.upstream is not None else []

    def logs(self) -> dict[str, str]:
        """``{"error": …, "access": …}`` log contents so far."""
        out = {}
        for key in ("error", "access"):
            f = self.prefix / "logs" / f"{key}.log"
            out[key] = f.read_text(errors="replace") if f.exists() else ""
        return out

    def _tail(self, name: str, lines: int = 5) -> str:
        f = self.prefix / "logs" / name
        return " | ".join(f.read_text(errors="replace").splitlines()[-lines:]) if f.exists() else ""

    def __enter__(self) -> GatewayHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CoordinatorGateway:
    """The coordinator's public mTLS gateway in front of the SuperLink."""

    @staticmethod
    def start(*, pki_dir: Path, port: int, superlink: str, prefix: Path,
              host: str = "127.0.0.1", bind_node_keys: bool = True,
              superlink_server_name: str = "localhost") -> GatewayHandle:
        """Start it; ``superlink`` is where the SuperLink serves HTTPS with the certificate
        from ``pki issue-coordinator``: ``unix:/path`` of its private socket
        (:mod:`deploy.gateway.netns`) or a loopback ``host:port``; ``host`` is the public
        bind address."""
        from deploy.pki.authority import Pki

        pki = Pki(Path(pki_dir))
        files = pki.coordinator_files()
        nginx = find_nginx()
        settings = _nginx_settings(nginx)
        warn_if_shared(settings["worker_user"], "coordinator")  # type: ignore[arg-type]

        problems: list[str] = []

        def render(scratch: Path | None) -> str:
            bindings: Mapping[str, str] | None = None
            if bind_node_keys:
                bindings, problems[:] = node_key_bindings(pki)
            # The workers serve the CRL nginx loads, from a directory they can read (the
            # PKI's may be closed to them).
            served = (scratch or Path(prefix).resolve() / "tmp") / "crl.pem"
            atomic_write(served, pki.crl_path.read_bytes())
            return coordinator_conf(
                prefix=Path(prefix).resolve(), listen=f"{host}:{port}",
                server_cert=files.server_cert.resolve(), server_key=files.server_key.resolve(),
                ca_cert=pki.ca_cert_path.resolve(), crl=pki.crl_path.resolve(),
                superlink=superlink, superlink_server_name=superlink_server_name,
                node_key_bindings=bindings, scratch=scratch, served_crl=served,
                **settings)  # type: ignore[arg-type]

        return GatewayHandle("coordinator", Path(prefix).resolve(), host, port, render, nginx,
                             settings["worker_user"],  # type: ignore[arg-type]
                             problems=problems).start()


class SiloGateway:
    """The silo's local gateway that presents the silo's client certificate upstream."""

    @staticmethod
    def start(kit: MemberKit | Path, *, port: int | None = None, prefix: Path | None = None,
              coordinator: str | None = None,
              listen_socket: Path | None = None) -> GatewayHandle:
        """Start it from a member kit; ``port``/``coordinator`` override the kit's values
        (the SuperNode must then dial ``handle.address``). With ``listen_socket`` it listens on
        that unix socket instead of ``127.0.0.1:port`` (:class:`deploy.gateway.netns.Uplink`:
        the SuperNode in its private namespace reaches it through the uplink)."""
        kit = kit if isinstance(kit, MemberKit) else load_kit(Path(kit))
        listen_port = port if port is not None else kit.listen_port
        listen = (f"unix:{listen_socket}" if listen_socket is not None
                  else f"127.0.0.1:{listen_port}")
        prefix = Path(prefix).resolve() if prefix else kit.gateway_prefix
        nginx = find_nginx()
        settings = _nginx_settings(nginx)
        warn_if_shared(settings["worker_user"], f"silo {kit.name}")  # type: ignore[arg-type]
        problem = lapse_warning(kit)
        if problem is not None:
            log.warning("silo %s gateway: %s", kit.name, problem)
        crl = crl_path(kit) if crl_path(kit).is_file() else None
        upstream = coordinator or kit.coordinator

        def render(scratch: Path | None) -> str:
            return silo_conf(prefix=prefix, listen=listen,
                             local_cert=kit.local_cert, local_key=kit.local_key,
                             ca_cert=kit.ca_cert, client_cert=kit.client_cert,
                             client_key=kit.client_key, upstream=upstream,
                             server_name=kit.server_name, scratch=scratch, crl=crl,
                             **settings)  # type: ignore[arg-type]

        watch = UpstreamWatch(prefix / "logs" / "error.log", coordinator=upstream,
                              server_name=kit.server_name)
        return GatewayHandle(f"silo {kit.name}", prefix, "127.0.0.1", listen_port, render,
                             nginx, settings["worker_user"],  # type: ignore[arg-type]
                             socket=listen_socket, upstream=watch).start()

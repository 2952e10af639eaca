"""The coordinator's home directory (``coordinator.toml``) and its SuperLink lifecycle.

::

    [coordinator]
    host = "127.0.0.1"        # where the SuperLink listens (loopback behind a gateway)
    port = 9092
    ca_cert = "pki/ca.crt"
    cert = "pki/coordinator.crt"
    key = "pki/coordinator.key"  # 0600
    nodes = "nodes"           # enrolled silos' Flower node public keys (*.pub), registered at start
    runs = "runs"             # one directory per run

    [gateway]                 # optional: the mutual-TLS gateway silos connect to
    pki = "pki"               # the consortium PKI directory (`xsilo pki init`)
    host = "0.0.0.0"          # public bind address of the gateway
    port = 8443
    passphrase_file = "…"     # optional: the CA key's passphrase, so the running
                              # coordinator can re-issue the CRL before it lapses

With a ``[gateway]`` the SuperLink must listen on loopback only; silos reach nothing but
the gateway, which admits only consortium client certificates (CRL checked) and forwards
only the Fleet API. The SuperLink then runs in a private network namespace
(:mod:`deploy.gateway.netns`): ``host:port`` is its address inside, which only this
account and root can enter (:meth:`CoordinatorHome.cli` does), and the gateway reaches it
through a unix socket. ``xsilo coordinator init`` writes this layout from a PKI directory.
"""

from __future__ import annotations

import grp
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from deploy.gateway.netns import Bridge, end_namespace, read_record, unavailable
from coordinator.registrations import database_path, register_enrolled, save_registrations
from deploy.launch.processes import FlowerCLI, ManagedProcess, start_superlink
from xsilo.errors import ConfigError, DeploymentError, XsiloError
from xsilo.files import atomic_write, read_toml

__all__ = ["CoordinatorHome", "GatewaySettings", "RunningCoordinator", "start_coordinator",
           "stop_quietly", "write_gateway_home"]

log = logging.getLogger(__name__)
_KEYS = {"host", "port", "ca_cert", "cert", "key", "nodes", "runs"}
_GATEWAY_KEYS = {"pki", "host", "port", "passphrase_file"}


@dataclass(frozen=True)
class GatewaySettings:
    """Where the coordinator's mTLS gateway listens and which PKI it trusts."""

    pki: Path
    host: str
    port: int
    passphrase_file: Path | None = None  # of the CA key, for CRL renewal while running


@dataclass(frozen=True)
class CoordinatorHome:
    """A validated coordinator home with absolute paths."""

    root: Path
    host: str
    port: int
    ca_cert: Path
    cert: Path
    key: Path
    nodes: Path
    runs: Path
    gateway: GatewaySettings | None = None

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    def cli(self) -> FlowerCLI:
        """``flwr`` against this home's SuperLink; inside its private network namespace when
        the running coordinator recorded one (only this account and root can enter it)."""
        return FlowerCLI(self.flwr_home, address=self.address, root_cert=self.ca_cert,
                         netns=read_record(self.flwr_home))

    @classmethod
    def load(cls, root: Path) -> CoordinatorHome:
        root = Path(root).expanduser().resolve()
        path = root / "coordinator.toml"
        data = read_toml(path, what="coordinator home configuration", missing=(
            f"{path} does not exist; is {root} a coordinator home? "
            "(`xsilo demo --keep` creates one you can copy)"))
        table = data.get("coordinator", {})
        gateway = _gateway_settings(data.get("gateway"), root, path)
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in "
                              f"[coordinator]; accepted: {', '.join(sorted(_KEYS))}")
        home = cls(root=root, host=str(table.get("host", "127.0.0.1")),
                   port=int(table.get("port", 9092)),
                   **{k: (root / str(table.get(k, d))).resolve() for k, d in (
                       ("ca_cert", "pki/ca.crt"), ("cert", "pki/coordinator.crt"),
                       ("key", "pki/coordinator.key"), ("nodes", "nodes"), ("runs", "runs"))},
                   gateway=gateway)
        if gateway is not None and home.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"{path}: with a [gateway] the SuperLink must listen on loopback "
                              f"(host = \"127.0.0.1\"), not {home.host!r}: silos reach it only "
                              "through the gateway")
        for name in ("ca_cert", "cert", "key"):
            if not getattr(home, name).is_file():
                raise ConfigError(f"{path}: {name} file {getattr(home, name)} does not exist")
        return home

    @staticmethod
    def write(root: Path, *, host: str, port: int, cert: str = "pki/coordinator.crt",
              key: str = "pki/coordinator.key", nodes: str = "nodes") -> Path:
        """Write a ``coordinator.toml`` (default layout unless paths are given)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / nodes).mkdir(parents=True, exist_ok=True)
        (root / "runs").mkdir(exist_ok=True)
        path = root / "coordinator.toml"
        atomic_write(path, tomli_w.dumps({"coordinator": {
            "host": host, "port": port, "ca_cert": "pki/ca.crt", "cert": cert, "key": key,
            "nodes": nodes, "runs": "runs"}}))
        return path


def _gateway_settings(table: object, root: Path, path: Path) -> GatewaySettings | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [gateway] must be a table")
    unknown = set(table) - _GATEWAY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in [gateway]; "
                          f"accepted: {', '.join(sorted(_GATEWAY_KEYS))}")
    secret = table.get("passphrase_file")
    return GatewaySettings(pki=(root / str(table.get("pki", "pki"))).resolve(),
                           host=str(table.get("host", "0.0.0.0")),
                           port=int(table.get("port", 8443)),
                           passphrase_file=(root / str(secret)).resolve() if secret else None)


def write_gateway_home(root: Path, *, pki_dir: Path, public_host: str = "0.0.0.0",
                       gateway_port: int = 8443, superlink_port: int = 9092) -> Path:
    """``coordinator.toml`` for a PKI made with ``xsilo pki`` (coordinator certificate issued)."""
    from deploy.pki.authority import Pki

    pki = Pki(pki_dir)
    files = pki.coordinator_files()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    path = root / "coordinator.toml"
    atomic_write(path, tomli_w.dumps({
        "coordinator": {"host": "127.0.0.1", "port": superlink_port,
                        "ca_cert": str(pki.ca_cert_path.resolve()),
                        "cert": str(files.superlink_cert.resolve()),
                        "key": str(files.superlink_key.resolve()),
                        "nodes": str((Path(pki_dir) / "nodes").resolve()), "runs": "runs"},
        "gateway": {"pki": str(Path(pki_dir).resolve()), "host": public_host,
                    "port": gateway_port}}))
    return path


@dataclass
class RunningCoordinator:
    """A started SuperLink (and gateway) with its registered silos."""

    home: CoordinatorHome
    superlink: ManagedProcess
    node_ids: dict[str, int]
    gateway: object | None = None
    _seen: tuple = ()
    node_keys: dict[str, str] = field(default_factory=dict)  # name → SHA-256 of its .pub
    bridge: Bridge | None = None  # how the gateway reaches a SuperLink in its own namespace
    crl_keeper: object | None = None  # deploy.pki.freshness.CrlKeeper, with a gateway
    notices: list[str] = field(default_factory=list)  # what start-up has to tell the operator

    def stop(self) -> list[str]:
        """Stop the gateway and the SuperLink, and every ServerApp that would outlive them
        (:func:`coordinator.runs.live_serverapps`); return one line per run this
        interrupted, saying how to continue it."""
        from coordinator.runs import end_serverapps, live_serverapps

        in_flight = live_serverapps(self.home.runs)
        inside = read_record(self.home.flwr_home) if self.bridge is not None else None
        ns = inside.pin() if inside is not None else None
        try:
            if self.gateway is not None:
                self.gateway.stop()  # type: ignore[attr-defined]
            self.superlink.stop()
        finally:
            if ns is not None:
                end_namespace(ns)  # what is left inside: a ServerApp winding down
            if self.bridge is not None:
                self.bridge.remove()
        # without a namespace, Flower's own ServerApp may hang on the gone SuperLink
        return end_serverapps(self.home.runs, in_flight)

    def _pki_state(self) -> tuple:
        files = sorted(self.home.nodes.glob("*.pub"))
        extra = []
        if self.home.gateway is not None:  # the CRL, and a re-issued gateway certificate
            for path in (self.home.gateway.pki / "crl.pem",
                         self.home.gateway.pki / "coordinator" / "server.crt"):
                extra.append(path.stat().st_mtime_ns if path.exists() else 0)
        return tuple((p.name, p.stat().st_mtime_ns) for p in files) + tuple(extra)

    def keep_crl(self) -> list[str]:
        """Re-issue the CRL when it is due and the CA key is usable, else warn (at start,
        then at most daily): ``warning: …`` lines for the operator's console."""
        if self.crl_keeper is None:
            return []
        return [n.text if n.level == "info" else f"warning: {n}"
                for n in self.crl_keeper.tick()]  # type: ignore[attr-defined]

    def reconcile(self) -> list[str]:
        """Apply PKI changes made by ``xsilo pki`` while running: register newly approved
        node keys, unregister revoked ones, reload the gateway (new CRL, new bindings).
        Returns what changed (for the operator's console). Re-issues a CRL that is due
        first (:meth:`keep_crl`); the new CRL is then loaded like any other."""
        changes = self.keep_crl()
        state = self._pki_state()
        if state == self._seen:
            return changes
        self._seen = state
        cli = self.home.cli()
        present = {p.stem: p for p in self.home.nodes.glob("*.pub")}
        for name, pub in sorted(present.items()):
            digest = _key_digest(pub)
            if name in self.node_ids and self.node_keys.get(name) != digest:
                # revoked and re-approved with a new node key between two looks: the old
                # identity must go, or it stays registered and the new key never is
                cli.unregister_node(self.node_ids.pop(name))
                changes.append(f"unregistered {name}'s previous node key")
            if name not in self.node_ids:
                self.node_ids[name] = cli.register_node(pub)
                self.node_keys[name] = digest
                changes.append(f"registered {name}")
        for name in sorted(set(self.node_ids) - set(present)):
            cli.unregister_node(self.node_ids.pop(name))
            self.node_keys.pop(name, None)
            changes.append(f"unregistered {name} (revoked or removed)")
        save_registrations(self.home.flwr_home, self.node_ids, self.node_keys)
        if self.gateway is not None:
            try:
                self.gateway.reload()  # type: ignore[attr-defined]
            except DeploymentError as exc:  # e.g. caught between a new key and its certificate
                self._seen = ()  # try again at the next look
                changes.append(f"warning: the gateway did not reload ({exc}); it keeps its "
                               "previous configuration, trying again in a moment")
            except XsiloError as exc:  # a damaged PKI file: retried at the next PKI change
                changes.append(f"warning: the gateway did not reload ({exc}); it keeps its "
                               "previous configuration until the PKI directory is fixed")
            else:
                changes.append("gateway reloaded (CRL, certificate, node-key bindings)")
                changes += _gateway_problems(self.gateway)
        return changes


def _gateway_problems(gateway: object) -> list[str]:
    """``warning: …`` for each silo the gateway's last configuration left out (named, with
    the fix), while it serves every other silo."""
    return [f"warning: {p}" for p in getattr(gateway, "problems", ())]


def _key_digest(pub: Path) -> str:
    return hashlib.sha256(pub.read_bytes()).hexdigest()


def start_coordinator(home: CoordinatorHome, *, log_dir: Path | None = None,
                      passphrase_file: Path | None = None) -> RunningCoordinator:
    """Start the SuperLink (TLS, node auth) and register every enrolled node key; with a
    ``[gateway]``, the SuperLink runs in a private network namespace that only this account
    (and root) can enter, and the gateway reaches it through a unix socket, and the CRL is
    kept fresh (``passphrase_file``, else ``[gateway] passphrase_file``, else
    ``$XSILO_CA_PASSPHRASE`` unlocks an encrypted CA key)."""
    log_dir = log_dir or home.root / "logs"
    _end_strays(home.runs)  # before a SuperLink is up for them to talk to
    bridge, exposed = _bridge(home)
    try:
        superlink = start_superlink(flwr_home=home.flwr_home, log_path=log_dir / "superlink.log",
                                    host=home.host, port=home.port, ca_cert=home.ca_cert,
                                    cert=home.cert, key=home.key, node_auth=True, bridge=bridge,
                                    database=database_path(home.root))
    except BaseException:
        if bridge is not None:
            bridge.remove()
        raise
    if exposed:
        log.warning(exposed)
    running = RunningCoordinator(home, superlink, {}, bridge=bridge)
    try:
        cli = home.cli()
        # The SuperLink's database keeps registrations across restarts: only changes register.
        running.node_ids, running.node_keys = register_enrolled(
            cli, home.nodes, home.flwr_home, database_path(home.root))
        if not running.node_ids:
            log.warning("no node keys in %s: no silo can connect until one is enrolled", home.nodes)
        # before the gateway lets silos in: no SuperNode may take an orphaned run's message
        running.notices = _stop_orphaned_runs(cli, home.runs)
        if home.gateway is not None:
            from deploy.gateway.nginx import CoordinatorGateway

            running.crl_keeper = _crl_keeper(home.gateway, passphrase_file)
            running.notices += running.keep_crl()  # a due CRL is renewed before nginx loads it
            running.gateway = CoordinatorGateway.start(
                pki_dir=home.gateway.pki, port=home.gateway.port,
                superlink=bridge.upstream if bridge else home.address,
                prefix=home.root / "gateway", host=home.gateway.host)
            running.notices += _gateway_problems(running.gateway)
        running._seen = running._pki_state()
    except BaseException:  # Ctrl-C/SIGTERM during start-up too: never leave it running
        running.stop()
        raise
    return running


def _end_strays(runs: Path) -> None:
    """End the ServerApps a previous SuperLink left running (their SuperExec is gone): they
    would claim their runs and send stale messages to this one (the notice that says to
    resume them comes from :func:`_stop_orphaned_runs`)."""
    from coordinator.runs import end_serverapps, live_serverapps

    end_serverapps(runs, live_serverapps(runs, orphans_only=True))


def _stop_orphaned_runs(cli: FlowerCLI, runs: Path) -> list[str]:
    from coordinator.runs import stop_orphaned_runs

    try:
        return stop_orphaned_runs(cli, runs)
    except DeploymentError as exc:  # the coordinator still starts; say what it could not do
        return [f"warning: could not stop the runs whose ServerApp is gone ({exc}); a silo "
                "may stay silent in their resumed run until its SuperNode restarts"]


def _crl_keeper(gateway: GatewaySettings, passphrase_file: Path | None) -> object:
    from deploy.pki.authority import Pki
    from deploy.pki.freshness import CrlKeeper, passphrase_source

    source = passphrase_source(passphrase_file or gateway.passphrase_file)
    return CrlKeeper(Pki(gateway.pki), passphrase=source)


def _bridge(home: CoordinatorHome) -> tuple[Bridge | None, str]:
    """The private link for a gateway home, or None and the warning that says who can use
    the Control API instead (no gateway, or no namespaces here)."""
    exposed = (f"SuperLink on {home.address}: every local account on this host can use its "
               "Control API (list and register node keys, start and stop runs)")
    if home.gateway is None:
        return None, (f"no [gateway] in {home.root / 'coordinator.toml'}: {exposed}. Use a "
                      "gateway home (`xsilo coordinator init`) on any shared host.")
    reason = unavailable()
    if reason is not None:
        return None, (f"the SuperLink cannot get a private network namespace: {reason}. "
                      f"Falling back to a {exposed}. docs/security.md, \"Who can reach the "
                      "SuperLink\".")
    from deploy.gateway.nginx import worker_account

    account = worker_account()
    group = grp.getgrnam(account[1]).gr_gid if account is not None else None
    return Bridge.create(home.root / "gateway" / "logs" / "nginx.pid", group), ""


def stop_quietly(processes: list[ManagedProcess]) -> None:
    """Stop every process, continuing past individual failures."""
    for proc in reversed(processes):
        try:
            proc.stop()
        except Exception as exc:  # teardown must reach every process
            log.warning("could not stop %s (pid %d): %s", proc.name, proc.pid, exc)



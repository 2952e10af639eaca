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
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from deploy.launch import FlowerCLI, ManagedProcess, start_superlink
from xsilo.errors import ConfigError

__all__ = ["CoordinatorHome", "RunningCoordinator", "start_coordinator"]

log = logging.getLogger(__name__)
_KEYS = {"host", "port", "ca_cert", "cert", "key", "nodes", "runs"}


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

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    def cli(self) -> FlowerCLI:
        return FlowerCLI(self.flwr_home, address=self.address, root_cert=self.ca_cert)

    @classmethod
    def load(cls, root: Path) -> CoordinatorHome:
        root = Path(root).expanduser().resolve()
        path = root / "coordinator.toml"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; is {root} a coordinator home? "
                              "(`xsilo demo --keep` creates one you can copy)")
        try:
            table = tomllib.loads(path.read_text()).get("coordinator", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} in "
                              f"[coordinator]; accepted: {', '.join(sorted(_KEYS))}")
        home = cls(root=root, host=str(table.get("host", "127.0.0.1")),
                   port=int(table.get("port", 9092)),
                   **{k: (root / str(table.get(k, d))).resolve() for k, d in (
                       ("ca_cert", "pki/ca.crt"), ("cert", "pki/coordinator.crt"),
                       ("key", "pki/coordinator.key"), ("nodes", "nodes"), ("runs", "runs"))})
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
        path.write_text(tomli_w.dumps({"coordinator": {
            "host": host, "port": port, "ca_cert": "pki/ca.crt", "cert": cert, "key": key,
            "nodes": nodes, "runs": "runs"}}))
        return path


@dataclass
class RunningCoordinator:
    """A started SuperLink with its registered silos."""

    home: CoordinatorHome
    superlink: ManagedProcess
    node_ids: dict[str, int]

    def stop(self) -> None:
        self.superlink.stop()


def start_coordinator(home: CoordinatorHome, *, log_dir: Path | None = None) -> RunningCoordinator:
    """Start the SuperLink (TLS, node auth) and register every enrolled node key."""
    log_dir = log_dir or home.root / "logs"
    superlink = start_superlink(flwr_home=home.flwr_home, log_path=log_dir / "superlink.log",
                                host=home.host, port=home.port, ca_cert=home.ca_cert,
                                cert=home.cert, key=home.key, node_auth=True)
    try:
        cli = home.cli()
        node_ids = {}
        for pub in sorted(home.nodes.glob("*.pub")):
            node_ids[pub.stem] = cli.register_node(pub)
            log.info("registered silo %s as node %d", pub.stem, node_ids[pub.stem])
        if not node_ids:
            log.warning("no node keys in %s: no silo can connect until one is enrolled", home.nodes)
    except Exception:
        superlink.stop()
        raise
    return RunningCoordinator(home, superlink, node_ids)


def stop_quietly(processes: list[ManagedProcess]) -> None:
    """Stop every process, continuing past individual failures."""
    for proc in reversed(processes):
        try:
            proc.stop()
        except Exception as exc:  # teardown must reach every process
            log.warning("could not stop %s (pid %d): %s", proc.name, proc.pid, exc)



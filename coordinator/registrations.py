"""The silos' Flower node registrations, kept across coordinator restarts.

The SuperLink keeps its state on disk in the coordinator home (``state/superlink.db``,
``flower-superlink --database``), its node registrations included: a silo keeps its node
id when the coordinator restarts, and its SuperNode, which retries a lost connection by
itself, is served again as soon as the SuperLink is back. The SuperLink refuses to register
a key twice, so the coordinator records which node id each enrolled silo's key has
(``flwr-home/registrations.json``: name → node id and the key's SHA-256) and, at start,
registers only what is new, re-registers a changed key and unregisters what was removed or
revoked while it was down (:func:`register_enrolled`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from deploy.launch.processes import FlowerCLI
from xsilo.errors import DeploymentError
from xsilo.files import atomic_write

__all__ = ["DATABASE", "RECORD", "database_path", "enrolled_node_ids", "register_enrolled",
           "save_registrations"]

log = logging.getLogger(__name__)

DATABASE = Path("state") / "superlink.db"
RECORD = "registrations.json"


def database_path(home_root: Path) -> Path:
    """Where the SuperLink of the coordinator home at ``home_root`` keeps its state (the
    directory is created owner-only: the database holds the messages in flight)."""
    path = Path(home_root) / DATABASE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    return path


def _digest(pub: Path) -> str:
    return hashlib.sha256(pub.read_bytes()).hexdigest()


def _load(flwr_home: Path) -> dict[str, dict[str, object]]:
    """The recorded registrations; none when the record is missing or unreadable (every
    key is then registered afresh: :func:`register_enrolled` names the fix if the
    SuperLink's database still holds one)."""
    path = Path(flwr_home) / RECORD
    try:
        data = json.loads(path.read_text())
        return {str(k): {"node_id": int(v["node_id"]), "key": str(v["key"])}
                for k, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        log.warning("%s is unreadable (%s: %s); every enrolled silo is registered afresh",
                    path, type(exc).__name__, exc)
        return {}


def enrolled_node_ids(flwr_home: Path) -> dict[str, int]:
    """Enrolled silo name → its node id, as this coordinator home registered them (empty
    where it keeps no record: a SuperLink whose nodes xsilo did not register)."""
    return {name: int(entry["node_id"]) for name, entry in _load(flwr_home).items()}  # type: ignore[call-overload]


def save_registrations(flwr_home: Path, node_ids: Mapping[str, int],
                       node_keys: Mapping[str, str]) -> None:
    """Record each silo's node id and key digest (what :func:`register_enrolled` reads)."""
    atomic_write(Path(flwr_home) / RECORD, json.dumps(
        {name: {"node_id": int(node_ids[name]), "key": node_keys.get(name, "")}
         for name in sorted(node_ids)}, indent=2, sort_keys=True))


def register_enrolled(cli: FlowerCLI, nodes_dir: Path, flwr_home: Path,
                      database: Path | None = None) -> tuple[dict[str, int], dict[str, str]]:
    """Make the SuperLink's registrations match the enrolled node keys in ``nodes_dir``.

    Returns (name → node id, name → key SHA-256). A key the SuperLink's database still
    holds keeps its node id; a DeploymentError names the fix when the database holds a key
    this home has no record of.
    """
    known = _load(flwr_home)
    live = {int(n["node-id"]) for n in cli.list_nodes()
            if str(n.get("status", "")) not in ("unregistered", "deleted")}
    ids: dict[str, int] = {}
    keys: dict[str, str] = {}
    for pub in sorted(Path(nodes_dir).glob("*.pub")):
        name, digest = pub.stem, _digest(pub)
        record = known.pop(name, None)
        if record is not None and record["node_id"] in live and record["key"] == digest:
            ids[name], keys[name] = int(record["node_id"]), digest  # type: ignore[arg-type]
            log.info("silo %s keeps node %d (the SuperLink's database has it)", name, ids[name])
            continue
        if record is not None and record["node_id"] in live:  # its key changed while down
            cli.unregister_node(int(record["node_id"]))  # type: ignore[arg-type]
        try:
            ids[name] = cli.register_node(pub)
        except DeploymentError as exc:
            if "already in use" not in str(exc):
                raise
            where = database or "the SuperLink's database"
            raise DeploymentError(
                f"silo {name}'s node key is registered in {where} under a node id that "
                f"{Path(flwr_home) / RECORD} does not record (the record was lost or the "
                f"database comes from another home); stop the coordinator, move {where} "
                "away and start it again: every silo is then registered afresh") from exc
        keys[name] = digest
        log.info("registered silo %s as node %d", name, ids[name])
    for name, record in sorted(known.items()):  # removed or revoked while the coordinator was down
        if record["node_id"] in live:
            cli.unregister_node(int(record["node_id"]))  # type: ignore[arg-type]
            log.info("unregistered %s (its node key is no longer enrolled)", name)
    save_registrations(flwr_home, ids, keys)
    return ids, keys

"""The running coordinator applies PKI changes by node key, not just by silo name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from coordinator.home import RunningCoordinator


class _FakeCLI:
    """Records what would be sent to `flwr supernode register/unregister`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.next_id = 100

    def register_node(self, pub: Path) -> int:
        self.next_id += 1
        self.calls.append(("register", pub.read_text()))
        return self.next_id

    def unregister_node(self, node_id: int) -> None:
        self.calls.append(("unregister", node_id))


def _running(tmp_path: Path) -> tuple[RunningCoordinator, _FakeCLI, Path]:
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    cli = _FakeCLI()
    home = SimpleNamespace(nodes=nodes, gateway=None, cli=lambda: cli,
                           flwr_home=tmp_path / "flwr-home")
    return RunningCoordinator(home, superlink=None, node_ids={}), cli, nodes  # type: ignore[arg-type]


def test_a_reapproved_silo_with_a_new_key_is_registered_anew(tmp_path: Path) -> None:
    running, cli, nodes = _running(tmp_path)
    (nodes / "hospital-a.pub").write_text("ecdsa-sha2-nistp384 OLD")
    assert running.reconcile() == ["registered hospital-a"]
    old_id = running.node_ids["hospital-a"]
    # revoked and re-approved between two looks: same name, new key
    (nodes / "hospital-a.pub").write_text("ecdsa-sha2-nistp384 NEW")
    changes = running.reconcile()
    assert changes == ["unregistered hospital-a's previous node key", "registered hospital-a"]
    assert cli.calls[-2:] == [("unregister", old_id), ("register", "ecdsa-sha2-nistp384 NEW")]
    assert running.node_ids["hospital-a"] != old_id


def test_unchanged_keys_are_left_alone_and_removed_ones_unregistered(tmp_path: Path) -> None:
    running, cli, nodes = _running(tmp_path)
    (nodes / "hospital-a.pub").write_text("A")
    (nodes / "hospital-b.pub").write_text("B")
    running.reconcile()
    calls = len(cli.calls)
    (nodes / "hospital-a.pub").touch()  # same key, newer mtime
    assert running.reconcile() == []
    (nodes / "hospital-b.pub").unlink()
    assert running.reconcile() == ["unregistered hospital-b (revoked or removed)"]
    assert cli.calls[calls:] == [("unregister", 102)]


class _ListingCLI(_FakeCLI):
    """Also lists the nodes it holds, and refuses a key twice, as the SuperLink does."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, str] = {}

    def register_node(self, pub: Path) -> int:
        from xsilo.errors import DeploymentError

        if pub.read_text() in self.nodes.values():
            raise DeploymentError("`flwr supernode` failed: Public key already in use")
        node_id = super().register_node(pub)
        self.nodes[node_id] = pub.read_text()
        return node_id

    def unregister_node(self, node_id: int) -> None:
        super().unregister_node(node_id)
        self.nodes.pop(node_id)

    def list_nodes(self) -> list[dict]:
        return [{"node-id": str(n), "status": "offline"} for n in self.nodes]


def test_a_restarted_coordinator_keeps_the_node_ids_its_database_holds(tmp_path: Path) -> None:
    import pytest

    from coordinator.registrations import register_enrolled
    from xsilo.errors import DeploymentError

    nodes, home = tmp_path / "nodes", tmp_path / "flwr-home"
    nodes.mkdir()
    for name in ("a", "b", "c"):
        (nodes / f"{name}.pub").write_text(f"ecdsa-sha2-nistp384 {name}")
    cli = _ListingCLI()  # one SuperLink database across the restarts below
    first, _ = register_enrolled(cli, nodes, home)
    assert sorted(first) == ["a", "b", "c"]
    cli.calls.clear()
    # restart, while down: b re-approved with a new key, c revoked
    (nodes / "b.pub").write_text("ecdsa-sha2-nistp384 b2")
    (nodes / "c.pub").unlink()
    again, _ = register_enrolled(cli, nodes, home)
    assert again["a"] == first["a"] and again["b"] != first["b"] and "c" not in again
    assert cli.calls == [("unregister", first["b"]), ("register", "ecdsa-sha2-nistp384 b2"),
                         ("unregister", first["c"])]
    assert sorted(cli.nodes) == sorted(again.values())
    # the home's record lost, the database kept: the fix is named
    (home / "registrations.json").unlink()
    with pytest.raises(DeploymentError, match="move .* away and start it again"):
        register_enrolled(cli, nodes, home)


def test_an_unreadable_registration_record_registers_every_key_afresh(tmp_path: Path) -> None:
    from coordinator.registrations import register_enrolled

    nodes, home = tmp_path / "nodes", tmp_path / "flwr-home"
    nodes.mkdir()
    home.mkdir()
    (nodes / "a.pub").write_text("ecdsa-sha2-nistp384 a")
    (home / "registrations.json").write_text('{"a": {"node_id": 1e400, "key": "k"}}')
    ids, _ = register_enrolled(_ListingCLI(), nodes, home)
    assert list(ids) == ["a"]

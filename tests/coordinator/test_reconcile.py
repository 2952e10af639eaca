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
    home = SimpleNamespace(nodes=nodes, gateway=None, cli=lambda: cli)
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

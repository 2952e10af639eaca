"""The silo's state in Flower's context is sealed: another process that takes one of the
silo's tasks on the SuperNode's unauthenticated Runtime API reads ciphertext, and a state it
pushes back is refused (the silo starts over, re-keyed, and is summed again)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from coordinator.config import RunConfig
from coordinator.local_grid import LocalGrid
from coordinator.run_store import RunStore
from federation.local import run_in_process
from silo_client import secure
from silo_client.sealed import KEY_FILE, SealBroken, seal, state_key, unseal
from xsilo.errors import ConfigError

NAMES = ["hospital-a", "hospital-b", "hospital-c"]
RECORD = {"enc_sk": b"\x01" * 32, "active": [1, 2, 3], "publics": [b"a", b"bc"], "stage": "x",
          "nested": {"b": b"\x00", "m": 1}, "ratio": 0.25, "flag": True}


def test_a_record_round_trips_and_nothing_else_opens(tmp_path: Path) -> None:
    key = state_key(tmp_path)
    blob = seal(RECORD, key, label="xsilo.secagg")
    assert unseal(blob, key, label="xsilo.secagg") == RECORD
    assert RECORD["enc_sk"] not in blob and b"hospital" not in blob
    broken = bytearray(blob)
    broken[-1] ^= 1
    other = state_key(tmp_path / "other")
    for bad, k, label in ((bytes(broken), key, "xsilo.secagg"), (blob, other, "xsilo.secagg"),
                          (blob, key, "xsilo.run"), (b"short", key, "xsilo.secagg"),
                          ("not bytes", key, "xsilo.secagg")):
        with pytest.raises(SealBroken):
            unseal(bad, k, label=label)
    assert seal(RECORD, key, label="l") != seal(RECORD, key, label="l")  # fresh nonce each time


def test_the_key_is_made_once_owner_only_and_shared_by_racing_processes(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(state_key(tmp_path / "ws")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = tmp_path / "ws" / KEY_FILE
    assert len(set(keys)) == 1 and len(keys[0]) == 32 and path.read_bytes() == keys[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [KEY_FILE]  # no temporary left


def test_a_key_others_can_read_or_of_the_wrong_size_is_refused_with_the_fix(
        tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    state_key(tmp_path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        state_key(tmp_path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="holds 5 bytes.*remove it"):
        state_key(tmp_path)


def _rows(run_dir: Path) -> dict[int, dict]:
    return {e["round"]: e for e in RunStore(run_dir).events() if e["event"] == "round"}


def test_no_secret_is_in_the_context_and_a_foreign_state_is_refused(
        tmp_path: Path, federation: list[Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A secure run in process: every silo's context holds sealed blobs only (none of its
    private keys in any form), and before round 2 hospital-c's context is replaced by a
    state that another silo sealed (what a process answering its task could push back): it
    is refused, hospital-c starts over, is re-keyed and summed again in round 3."""
    secrets_seen: list[bytes] = []
    setup = secure.setup

    def watch_setup(*args, **kwargs):  # test-only: the private keys each silo makes
        state, reply = setup(*args, **kwargs)
        secrets_seen.extend([state["enc_sk"], state["mask_sk"]])
        return state, reply

    monkeypatch.setattr(secure, "setup", watch_setup)
    contexts: dict[int, object] = {}
    push = LocalGrid.push_messages

    def swap_before_round_2(self, messages):
        messages = list(messages)
        contexts.update(self._contexts)
        if any(m.metadata.dst_node_id == 3 and m.metadata.message_type == "train"
               and m.metadata.group_id == "2" for m in messages):
            for name, record in self._contexts[1].state.config_records.items():
                self._contexts[3].state[name] = ConfigRecord(dict(record))
        return push(self, messages)

    monkeypatch.setattr(LocalGrid, "push_messages", swap_before_round_2)
    config = RunConfig(num_rounds=3, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=0.5)
    assert run_in_process(tmp_path / "run", config, federation)["rounds_failed"] == []

    assert len(secrets_seen) == 2 * 4  # three silos keyed at setup, hospital-c again
    for context in contexts.values():
        records = context.state.config_records
        assert set(records) == {"xsilo.secagg"}  # the join is on disk (silo_client.joins)
        for record in records.values():
            assert list(record) == ["sealed"]
            blob = record["sealed"]
            assert all(s not in blob and s.hex().encode() not in blob for s in secrets_seen)
    rows = _rows(tmp_path / "run")
    assert "KeysMissing" in rows[2]["rejected"]["hospital-c"]
    assert rows[3]["secure_aggregation"]["rekeyed"] == {"asked": 1, "keyed": 1}
    assert rows[3]["contributors"] == NAMES
    refused = [r for r in caplog.records if "does not authenticate" in r.getMessage()]
    assert refused and "hospital-c" in refused[0].getMessage()
    for config_path in federation:  # the key stayed in each silo's workspace, owner-only
        key = config_path.parent / "workspace" / KEY_FILE
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ledger = (federation[2].parent / "workspace" / "egress.jsonl").read_text()
    assert all(s.hex() not in ledger for s in secrets_seen)
    assert json.loads(ledger.splitlines()[-1])["seq"] > 0

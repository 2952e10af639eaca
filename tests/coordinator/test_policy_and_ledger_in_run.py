"""Site policy refusals reach the coordinator; every outgoing message is in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import RunConfig
from coordinator.run_store import RunStore
from silo_client.config import load_silo_config, write_silo_config
from silo_client.ledger import verify_ledger
from xsilo.demo_data import demo_schema
from xsilo.local import run_in_process


def _with_policy(config: Path, policy: str) -> None:
    (config.parent / "policy.toml").write_text(policy)
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))


@pytest.mark.parametrize("policy, run, reason", [
    ("require_secure_aggregation = true", {}, "require_secure_aggregation"),
    ('allowed_strategies = ["fedprox"]', {}, "allowed_strategies"),
    ("max_rounds = 1", {"num_rounds": 2}, "max_rounds"),
    ("min_silos_per_round = 4", {}, "min_silos_per_round"),
    ("max_epsilon = 1.0\ndelta = 1e-5", {}, "max_epsilon"),
])
def test_policy_refusal_reason_reaches_the_coordinator(tmp_path: Path, make_silos,
                                                       policy: str, run: dict, reason: str) -> None:
    configs = make_silos(tmp_path / "silos")
    _with_policy(configs[0], policy)
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, RunConfig(**{"num_rounds": 1, "min_silos": 2, **run}),
                             configs)
    assert summary["status"] == "completed"
    assert "hospital-a" not in summary["silos"]
    join = next(e for e in RunStore(run_dir).events() if e["event"] == "join")
    refusal = join["refused"]["node-1"]
    assert refusal.startswith(f"PolicyRefusal[{reason}]")
    ledger = load_silo_config(configs[0]).workspace / "egress.jsonl"
    assert verify_ledger(ledger).ok  # the refusal left the site, so it is recorded
    assert "refusal" in ledger.read_text()


def test_every_outgoing_message_is_in_a_valid_ledger(tmp_path: Path, federation: list[Path]) -> None:
    run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3), federation)
    import json

    for config in federation:
        path = load_silo_config(config).workspace / "egress.jsonl"
        assert verify_ledger(path).ok
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert [e["message_type"] for e in entries] == ["query", "train", "train", "evaluate"]
        assert [e["server_round"] for e in entries] == [0, 1, 2, 2]
        assert entries[1]["tensors"] and entries[1]["tensors"] == entries[0]["tensors"]
        assert entries[3]["tensors"] == {}  # evaluation replies carry metrics only
        assert all(len(e["payload_sha256"]) == 64 for e in entries)

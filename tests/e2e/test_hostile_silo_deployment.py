"""On real SuperLink/SuperNode processes: one silo that sends garbage does not end the run.

hospital-a runs hostile code of its own (its model module, preloaded by its warm SuperExec,
rewrites every masked input it sends so that the message kind is a list — the record Flower
carries is well formed, what is inside it is not). The coordinator refuses that silo's input
each round with a ProtocolError naming it, and the run completes on the other two.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import RunConfig
from federation.deployment import LocalFederation
from silo_client.config import load_silo_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

HOSTILE = '''
"""A silo that corrupts what it sends (test double for a hostile or broken peer)."""
from flwr.app import ConfigRecord
from sklearn.linear_model import LogisticRegression

import silo_client.client_app as client_app

_honest = client_app._Handlers._masked_reply


def _garbled(self, msg, *args, **kwargs):
    reply = _honest(self, msg, *args, **kwargs)
    record = dict(reply.content.config_records["secagg"])
    record["kind"] = ["secagg/masked_input"]  # a list where a string belongs
    reply.content["secagg"] = ConfigRecord(record)
    return reply


client_app._Handlers._masked_reply = _garbled


def build():
    return LogisticRegression(max_iter=20)
'''


def test_a_silo_sending_garbage_does_not_end_a_deployed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hostile_model.py").write_text(HOSTILE)
    monkeypatch.setenv("PYTHONPATH", str(site))  # inherited by every Flower process
    fed = LocalFederation(tmp_path / "fed").setup()
    config_path = fed.silos[0].path
    assert fed.silos[0].name == "hospital-a"
    config_path.write_text(config_path.read_text().replace(
        'spec = "sklearn:LogisticRegression"', 'spec = "hostile_model:build"'))
    fed.silos[0] = load_silo_config(config_path)
    assert fed.silos[0].model == "hostile_model:build"
    with fed:
        fed.start()
        outcome = fed.run(RunConfig(num_rounds=2, min_silos=2, expected_silos=3,
                                    secure_aggregation=True, secagg_threshold=2,
                                    round_timeout=30.0, join_timeout=45.0, name="hostile"),
                          timeout=85)
    assert outcome.status == "finished:completed", outcome.summary
    assert outcome.summary["status"] == "completed" and outcome.summary["rounds_failed"] == []
    rows = [e for e in outcome.store.events() if e["event"] == "round"][1:]
    assert len(rows) == 2
    for row in rows:
        refusal = row["rejected"]["hospital-a"]
        assert refusal.startswith("ProtocolError") and "not a secure-aggregation message" in refusal
        assert row["contributors"] == ["hospital-b", "hospital-c"] and row["status"] == "ok"

"""On real SuperLink/SuperNode processes: one silo that sends garbage does not end the run.

hospital-a runs hostile code of its own (its model module, preloaded by its warm SuperExec).
In the first test it rewrites every masked input it sends so that the message kind is a list
— the record Flower carries is well formed, what is inside it is not. In the second, in
round 1 it forges the packed ``Array`` that carries its clear update (``xsilo/records.py``):
one byte short, so that its header names more bytes than the buffer holds; in round 2 it
claims the largest count a reply may carry for an update whose weighted sum would overflow
float64. Each round the coordinator refuses that silo's input alone with a reason naming it,
the operator reads the reason in ``xsilo coordinator status`` (a real process), and the run
completes on the other two.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
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


FORGED_THEN_ABSURD = '''
"""A silo whose clear update in round 1 is a forged packed Array (one byte short, so that
the header's last array runs past the buffer), and which in round 2 claims 2**53 examples
(the most a count may be) for an update of 1e300s, whose weighted sum is past float64
(test double for a hostile or broken peer)."""
import sys

import numpy as np
from flwr.app import Array, ArrayRecord
from sklearn.linear_model import LogisticRegression

import silo_client.client_app as client_app
from xsilo.records import PACKED
from xsilo.terms import NUM_EXAMPLES

_pack, _metrics = client_app.arrays_to_record, client_app.MetricRecord


def _round(caller):
    """The train round the calling handler answers (None: not a train reply)."""
    return caller.f_locals["terms"].server_round if caller.f_code.co_name == "train" else None


def _hostile_pack(arrays):
    server_round = _round(sys._getframe(1))  # the update only; its join is honest
    if server_round == 2:
        arrays = {k: np.full_like(v, 1e300) for k, v in arrays.items()}
    record = _pack(arrays)
    if server_round != 1:
        return record
    forged = record[PACKED].data[:-1]
    return ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(forged),), stype=PACKED,
                                      data=forged)})


def _claimed(metrics):
    if _round(sys._getframe(1)) == 2 and NUM_EXAMPLES in metrics:
        metrics = {**metrics, NUM_EXAMPLES: float(2 ** 53)}
    return _metrics(metrics)


client_app.arrays_to_record, client_app.MetricRecord = _hostile_pack, _claimed


def build():
    return LogisticRegression(max_iter=20)
'''


def _hostile_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        module: str) -> LocalFederation:
    """A local federation whose hospital-a builds its model from ``module`` (its source),
    which its warm SuperExec imports, and with it the hostile change."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hostile_model.py").write_text(module)
    monkeypatch.setenv("PYTHONPATH", str(site))  # inherited by every Flower process
    fed = LocalFederation(tmp_path / "fed").setup()
    config_path = fed.silos[0].path
    assert fed.silos[0].name == "hospital-a"
    config_path.write_text(config_path.read_text().replace(
        'spec = "sklearn:LogisticRegression"', 'spec = "hostile_model:build"'))
    fed.silos[0] = load_silo_config(config_path)
    assert fed.silos[0].model == "hostile_model:build"
    return fed


def _run_with_hostile_silo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str,
                           name: str, **terms) -> tuple[list[dict], str, LocalFederation]:
    """Two rounds with hospital-a on ``module``: the run must complete on the other two.
    Its round rows, what ``xsilo coordinator status`` (a real process) shows the operator,
    and the federation."""
    fed = _hostile_federation(tmp_path, monkeypatch, module)
    with fed:
        fed.start()
        outcome = fed.run(RunConfig(num_rounds=2, min_silos=2, expected_silos=3,
                                    round_timeout=30.0, join_timeout=45.0, name=name, **terms),
                          timeout=85)
        shown = subprocess.run([str(Path(sys.executable).parent / "xsilo"), "coordinator",
                                "status", str(fed.home_dir / "runs" / name)],
                               capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert outcome.status == "finished:completed", outcome.summary
    assert outcome.summary["status"] == "completed" and outcome.summary["rounds_failed"] == []
    rows = [e for e in outcome.store.events() if e["event"] == "round"][1:]
    assert len(rows) == 2
    for row in rows:
        assert row["contributors"] == ["hospital-b", "hospital-c"] and row["status"] == "ok"
    # the caption of the operator's table gives each reason (its first 200 characters)
    rounds: dict[str, list[str]] = {}
    for row in rows:
        rounds.setdefault(row["rejected"]["hospital-a"], []).append(str(row["round"]))
    for why, at in rounds.items():
        note = f"rejected in round{'s' * (len(at) > 1)} {', '.join(at)}: hospital-a: {why}"[:200]
        assert "".join(note.split()) in "".join(shown.stdout.split()), shown.stdout
    return rows, shown.stdout, fed


def test_a_silo_sending_garbage_does_not_end_a_deployed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, _, _ = _run_with_hostile_silo(tmp_path, monkeypatch, HOSTILE, "hostile",
                                        secure_aggregation=True, secagg_threshold=2)
    for row in rows:
        refusal = row["rejected"]["hospital-a"]
        assert refusal.startswith("ProtocolError") and "not a secure-aggregation message" in refusal


def test_a_forged_update_then_an_overflowing_one_are_refused_and_the_operator_sees_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 1: a packed update whose header runs past its buffer, a ProtocolError. Round 2:
    counts up to 2**53 parse, and so do finite updates, but their product need not fit a
    float64; the accumulator rejects that one update before it touches the sums. Both
    rounds go on with the others and the model stays finite."""
    rows, shown, fed = _run_with_hostile_silo(tmp_path, monkeypatch, FORGED_THEN_ABSURD,
                                              "forged")
    forged, absurd = (row["rejected"]["hospital-a"] for row in rows)
    assert forged.startswith("ProtocolError[malformed-reply]: packed arrays: "), forged
    assert "runs past the buffer" in forged, forged
    assert absurd.startswith("update from silo 'hospital-a' rejected: its weight 9.0072e+15")
    assert "overflow float64" in absurd and "the model is not touched" in absurd, absurd
    # round 1's row names the silo and the start of the reason; the caption all of it
    assert "".join(shown.split()).count("ProtocolError[malformed-reply") == 2, shown
    log = (fed.home_dir / "runs" / "forged" / "coordinator.log").read_text()
    assert "sent a malformed reply: packed arrays" in log
    model = np.load(fed.home_dir / "runs" / "forged" / "model.npz")
    assert all(np.isfinite(model[k]).all() for k in model.files)

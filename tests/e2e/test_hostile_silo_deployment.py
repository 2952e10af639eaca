"""On real SuperLink/SuperNode processes: one silo that sends garbage does not end the run.

hospital-a runs hostile code of its own (its model module, preloaded by its warm SuperExec).
In the first test it rewrites every masked input it sends so that the message kind is a list
— the record Flower carries is well formed, what is inside it is not. In the second it
forges the packed ``Array`` that carries its clear update (``xsilo/records.py``): one byte
short, so that its header names more bytes than the buffer holds. Each time the coordinator
refuses that silo's input each round with a ProtocolError naming it, the operator reads the
reason in ``xsilo coordinator status`` (a real process), and the run completes on the other
two. In the third it claims the largest count a reply may carry for an update whose
weighted sum would overflow float64: that update alone is rejected.
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


FORGED_PACK = '''
"""A silo whose clear update is a forged packed Array: one byte short, so that the header's
last array runs past the buffer (test double for a hostile or broken peer)."""
import sys

from flwr.app import Array, ArrayRecord
from sklearn.linear_model import LogisticRegression

import silo_client.client_app as client_app
from xsilo.records import PACKED

_honest = client_app.arrays_to_record


def _forged(arrays):
    record = _honest(arrays)
    if sys._getframe(1).f_code.co_name != "train":  # only the update; its join is honest
        return record
    forged = record[PACKED].data[:-1]
    return ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(forged),), stype=PACKED,
                                      data=forged)})


client_app.arrays_to_record = _forged


def build():
    return LogisticRegression(max_iter=20)
'''


ABSURD_COUNT = '''
"""A silo that claims 2**53 examples (the most a count may be) for an update of 1e300s:
weight times update is past float64 (test double for a hostile or broken peer)."""
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

import silo_client.client_app as client_app
from xsilo.terms import NUM_EXAMPLES

_pack, _metrics = client_app.arrays_to_record, client_app.MetricRecord


def _huge(arrays):
    if sys._getframe(1).f_code.co_name == "train":  # the update; its join is honest
        arrays = {k: np.full_like(v, 1e300) for k, v in arrays.items()}
    return _pack(arrays)


def _claimed(metrics):
    if sys._getframe(1).f_code.co_name == "train" and NUM_EXAMPLES in metrics:
        metrics = {**metrics, NUM_EXAMPLES: float(2 ** 53)}
    return _metrics(metrics)


client_app.arrays_to_record, client_app.MetricRecord = _huge, _claimed


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
    # the caption of the operator's table gives the reason (its first 200 characters)
    note = f"rejected in rounds 1, 2: hospital-a: {rows[0]['rejected']['hospital-a']}"[:200]
    assert "".join(note.split()) in "".join(shown.stdout.split()), shown.stdout
    return rows, shown.stdout, fed


def test_a_silo_sending_garbage_does_not_end_a_deployed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, _, _ = _run_with_hostile_silo(tmp_path, monkeypatch, HOSTILE, "hostile",
                                        secure_aggregation=True, secagg_threshold=2)
    for row in rows:
        refusal = row["rejected"]["hospital-a"]
        assert refusal.startswith("ProtocolError") and "not a secure-aggregation message" in refusal


def test_a_forged_packed_update_is_refused_and_the_operator_sees_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, shown, fed = _run_with_hostile_silo(tmp_path, monkeypatch, FORGED_PACK, "forged")
    for row in rows:
        refusal = row["rejected"]["hospital-a"]
        assert refusal.startswith("ProtocolError[malformed-reply]: packed arrays: "), refusal
        assert "runs past the buffer" in refusal, refusal
    # each round's row names the silo and the start of the reason; the caption all of it
    assert "".join(shown.split()).count("ProtocolError[malformed-reply") == 3, shown
    log = (fed.home_dir / "runs" / "forged" / "coordinator.log").read_text()
    assert "sent a malformed reply: packed arrays" in log


def test_a_silo_whose_weighted_update_would_overflow_the_sums_is_rejected_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts up to 2**53 parse, and so do finite updates; their product need not fit a
    float64. The accumulator rejects that one update before it touches the sums: the round
    goes on with the others, the model stays finite."""
    rows, _, fed = _run_with_hostile_silo(tmp_path, monkeypatch, ABSURD_COUNT, "absurd")
    for row in rows:
        refusal = row["rejected"]["hospital-a"]
        assert refusal.startswith("update from silo 'hospital-a' rejected: its weight 9.0072e+15")
        assert "overflow float64" in refusal and "the model is not touched" in refusal, refusal
    model = np.load(fed.home_dir / "runs" / "absurd" / "model.npz")
    assert all(np.isfinite(model[k]).all() for k in model.files)

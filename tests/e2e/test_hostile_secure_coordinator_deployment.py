"""On real SuperLink/SuperNode processes: a coordinator that breaks a *secure* run's messages
is refused by every silo, and a silo that left the run or whose data went bad says so
without its data leaving.

The coordinator's ServerApp runs hostile code (a ``sitecustomize`` on the Flower processes'
``PYTHONPATH`` that acts in ``flwr-serverapp`` only) at the one place it builds a silo's
message (``coordinator.transport.GridTransport._message``):

* run ``ddp``: the run is secure with distributed DP, but its join message says it is not
  secure. The distributed mechanism's noise is each silo's share, added under the masks:
  in the clear the updates would leave with no noise at all, so every silo refuses to join.
* run ``hostile``, secure, no DP. Round 1 is honest. Round 2 sends the global model in
  float16, not the silos' model's dtype (an update cast back into another dtype is not what
  was trained), round 3 a malformed mask request, round 4 no mask request at all (a clear
  round of a run joined under secure aggregation). Before round 5, an honest one,
  hospital-b's training data gets a bad cell holding a name, and hospital-c's operator
  removes its join record (it leaves the run): hospital-b's refusal names the file, column
  and row but not the cell, and hospital-c refuses a run it has no join of. Round 6 hands
  the silos' model code 65 strategy values (a round config holds at most 64): every silo
  refuses it before its model code sees them.

In-process, each refusal has its own unit test (``tests/silo_client/test_client_app.py``);
this is the path a silo meets them on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from strategies.dp import DPConfig
from tests.e2e._kills import SILOS, ledger, start, while_standing_at, with_serverapp_double

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

HOSTILE_COORDINATOR = '''
"""A coordinator that breaks secure runs' messages (test double, ServerApp only)."""
import os
import sys

if os.path.basename(sys.argv[0]) == "flwr-serverapp":
    from dataclasses import replace

    import numpy as np

    from coordinator import transport
    from xsilo.terms import JoinTerms

    _honest = transport.GridTransport._message

    def _hostile(node, message_type, payload, group, timeout, records):
        terms = payload.terms
        if message_type == "query" and isinstance(terms, JoinTerms) and terms.dp is not None:
            # a distributed-DP run offered as if it were not secure
            payload = replace(payload, terms=replace(terms, secure_aggregation=False,
                                                     secagg_threshold=None))
        elif message_type == "train" and group == "2":  # the global model in float16
            payload = replace(payload, arrays={k: np.asarray(v, dtype=np.float16)
                                               for k, v in payload.arrays.items()})
        elif message_type == "train" and group == "3":  # a malformed mask request
            payload = replace(payload, secagg={"kind": "bogus"})
        elif message_type == "train" and group == "4":  # no mask request: a clear round
            payload = replace(payload, secagg=None)
        elif message_type == "train" and group == "6":  # 65 values for the silos' model code
            payload = replace(payload, terms=replace(
                terms, strategy_config={f"knob-{i}": i for i in range(65)}))
        return _honest(node, message_type, payload, group, timeout, records)

    transport.GridTransport._message = staticmethod(_hostile)
'''

NAME = "PATIENT Jane Doe DOB 1961-02-03"  # what must never leave hospital-b


def _bad_cell(train: Path) -> str:
    """Put ``NAME`` into the first feature cell of the file's first row; return the column."""
    lines = train.read_text().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    column = next(c for c in header if c != "label")
    row[header.index(column)] = NAME
    train.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    return column


def _files_holding(root: Path, text: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and text in p.read_bytes()]


def test_every_silo_refuses_a_secure_runs_broken_messages_and_no_cell_leaves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = with_serverapp_double(tmp_path, monkeypatch, HOSTILE_COORDINATOR)
    silo = {s.name: s for s in fed.silos}
    column: list[str] = []

    def before_round_5() -> None:
        column.append(_bad_cell(silo["hospital-b"].train))
        (record,) = (silo["hospital-c"].workspace / "joined").glob("*.json")
        record.unlink()  # hospital-c's operator leaves the run

    with fed:
        markers = start(fed, monkeypatch, "round:5")
        ddp = fed.run(RunConfig(num_rounds=1, min_silos=2, expected_silos=3,
                                secure_aggregation=True, round_timeout=30.0,
                                join_timeout=45.0, name="ddp",
                                dp=DPConfig(mechanism="distributed", noise_multiplier=1.0,
                                            clip_norm=1.0)), timeout=90)
        with while_standing_at("round:5", markers, before_round_5):
            outcome = fed.run(RunConfig(num_rounds=6, min_silos=2, expected_silos=3,
                                        secure_aggregation=True, round_timeout=30.0,
                                        join_timeout=45.0, name="hostile"), timeout=120)
        shown = subprocess.run([str(Path(sys.executable).parent / "xsilo"), "coordinator",
                                "status", str(fed.home_dir / "runs" / "hostile")],
                               capture_output=True, text=True, timeout=60)
        ledgers = {name: ledger(fed, name) for name in SILOS}

    # run ddp: refused at join by every silo, nothing trained
    (join,) = [e for e in ddp.store.events() if e["event"] == "join"]
    assert join["silos"] == {} and sorted(join["refused"]) == SILOS, join
    for name in SILOS:
        assert "distributed mechanism" in join["refused"][name], join
        assert "refusing to join" in join["refused"][name], join
    assert ddp.summary["status"] == "failed", ddp.summary
    assert "only 0 silo(s) joined" in str(ddp.summary), ddp.summary

    # run hostile: round 1 trained by all, rounds 2-4 refused by all, round 5 by two
    rows = {e["round"]: e for e in outcome.store.events() if e["event"] == "round"}
    assert rows[1]["contributors"] == SILOS, rows[1]
    said = {2: "the global model is not this silo's model",
            3: "not a secure-aggregation message",
            4: "joined the run with secure aggregation but the train message has no mask "
               "request"}
    for server_round, reason in said.items():
        row = rows[server_round]
        assert row["contributors"] == [] and row["status"] == "failed", row
        for name in SILOS:
            assert "ProtocolError" in row["rejected"][name], row
            assert reason in row["rejected"][name], row
    assert all("float16" in rows[2]["rejected"][name] for name in SILOS), rows[2]
    row = rows[5]
    assert row["status"] == "failed", row
    assert "hospital-b" in row["rejected"] and "hospital-c" in row["rejected"], row
    data_error = row["rejected"]["hospital-b"]
    assert "DataValidationError" in data_error, row
    assert f"column {column[0]!r}, row 1 (line 2)" in data_error, row
    assert "train.csv" in data_error and NAME not in data_error, row
    assert str(silo["hospital-b"].train.parent) not in data_error, row  # not the path either
    assert "has not joined" in row["rejected"]["hospital-c"], row
    row = rows[6]  # every silo refuses 65 strategy values before its model code sees them
    assert row["contributors"] == [] and row["status"] == "failed", row
    for name in SILOS:
        assert "more than 64 strategy values" in row["rejected"][name], row
    # the cell is in no file of the coordinator's (run directory, logs, Flower's state)
    assert _files_holding(fed.home_dir, b"Jane Doe") == []

    # what left each silo: masked vectors of round 1 (hospital-a: of round 5 too), and each
    # refusal in its ledger
    for name, entries in ledgers.items():
        hostile_run = [e for e in entries if e["server_round"] >= 1]
        trained = [e["server_round"] for e in hostile_run if e["message_type"] == "train"]
        refused = [e["server_round"] for e in hostile_run
                   if e["message_type"] == "train.refusal"]
        assert all(e["masked"] for e in hostile_run if e["message_type"] == "train"), name
        if name == "hospital-a":
            assert trained == [1, 5] and refused == [2, 3, 4, 6], (name, hostile_run)
        else:
            assert trained == [1] and refused == [2, 3, 4, 5, 6], (name, hostile_run)

    assert shown.returncode == 0, shown.stdout + shown.stderr
    shown_text = " ".join(shown.stdout.split())
    for reason in ("not a secure-aggregation message", "has no mask request",
                   "has not joined", "DataValidationError"):  # each reaches the operator
        assert reason in shown_text, shown.stdout

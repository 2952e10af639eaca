"""Kill tests on real processes: the ServerApp (flwr-serverapp, the coordinator's round loop)
is SIGKILLed mid-run and the run is resumed with the same call as `xsilo coordinator run
--resume`. A clear, deterministic FedAvg run completes the requested rounds, every
checkpoint verifies, and its final model is the uninterrupted run's; a secure run killed
during masked-input collection is keyed afresh and completes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig
from coordinator.run_record import unique_rounds
from coordinator.run_store import RunStore, load_npz
from federation.deployment import LocalFederation
from federation.local import run_in_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone


def _kill_serverapp_when(store: RunStore, ready, timeout: float = 60.0) -> int:
    """SIGKILL the process that runs the coordinator of ``store``'s run once ``ready()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = store.owner()
        if pid is not None and ready():
            os.kill(pid, signal.SIGKILL)
            while store.owner() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            return pid
        time.sleep(0.1)
    raise AssertionError(f"the run never got there; events: {store.events()}")


def _awaiting(store: RunStore, server_round: int) -> bool:
    return any(e["event"] == "awaiting" and e["round"] == server_round for e in store.events())


def test_a_killed_serverapp_resumes_to_the_uninterrupted_model(tmp_path: Path,
                                                              make_silos) -> None:
    config = RunConfig(num_rounds=2, min_silos=3, expected_silos=3, round_timeout=60.0,
                       join_timeout=45.0, name="kill")
    reference = tmp_path / "reference"  # the same silos' data, uninterrupted, in process
    run_in_process(reference, config, make_silos(tmp_path / "reference-silos"))
    fed = LocalFederation(tmp_path / "fed").setup()
    with fed:
        fed.start()
        run_id, store = fed.submit(config)
        # round 1 is checkpointed and round 2's train messages are out: kill the loop
        killed = _kill_serverapp_when(store, lambda: _awaiting(store, 2))
        assert store.summary() is None  # a SIGKILL leaves nothing but what was written
        outcome = fed.resume("kill", timeout=70)
        processes = list(fed.processes)
    assert all(not p.alive() for p in processes)
    assert outcome.completed, (outcome.status, outcome.summary)
    assert store.recorded_owner_record() and str(killed) not in store.recorded_owner_record()
    assert outcome.summary["rounds_requested"] == 2 and outcome.summary["rounds_failed"] == []
    assert store.verify_checkpoints() == {}
    assert sorted(p.name for p in store.checkpoints.glob("*.npz")) == [
        "round-0001.npz", "round-0002.npz"]
    events = store.events()
    assert next(e for e in events if e["event"] == "resume")["from_round"] == 1
    assert [r["round"] for r in unique_rounds(events)[0]] == [0, 1, 2]
    starts = [e["flower_run_id"] for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[0] == run_id != starts[1]  # two Flower runs, one run
    got, want = load_npz(store.path / "model.npz"), load_npz(reference / "model.npz")
    assert list(got) == list(want)
    for k in want:  # equal up to the order the silos' float64 updates were summed in
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def _masked_inputs_left(fed: LocalFederation, server_round: int) -> bool:
    for silo in fed.silos:
        ledger = silo.workspace / "egress.jsonl"
        for line in ledger.read_text().splitlines() if ledger.exists() else []:
            try:
                e = json.loads(line)
            except ValueError:  # being written right now
                continue
            if e["message_type"] == "train" and e["masked"] and e["server_round"] == server_round:
                return True
    return False


def test_a_secure_run_killed_during_masked_input_collection_is_keyed_afresh(
        tmp_path: Path) -> None:
    config = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                       round_timeout=40.0, join_timeout=45.0, name="secure-kill")
    fed = LocalFederation(tmp_path / "fed").setup()
    with fed:
        fed.start()
        _, store = fed.submit(config)
        _kill_serverapp_when(store, lambda: _masked_inputs_left(fed, 1))
        outcome = fed.resume("secure-kill", timeout=75)
        processes = list(fed.processes)
    assert all(not p.alive() for p in processes)
    assert outcome.completed, (outcome.status, outcome.summary)
    events = store.events()
    assert next(e for e in events if e["event"] == "resume")["from_round"] == 0
    setups = [e for e in events if e["event"] == "secure_aggregation_setup"]
    assert len(setups) == 2 and setups[-1]["not_keyed"] == {}  # keyed afresh after the resume
    rows = unique_rounds(events)[0]
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"]
    for silo in fed.silos:  # each silo answered one key request per secure-aggregation run
        ledger = [json.loads(line) for line in
                  (silo.workspace / "egress.jsonl").read_text().splitlines()]
        assert sum(e["message_type"] == "train.secagg_setup" for e in ledger) == 2

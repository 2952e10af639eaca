"""A SuperLink kill in a deterministic clear run on real processes: the SuperLink alone
SIGKILLed during round 2, then the coordinator restarted as `xsilo coordinator start` and
its service manager do (:meth:`LocalFederation.restart_coordinator`). A ServerApp cannot go
on without its SuperLink: the restarted coordinator says which run to resume, and `--resume`
completes it with every silo. The same run's ServerApp is first killed with a checkpoint half
written (an :mod:`xsilo.failpoints` point), and the run still ends at the uninterrupted
run's model. The secure-round phases are in ``test_superlink_kill_phases.py``."""

from __future__ import annotations

import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tests.e2e._kills as kills
from coordinator.config import RunConfig
from coordinator.run_record import unique_rounds
from coordinator.run_store import load_npz
from coordinator.runs import resume_run
from federation.deployment import LocalFederation
from federation.local import run_in_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: 60-90 s alone


def test_a_clear_run_survives_a_torn_checkpoint_and_a_superlink_kill_to_the_same_model(
        tmp_path: Path, make_silos, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deterministic clear FedAvg run: the ServerApp is SIGKILLed with round 1's
    checkpoint half written, resumed; then the SuperLink alone is SIGKILLed in round 2 and
    the coordinator restarted, and the run resumed again. No torn file is read, and the final
    model is the uninterrupted in-process run's."""
    config = RunConfig(num_rounds=2, min_silos=3, expected_silos=3, round_timeout=60.0,
                       join_timeout=45.0, name="clear-kill")
    reference = tmp_path / "reference"  # the same silos' data, uninterrupted, in process
    run_in_process(reference, config, make_silos(tmp_path / "reference-silos"))
    fed = LocalFederation(tmp_path / "fed", mtls=True).setup()
    with fed:
        markers = kills.start(fed, monkeypatch, "checkpoint-write")
        _, store = fed.submit(config)
        kills.kill_serverapp_at("checkpoint-write", markers, store)
        torn = list(store.checkpoints.glob(".round-0001.npz.*.tmp"))
        assert len(torn) == 1 and not (store.checkpoints / "round-0001.npz").exists()
        with pytest.raises(zipfile.BadZipFile):  # half a zip: nothing could read it
            load_npz(torn[0])
        assert store.load_checkpoint() is None and store.verify_checkpoints() == {}

        resume_run(fed.home.cli(), store.path)
        kills.until(lambda: any(e["event"] == "awaiting" and e["round"] == 2
                                for e in store.events()), 60, "round 2 of the resumed run")
        superlink = kills.superlink_pid(fed)
        os.kill(superlink, signal.SIGKILL)
        said = fed.restart_coordinator()
        assert any("--resume clear-kill" in line for line in said), said
        outcome = fed.resume("clear-kill", timeout=90)
        kills.silos_up(fed)
    assert outcome.completed, (outcome.status, outcome.summary)
    assert outcome.summary["rounds_requested"] == 2 and outcome.summary["rounds_failed"] == []
    assert store.verify_checkpoints() == {}
    assert sorted(p.name for p in store.checkpoints.iterdir()) == [
        "round-0001.npz", "round-0002.npz"]  # the torn temporary is gone
    events = store.events()
    resumes = [e for e in events if e["event"] == "resume"]
    assert [r["from_round"] for r in resumes] == [0, 1]
    assert resumes[0]["discarded_temporaries"] == [f"checkpoints/{torn[0].name}"]
    assert len(set(store.flower_runs())) == 3
    rows = unique_rounds(events)[0]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["contributors"] == kills.SILOS for r in rows[1:])
    got, want = load_npz(store.path / "model.npz"), load_npz(reference / "model.npz")
    assert list(got) == list(want)
    for k in want:  # equal up to the order the silos' float64 updates were summed in
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)

"""The SuperLink alone SIGKILLed in every phase of a secure round, on real processes: during
the key setup, the masked-input collection, the unmasking, and while round 1's checkpoint
is written. Each kill lands in its phase every time: the run's ServerApp is held there by an
:mod:`xsilo.failpoints` point (each point holds the first ServerApp that reaches it, and
lets the resumed ones through). After each kill the coordinator is restarted as `xsilo
coordinator start` and its service manager do (:meth:`LocalFederation.restart_coordinator`);
it says which run to resume, and `--resume` keys the run afresh. One federation, one run,
four SuperLink kills: the fifth attempt completes with every silo, nothing torn is read, and
no silo process exits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import tests.e2e._kills as kills
from coordinator.config import RunConfig
from coordinator.run_record import unique_rounds
from coordinator.runs import resume_run
from federation.deployment import LocalFederation
from xsilo.failpoints import ENV, ENV_DIR, wait_reached

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # a hang guard: ~125 s alone

PHASES = ["reply:train.secagg_setup", "reply:train", "reply:train.unmask", "checkpoint-write"]


def test_a_secure_run_whose_superlink_is_killed_in_each_phase_resumes_with_every_silo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(num_rounds=1, min_silos=3, expected_silos=3, secure_aggregation=True,
                       round_timeout=40.0, join_timeout=45.0, name="secure-link")
    fed = LocalFederation(tmp_path / "fed", mtls=True).setup()
    with fed:
        markers = kills.start(fed, monkeypatch, *PHASES)
        _, store = fed.submit(config)
        for point in PHASES:
            # a resumed run joins, is keyed and reaches the next phase: ~20 s alone, more than
            # 60 s once in a loaded CI run (every SuperNode reconnecting to the new SuperLink)
            serverapp = wait_reached(point, markers, timeout=120)
            assert store.owner() == serverapp, point  # the run's own ServerApp, held there
            os.kill(kills.superlink_pid(fed), signal.SIGKILL)
            with monkeypatch.context() as env:  # the restarted coordinator's runs are armed
                env.setenv(ENV, ",".join(PHASES))
                env.setenv(ENV_DIR, str(markers))
                said = fed.restart_coordinator()
                assert store.owner() is None, point  # it did not outlive its SuperLink
                assert any("--resume secure-link" in line for line in said), (point, said)
                if point != PHASES[-1]:
                    resume_run(fed.home.cli(), store.path)
        # killed before the rename: round 1's checkpoint is absent, not torn (a ServerApp
        # that Flower interrupts, rather than kills, removes its temporary itself)
        assert not (store.checkpoints / "round-0001.npz").exists()
        outcome = fed.resume("secure-link", timeout=90)
        kills.silos_up(fed)
    assert outcome.completed, (outcome.status, outcome.summary)
    assert outcome.summary["rounds_requested"] == 1 and outcome.summary["rounds_failed"] == []
    assert store.verify_checkpoints() == {}
    events = store.events()
    resumes = [e for e in events if e["event"] == "resume"]
    assert [e["from_round"] for e in resumes] == [0, 0, 0, 0]  # round 1 never completed
    torn = [e["discarded_temporaries"] for e in resumes]
    assert torn[:3] == [[], [], []] and all("round-0001.npz" in t for t in torn[3]), torn
    setups = [e for e in events if e["event"] == "secure_aggregation_setup"]
    assert len(setups) == 4 and setups[-1]["not_keyed"] == {}  # all but the first attempt
    rows = unique_rounds(events)[0]
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["contributors"] == kills.SILOS

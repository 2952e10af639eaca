"""ServerApp kills on real processes, at points no timing hits: the coordinator's round loop
(``flwr-serverapp``) SIGKILLed during a secure run's key setup and, after a resume, during
its unmasking; the run is continued with the same call as `xsilo coordinator run --resume`
and completes, keyed afresh, with the ε each silo recorded itself. The points are
:mod:`xsilo.failpoints`, armed in the environment the coordinator's processes inherit
(SuperLink → SuperExec → ServerApp): each blocks the first process that reaches it, which
the test then kills; a resumed run passes it. SuperLink kills: test_superlink_kills.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.e2e._kills as kills
from coordinator.config import RunConfig
from coordinator.run_record import unique_rounds
from coordinator.runs import resume_run
from federation.deployment import LocalFederation
from silo_client.policy import PrivacyTally
from silo_client.privacy import TALLY_FILE
from strategies.dp import DPConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: 60-90 s alone


def test_a_secure_dp_run_killed_in_key_setup_then_in_unmasking_completes_with_the_silos_epsilon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ServerApp kills in one secure, central-DP run: the first during the key setup
    (a key advert is in, the run is not keyed), the second during round 1's unmasking (the
    silos' masked updates left — each silo counted its ε — and one unmask share is in). The
    resumed run is keyed afresh each time and reports the ε each silo recorded itself:
    round 1's update left twice, so each silo counted two releases (it cannot tell a restart
    from a replay), and the coordinator adopts that tally."""
    dp = DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=1.0, accounting="rdp")
    config = RunConfig(num_rounds=1, min_silos=3, expected_silos=3, secure_aggregation=True,
                       round_timeout=40.0, join_timeout=45.0, name="secure-dp", dp=dp)
    fed = LocalFederation(tmp_path / "fed").setup()
    with fed:
        markers = kills.start(fed, monkeypatch, "reply:train.secagg_setup", "reply:train.unmask")
        _, store = fed.submit(config)
        kills.kill_serverapp_at("reply:train.secagg_setup", markers, store)
        events = store.events()
        assert not any(e["event"] == "secure_aggregation_setup" for e in events)  # not keyed
        assert any(kills.sent(fed, "train.secagg_setup").values())  # a key advert had left
        assert not any(kills.sent(fed, "train").values())  # no update had

        run_id, _ = resume_run(fed.home.cli(), store.path)
        kills.kill_serverapp_at("reply:train.unmask", markers, store)
        masked = kills.sent(fed, "train", 1)
        assert all(len(masked[n]) == 1 and masked[n][0]["masked"] for n in kills.SILOS), masked
        assert sum(map(len, kills.sent(fed, "train.unmask", 1).values())) >= 1  # shares had left
        assert not list(store.checkpoints.glob("round-*.npz"))  # round 1 never completed

        outcome = fed.resume("secure-dp", timeout=90)
        kills.silos_up(fed)
    assert outcome.completed, (outcome.status, outcome.summary)
    summary = outcome.summary
    assert summary["rounds_requested"] == 1 and summary["rounds_failed"] == []
    assert summary["dp_rounds"] == 1
    assert store.verify_checkpoints() == {}
    assert [p.name for p in store.checkpoints.iterdir()] == ["round-0001.npz"]
    events = store.events()
    assert [e["from_round"] for e in events if e["event"] == "resume"] == [0, 0]
    flower_runs = store.flower_runs()
    assert len(set(flower_runs)) == 3 and flower_runs[1] == run_id
    setups = [e for e in events if e["event"] == "secure_aggregation_setup"]
    assert len(setups) == 2 and all(s["not_keyed"] == {} for s in setups)
    rows = unique_rounds(events)[0]
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["contributors"] == kills.SILOS
    for name, adverts in kills.sent(fed, "train.secagg_setup").items():
        # keyed afresh by each Flower run that got that far, the last one included
        assert {e["run_id"] for e in adverts} >= {str(r) for r in flower_runs[1:]}, adverts
    token = next(e["run_token"] for e in events if e["event"] == "join")
    assert {e["run_token"] for e in events if e["event"] == "join"} == {token}
    for name, sent in kills.sent(fed, "train", 1).items():
        silo = next(s for s in fed.silos if s.name == name)
        tally = PrivacyTally(silo.workspace / TALLY_FILE).runs[token]
        assert tally["epsilon"] == pytest.approx(summary["epsilon"], rel=1e-9), name
        # round 1's update left twice (the unmasking kill, then the resumed run): two releases
        assert len(sent) == 2 and sent[0]["epsilon"] < sent[1]["epsilon"] == tally["epsilon"]
        state = json.loads(next((silo.workspace / "privacy").glob("*.json")).read_text())
        assert state["rounds"] == [1, 1], (name, state["rounds"])  # composed twice

"""On real SuperLink/SuperNode processes: a coordinator that breaks a run's DP terms after the
silos joined is refused by every silo, one that restarted in between included.

The coordinator's ServerApp runs hostile code (a ``sitecustomize`` on the Flower processes'
``PYTHONPATH`` that acts in ``flwr-serverapp`` only): round 1's DP terms are honest, round 2
carries none, round 3 a DP table with half the noise, round 4 the honest table again but
past the run's own ``max_epsilon`` (the coordinator skips its budget check, which would
have stopped the run after round 1), and round 5 keeps the run's ε under a fresh name (a
fresh history would escape that cap). Between rounds 1 and 2 (the ``round:2`` failpoint)
hospital-a's SuperNode restarts, which empties the run's Flower context: what the silo
agreed to at join is kept in its workspace (``silo_client/joins.py``), so it refuses as the
others do; the run's cap is kept in its privacy history (``silo_client/privacy.py``). No
silo trains or counts ε for rounds 2 to 5; each records its refusal in its ledger, and the
operator reads each of the silos' reasons in ``xsilo coordinator status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from strategies.dp import DPConfig
from tests.e2e._kills import (SILOS, ledger, restart_silo_and_wait, start, while_standing_at,
                              with_serverapp_double)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

HOSTILE_COORDINATOR = '''
"""A coordinator that changes a run's DP terms after the join and ignores its own privacy
budget (test double, ServerApp only)."""
import os
import sys

if os.path.basename(sys.argv[0]) == "flwr-serverapp":
    from dataclasses import replace

    from coordinator import privacy

    _honest, _calls = privacy.RunPrivacy.round_terms, []

    def _broken(self):
        terms = _honest(self)
        _calls.append(1)
        if len(_calls) == 2:
            return None  # round 2: no DP terms at all
        if len(_calls) == 3:  # round 3: half the noise the silos joined under
            table = dict(terms.table)
            table["noise_multiplier"] = table["noise_multiplier"] / 2
            return replace(terms, table=table)
        if len(_calls) == 5:  # round 5: the run's epsilon kept under a fresh name
            return replace(terms, run=terms.run + "-fresh")
        return terms

    privacy.RunPrivacy.round_terms = _broken
    privacy.RunPrivacy.check_budget = lambda self, server_round: None  # round 4: past the cap
'''


def test_every_silo_refuses_rounds_that_break_the_dp_terms_it_joined_under(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = with_serverapp_double(tmp_path, monkeypatch, HOSTILE_COORDINATOR)
    # ε after one round is 2.17, after two 3.19: the run's own cap admits round 1 only
    dp = DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=1.0, accounting="rdp",
                  max_epsilon=2.5)
    with fed:
        markers = start(fed, monkeypatch, "round:2")
        # hospital-a restarts between rounds 1 and 2, with an empty Flower context
        with while_standing_at("round:2", markers,
                               lambda: restart_silo_and_wait(fed, "hospital-a")):
            outcome = fed.run(RunConfig(num_rounds=5, min_silos=2, expected_silos=3,
                                        round_timeout=30.0, join_timeout=45.0,
                                        name="hostile", dp=dp), timeout=120)
        shown = subprocess.run([str(Path(sys.executable).parent / "xsilo"), "coordinator",
                                "status", str(fed.home_dir / "runs" / "hostile")],
                               capture_output=True, text=True, timeout=60)
        ledgers = {name: ledger(fed, name) for name in SILOS}
    rows = {e["round"]: e for e in outcome.store.events() if e["event"] == "round"}
    assert rows[1]["contributors"] == SILOS, rows[1]
    said = {2: "joined the run under differential privacy but round 2's terms carry no DP",
            3: "round 3's DP table differs from the one this silo joined the run under "
               "(noise_multiplier: 2.0 → 1.0)",
            4: "round 4 would raise its epsilon from 2.166 to 3.189 > the run's own "
               "max_epsilon 2.5",
            5: "keeps its privacy accounting under"}
    for server_round, reason in said.items():
        row = rows[server_round]
        assert row["contributors"] == [] and row["status"] == "failed", row
        for name in SILOS:  # hospital-a too, restarted with an empty Flower context
            assert row["rejected"][name].startswith(
                "PrivacyBudgetExceeded" if server_round == 4 else "ProtocolError"), row
            assert reason in row["rejected"][name], row
    for name, entries in ledgers.items():  # nothing trained left, each refusal recorded
        trained = [e["server_round"] for e in entries if e["message_type"] == "train"]
        refused = [e["server_round"] for e in entries if e["message_type"] == "train.refusal"]
        assert trained == [1] and refused == [2, 3, 4, 5], (name, entries)
    for silo in fed.silos:  # ε counted for round 1's release only
        (history,) = [p for p in (silo.workspace / "privacy").glob("*.json")
                      if not p.name.startswith("dpsgd-")]  # the run's, named by its token
        assert json.loads(history.read_text())["rounds"] == [1], (silo.name, history)
        tally = json.loads((silo.workspace / "privacy-tally.json").read_text())
        assert [r["round"] for r in tally["runs"].values()] == [1], (silo.name, tally)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    shown_text = " ".join(shown.stdout.split())
    for reason in ("carry no DP terms", "DP table differs", "the run's own max_epsilon 2.5",
                   "keeps its privacy accounting under"):  # each reaches the operator
        assert reason in shown_text, shown.stdout

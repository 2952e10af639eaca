"""Two `xsilo coordinator run --resume` at once, on real processes: an operator resumes a
run while its service manager does the same. Both commands get past their checks (no
ServerApp runs the run yet) and both submit; one ServerApp runs the run, the other stops
before it reads or writes anything of it (the run directory's ``serverapp.lock``), and its
command says so in one line. Nothing is run or counted twice: one resume in the run's
events, each round trained once by each silo (their ledgers), one checkpoint per round; and
a ServerApp that takes the losing command's request only after the run completed stops
without running or writing anything of it."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.e2e._kills as kills
from coordinator.config import RunConfig
from coordinator.run_record import unique_rounds
from coordinator.run_store import RESUME_FILE
from coordinator.runs import APP_DIR
from federation.deployment import LocalFederation
from tests.e2e._cli import background, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~50 s alone


def test_two_resumes_at_once_run_the_run_once(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(num_rounds=2, min_silos=3, expected_silos=3, round_timeout=40.0,
                       join_timeout=45.0, name="twice")
    fed = LocalFederation(tmp_path / "fed").setup()
    logs = [tmp_path / "resume-1.log", tmp_path / "resume-2.log"]
    with fed:
        markers = kills.start(fed, monkeypatch, "round:2")
        _, store = fed.submit(config)
        kills.kill_serverapp_at("round:2", markers, store)  # round 1 checkpointed
        commands = [background("coordinator", "run", "--home", str(fed.home_dir), "--resume",
                               "twice", "--timeout", "90", log=log) for log in logs]
        try:
            wait_for(lambda: all(c.poll() is not None for c in commands), 120,
                     "both `coordinator run --resume` to end", logs=logs)
        finally:
            stop(*commands)
        ledgers = {name: kills.ledger(fed, name) for name in kills.SILOS}
        # a ServerApp that starts only now, on the request a losing command left behind:
        # the run has completed since, and nothing of it is run or written again
        before = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
        store.request_resume()
        cli = fed.home.cli()
        late = cli.submit(APP_DIR, {"run-dir": str(store.path.resolve())})
        late_status = fed.wait(late, store, timeout=60).status
        late_log = " ".join(cli.run_log(late).split())
        after = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
        kills.silos_up(fed)

    said = [" ".join(log.read_text().split()) for log in logs]
    codes = [c.returncode for c in commands]
    assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, (codes, said)
    winner, loser = (said[0], said[1]) if codes[0] == 0 else (said[1], said[0])
    assert "completed" in winner, winner
    # the other says why in one line: its ServerApp found the run held (both submitted), or
    # its command came after the first ServerApp had claimed the run
    assert ("is being run by another process" in loser and "stopped without touching it"
            in loser) or "is still running" in loser, loser
    assert "killed, out of memory" not in loser, loser
    assert store.summary()["status"] == "completed", store.summary()
    events = store.events()
    assert len([e for e in events if e["event"] == "resume"]) == 1, events
    assert len([e for e in events if e["event"] == "start" and e.get("resumed")]) == 1
    rows = unique_rounds(events)[0]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["contributors"] == kills.SILOS
    assert store.verify_checkpoints() == {}
    assert sorted(p.name for p in store.checkpoints.iterdir()) == ["round-0001.npz",
                                                                    "round-0002.npz"]
    for name, entries in ledgers.items():  # each round's update left each silo once
        trained = [e["server_round"] for e in entries if e["message_type"] == "train"]
        assert trained == [1, 2], (name, trained)
    assert not (store.path / RESUME_FILE).exists()  # no request left for a later attempt
    assert late_status.startswith("finished:failed"), late_status
    assert "already completed; its resume request is one another `--resume` overtook" \
        in late_log, late_log[-2000:]
    assert after == before and [e["server_round"] for e in kills.ledger(fed, "hospital-a")
                                if e["message_type"] == "evaluate"] == [
        e["server_round"] for e in ledgers["hospital-a"] if e["message_type"] == "evaluate"]

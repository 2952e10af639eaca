"""Resume (in process): a run killed mid-round continues from its last complete round to the
model the uninterrupted run reaches; a silo counts every release of an interrupted round's
update and the coordinator adopts its higher tally; a torn checkpoint is skipped; a secure run is keyed afresh."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig
from coordinator.privacy import RunPrivacy
from coordinator.run_record import unique_rounds
from coordinator.run_store import RunStore, load_npz
from silo_client.config import load_silo_config
from silo_client.policy import PrivacyTally
from silo_client.privacy import TALLY_FILE
from strategies.dp import DPConfig
from federation.local import run_in_process
from xsilo.errors import PrivacyBudgetExceeded


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the coordinator may catch it or write a summary."""


def kill_at(server_round: int, node: int, message_type: str = "train"):
    """A ``drop`` hook that kills the coordinator when ``node`` is sent its
    ``server_round``-th ``message_type`` message (earlier silos of that round have
    already answered: their updates left)."""
    seen: dict[int, int] = {}

    def drop(n: int, kind: str) -> bool:
        if kind == message_type:
            seen[n] = seen.get(n, 0) + 1
            if n == node and seen[n] == server_round:
                raise Killed(f"killed in round {server_round}")
        return False

    return drop


def _events(run_dir: Path) -> list[dict]:
    return RunStore(run_dir).events()


def _same_model(a: Path, b: Path) -> None:
    x, y = load_npz(a), load_npz(b)
    assert list(x) == list(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


def test_a_run_killed_mid_round_resumes_to_the_uninterrupted_model(tmp_path: Path,
                                                                   make_silos) -> None:
    config = RunConfig(num_rounds=3, min_silos=3, name="r")
    run_in_process(tmp_path / "ref", config, make_silos(tmp_path / "a"))
    silos = make_silos(tmp_path / "b")
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_in_process(run_dir, config, silos, drop=kill_at(3, node=3))
    store = RunStore(run_dir)
    assert store.summary() is None and store.latest_checkpoint()[0] == 2
    summary = run_in_process(run_dir, config, silos, resume=True)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    _same_model(run_dir / "model.npz", tmp_path / "ref" / "model.npz")
    assert store.verify_checkpoints() == {}
    assert sorted(p.name for p in store.checkpoints.glob("*.npz")) == [
        "round-0001.npz", "round-0002.npz", "round-0003.npz"]
    events = _events(run_dir)
    assert next(e for e in events if e["event"] == "resume")["from_round"] == 2
    rows, repeated = unique_rounds(events)
    assert [r["round"] for r in rows] == [0, 1, 2, 3] and repeated == []
    reference = {r["round"]: r for r in unique_rounds(_events(tmp_path / "ref"))[0]}
    for row in rows:  # the same rows as the uninterrupted run's, model by model
        assert row["global_loss"] == pytest.approx(reference[row["round"]]["global_loss"])
        assert row["contributors"] == reference[row["round"]]["contributors"]
    tokens = {e["run_token"] for e in events if e["event"] == "join"}
    assert len(tokens) == 1  # the silos see the same run (their tallies, DP-SGD state)


def _dp_config(**kw) -> RunConfig:
    return RunConfig(num_rounds=3, min_silos=3, name="dp", **kw,
                     dp=DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=1.0))


def _silo_tallies(silos: list[Path], token: str) -> dict[str, float]:
    out = {}
    for path in silos:
        cfg = load_silo_config(path)
        out[cfg.name] = PrivacyTally(cfg.workspace / TALLY_FILE).runs[token]["epsilon"]
    return out


def test_an_interrupted_dp_round_is_counted_again_by_the_silos_whose_update_left(
        tmp_path: Path, make_silos) -> None:
    """Round 2 is run again after the kill: hospital-a and -b release a second update for it
    and count it (a silo cannot tell a restart from a replay); the coordinator releases the
    round once and adopts their higher tally, so the run's ε is what they spent."""
    reference = run_in_process(tmp_path / "ref", _dp_config(), make_silos(tmp_path / "a"))
    silos = make_silos(tmp_path / "b")
    run_dir = tmp_path / "run"
    # hospital-a and -b sent their round-2 updates (and counted them); then the kill
    with pytest.raises(Killed):
        run_in_process(run_dir, _dp_config(), silos, drop=kill_at(2, node=3))
    summary = run_in_process(run_dir, _dp_config(), silos, resume=True)
    assert summary["status"] == "completed" and summary["dp_rounds"] == 3
    token = next(e["run_token"] for e in _events(run_dir) if e["event"] == "join")
    tallies = _silo_tallies(silos, token)
    assert tallies["hospital-c"] == pytest.approx(reference["epsilon"], rel=1e-9)  # 3 releases
    assert tallies["hospital-a"] == pytest.approx(tallies["hospital-b"], rel=1e-9)  # 4 each
    assert tallies["hospital-a"] > reference["epsilon"]
    assert summary["epsilon"] == pytest.approx(tallies["hospital-a"], rel=1e-9)
    rows = {r["round"]: r for r in unique_rounds(_events(run_dir))[0]}
    assert rows[2]["epsilon_adopted"]["silo"] in ("hospital-a", "hospital-b")
    assert rows[2]["epsilon_adopted"]["difference"] > 0


def test_a_higher_silo_tally_is_adopted_and_the_difference_recorded(tmp_path: Path,
                                                                   make_silos) -> None:
    silos = make_silos(tmp_path / "s")
    trains: dict[int, int] = {}

    def drop(node: int, kind: str) -> bool:  # hospital-c silent in round 2: round 2 fails
        trains[node] = trains.get(node, 0) + (kind == "train")
        return node == 3 and kind == "train" and trains[node] == 2

    summary = run_in_process(tmp_path / "run", _dp_config(round_timeout=0.5), silos, drop=drop)
    assert summary["rounds_failed"] == [2] and summary["dp_rounds"] == 2
    rows = {r["round"]: r for r in unique_rounds(_events(tmp_path / "run"))[0]}
    # hospital-a and -b counted round 2 (their updates left); the coordinator released nothing
    adopted = rows[2]["epsilon_adopted"]
    assert adopted["silo"] in ("hospital-a", "hospital-b") and adopted["difference"] > 0
    assert rows[2]["epsilon"] == pytest.approx(adopted["accounted"] + adopted["difference"])
    assert rows[2]["epsilon"] == pytest.approx(rows[2]["silo_epsilon"]["hospital-a"])
    token = next(e["run_token"] for e in _events(tmp_path / "run") if e["event"] == "join")
    assert summary["epsilon"] == pytest.approx(max(_silo_tallies(silos, token).values()))


def test_an_adopted_tally_counts_against_the_budget() -> None:
    dp = DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=1.0, max_epsilon=5.0)
    privacy = RunPrivacy(dp, num_silos=3)
    privacy.commit_round()
    own = privacy.epsilon()
    assert privacy.adopt({"a": own, "b": own}) == {"silo_epsilon": {"a": own, "b": own}}
    fields = privacy.adopt({"a": own, "b": 4.9})
    assert fields["epsilon"] == privacy.epsilon() == 4.9
    assert fields["epsilon_adopted"] == {"silo": "b", "difference": pytest.approx(4.9 - own),
                                         "accounted": own}
    with pytest.raises(PrivacyBudgetExceeded, match="silos' own tally, adopted"):
        privacy.check_budget(2)
    restored = RunPrivacy(dp, num_silos=3)  # the adopted tally survives a checkpoint
    restored.load_state_arrays(privacy.state_arrays())
    assert restored.epsilon() == 4.9


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_torn_checkpoint_is_skipped_for_the_one_before(tmp_path: Path, make_silos,
                                                         damage: str) -> None:
    config = RunConfig(num_rounds=3, min_silos=3, name="r")
    run_in_process(tmp_path / "ref", config, make_silos(tmp_path / "a"))
    silos = make_silos(tmp_path / "b")
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_in_process(run_dir, config, silos, drop=kill_at(3, node=1))
    path = run_dir / "checkpoints" / "round-0002.npz"
    data = bytearray(path.read_bytes())
    if damage == "flip":  # a bad disk: one byte of the arrays changes, the zip still opens
        data[len(data) // 3] ^= 0xFF
    else:  # a copy cut short
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    assert "round-0002.npz" in RunStore(run_dir).verify_checkpoints()
    summary = run_in_process(run_dir, config, silos, resume=True)
    assert summary["status"] == "completed"
    resume = next(e for e in _events(run_dir) if e["event"] == "resume")
    assert resume["from_round"] == 1 and list(resume["skipped_checkpoints"]) == ["round-0002.npz"]
    _same_model(run_dir / "model.npz", tmp_path / "ref" / "model.npz")
    assert RunStore(run_dir).verify_checkpoints() == {}  # round 2 written again, whole


def test_a_secure_run_killed_during_masked_input_collection_is_keyed_afresh(
        tmp_path: Path, make_silos) -> None:
    config = RunConfig(num_rounds=2, min_silos=2, expected_silos=3, secure_aggregation=True,
                       name="s")
    silos = make_silos(tmp_path / "s")
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):  # hospital-a masked its round-2 input; then the kill
        run_in_process(run_dir, config, silos, drop=kill_at(2, node=2))
    summary = run_in_process(run_dir, config, silos, resume=True)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    events = _events(run_dir)
    setups = [e for e in events if e["event"] == "secure_aggregation_setup"]
    assert len(setups) == 2 and all(s["not_keyed"] == {} for s in setups)
    rows = unique_rounds(events)[0]
    assert rows[2]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert rows[2]["global_scores"] == "secure_sum"
    for path in silos:  # each silo answered two key requests, one per secure-aggregation run
        ledger = [json.loads(line) for line in
                  (load_silo_config(path).workspace / "egress.jsonl").read_text().splitlines()]
        assert sum(e["message_type"] == "train.secagg_setup" for e in ledger) == 2


def test_resume_refuses_a_directory_another_live_process_runs(tmp_path: Path,
                                                              federation: list[Path]) -> None:
    import subprocess
    import sys

    config = RunConfig(num_rounds=1, min_silos=3)
    with pytest.raises(Killed):
        run_in_process(tmp_path / "run", config, federation, drop=kill_at(1, node=1))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        RunStore(tmp_path / "run").claim(other.pid)
        from xsilo.errors import DeploymentError

        with pytest.raises(DeploymentError, match=f"still being run by process {other.pid}"):
            run_in_process(tmp_path / "run", config, federation, resume=True)
    finally:
        other.kill()
        other.wait()
    summary = run_in_process(tmp_path / "run", config, federation, resume=True)
    assert summary["status"] == "completed"


def test_a_second_serverapp_on_a_run_stops_before_it_touches_the_run(
        tmp_path: Path, federation: list[Path]) -> None:
    """Two `--resume` at once: the ServerApp that comes second finds the run's lock held
    (here by another process) and stops before it takes the resume request or writes a
    line; a damaged owner record naming process 0 or -1 (every process, to ``kill``) names
    no owner."""
    import subprocess
    import sys

    from coordinator.run_store import LOCK_FILE, OWNER_FILE
    from xsilo.errors import DeploymentError

    config = RunConfig(num_rounds=2, min_silos=3)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_in_process(run_dir, config, federation, drop=kill_at(2, node=1))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"),
        str(run_dir / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DeploymentError, match="being run by another process"):
            run_in_process(run_dir, config, federation, resume=True)
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        assert after.pop("resume.json") and after == before  # the request is still there
    finally:
        holder.kill()
        holder.wait()
    for pid in (0, -1, 2**63, "1234", True):  # a damaged record: no owner, nothing to kill
        (run_dir / OWNER_FILE).write_text(json.dumps({"pid": pid, "start": "?"}))
        assert RunStore(run_dir).owner() is None, pid
    summary = run_in_process(run_dir, config, federation, resume=True)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []


def test_a_resume_request_another_resume_overtook_runs_nothing_again(
        tmp_path: Path, federation: list[Path]) -> None:
    """Two `--resume` at once, the second ServerApp so slow to start that the first
    finished the run meanwhile: the request it takes is stale, and it stops without a
    round, an evaluation or a line written (the run's summary still says completed)."""
    from xsilo.errors import DeploymentError

    config = RunConfig(num_rounds=1, min_silos=3)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_in_process(run_dir, config, federation, drop=kill_at(1, node=1))
    assert run_in_process(run_dir, config, federation, resume=True)["status"] == "completed"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(DeploymentError, match="already completed; its resume request is one "
                                              "another `--resume` overtook"):
        run_in_process(run_dir, config, federation, resume=True)  # the stale request
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before and not (run_dir / "resume.json").exists()

"""At coordinator start, a run whose ServerApp is gone but which Flower's database still
counts as running is stopped (before silos reconnect); nothing else is touched. A ServerApp
that outlived its SuperLink is found and ended; what a killed writer left half-written is
removed when the run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from coordinator.home import RunningCoordinator
from coordinator.run_store import RunStore
from coordinator.runs import end_serverapps, live_serverapps, stop_orphaned_runs
from deploy.launch.processes import ManagedProcess


class FakeCLI:
    def __init__(self, statuses: dict[int, str]) -> None:
        self.statuses = statuses
        self.stopped: list[int] = []

    def status(self, run_id: int) -> str:
        return self.statuses.get(run_id, "unknown")

    def stop_run(self, run_id: int) -> None:
        self.stopped.append(run_id)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run(root: Path, name: str, flower_run: int, *, owner: int | None,
         summary: bool = False) -> None:
    store = RunStore(root / name)
    store.prepare()
    store.append_event({"event": "start", "flower_run_id": flower_run})
    if owner is not None:
        store.claim(owner)
    if summary:
        store.write_summary({"status": "completed"})


def test_only_a_running_flower_run_whose_serverapp_is_gone_is_stopped(tmp_path: Path) -> None:
    dead = _dead_pid()
    _run(tmp_path, "crashed", 1, owner=dead)
    _run(tmp_path, "alive", 2, owner=os.getpid())  # its ServerApp still runs
    _run(tmp_path, "done", 3, owner=dead, summary=True)
    _run(tmp_path, "expired", 4, owner=dead)  # Flower already marked it finished
    (tmp_path / "refused").mkdir()  # a refused start: no metrics.jsonl
    (tmp_path / "refused" / "summary.json").write_text(json.dumps({"status": "refused"}))
    cli = FakeCLI({1: "running", 2: "running", 3: "running", 4: "finished:failed"})
    said = stop_orphaned_runs(cli, tmp_path)  # type: ignore[arg-type]
    assert cli.stopped == [1]
    assert len(said) == 1 and "--resume crashed" in said[0]
    assert stop_orphaned_runs(FakeCLI({}), tmp_path / "no-runs-yet") == []  # type: ignore[arg-type]


def _serverapp(parent: int) -> subprocess.Popen:
    """A stand-in ServerApp: the argument Flower's SuperExec starts one with."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "--parent-pid", str(parent)])


def test_serverapps_that_outlive_their_superlink_are_found_and_ended(tmp_path: Path) -> None:
    orphan = _serverapp(_dead_pid())  # its SuperExec is gone: it can only hang
    supervised = _serverapp(os.getpid())  # its SuperExec lives
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name, proc in (("orphan", orphan), ("supervised", supervised), ("plain", plain)):
            _run(tmp_path, name, 1, owner=proc.pid)
        _run(tmp_path, "gone", 2, owner=_dead_pid())
        assert live_serverapps(tmp_path, orphans_only=True) == {"orphan": orphan.pid}
        assert live_serverapps(tmp_path) == {
            "orphan": orphan.pid, "supervised": supervised.pid, "plain": plain.pid}
        said = end_serverapps(tmp_path, {"orphan": orphan.pid})
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert len(said) == 1 and "run orphan interrupted" in said[0]
        assert "--resume orphan" in said[0]
        assert RunStore(tmp_path / "orphan").owner() is None
        assert supervised.poll() is None and plain.poll() is None  # nothing else touched
        RunStore(tmp_path / "plain").write_summary({"status": "completed"})  # ended by itself
        assert end_serverapps(tmp_path, {"plain": plain.pid}) == []
    finally:
        for proc in (orphan, supervised, plain):
            proc.kill()
            proc.wait()


def test_a_resume_removes_what_a_killed_writer_left_half_written(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    (store.checkpoints / ".round-0002.npz.abc123.tmp").write_bytes(b"PK\x03\x04half")
    (store.path / ".summary.json.x1.tmp").write_text("{")
    (store.checkpoints / "round-0001.npz").write_bytes(b"kept")
    assert store.discard_temporaries() == [".summary.json.x1.tmp",
                                           "checkpoints/.round-0002.npz.abc123.tmp"]
    assert sorted(p.name for p in store.checkpoints.iterdir()) == ["round-0001.npz"]
    assert store.discard_temporaries() == []


def test_a_stopping_coordinator_ends_the_serverapps_of_its_runs(tmp_path: Path) -> None:
    """Without a private namespace nothing else would: Flower's ServerApp can hang on its
    gone SuperLink for good, claiming its run (``--resume`` refused)."""
    superlink = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
    serverapp = _serverapp(superlink.pid)
    try:
        runs = tmp_path / "runs"
        _run(runs, "trial", 1, owner=serverapp.pid)
        _run(runs, "done", 2, owner=_dead_pid(), summary=True)
        home = SimpleNamespace(runs=runs, gateway=None, flwr_home=tmp_path / "flwr-home")
        link = ManagedProcess("flower-superlink", superlink, tmp_path / "superlink.log")
        running = RunningCoordinator(home, superlink=link, node_ids={})  # type: ignore[arg-type]
        said = running.stop()
        assert superlink.poll() is not None and serverapp.wait(timeout=10) == -signal.SIGKILL
        assert len(said) == 1 and "run trial interrupted" in said[0], said
        assert "xsilo coordinator run --resume trial" in said[0]
    finally:
        for proc in (superlink, serverapp):
            proc.kill()
            proc.wait()


def test_a_run_with_a_damaged_summary_is_skipped_with_a_notice(tmp_path: Path) -> None:
    """One damaged run directory never keeps the coordinator from starting or stopping."""
    dead = _dead_pid()
    _run(tmp_path, "a-damaged", 1, owner=dead)
    (tmp_path / "a-damaged" / "summary.json").write_text("{trunc")
    _run(tmp_path, "crashed", 2, owner=dead)
    cli = FakeCLI({1: "running", 2: "running"})
    said = stop_orphaned_runs(cli, tmp_path)  # type: ignore[arg-type]
    assert cli.stopped == [2] and len(said) == 2
    assert said[0].startswith("run a-damaged skipped: ") and "summary.json is unreadable" in said[0]
    assert "--resume crashed" in said[1]
    said = end_serverapps(tmp_path, {"a-damaged": dead, "crashed": dead}, timeout=0.1)
    assert len(said) == 2 and "summary.json is unreadable" in said[0]
    assert "run crashed interrupted" in said[1]


class _RefusingCLI(FakeCLI):
    """``flwr run`` fails (e.g. the coordinator is not running)."""

    def __init__(self, flwr_home: Path) -> None:
        super().__init__({})
        self.flwr_home = flwr_home

    def submit(self, app_dir: Path, config: dict) -> int:
        from xsilo.errors import DeploymentError

        raise DeploymentError("Connection refused")


def test_a_resume_that_cannot_be_submitted_leaves_the_run_as_it_was(tmp_path: Path) -> None:
    """The previous attempt's summary (its failure, for the operator) is put back, and no
    resume request is left for the next ServerApp."""
    import pytest

    from coordinator.config import RunConfig, write_run_config
    from coordinator.runs import resume_run
    from xsilo.errors import DeploymentError

    _run(tmp_path, "crashed", 1, owner=_dead_pid())
    store = RunStore(tmp_path / "crashed")
    write_run_config(store.path / "config.toml", RunConfig(num_rounds=2, min_silos=1))
    store.write_summary({"status": "failed", "error": {"message": "round 2: the SuperLink died"}})
    before = (store.path / "summary.json").read_bytes()
    with pytest.raises(DeploymentError, match="was not started: Connection refused"):
        resume_run(_RefusingCLI(tmp_path / "flwr"), store.path)  # type: ignore[arg-type]
    assert (store.path / "summary.json").read_bytes() == before
    assert not (store.path / "resume.json").exists()


class _SubmittingCLI(FakeCLI):
    def __init__(self, flwr_home: Path, statuses: dict[int, str]) -> None:
        super().__init__(statuses)
        self.flwr_home = flwr_home

    def submit(self, app_dir: Path, config: dict) -> int:
        return 222


def test_a_resume_never_stops_the_attempt_another_resume_started_meanwhile(
        tmp_path: Path, monkeypatch) -> None:
    """Two `--resume` at once: while this one checks the run's configuration, the other's
    ServerApp claims the run and records its start (Flower run 111, running). This one
    stops only the killed attempt it resumes from (100), never 111, whose rounds would
    otherwise run twice; its own ServerApp then stops at the run's lock."""
    import coordinator.runs as runs
    from coordinator.config import RunConfig, write_run_config

    _run(tmp_path, "crashed", 100, owner=_dead_pid())
    store = RunStore(tmp_path / "crashed")
    write_run_config(store.path / "config.toml", RunConfig(num_rounds=2, min_silos=1))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    checked = runs.check_run

    def check_while_the_other_starts(config):  # the other ServerApp, meanwhile
        store.claim(other.pid)
        store.append_event({"event": "start", "flower_run_id": 111, "resumed": True})
        return checked(config)

    monkeypatch.setattr(runs, "check_run", check_while_the_other_starts)
    cli = _SubmittingCLI(tmp_path / "flwr", {100: "running", 111: "running"})
    try:
        assert runs.resume_run(cli, store.path)[0] == 222  # type: ignore[arg-type]
    finally:
        other.kill()
        other.wait()
    assert cli.stopped == [100]

"""At coordinator start, a run whose ServerApp is gone but which Flower's database still
counts as running is stopped (before silos reconnect); nothing else is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from coordinator.run_store import RunStore
from coordinator.runs import stop_orphaned_runs


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

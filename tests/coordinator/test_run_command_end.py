"""How `xsilo coordinator run` ends (``coordinator.cli._report_end``): an attempt whose
ServerApp never started the run because another attempt ran it (two `--resume` at once)
says so, whether that other ServerApp still runs or has ended; an attempt that did start
the run is reported as before. On real processes: tests/e2e/test_double_resume.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.cli import _report_end
from coordinator.run_store import RunStore
from xsilo.errors import DeploymentError


@pytest.fixture
def other() -> Iterator[subprocess.Popen]:
    """A live process standing for the other attempt's ServerApp."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _store(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "start", "flower_run_id": 100})  # the killed attempt
    return store


def test_an_attempt_the_other_runs_says_so(tmp_path: Path, other: subprocess.Popen) -> None:
    store = _store(tmp_path)
    store.claim(other.pid)
    store.append_event({"event": "start", "flower_run_id": 111, "resumed": True})
    with pytest.raises(DeploymentError, match=rf"is being run by another process \({other.pid};"
                                              r".*attempt \(Flower run 222\) stopped without"):
        _report_end(store, "finished:failed", 222, starts_before=1)


def test_it_says_so_once_the_other_has_ended(tmp_path: Path, other: subprocess.Popen) -> None:
    store = _store(tmp_path)
    store.claim(other.pid)
    store.append_event({"event": "start", "flower_run_id": 111, "resumed": True})
    other.kill()
    other.wait()
    with pytest.raises(DeploymentError, match=r"was run by another attempt meanwhile \(Flower "
                                              r"run 111;.*\(Flower run 222\) stopped without"):
        _report_end(store, "finished:failed", 222, starts_before=1)


def test_an_attempt_that_started_the_run_is_reported_as_its_own(
        tmp_path: Path, other: subprocess.Popen) -> None:
    # its own ServerApp may still be alive a moment after Flower marked the run finished
    store = _store(tmp_path)
    store.claim(other.pid)
    store.append_event({"event": "start", "flower_run_id": 111, "resumed": True})
    with pytest.raises(DeploymentError) as caught:
        _report_end(store, "finished:failed", 111, starts_before=1)
    assert "another" not in str(caught.value) and "ended as finished:failed" in str(caught.value)


def test_the_killed_attempt_before_this_one_is_not_another(tmp_path: Path) -> None:
    # the attempt this command resumes from started before it: a resume whose ServerApp
    # died before it started the run gets the usual line (and `--resume` again)
    store = _store(tmp_path)
    with pytest.raises(DeploymentError) as caught:
        _report_end(store, "finished:failed", 222, starts_before=1)
    assert "another" not in str(caught.value) and "--resume run" in str(caught.value)

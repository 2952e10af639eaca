"""Damaged run files as an operator meets them, through the real `xsilo` CLI: a summary.json
cut short, a metrics.jsonl line torn by a crash (and the resumed run's events after it), a
checkpoint copied short, a hand-edited row or error record. Each read-only command
(`coordinator status`, `report`, and `coordinator run --resume` up to its refusal) either
still shows what is readable (exit 0) or says in one line which file is damaged and what to
do (exit 2), never a traceback.

The run is a real one (two rounds, three sklearn silos, in process) in a coordinator home's
``runs/``; every command is a subprocess of the installed ``xsilo`` binary. No SuperLink is
started: ``status``, ``report`` and ``run --resume``'s refusal need none. The whole file
takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from coordinator.home import CoordinatorHome
from coordinator.run_store import RunStore
from federation.local import run_in_process
from tests.e2e._cli import XSILO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]  # a hang guard: ~8 s alone

RUN = "trial"


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return (f"xsilo {' '.join(self.args)} → exit {self.code}\n--- stdout\n{self.out[-3000:]}"
                f"\n--- stderr\n{self.err[-3000:]}")


def xsilo(*calls: tuple[str, ...]) -> list[Result]:
    """Each call ``xsilo ARGS`` at once (they only read), wide enough that rich wraps no
    line; none may print a traceback."""
    env = {**os.environ, "COLUMNS": "400"}
    procs = [subprocess.Popen([XSILO, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, env=env) for args in calls]
    results = []
    for args, proc in zip(calls, procs):
        out, err = proc.communicate(timeout=30)
        results.append(Result(tuple(args), proc.returncode, out, err))
    return results


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.out + result.err, str(result)


def one_error_line(result: Result) -> str:
    """The one line a typed error is (exit 2), from stderr."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), str(result)
    return lines[0]


def table_rounds(stdout: str) -> dict[int, str]:
    """Round → global accuracy, from the round table ``coordinator status`` prints."""
    found = re.findall(r"^│\s+(\d+) │\s+([\d.–]+) │", stdout, re.M)
    return {int(r): acc for r, acc in found}


def report_rounds(html: str) -> dict[int, str]:
    """Round → global accuracy, from the report's round table (the rows with participation)."""
    return {int(r): acc for r, acc in re.findall(
        r"<tr><td>(\d+)</td><td>([\d.–]+)</td><td>[^<]*</td><td>all \(", html)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coordinator home whose ``runs/trial`` holds a completed two-round run."""
    from tests.conftest import make_federation

    root = tmp_path_factory.mktemp("damaged-runs")
    home = root / "home"
    CoordinatorHome.write(home, host="127.0.0.1", port=9092)
    # No [gateway], so nothing parses these: `status` and `run --resume` only load the home,
    # which wants its TLS files to exist.
    (home / "pki").mkdir()
    for name in ("ca.crt", "coordinator.crt", "coordinator.key"):
        (home / "pki" / name).write_text("not used: no SuperLink is started\n")
    summary = run_in_process(home / "runs" / RUN, RunConfig(num_rounds=2, min_silos=3, name=RUN),
                             make_federation(root / "silos"))
    assert summary["status"] == "completed"
    return home


@pytest.fixture
def home(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the pristine home, to damage."""
    # resolved: `run --resume` names files under the resolved home, `status` as given
    return Path(shutil.copytree(pristine, tmp_path / "home", symlinks=True)).resolve()


def _rows(run_dir: Path) -> dict[int, str]:
    """Round → global accuracy as the tables print it, from the undamaged events."""
    return {e["round"]: f"{e['global_accuracy']:.4f}" for e in RunStore(run_dir).events()
            if e["event"] == "round"}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_summary_cut_short_is_one_line_naming_it_and_the_report_still_has_the_rounds(
        home: Path) -> None:
    run_dir = home / "runs" / RUN
    rows = _rows(run_dir)
    assert sorted(rows) == [0, 1, 2]
    summary = run_dir / "summary.json"
    summary.write_text('{"status": "compl')  # a copy cut short
    report = home.parent / "report.html"
    status, resume, written = xsilo(
        ("coordinator", "status", str(run_dir)),
        ("coordinator", "run", "--home", str(home), "--resume", RUN),
        ("report", str(run_dir), "--out", str(report)))
    for result in (status, resume, written):
        no_traceback(result)
    for result in (status, resume):  # docs/running.md: named in one line by status and resume
        line = one_error_line(result)
        assert f"{summary} is unreadable (JSONDecodeError" in line, line
        assert "restore it from a backup, or remove it" in line, line
    assert written.code == 0, str(written)
    assert f"report: {report.resolve()}" in written.out
    html = report.read_text()
    shown = report_rounds(html)
    assert sorted(shown) == sorted(rows), html
    assert all(float(shown[r]) == pytest.approx(float(rows[r]), abs=1e-3) for r in rows), shown


def test_the_report_of_a_damaged_summary_says_it_is_damaged(home: Path) -> None:
    run_dir = home / "runs" / RUN
    (run_dir / "summary.json").write_text("{trunc")
    (written,) = xsilo(("report", str(run_dir)))
    no_traceback(written)
    assert written.code == 0, str(written)
    html = (run_dir / "report.html").read_text()
    assert "no summary.json" not in html
    assert "summary.json is unreadable" in html + written.out + written.err


def test_a_torn_metrics_line_is_skipped_and_the_events_after_it_are_shown(home: Path) -> None:
    """The ServerApp is killed while writing round 2's row; later the resumed run appends
    after the torn line. Meanwhile a copy of the run cut checkpoint 2 short: nothing here
    reads checkpoints, and a damaged one must not disturb what does not."""
    run_dir = home / "runs" / RUN
    store = RunStore(run_dir)
    rows = _rows(run_dir)
    lines = store.metrics_path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines)
              if json.loads(line)["event"] == "round" and json.loads(line)["round"] == 2)
    row_2, end = json.loads(lines[at]), json.loads(lines[-1])
    assert end["event"] == "end"
    store.metrics_path.write_text("".join(lines[:at]) + lines[at][:len(lines[at]) // 2])
    summary = (run_dir / "summary.json").read_bytes()
    (run_dir / "summary.json").unlink()  # killed: it never wrote one
    store.claim(_dead_pid())
    checkpoint = store.checkpoints / "round-0002.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert "round-0002.npz" in store.verify_checkpoints()

    report = home.parent / "crashed.html"
    status, written = xsilo(("coordinator", "status", str(run_dir)),
                            ("report", str(run_dir), "--out", str(report)))
    warning = f"{store.metrics_path}: 1 line(s) skipped that are not a JSON object"
    for result in (status, written):
        no_traceback(result)
        assert result.code == 0, str(result)
        assert warning in result.err, str(result)
    assert table_rounds(status.out) == {r: rows[r] for r in (0, 1)}, status.out
    said = " ".join(status.out.split())  # the console wraps at 120 columns
    assert ("no summary, and its ServerApp is gone" in said
            and f"xsilo coordinator run --resume {RUN}" in said), status.out
    assert sorted(report_rounds(report.read_text())) == [0, 1]

    # resumed: its events start on a line of their own, after the torn one
    store.append_event({"event": "resume", "from_round": 1})
    store.append_event(row_2)
    store.append_event(end)
    (run_dir / "summary.json").write_bytes(summary)
    status, written = xsilo(("coordinator", "status", str(run_dir)),
                            ("report", str(run_dir), "--out", str(report)))
    for result in (status, written):
        no_traceback(result)
        assert result.code == 0, str(result)
        assert warning in result.err, str(result)  # still one torn line, nothing glued to it
    assert table_rounds(status.out) == rows, status.out
    assert "'status': 'completed'" in status.out
    html = report.read_text()
    assert sorted(report_rounds(html)) == [0, 1, 2]
    assert 'class="status-completed">completed</b>' in html


def test_status_survives_a_hand_edited_round_row(home: Path) -> None:
    run_dir = home / "runs" / RUN
    rows = _rows(run_dir)
    with open(run_dir / "metrics.jsonl", "a") as fh:  # as test_report's damaged-row case
        fh.write(json.dumps({"event": "round", "round": 3, "status": "ok",
                             "global_accuracy": [1], "round_seconds": "x",
                             "train_loss": "y", "silos": {"hospital-a": "z"}}) + "\n")
    (status,) = xsilo(("coordinator", "status", str(run_dir)))
    no_traceback(status)
    if status.code == 2:  # refusing the row is fine, if it says which file
        assert "metrics.jsonl" in one_error_line(status)
    else:
        assert status.code == 0, str(status)
        assert {r: table_rounds(status.out).get(r) for r in rows} == rows, status.out
        assert 3 in table_rounds(status.out), status.out  # its numbers shown as "–"


def test_a_hand_edited_error_record_is_no_traceback(home: Path) -> None:
    run_dir = home / "runs" / RUN
    (run_dir / "summary.json").write_text('{"status": "failed", "error": ["edited"]}')
    results = xsilo(("coordinator", "status", str(run_dir)),
                    ("report", str(run_dir), "--out", str(home.parent / "r.html")))
    for result in results:
        no_traceback(result)
        if result.code == 2:
            assert "summary.json" in one_error_line(result)
        else:
            assert result.code == 0, str(result)
    assert "failed: ['edited']" in " ".join(results[0].out.split()), results[0].out

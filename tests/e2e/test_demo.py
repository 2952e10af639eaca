"""`xsilo demo` (what `make demo` runs) as a newcomer sees it: the real CLI, three hospitals
over mTLS gateways and node auth with secure aggregation, the per-round table with accuracy
rising round after round, the federated / centralized / local-only comparison, the run's HTML
report named at the end, exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

XSILO = str(Path(sys.executable).parent / "xsilo")


def test_demo_trains_compares_and_exits_zero(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    proc = subprocess.run([XSILO, "demo", "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=170, env=env,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in out + proc.stderr
    for label in ("federated (xsilo, 3 hospitals)", "centralized (pooled data)",
                  "hospital-a alone", "hospital-b alone", "hospital-c alone"):
        assert label in out, label
    gap = re.search(r"federated − centralized = ([+-]\d+\.\d+) points", out)
    assert gap is not None, out[-3000:]
    assert abs(float(gap.group(1))) <= 2.0, gap.group(0)  # the bar: within 2 points
    federated = re.search(r"federated \(xsilo, 3 hospitals\)[\s│|]+(\d\.\d{4})", out)
    assert federated is not None and float(federated.group(1)) > 0.9
    # the model learns over rounds: every round's global accuracy above the one before
    line = re.search(r"global accuracy by round \(0 = initial model\): ([\d. →]+)", out)
    assert line is not None, out[-3000:]
    accuracy = [float(a) for a in line.group(1).split("→")]
    assert len(accuracy) == 5 and all(b > a for a, b in zip(accuracy, accuracy[1:])), accuracy
    assert accuracy[-1] == pytest.approx(float(federated.group(1)), abs=6e-4)
    # the report is named, exists, and is the run's own
    named = re.search(r"report: (\S+\.html)", out)
    assert named is not None, out[-2000:]
    report = Path(named.group(1))
    assert report.is_file() and report.is_relative_to(tmp_path / "demo")
    html = report.read_text()
    assert "xsilo run report: demo" in html and 'class="status-completed"' in html
    assert f"kept {tmp_path / 'demo'}" in out


def test_a_removed_work_directory_leaves_its_report_behind(tmp_path: Path, monkeypatch) -> None:
    from federation import demo

    root, kept = tmp_path / "work", tmp_path / "kept-report.html"
    (root / "run").mkdir(parents=True)
    (root / "run" / "report.html").write_text("<html>the report</html>")
    monkeypatch.setattr(demo, "KEPT_REPORT", kept)
    monkeypatch.setattr(demo.console, "_width", 1000)  # the long temporary path on one line
    with demo.console.capture() as captured:
        demo._leave(root, root / "run" / "report.html", kept=False)
    out = captured.get()
    assert not root.exists() and kept.read_text() == "<html>the report</html>"
    assert f"report: {kept}" in out and "removed (pass --keep to keep it)" in out

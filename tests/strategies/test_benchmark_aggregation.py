"""Smoke test of benchmarks/aggregation.py at tiny sizes (both cases, fresh subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "aggregation.py"


def test_benchmark_smoke(tmp_path: Path) -> None:
    out, results = tmp_path / "agg.json", tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept\n", encoding="utf-8")
    subprocess.run([sys.executable, str(SCRIPT), "--silos", "3", "--params", "1000",
                    "--out", str(out), "--results", str(results)],
                   check=True, capture_output=True, text=True, timeout=60)
    report = json.loads(out.read_text())
    assert set(report["cases"]) == {"loop", "loop-few", "streaming", "flower"}
    assert all(c["peak_bytes"] >= 0 and c["aggregate_s"] >= 0 for c in report["cases"].values())
    text = results.read_text()
    assert "## Other section\n\nkept" in text and "## Aggregation memory" in text
    assert "benchmarks/aggregation.py" in text

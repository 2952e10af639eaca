"""benchmarks/_bench.py: a section of RESULTS.md is replaced up to the next section (or
appended), and a child case's result or failure comes back as a dict."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _bench  # noqa: E402


def test_a_section_is_replaced_up_to_the_next_one_or_appended(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## A\n\nold a\n\n## B\n\nb stays\n")
    _bench.replace_section("## A", "## A\n\nnew a\n", results)
    assert results.read_text() == "# Results\n\n## A\n\nnew a\n\n## B\n\nb stays\n"
    _bench.replace_section("## B", "## B\n\nnew b", results)
    assert results.read_text().endswith("## A\n\nnew a\n\n## B\n\nnew b\n")
    _bench.replace_section("## C", "## C\n\nc\n", results)
    assert results.read_text().endswith("## B\n\nnew b\n\n## C\n\nc\n")


def test_a_child_result_or_its_failure(tmp_path: Path) -> None:
    env = _bench.child_env()
    ok = tmp_path / "ok.py"
    ok.write_text("import _bench\nprint('noise')\n_bench.emit({'x': 1})\n")
    env_ok = {**env, "PYTHONPATH": f"{_bench.HERE}:{env['PYTHONPATH']}"}
    assert _bench.run_child([str(ok)], env=env_ok) == {"x": 1}
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('no data here')\n")
    assert _bench.run_child([str(bad)], env=env)["error"] == "no data here"
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    assert _bench.run_child([str(slow)], env=env, timeout=0.5) == {
        "error": "over the 0.5 s limit"}


def test_raw_rows_are_saved_with_the_commit_date_and_command(tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["x.py", "--silos", "5"])
    out = tmp_path / "out" / "raw.json"
    meta = _bench.save_raw(out, "benchmarks/x.py", rows=[{"a": 1}])
    assert meta["command"] == ".venv/bin/python benchmarks/x.py --silos 5"
    assert meta["commit"] and len(meta["date"]) == 10
    import json
    assert json.loads(out.read_text()) == {"meta": meta, "rows": [{"a": 1}]}


def test_a_process_memory_field_is_read_from_proc_and_zero_once_it_is_gone() -> None:
    import os
    import subprocess

    peak, now = (_bench.proc_status_kib(os.getpid(), f) for f in ("VmHWM", "VmRSS"))
    assert peak >= now > 1024  # this Python holds more than 1 MiB
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its /proc entry is gone
    assert _bench.proc_status_kib(child.pid, "VmRSS") == 0
    assert _bench.proc_status_kib(os.getpid(), "NoSuchField") == 0

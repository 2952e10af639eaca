"""benchmarks/round_trip.py's pure part (joining each message's hops across processes) and
its tracer, which must leave xsilo's pinned Flower adjustments working (the measurement
itself runs a deployment and is a benchmark, not a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import round_trip  # noqa: E402


def _events(message: str, at: float, kind: str = "train") -> list[dict]:
    """Every hop of one message, ``at`` seconds in."""
    return [
        {"event": "node.got", "at": at + 0.5, "id": message, "type": kind},
        {"event": "app.pull", "start": at + 0.6, "end": at + 0.9, "id": message, "type": kind},
        {"event": "app.push", "start": at + 1.4, "end": at + 1.5, "reply_to": message},
        {"event": "node.pushed", "at": at + 1.6, "reply_to": ["other", message]},
        {"event": "coord.pulled", "at": at + 1.8, "replies": [{"reply_to": message}]},
    ]


def test_each_message_is_followed_from_the_push_to_the_reply() -> None:
    push = {"event": "coord.push", "start": 10.0, "end": 10.2,
            "messages": [{"id": "a", "type": "train", "group": "2"},
                         {"id": "b", "type": "train", "group": "2"},
                         {"id": "c", "type": "train.unmask", "group": "2-unmask"}]}
    events = [push, *_events("a", 10.0), *_events("c", 11.0, "train.unmask"),
              *_events("b", 10.0)[:3]]  # b's reply never reached the coordinator
    rows = round_trip.trips(events)
    assert [r["type"] for r in rows] == ["train", "train.unmask"]
    a = rows[0]
    assert a["push"] == pytest.approx(0.2) and a["taken"] == pytest.approx(0.5)
    assert a["to the ClientApp"] == pytest.approx(0.4) and a["handle"] == pytest.approx(0.5)
    assert a["reply"] == pytest.approx(0.2) and a["coordinator pull"] == pytest.approx(0.2)
    hops = ("taken", "to the ClientApp", "handle", "reply", "coordinator pull")
    assert a["trip"] == pytest.approx(sum(a[h] for h in hops)) == pytest.approx(1.8)
    assert rows[1]["taken"] == pytest.approx(1.5)  # pushed from 10.0, taken at 11.5
    summary = round_trip.summarize(rows)
    assert summary["train"]["messages"] == 1 and summary["train.unmask"]["trip"] > 2
    assert "| secure, as shipped | train | 1 | 0.20 | 0.50 |" in round_trip.table(
        [{"secure": True, "quick": True, "fast_poll": True, "hops": summary}])
    both = {"secure": True, "quick": False, "fast_poll": False, "hops": summary}
    assert "| secure, Flower's 1 s object back-off + Flower's 3 s poll | train |" in (
        round_trip.table([both]))


def test_the_tracer_leaves_xsilos_flower_adjustments_working(tmp_path: Path) -> None:
    """Traced processes still pass the launcher's pins (they read through the wrappers)."""
    probe = (
        "import flwr.supernode.start_client_internal as n, flwr.superlink.grid.http_grid as g\n"
        "import flwr.supernode.runtime.run_clientapp as r\n"
        "assert n._pull_and_store_message.__wrapped__ and r.pull_task_input.__wrapped__\n"
        "assert g.HttpGrid.pull_messages.__wrapped__\n"
        "from deploy.launch.supernode import install\n"
        "install()\n"
        "from coordinator.server_app import quick_reply_pulls\n"
        "quick_reply_pulls(g.HttpGrid.__new__(g.HttpGrid))\n"
        "import deploy.launch.warm\n"
        "print(n.pull_objects._xsilo_quick, g.pull_objects._xsilo_quick,\n"
        "      r.pull_and_inflate_object_from_tree._xsilo_quick)\n")
    env = {**os.environ, "XSILO_TRACE_FILE": str(tmp_path / "trace.jsonl"),
           "XSILO_WARM_PRELOAD": "",
           "PYTHONPATH": os.pathsep.join([str(round_trip.TRACE_SITE),
                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]

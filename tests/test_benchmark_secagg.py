"""benchmarks/secagg.py's reading of its own rows: issue 20's goals, each met or not, from
the rows of one run (the measurement itself is a benchmark, not a test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import secagg as bench  # noqa: E402


def _row(engine: str, method: str, silos: int, params: int, round_s: float, **extra) -> dict:
    return {"engine": engine, "method": method, "silos": silos, "params": params,
            "round_s": round_s, **extra}


ROWS = [
    _row("xsilo-inprocess", "plain FedAvg", 5, 1_000_000, 0.13),
    _row("xsilo-inprocess", "xsilo secure", 5, 1_000_000, 0.21),
    _row("xsilo-sim", "plain FedAvg", 10, 1_000_000, 0.40, runs_round_s=[0.4, 0.4]),
    _row("xsilo-sim", "xsilo secure", 10, 1_000_000, 0.44, runs_round_s=[0.42, 0.46],
         trips_s={"masked_input": 0.36, "unmasking": 0.06}),
    _row("xsilo-deployment", "plain FedAvg", 5, 1_000_000, 0.55),
    _row("xsilo-deployment", "xsilo secure", 5, 1_000_000, 6.0),
    _row("xsilo-deployment", "plain FedAvg", 10, 1_000_000, 5.0),
    _row("xsilo-deployment", "xsilo secure", 10, 1_000_000, 9.0,
         trips_s={"masked_input": 6.5, "unmasking": 2.5}),
    _row("flower-deployment", "Flower SecAgg+", 5, 1_000_000, 27.0),
]


def test_each_goal_is_read_from_the_rows_and_called_met_or_not() -> None:
    lines = bench._goals(ROWS).splitlines()
    assert lines[0] == "* simulation, 10 silos x 1M: xsilo secure / plain = 1.10x (goal <= 1.15x: met)"
    assert lines[1] == "  * run by run (plain and secure interleaved): 1.05x, 1.15x"
    assert lines[2].startswith("  * of which the unmasking round trip alone: 0.060 s = 15% of")
    assert lines[3] == ("* deployment, 10 silos x 1M: xsilo secure / plain = 1.80x "
                        "(goal <= 1.2x: not met)")
    assert "2.500 s = 50% of the plain round" in lines[4]
    gaps = [ln for ln in lines if ln.startswith("* deployed vs in process")]
    assert gaps == [
        "* deployed vs in process, 5 silos x 1,000,000, plain FedAvg: 0.55 s vs 0.13 s, +0.42 s "
        "(goal <= 0.5 s: met)",
        "* deployed vs in process, 5 silos x 1,000,000, xsilo secure: 6.00 s vs 0.21 s, +5.79 s "
        "(goal <= 0.5 s: not met)"]  # no in-process row at 10 silos here: no line
    assert lines[-1] == ("* deployment, 5 silos x 1,000,000: Flower SecAgg+ / xsilo secure = "
                         "4.50x (goal >= 3x: met; each on its own SuperExec)")


def test_missing_rows_leave_their_goal_out() -> None:
    assert bench._goals(ROWS[:2]) == ""

"""benchmarks/superlink_load.py's pure parts: the look schedule and the projection (the
measurement itself runs a SuperLink and is a benchmark, not a test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import superlink_load as load  # noqa: E402


@pytest.mark.parametrize("n, rate, seconds", [(50, 33, 30), (50, 2071, 30), (3, 1, 10),
                                              (7, 207, 1.5)])
def test_the_looks_are_spread_evenly_at_the_rate(n: int, rate: float, seconds: float) -> None:
    schedule = load.spread(n, rate, seconds)
    times = sorted(t for node in schedule for t in node)
    assert len(schedule) == n and all(0 <= t < seconds for t in times)
    assert abs(len(times) - rate * seconds) <= n  # the rate, give or take one look per node
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) == pytest.approx(1 / rate) and min(gaps) == pytest.approx(1 / rate)
    for node in schedule:  # each node at its own interval
        assert all(b - a == pytest.approx(n / rate) for a, b in zip(node, node[1:]))


def test_the_projection_uses_only_the_rates_the_client_kept_up_with() -> None:
    rows = [{"target": 33, "achieved": 33.0, "cpu_ms_per_look": 2.0},
            {"target": 207, "achieved": 200.0, "cpu_ms_per_look": 2.0},
            {"target": 2071, "achieved": 600.0, "cpu_ms_per_look": 9.0}]
    text = load.projection({"rows": rows})
    assert text.startswith("At 2.00 CPU ms per look")
    assert "1,000 silos in rounds, xsilo unbudgeted: 4.14 cores" in text  # 2071 × 2 ms
    assert "100 silos idle (either loop): 0.07 cores" in text
    assert load.projection({"rows": rows[2:]}) == "No rate was kept up with; no projection."


def test_the_table_names_what_each_rate_stands_for() -> None:
    row = {"target": 207.0, "achieved": 205.2, "cpu_share": 0.41, "cpu_ms_per_look": 1.93,
           "p50_ms": 4.04, "p99_ms": 20.5}
    text = load.table({"rows": [row]})
    assert ("| 207 (100 silos in rounds, xsilo unbudgeted) | 205 | 41 % | 1.93 | 4.0 / 20.5 |"
            in text)


def test_the_state_comparison_uses_the_rates_both_runs_kept_up_with() -> None:
    def rows(*ms: tuple[float, float, float]) -> list[dict]:
        return [{"target": t, "achieved": a, "cpu_ms_per_look": c} for t, a, c in ms]

    result = {"rows": rows((10, 10, 9.0), (100, 99, 8.0), (423, 160, 30.0)),
              "memory": {"rows": rows((10, 10, 5.0), (100, 80, 1.0), (423, 150, 1.0))}}
    text = load.state_cost(result)
    # only the 10 looks/s rate was kept up with by both: 9 ms against 5 ms
    assert text.startswith("Over the 1 rate both runs kept up with")
    assert "9.00 CPU ms with its state in the SQLite file and 5.00 ms" in text
    assert "the durable state is 44 % of a look's cost" in text
    assert load.state_cost({"rows": result["rows"]}) == ""
    result["memory"]["rows"][0]["achieved"] = 5
    assert load.state_cost(result) == "No rate was kept up with in both runs; no comparison."
    assert load.memory_text({"rows": []}) == ""

"""Stragglers (in process): once enough silos answered, a round waits the grace period, not
the round timeout; each silo left out is in the row with its reason; the live table says who
is awaited; global scores say over which silos they are, so a dropout cannot fake a gain."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from coordinator.config import RunConfig
from coordinator.console import round_table
from coordinator.messages import Patience
from coordinator.run_record import unique_rounds
from coordinator.run_store import RunStore
from federation.local import run_in_process
from xsilo.errors import ConfigError


def _silent_in_round(server_round: int, node: int = 3):
    trains: dict[int, int] = {}

    def drop(n: int, kind: str) -> bool:
        trains[n] = trains.get(n, 0) + (kind == "train")
        return n == node and kind == "train" and trains[n] == server_round

    return drop


def _render(events: list[dict]) -> str:
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(round_table(events))
    return console.export_text()


def test_a_silent_silo_costs_the_grace_period_not_the_round_timeout(
        tmp_path: Path, federation: list[Path]) -> None:
    config = RunConfig(num_rounds=2, min_silos=2, expected_silos=3, round_timeout=60.0,
                       straggler_grace=0.3)
    started = time.monotonic()
    summary = run_in_process(tmp_path / "run", config, federation, drop=_silent_in_round(2))
    assert time.monotonic() - started < 30  # the 60 s timeout was never waited out
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    events = RunStore(tmp_path / "run").events()
    rows = {r["round"]: r for r in unique_rounds(events)[0]}
    assert rows[2]["contributors"] == ["hospital-a", "hospital-b"]
    assert rows[2]["rejected"] == {"hospital-c": (
        "no update within the straggler grace (0.3 s after enough silos had answered); the "
        "round went on without it")}
    awaited = [e for e in events if e["event"] == "awaiting" and e["round"] == 2]
    assert awaited[0]["silos"] == ["hospital-a", "hospital-b", "hospital-c"]  # round start
    assert awaited[-1]["silos"] == ["hospital-c"]  # once the quorum was in
    # Model 1 was scored in round 2 by the two silos that answered: the row says so.
    assert rows[1]["scored_by"] == ["hospital-a", "hospital-b"]
    assert rows[1]["unscored"] == ["hospital-c"]
    assert rows[0]["unscored"] == [] and rows[2]["unscored"] == []
    shown = _render(events)
    assert "global scores over a partial population (without hospital-c" in shown
    row_1 = next(line for line in shown.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert "*" in row_1


def test_the_live_table_names_the_silos_still_awaited() -> None:
    now = time.time()
    events = [{"event": "round", "round": 0, "status": "initial", "silos": {}},
              {"event": "awaiting", "round": 1, "silos": ["a", "b"], "until": now + 60},
              {"event": "awaiting", "round": 1, "silos": ["b"], "until": now + 5}]
    assert "round 1: awaiting b (until" in _render(events)
    done = events + [{"event": "round", "round": 1, "status": "ok", "silos": {}}]
    assert "awaiting" not in _render(done)


def test_a_silent_silo_under_secure_aggregation_costs_the_grace_period(
        tmp_path: Path, federation: list[Path]) -> None:
    config = RunConfig(num_rounds=2, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=60.0, straggler_grace=0.3)
    started = time.monotonic()
    summary = run_in_process(tmp_path / "run", config, federation, drop=_silent_in_round(2))
    assert time.monotonic() - started < 40
    assert summary["rounds_failed"] == []
    rows = {r["round"]: r for r in unique_rounds(RunStore(tmp_path / "run").events())[0]}
    assert rows[2]["contributors"] == ["hospital-a", "hospital-b"]
    assert rows[2]["rejected"]["hospital-c"].startswith(
        "no masked input within the straggler grace (0.3 s")
    # The masked sums of model 1's scores cover round 2's contributors only: said so.
    assert rows[1]["global_scores"] == "secure_sum"
    assert rows[1]["scored_by"] == ["hospital-a", "hospital-b"]
    assert rows[1]["unscored"] == ["hospital-c"]


def test_patience_says_what_ended_the_wait() -> None:
    p = Patience(lambda r: len(r) >= 2, 5.0)
    p.stopped_by = "timeout"
    assert p.missing_reason(what="update", timeout=30) == "no update within round_timeout (30 s)"
    p.stopped_by = "grace"
    assert "straggler grace (5 s after" in p.missing_reason(what="update", timeout=30)


@pytest.mark.parametrize("value", [-1.0, float("inf"), "10", True])
def test_straggler_grace_must_be_seconds(value: object) -> None:
    with pytest.raises(ConfigError, match="straggler_grace must be a number of seconds"):
        RunConfig.from_mapping({"straggler_grace": value})


def test_the_grace_never_exceeds_the_round_timeout() -> None:
    assert RunConfig(round_timeout=20.0, straggler_grace=60.0).grace == 20.0
    assert RunConfig(round_timeout=20.0, straggler_grace=5).grace == 5.0

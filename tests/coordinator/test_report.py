"""The run report (coordinator.report): written by the round loop at the end of every run,
readable for completed, failed, stopped and resumed runs, self-contained, and `xsilo report`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from coordinator.config import RunConfig, write_run_config
from coordinator.report import REPORT_FILE, render_report
from coordinator.run_record import time_split, unique_rounds
from coordinator.run_store import RunStore
from federation.local import run_in_process
from strategies.dp import DPConfig
from xsilo.errors import ConfigError


class _Page(HTMLParser):
    """Every <svg class="plot"> with its drawn series paths, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[dict] = []
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.plots.append({"title": a.get("aria-label"), "series": [], "references": []})
        elif tag == "path" and self.plots and a.get("class") in ("series", "reference"):
            key = "series" if a["class"] == "series" else "references"
            self.plots[-1][key].append((a.get("data-label"), a.get("d", "")))
        elif tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            if a.get(name):
                self.external.append(a[name])


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def plots_by_title(html: str) -> dict[str, dict]:
    return {p["title"]: p for p in parse(html).plots}


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real in-process run: 3 silos, secure aggregation, SGD that learns over 3 rounds."""
    from tests.conftest import make_federation

    root = tmp_path_factory.mktemp("report")
    configs = make_federation(root / "silos", model="sklearn:SGDClassifier")
    config = RunConfig(num_rounds=3, min_silos=3, local_epochs=2, secure_aggregation=True,
                       name="report-run", strategy_params={"weighted": True})
    summary = run_in_process(root / "run", config, configs)
    assert summary["status"] == "completed"
    return root / "run"


def test_every_run_ends_with_a_self_contained_report(secure_run: Path) -> None:
    html = (secure_run / REPORT_FILE).read_text()  # written by the round loop, not by us
    page = parse(html)
    assert page.scripts == 0 and page.external == []  # nothing to fetch, nothing to run
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    plots = plots_by_title(html)
    for title in ("accuracy per round", "loss per round", "training loss (contributors, weighted)",
                  "round time: computing vs waiting", "participation per round"):
        assert plots[title]["series"], title
        assert all(re.match(r"M\s*[\d.]+", d) for _, d in plots[title]["series"]), title
    accuracy = {label for label, _ in plots["accuracy per round"]["series"]}
    assert accuracy == {"global", "hospital-a", "hospital-b", "hospital-c"}
    time_split = {label for label, _ in plots["round time: computing vs waiting"]["series"]}
    assert {"computing", "waiting", "secure aggregation"} <= time_split
    assert "Status: <b class=\"status-completed\">completed</b>" in html
    assert "fedavg" in html and "secagg_bits" in html and "weighted" in html


def test_rows_carry_what_the_report_needs(secure_run: Path) -> None:
    rows = [e for e in RunStore(secure_run).events() if e["event"] == "round"]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        assert r["asked"] == ["hospital-a", "hospital-b", "hospital-c"]
        assert set(r["fit_seconds"]) == set(r["asked"])
        assert all(0 < s < r["round_seconds"] for s in r["fit_seconds"].values())
        assert r["bytes"]["sent"] > 0 and r["bytes"]["received"] > 0
        assert "unmasking" in r["secure_aggregation"]["seconds"]
    xs, stacks = time_split(rows)
    assert xs == [1, 2, 3]
    for i, r in enumerate(rows[1:]):  # the three parts add up to the round's wall time
        assert sum(v[i] for v in stacks.values()) == pytest.approx(r["round_seconds"], abs=1e-6)
        assert stacks["computing"][i] == pytest.approx(max(r["fit_seconds"].values()))


def test_provenance_names_versions_config_hash_and_times(secure_run: Path) -> None:
    html = render_report(secure_run)
    digest = hashlib.sha256((secure_run / "config.toml").read_bytes()).hexdigest()
    assert digest in html
    start = next(e for e in RunStore(secure_run).events() if e["event"] == "start")
    assert start["xsilo_version"] and start["flwr_version"] == "1.42.0"
    assert f"<td>{start['flwr_version']}</td>" in html
    assert "in-process" in html  # no Flower app was shipped: said, not left blank
    assert re.search(r"started</td><td[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", html)
    assert re.search(r"ended</td><td[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", html)


def test_a_failed_run_has_a_readable_report(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    (configs[2].parent / "data" / "train.csv").unlink()  # hospital-c refuses at join
    with pytest.raises(Exception, match="only 2 silo"):
        run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3), configs)
    html = (tmp_path / "run" / REPORT_FILE).read_text()
    assert 'class="status-failed">failed</b>' in html
    assert "min_silos is 3" in html  # the error
    assert "refused at join: hospital-c: DataValidationError" in html
    assert "No training round completed." in html
    assert parse(html).plots == []  # nothing to plot, and no empty frames pretending otherwise


def _write_run(run_dir: Path, config: RunConfig, events: list[dict],
               summary: dict | None) -> None:
    run_dir.mkdir(parents=True)
    write_run_config(run_dir / "config.toml", config)
    store = RunStore(run_dir)
    for e in events:
        store.append_event(e)
    if summary is not None:
        store.write_summary(summary)


def _row(rnd: int, acc: float, **extra: object) -> dict:
    return {"event": "round", "round": rnd, "status": "ok" if rnd else "initial",
            "global_accuracy": acc, "global_loss": 1 - acc, "round_seconds": 1.0,
            "silos": {"a": {"accuracy": acc, "loss": 1 - acc, "examples": 10}},
            "contributors": ["a"] if rnd else [], "rejected": {}, **extra}


def test_a_resumed_run_shows_each_round_once_with_its_latest_row(tmp_path: Path) -> None:
    events = [{"event": "join", "silos": {"a": {}}, "refused": {}, "silent_nodes": []},
              _row(0, 0.3), _row(1, 0.5), _row(2, 0.6),
              {"event": "end", "status": "failed", "error": "KeyboardInterrupt: "},
              _row(2, 0.7), _row(3, 0.8)]  # resumed from checkpoint 1: round 2 again
    _write_run(tmp_path / "run", RunConfig(num_rounds=3, name="resumed"), events,
               {"status": "completed", "rounds_requested": 3, "rounds_failed": [],
                "silos": ["a"], "final_accuracy": 0.8})
    rows, repeated = unique_rounds(RunStore(tmp_path / "run").events())
    assert [r["round"] for r in rows] == [0, 1, 2, 3] and repeated == [2]
    assert rows[2]["global_accuracy"] == 0.7
    html = render_report(tmp_path / "run")
    assert "Round(s) 2 were written more than once" in html
    # in the round table, once, with the latest value
    assert html.count("<tr><td>2</td><td>0.7</td>") == 1
    assert "<tr><td>2</td><td>0.6</td>" not in html


def test_dp_report_plots_epsilon_against_the_budget(tmp_path: Path) -> None:
    dp = DPConfig(mechanism="central", noise_multiplier=1.0, clip_norm=1.0, max_epsilon=8.0)
    events = [_row(0, 0.3), _row(1, 0.5, epsilon=2.5, delta=1e-5),
              _row(2, 0.6, epsilon=4.0, delta=1e-5)]
    _write_run(tmp_path / "run", RunConfig(num_rounds=2, dp=dp), events,
               {"status": "completed", "epsilon": 4.0, "delta": 1e-5, "max_epsilon": 8.0})
    plot = plots_by_title(render_report(tmp_path / "run"))["privacy spent (ε) per round"]
    assert [label for label, _ in plot["references"]] == ["budget ε=8"]
    (label, d), = plot["series"]
    assert label.startswith("ε (run") and d.count("L") == 2  # rounds 0 (ε 0), 1, 2


def test_report_failure_is_logged_and_the_run_stands(tmp_path: Path, make_silos, monkeypatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import coordinator.report as report

    def broken(run_dir: Path) -> str:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(report, "render_report", broken)
    configs = make_silos(tmp_path / "silos")
    with caplog.at_level(logging.ERROR, logger="coordinator.loop"):
        summary = run_in_process(tmp_path / "run", RunConfig(num_rounds=1, min_silos=3), configs)
    assert summary["status"] == "completed"
    assert not (tmp_path / "run" / REPORT_FILE).exists()
    assert "could not write the run report" in caplog.text and "renderer bug" in caplog.text


def test_xsilo_report_command(secure_run: Path, tmp_path: Path) -> None:
    from federation.cli import report

    app = typer.Typer()
    app.command()(report)
    out = tmp_path / "elsewhere" / "r.html"
    res = CliRunner().invoke(app, [str(secure_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out.resolve()) in res.output.replace("\n", "")
    assert plots_by_title(out.read_text())["accuracy per round"]["series"]
    with pytest.raises(ConfigError, match="not a run directory"):
        render_report(tmp_path / "nothing-here")


def test_report_of_a_run_without_summary_says_so(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", RunConfig(num_rounds=2), [_row(0, 0.3), _row(1, 0.4)], None)
    html = render_report(tmp_path / "run")
    assert "running or interrupted (no summary.json)" in html
    assert "not yet (no end event)" in html
    first = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    assert json.loads(first)["round"] == 0


@pytest.mark.parametrize("summary, line", [
    ('"completed"', None), ("{trunc", None), ("[]", None),
    (None, "42"), (None, json.dumps(_row(2, 0.6, round_seconds="x", train_loss="y",
                                         global_accuracy=[1], silos={"a": "z"}))),
])
def test_a_damaged_run_directory_still_has_a_report(tmp_path: Path, summary: str | None,
                                                   line: str | None) -> None:
    run_dir = tmp_path / "run"
    _write_run(run_dir, RunConfig(num_rounds=2), [_row(0, 0.3), _row(1, 0.4)],
               {"status": "completed"})
    if summary is not None:
        (run_dir / "summary.json").write_text(summary)
    if line is not None:
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(line + "\n")
    html = render_report(run_dir)
    assert plots_by_title(html)["accuracy per round"]["series"]


_JOIN = {"event": "join", "silos": {"a": "f" * 8}, "refused": {"b": "PolicyRefusal[x]: no"},
         "silent_nodes": [7], "run_token": "t", "time": 1.7e9}


@pytest.mark.parametrize("where, key, value", [
    ("join", "refused", None), ("join", "silos", None), ("join", "silent_nodes", 1),
    ("join", "time", 1e308), ("row", "unscored", [1, "a"]), ("row", "round", 10**29),
    ("row", "bytes", {"sent": 10**30, "received": float("nan")}),
    ("summary", "rounds_failed", 1), ("summary", "silos", 1), ("summary", "status", ["x"]),
    ("awaiting", "until", 1e308), ("awaiting", "silos", "a"),
])
def test_one_hand_edited_value_anywhere_still_renders_the_report_and_the_status_table(
        tmp_path: Path, where: str, key: str, value: object) -> None:
    """A run directory is read as it is: one damaged value in the join event, a row, an
    ``awaiting`` line or summary.json (numbers beyond any time or float, null where a table
    was, a number where a list was) shows as missing, never as a traceback."""
    from rich.console import Console

    from coordinator.console import round_table

    events = [dict(_JOIN), _row(0, 0.3), _row(1, 0.4, unscored=[], scored_by=["a"]),
              {"event": "awaiting", "round": 2, "until": 1.7e9, "silos": ["a"]}]
    summary = {"status": "completed", "rounds_failed": [], "silos": ["a"]}
    target = {"join": events[0], "row": events[2], "awaiting": events[3], "summary": summary}
    target[where][key] = value
    run_dir = tmp_path / "run"
    _write_run(run_dir, RunConfig(num_rounds=2), [], None)
    with open(run_dir / "metrics.jsonl", "w") as fh:  # as a hand edit writes it: NaN and all
        fh.writelines(json.dumps(e) + "\n" for e in events)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    html = render_report(run_dir)
    assert "accuracy per round" in plots_by_title(html)
    console = Console(record=True, width=200)
    console.print(round_table(RunStore(run_dir).events()))
    assert "round" in console.export_text()

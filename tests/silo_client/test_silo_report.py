"""A silo's own report (silo_client.report, `xsilo silo report`): what left the site per run
and round, from its ledger; ε per run from its tally; every refusal with its reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.config import RunConfig, write_run_config
from coordinator.local_grid import LocalGrid
from coordinator.server_app import run_coordinator
from federation.demo_data import demo_schema
from silo_client.cli import app as silo_app
from silo_client.client_app import app as client_app
from silo_client.config import load_silo_config, write_silo_config
from silo_client.report import read_entries, render_silo_report
from strategies.dp import DPConfig


def _run(run_dir: Path, config: RunConfig, configs: list[Path], *, run_id: int) -> dict:
    """An in-process run under its own Flower run id (the ledger keys runs by it)."""
    run_dir.mkdir(parents=True)
    write_run_config(run_dir / "config.toml", config)
    grid = LocalGrid(client_app, {i + 1: {"silo-config": str(p.resolve())}
                                  for i, p in enumerate(configs)}, run_id=run_id)
    return run_coordinator(grid, str(run_dir), poll_interval=0.0)


@pytest.fixture(scope="module")
def silo_with_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hospital-a: refused run 11 at join (its policy allows 1 round), trained DP run 12."""
    from tests.conftest import make_federation

    root = tmp_path_factory.mktemp("silo-report")
    configs = make_federation(root / "silos")
    a = configs[0]
    (a.parent / "policy.toml").write_text("max_rounds = 1\n")
    write_silo_config(a, name="hospital-a", train=a.parent / "data/train.csv",
                      test=a.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))
    refused = _run(root / "run-11", RunConfig(num_rounds=2, min_silos=2), configs, run_id=11)
    assert "hospital-a" not in refused["silos"]
    dp = DPConfig(mechanism="central", noise_multiplier=2.0, clip_norm=1.0)
    trained = _run(root / "run-12", RunConfig(num_rounds=1, min_silos=3, dp=dp), configs,
                   run_id=12)
    assert trained["status"] == "completed"
    return a


def test_the_report_shows_each_run_round_by_round(silo_with_history: Path) -> None:
    html = render_silo_report(load_silo_config(silo_with_history))
    assert "Chain intact" in html
    assert "Run 11: what left, round by round" in html and "Run 12: what left" in html
    entries = read_entries(load_silo_config(silo_with_history).workspace / "egress.jsonl")
    train = [e for e in entries if e.run == "12" and e.kind == "train"]
    assert len(train) == 1 and train[0].server_round == 1
    # 30 features + 1 intercept, float64: what the update weighed
    assert (train[0].values, train[0].nbytes) == (31, 248)
    assert train[0].epsilon is not None and train[0].clip_norm == 1.0
    assert re.search(r"<td class=\"l\">1</td><td class=\"l\">(evaluate, )?train</td>"
                     r"<td>31</td><td>248 B</td>", html)
    assert "query" in html  # the join reply (with the schema fingerprint) left too
    assert 'aria-label="tensor bytes sent per round (run 12)"' in html


def test_every_refusal_is_listed_with_its_reason(silo_with_history: Path) -> None:
    html = render_silo_report(load_silo_config(silo_with_history))
    refusals = html.split("<h2>Refusals</h2>")[1].split("</section>")[0]
    assert "<td class=\"l\">11</td>" in refusals and "query" in refusals
    assert ("PolicyRefusal[max_rounds]: the run asks for 2 rounds, the site policy allows at "
            "most 1") in refusals


def test_epsilon_per_run_comes_from_the_privacy_tally(silo_with_history: Path) -> None:
    workspace = load_silo_config(silo_with_history).workspace
    tally = json.loads((workspace / "privacy-tally.json").read_text())
    (token, spent), = tally["runs"].items()
    html = render_silo_report(load_silo_config(silo_with_history))
    assert f"<td class=\"l\">{token}</td><td>1</td><td>{spent['epsilon']:.4g}</td>" in html
    assert f"Site total: <b>{tally['total_epsilon']:.4g}</b>" in html


def test_xsilo_silo_report_writes_the_file_and_a_broken_chain_is_said(
        silo_with_history: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    res = CliRunner().invoke(silo_app, ["report", "--config", str(silo_with_history),
                                        "--out", str(out)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert str(out) in res.output.replace("\n", "") and "<svg" in out.read_text()
    ledger = load_silo_config(silo_with_history).workspace / "egress.jsonl"
    lines = ledger.read_text().splitlines()
    copy = tmp_path / "copy"
    (copy / "workspace").mkdir(parents=True)
    lines[1] = lines[1].replace('"server_round":0', '"server_round":5')  # tampered
    (copy / "workspace" / "egress.jsonl").write_text("\n".join(lines) + "\n")
    cfg = write_silo_config(copy / "silo.toml", name="hospital-a", train=Path("x.csv"),
                            schema=demo_schema(), model="sklearn:LogisticRegression")
    html = render_silo_report(load_silo_config(cfg))
    assert "Chain broken at line 2" in html

"""Differential privacy in real (in-process) runs: clipping at the coordinator, ε in every
row / the table / the summary / the checkpoint, the budget stop at the coordinator and at a
silo, refusals before any silo is contacted, and a DP-SGD torch silo reporting its ε."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from rich.console import Console

from coordinator.messages import Observers
from coordinator.config import RunConfig, load_run_config
from coordinator.console import round_table
from coordinator.run_store import RunStore
from silo_client.config import load_silo_config, write_silo_config
from silo_client.policy import PrivacyTally
from silo_client.privacy import TALLY_FILE
from strategies.dp import DPConfig, l2_norm
from federation.demo_data import demo_schema
from xsilo.errors import ConfigError, StrategyError
from federation.local import run_in_process


def _dp(**kw) -> dict:
    return {"mechanism": "central", "noise_multiplier": 2.0, "clip_norm": 1.0, **kw}


def _eps(z: float, rounds: int, delta: float = 1e-5) -> float:
    acct = pld_privacy_accountant.PLDAccountant()
    acct.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return acct.get_epsilon(delta)


def _rows(run_dir: Path) -> list[dict]:
    return [e for e in RunStore(run_dir).events() if e["event"] == "round"]


def test_central_run_clips_accounts_and_checkpoints(tmp_path: Path, federation: list[Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    config = RunConfig(num_rounds=3, min_silos=3, dp=DPConfig(**_dp(clip_norm=0.5)))
    summary = run_in_process(tmp_path / "run", config, federation,
                             observers=Observers(clipped=seen.append))
    assert summary["status"] == "completed"
    assert len(seen) == 9 and all(l2_norm(r.update) <= 0.5 for r in seen)
    assert any(r.clipped for r in seen)  # the demo's updates are larger than 0.5
    rows = _rows(tmp_path / "run")[1:]
    for r, row in enumerate(rows, start=1):
        assert row["epsilon"] == pytest.approx(_eps(2.0, r), rel=1e-6)
        assert row["delta"] == 1e-5 and row["clip_norm"] == 0.5 and row["noise_stddev"] == 1.0
    assert summary["epsilon"] == pytest.approx(_eps(2.0, 3), rel=1e-6)
    _, _, state = RunStore(tmp_path / "run").latest_checkpoint()
    saved = json.loads(str(state["dp/state"]))
    assert len(saved["accountant"]["events"]) == 3
    assert load_run_config(tmp_path / "run").dp == config.dp  # config.toml round-trips [run.dp]
    text = _render(RunStore(tmp_path / "run").events())
    assert "ε" in text and f"{_eps(2.0, 3):.3f}" in text
    for silo in federation:  # every silo's own tally agrees, and its ledger carries C, σ, ε
        ws = load_silo_config(silo).workspace
        assert PrivacyTally(ws / TALLY_FILE).total() == pytest.approx(summary["epsilon"], rel=1e-9)
        train = [json.loads(line) for line in (ws / "egress.jsonl").read_text().splitlines()
                 if '"train"' in line]
        assert [e["clip_norm"] for e in train] == [0.5] * 3
        assert [e["noise_sigma"] for e in train] == [1.0] * 3
        assert train[-1]["epsilon"] == pytest.approx(summary["epsilon"], rel=1e-9)


def _render(events: list[dict]) -> str:
    console = Console(width=200, record=True)
    console.print(round_table(events))
    return console.export_text()


def test_adaptive_clipping_records_c_each_round(tmp_path: Path, federation: list[Path]) -> None:
    config = RunConfig(num_rounds=6, min_silos=3, dp=DPConfig(**_dp(
        clipping="adaptive", clip_norm=1000.0, noise_multiplier=0.001, clip_learning_rate=1.0,
        accounting="rdp")))
    run_in_process(tmp_path / "run", config, federation)
    rows = _rows(tmp_path / "run")[1:]
    clips = [row["clip_norm"] for row in rows]
    assert [row["next_clip_norm"] for row in rows[:-1]] == clips[1:]  # the C each round used
    # every norm (~10) is far below C = 1000, so b_bar ~ 1 and C falls by ~e^-0.5 a round
    # (the count noise sigma_b = max(3/20, z) = 0.15 moves b_bar by 0.05: no flake)
    assert clips[0] == 1000.0 and clips[-1] < 0.5 * clips[0]
    assert all(0 <= row["unclipped_fraction"] + 2 and "epsilon" in row for row in rows)


def test_budget_stop_at_the_coordinator(tmp_path: Path, federation: list[Path]) -> None:
    cap = (_eps(2.0, 2) + _eps(2.0, 3)) / 2  # round 3 would cross it
    config = RunConfig(num_rounds=6, min_silos=3, dp=DPConfig(**_dp(max_epsilon=cap)))
    summary = run_in_process(tmp_path / "run", config, federation)
    assert summary["status"] == "stopped" and summary["stop_reason"] == "privacy_budget"
    assert "round 3" in summary["stop_message"] and summary["error"] is None
    assert summary["epsilon"] == pytest.approx(_eps(2.0, 2), rel=1e-6) and summary["epsilon"] <= cap
    rows = _rows(tmp_path / "run")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert (tmp_path / "run" / "model.npz").exists()


def _with_policy(config: Path, policy: str) -> None:
    (config.parent / "policy.toml").write_text(policy)
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))


def test_silo_refuses_at_join_when_the_projected_epsilon_exceeds_its_cap(
        tmp_path: Path, federation: list[Path]) -> None:
    _with_policy(federation[0], f"max_epsilon = {_eps(2.0, 3) - 0.1}")
    summary = run_in_process(tmp_path / "run", RunConfig(num_rounds=3, min_silos=2,
                                                         dp=DPConfig(**_dp())), federation)
    join = next(e for e in RunStore(tmp_path / "run").events() if e["event"] == "join")
    assert join["refused"]["hospital-a"].startswith("PolicyRefusal[max_epsilon]")
    assert summary["status"] == "completed" and "hospital-a" not in summary["silos"]


def test_silo_stops_on_the_round_that_would_cross_its_cap(tmp_path: Path,
                                                          federation: list[Path]) -> None:
    """Another run at the same site spends budget after this run's join: the silo's own tally
    refuses exactly the round that would cross its cap, whatever the coordinator says."""
    cap = 10.0
    _with_policy(federation[0], f"max_epsilon = {cap}")
    ws = load_silo_config(federation[0]).workspace
    other = cap - (_eps(2.0, 2) + _eps(2.0, 3)) / 2  # leaves room for 2 rounds, not 3
    spent = []

    def concurrent_spend(node: int, message_type: str) -> bool:
        if node == 1 and message_type == "train" and not spent:
            PrivacyTally(ws / TALLY_FILE).record("another-run", 7, other)
            spent.append(other)
        return False

    summary = run_in_process(tmp_path / "run", RunConfig(num_rounds=4, min_silos=2,
                                                         dp=DPConfig(**_dp())),
                             federation, drop=concurrent_spend)
    rows = _rows(tmp_path / "run")
    assert [sorted(r["rejected"]) for r in rows[1:3]] == [[], []]
    for row in rows[3:]:
        assert row["rejected"]["hospital-a"].startswith("PolicyRefusal[max_epsilon]")
        assert "hospital-a" not in row["contributors"]
    assert summary["status"] == "completed"
    assert PrivacyTally(ws / TALLY_FILE).total() <= cap


def test_dp_setups_that_cannot_hold_are_refused_before_any_silo_is_contacted(
        tmp_path: Path, federation: list[Path]) -> None:
    with pytest.raises(StrategyError, match="differential privacy"):
        run_in_process(tmp_path / "a", RunConfig(strategy="fedmedian", dp=DPConfig(**_dp())),
                       federation)
    with pytest.raises(ConfigError, match="secure_aggregation = true"):
        run_in_process(tmp_path / "b", RunConfig(dp=DPConfig(**_dp(mechanism="distributed"))),
                       federation)
    with pytest.raises(ConfigError, match="clip_norm"):
        RunConfig.from_mapping({"dp": {"mechanism": "central", "noise_multiplier": 1.0}})
    for d in ("a", "b"):
        assert not (tmp_path / d / "metrics.jsonl").exists()


TORCH_MODEL = '''
from torch import nn


def build(n_features, classes):
    return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, len(classes)))
'''


def test_dpsgd_torch_silo_reports_its_epsilon(tmp_path: Path, make_silos,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opacus")
    site = tmp_path / "site"
    site.mkdir()
    (site / "dpsgd_mlp.py").write_text(TORCH_MODEL)
    monkeypatch.syspath_prepend(str(site))
    configs = make_silos(tmp_path / "silos", model="dpsgd_mlp:build")
    for path in configs:
        write_silo_config(path, name=path.parent.name, train=path.parent / "data/train.csv",
                          test=path.parent / "data/test.csv", schema=demo_schema(),
                          model="dpsgd_mlp:build",
                          dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0})
    summary = run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3), configs)
    assert summary["status"] == "completed"
    rows = _rows(tmp_path / "run")[1:]
    eps = [row["dpsgd_epsilon"] for row in rows]
    assert sorted(eps[0]) == ["hospital-a", "hospital-b", "hospital-c"]
    assert all(0 < eps[0][s] < eps[1][s] for s in eps[0])  # record-level ε composes over rounds
    assert np.isfinite(summary["final_accuracy"])

"""Each round trains with its own seed (derived from the run seed and the round), so the
local shuffle does not repeat round after round; the initial model still comes from the run
seed. Regressors report MAE and MSE with their evaluation."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from silo_client.adapters.base import FitSettings, round_seed
from silo_client.config import write_silo_config
from silo_client.silo import Silo
from xsilo.terms import SiloMetrics, TrainTerms

ROUND = TrainTerms(server_round=1, num_rounds=5, local_epochs=1, learning_rate=0.1,
                   batch_size=16, seed=7, strategy="fedavg", run_token="t", participants=3)


def test_round_seed_is_deterministic_and_differs_by_round_and_run() -> None:
    seeds = [round_seed(7, r) for r in range(1, 6)]
    assert seeds == [round_seed(7, r) for r in range(1, 6)]  # a fixed run seed: reproducible
    assert len(set(seeds)) == 5
    assert round_seed(8, 1) != round_seed(7, 1) and round_seed(-7, 1) != round_seed(7, 1)
    assert all(0 <= s < 2**63 for s in seeds)
    assert FitSettings.from_terms(replace(ROUND, server_round=3)).seed == round_seed(7, 3)


def _sgd_silo(root: Path, make_silos) -> Silo:
    config = make_silos(root, model="sklearn:SGDClassifier")[0]
    return Silo.from_file(config)


def test_each_round_shuffles_differently_and_reproducibly(tmp_path: Path, make_silos) -> None:
    silo = _sgd_silo(tmp_path / "silos", make_silos)
    start = silo.model(ROUND.seed).get_parameters()
    first = silo.train(start, ROUND).delta
    again = silo.train(start, ROUND).delta
    second = silo.train(start, replace(ROUND, server_round=2)).delta
    assert all(np.array_equal(first[k], again[k]) for k in first)  # same round: same update
    # the same model and data in another round: another shuffle, another update
    assert any(not np.allclose(first[k], second[k]) for k in first)
    # the initial model is the run seed's, whatever the round
    assert all(np.array_equal(silo.model(ROUND.seed).get_parameters()[k], start[k]) for k in start)


def test_a_regressor_reports_mae_and_mse(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)  # test data only
    X = rng.normal(size=(60, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=60)
    for part, rows in (("train", slice(0, 40)), ("test", slice(40, 60))):
        with (tmp_path / f"{part}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["a", "b", "c", "y"])
            w.writerows([*map(float, x), float(t)] for x, t in zip(X[rows], y[rows]))
    schema = {"label": "y", "task": "regression", "features": {"a": "float", "b": "float",
                                                                 "c": "float"}}
    config = write_silo_config(tmp_path / "silo.toml", name="r", train=tmp_path / "train.csv",
                               test=tmp_path / "test.csv", schema=schema, model="sklearn:Ridge")
    silo = Silo.from_file(config)
    metrics = silo.train(silo.model(0).get_parameters(), replace(ROUND, seed=0)).metrics
    assert metrics.eval_mse == pytest.approx(metrics.eval_loss)
    err = y[40:60]  # the initial Ridge model predicts 0
    assert metrics.eval_mae == pytest.approx(float(np.mean(np.abs(err))), rel=1e-5)
    assert metrics.eval_accuracy is None
    wire = SiloMetrics.from_record(metrics.to_record())  # the new keys travel
    assert (wire.eval_mae, wire.eval_mse) == (metrics.eval_mae, metrics.eval_mse)

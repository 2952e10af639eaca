"""Coordinator-side evaluation ([run.evaluation], coordinator.evaluation with the built-in
federation.evaluation:holdout), and regressors' MAE/MSE in every row."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from coordinator.config import RunConfig
from coordinator.console import round_table
from coordinator.evaluation import EvaluationConfig, validation_fields
from coordinator.report import render_report
from coordinator.run_store import RunStore, load_npz
from federation.demo_data import demo_schema
from federation.local import run_in_process
from silo_client.adapters.build import build_model
from silo_client.data import DataSchema, load_dataset
from tests.coordinator.test_models_in_run import write_diabetes_silos
from xsilo.errors import ConfigError, ModelError


def _rows(run_dir: Path) -> list[dict]:
    return [e for e in RunStore(run_dir).events() if e["event"] == "round"]


def _pooled_tests(configs: list[Path], out: Path) -> Path:
    """One validation CSV: every silo's test split, one header."""
    lines: list[str] = []
    for c in configs:
        part = (c.parent / "data" / "test.csv").read_text().splitlines()
        lines += part if not lines else part[1:]
    out.write_text("\n".join(lines) + "\n")
    return out


def _holdout(data: Path, model: str, schema: dict) -> dict:
    return {"evaluator": "federation.evaluation:holdout", "data": str(data.resolve()),
            "model": model, "schema": schema}


def test_the_coordinator_scores_every_model_on_its_validation_set(tmp_path: Path,
                                                                  make_silos) -> None:
    model = "sklearn:SGDClassifier"
    configs = make_silos(tmp_path / "silos", model=model)
    validation = _pooled_tests(configs, tmp_path / "validation.csv")
    config = RunConfig(num_rounds=3, min_silos=3, local_epochs=2,
                       evaluation=_holdout(validation, model, demo_schema()))
    assert run_in_process(tmp_path / "run", config, configs)["status"] == "completed"
    rows = _rows(tmp_path / "run")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["validation"]["examples"] == 143 for r in rows)
    # the final row's validation is the final model on that file, recomputed independently
    schema = DataSchema.from_mapping(demo_schema())
    adapter = build_model(model, schema=schema)
    adapter.set_parameters(load_npz(tmp_path / "run" / "model.npz"))
    expected = adapter.evaluate(load_dataset(validation, schema))
    assert rows[-1]["validation"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert rows[-1]["validation"]["loss"] == pytest.approx(expected["loss"])
    # the pooled test splits are exactly what the global accuracy averages over
    assert rows[-1]["validation"]["accuracy"] == pytest.approx(rows[-1]["global_accuracy"])
    assert rows[-1]["validation"]["accuracy"] > rows[0]["validation"]["accuracy"] + 0.3
    html = render_report(tmp_path / "run")
    assert 'data-label="validation"' in html


@pytest.mark.parametrize("change, message", [
    ({"data": "relative/val.csv"}, "must be an absolute path"),
    ({"evaluator": "no_such_module:holdout"}, "cannot import 'no_such_module'"),
    ({"colour": "blue"}, r"unknown \['colour'\]"),
])
def test_bad_evaluation_settings_fail_before_any_silo_is_contacted(
        tmp_path: Path, make_silos, change: dict, message: str) -> None:
    configs = make_silos(tmp_path / "silos")
    settings = {**_holdout(configs[0].parent / "data" / "test.csv",
                           "sklearn:LogisticRegression", demo_schema()), **change}
    with pytest.raises(ConfigError, match=message):
        run_in_process(tmp_path / "run", RunConfig(num_rounds=1, min_silos=3,
                                                   evaluation=settings), configs)
    events = RunStore(tmp_path / "run").events()
    assert [e["event"] for e in events] == ["start", "end"]  # no join: no silo was asked
    assert events[-1]["status"] == "failed"


def test_evaluation_table_needs_an_import_path() -> None:
    with pytest.raises(ConfigError, match="needs `evaluator`"):
        RunConfig(evaluation={"data": "/x.csv"})
    with pytest.raises(ConfigError, match="expected an import path"):
        EvaluationConfig("federation.evaluation")
    with pytest.raises(ModelError, match="finite number"):
        validation_fields({"loss": float("nan"), "accuracy": 0.5})
    assert validation_fields({"loss": 2.0, "mae": 1.0}) == {"loss": 2.0, "mae": 1.0, "mse": 2.0}


def test_regressor_rows_carry_mae_and_mse(tmp_path: Path) -> None:
    model = "sklearn:SGDRegressor"
    configs = write_diabetes_silos(tmp_path / "silos", model=model)
    schema = {"label": "target", "task": "regression", "missing": "error",
              "features": {n: "float" for n in ("age", "sex", "bmi", "bp", "s1", "s2", "s3",
                                                 "s4", "s5", "s6")}}
    validation = configs[0].parent / "test.csv"
    config = RunConfig(num_rounds=3, min_silos=3, local_epochs=2, learning_rate=0.01,
                       evaluation=_holdout(validation, model, schema))
    assert run_in_process(tmp_path / "run", config, configs)["status"] == "completed"
    rows = _rows(tmp_path / "run")
    for r in rows:
        assert r["global_mse"] == pytest.approx(r["global_loss"])  # a regressor's loss
        assert 0 < r["global_mae"] and r["global_accuracy"] is None
        for silo in r["silos"].values():
            assert silo["mse"] == pytest.approx(silo["loss"]) and silo["mae"] > 0
            assert silo["mae"] ** 2 <= silo["mse"] + 1e-12  # Jensen: MAE² ≤ MSE
        assert set(r["validation"]) == {"loss", "mae", "mse", "examples"}
        assert r["validation"]["mse"] == r["validation"]["loss"]
    assert rows[-1]["global_mae"] < rows[0]["global_mae"]
    html = render_report(tmp_path / "run")
    assert 'aria-label="MAE per round"' in html and 'aria-label="MSE per round"' in html
    assert "accuracy per round" not in html
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(round_table(RunStore(tmp_path / "run").events()))
    shown = console.export_text()  # the operator's live table: MAE, not an empty accuracy
    assert "MAE" in shown and "MSE" in shown and f"{rows[-1]['global_mae']:.4f}" in shown

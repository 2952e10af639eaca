"""The real ServerApp loop and ClientApp handlers, connected in-process (LocalGrid)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig
from coordinator.run_store import RunStore, load_npz
from silo_client.config import write_silo_config
from federation.demo_data import demo_schema
from xsilo.errors import ConfigError, DeploymentError, ModelError
from federation.local import run_in_process


def _rounds(run_dir: Path) -> list[dict]:
    return [e for e in RunStore(run_dir).events() if e["event"] == "round"]


def test_fedavg_run_improves_and_writes_outputs(tmp_path: Path, federation: list[Path]) -> None:
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=3, min_silos=3, local_epochs=1, name="t")
    summary = run_in_process(run_dir, config, federation)

    assert summary["status"] == "completed"
    rows = _rounds(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["global_accuracy"] > rows[0]["global_accuracy"] + 0.2
    assert rows[-1]["global_loss"] < rows[0]["global_loss"]
    assert set(rows[-1]["silos"]) == {"hospital-a", "hospital-b", "hospital-c"}
    assert all(r["contributors"] == ["hospital-a", "hospital-b", "hospital-c"] for r in rows[1:])
    # exact configuration, checkpoints per round, final model = last checkpoint
    written = tomllib.loads((run_dir / "config.toml").read_text())["run"]
    assert RunConfig.from_mapping(written) == config
    store = RunStore(run_dir)
    rnd, model, _ = store.latest_checkpoint()
    assert rnd == 3
    final = load_npz(run_dir / "model.npz")
    assert final.keys() == model.keys()
    assert all(np.array_equal(final[k], model[k]) for k in final)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] == rows[-1]["global_accuracy"]
    assert summary["final_round"] == rows[-1]["round"] == 3  # whose model was scored


def test_missing_data_file_is_a_typed_refusal_and_run_continues(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    (configs[2].parent / "data" / "train.csv").unlink()
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=2), configs)
    assert summary["status"] == "completed"
    join = next(e for e in RunStore(run_dir).events() if e["event"] == "join")
    reason = join["refused"]["hospital-c"]
    assert "DataValidationError" in reason and "train.csv" in reason
    assert summary["silos"] == ["hospital-a", "hospital-b"]


def test_too_few_silos_fail_the_run_before_any_round(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    (configs[2].parent / "data" / "train.csv").unlink()
    run_dir = tmp_path / "run"
    with pytest.raises(DeploymentError, match="only 2 silo"):
        run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=3), configs)
    summary = RunStore(run_dir).summary()
    assert summary["status"] == "failed" and "min_silos is 3" in summary["error"]["message"]
    assert not (run_dir / "model.npz").exists()


def test_wrong_column_in_csv_names_file_and_column(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    csv = configs[0].parent / "data" / "train.csv"
    text = csv.read_text().splitlines()
    text[0] = text[0].replace("mean radius", "mean radios")
    csv.write_text("\n".join(text) + "\n")
    run_dir = tmp_path / "run"
    run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=2), configs)
    join = next(e for e in RunStore(run_dir).events() if e["event"] == "join")
    assert "mean radius" in join["refused"]["hospital-a"]
    assert "train.csv" in join["refused"]["hospital-a"]


def test_schema_disagreement_is_refused_before_any_round(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    schema = demo_schema()
    schema["label_values"] = [0, 1, 2]
    write_silo_config(configs[1], name="hospital-b", train=configs[1].parent / "data/train.csv",
                      test=configs[1].parent / "data/test.csv", schema=schema,
                      model="sklearn:LogisticRegression")
    with pytest.raises(ConfigError, match="disagree on the data schema"):
        run_in_process(tmp_path / "run", RunConfig(num_rounds=1, min_silos=3), configs)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.npz"))


LR, MLP = "sklearn:LogisticRegression", "sklearn:MLPClassifier"


@pytest.mark.parametrize("others, at_c, message", [
    ((LR, {}), (MLP, {}),  # hospital-c has no tensor 'coef' at all
     r"tensor 'coef' is \(1, 30\) at hospital-a but None at hospital-c"),
    ((MLP, {"hidden-layer-sizes": [4]}), (MLP, {"hidden-layer-sizes": [5]}),  # same names
     r"tensor 'coef\.0' is \(30, 4\) at hospital-a but \(30, 5\) at hospital-c"),
])
def test_different_architectures_name_the_tensor_before_any_training(
        tmp_path: Path, make_silos, others: tuple, at_c: tuple, message: str) -> None:
    configs = make_silos(tmp_path / "silos")
    for c in configs:
        model, params = at_c if c.parent.name == "hospital-c" else others
        write_silo_config(c, name=c.parent.name, train=c.parent / "data/train.csv",
                          test=c.parent / "data/test.csv", schema=demo_schema(), model=model,
                          model_params=params)
    run_dir = tmp_path / "run"
    with pytest.raises(ModelError, match=message + "; every silo must build the same model"):
        run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=3), configs)
    summary = RunStore(run_dir).summary()
    assert summary["status"] == "failed" and "model architectures differ" in summary["error"]["message"]
    assert _rounds(run_dir) == [] and not list((run_dir / "checkpoints").glob("*"))
    assert not (run_dir / "model.npz").exists()
    for c in configs:  # no silo was sent a train message: each sent its join reply only
        ledger = (c.parent / "workspace" / "egress.jsonl").read_text().splitlines()
        assert [json.loads(line)["message_type"] for line in ledger] == ["query"]


def test_dropped_silos_fail_the_round_and_keep_the_model(tmp_path: Path,
                                                        federation: list[Path]) -> None:
    run_dir = tmp_path / "run"

    def drop(node: int, message_type: str) -> bool:  # nodes 2 and 3 vanish after round 1
        drop.trains[node] = drop.trains.get(node, 0) + (message_type == "train")
        return node != 1 and message_type == "train" and drop.trains[node] == 2
    drop.trains = {}

    summary = run_in_process(run_dir, RunConfig(num_rounds=3, min_silos=2, round_timeout=0.5),
                             federation, drop=drop)
    assert summary["status"] == "completed" and summary["rounds_failed"] == [2]
    rows = {r["round"]: r for r in _rounds(run_dir)}
    assert rows[2]["status"] == "failed" and rows[2]["contributors"] == ["hospital-a"]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.npz"))
    assert ckpts == ["round-0001.npz", "round-0003.npz"]


def test_run_directory_is_never_reused(tmp_path: Path, federation: list[Path]) -> None:
    run_dir = tmp_path / "run"
    run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=3), federation)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=3), federation)


def test_different_parameter_dtypes_are_refused_naming_the_tensor() -> None:
    from coordinator.admission import Member, check_agreement

    members = {1: Member(1, "hospital-a", {"digest": "x"}),
               2: Member(2, "hospital-b", {"digest": "x"})}
    same = {"w": np.zeros((2, 3), np.float64)}
    check_agreement(members, {"hospital-a": same, "hospital-b": dict(same)})  # agrees
    with pytest.raises(ModelError, match=r"tensor 'w' is \(2, 3\) float64 at hospital-a but "
                                         r"\(2, 3\) float32 at hospital-b"):
        check_agreement(members, {"hospital-a": same,
                                  "hospital-b": {"w": np.zeros((2, 3), np.float32)}})

"""Exports (coordinator.exports) read back with each tool's own reader: TensorBoard's
EventAccumulator, MLflow's client, and prometheus_client's parser on a live scrape."""

from __future__ import annotations

import importlib.util
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from coordinator import exports as exp
from coordinator.config import RunConfig
from coordinator.messages import Observers
from coordinator.run_store import RunStore
from federation.local import run_in_process
from xsilo.errors import ConfigError


def _need(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'xsilo[{extra}]'); this export "
                    "cannot be read back")


def _rows(run_dir: Path) -> list[dict]:
    return [e for e in RunStore(run_dir).events() if e["event"] == "round"]


def _where(run_dir: Path) -> dict:
    return next(e for e in RunStore(run_dir).events() if e["event"] == "exports")


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("tensorboard", "tensorboard")
    _need("mlflow", "mlflow")
    from tests.conftest import make_federation

    root = tmp_path_factory.mktemp("exports")
    configs = make_federation(root / "silos", model="sklearn:SGDClassifier")
    config = RunConfig(num_rounds=2, min_silos=3, local_epochs=2, name="exported",
                       exports=("tensorboard", "mlflow"))
    assert run_in_process(root / "run", config, configs)["status"] == "completed"
    return root / "run"


def test_tensorboard_reader_returns_the_runs_metrics(exported_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(_where(exported_run)["tensorboard"])
    acc.Reload()
    rows = _rows(exported_run)
    scalars = acc.Scalars("global/accuracy")
    assert [s.step for s in scalars] == [r["round"] for r in rows] == [0, 1, 2]
    assert [s.value for s in scalars] == pytest.approx([r["global_accuracy"] for r in rows],
                                                       rel=1e-6)
    silo = acc.Scalars("silo/hospital-b/loss")
    assert [s.value for s in silo] == pytest.approx(
        [r["silos"]["hospital-b"]["loss"] for r in rows], rel=1e-6)
    assert {"train/loss", "round/seconds", "round/contributors", "bytes/sent"} <= set(
        acc.Tags()["scalars"])


def test_mlflow_client_returns_the_runs_metrics_params_and_status(exported_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{exported_run.resolve() / 'mlflow.db'}"
    assert _where(exported_run)["mlflow"].startswith(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("xsilo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "exported" and run.info.status == "FINISHED"
    assert run.data.params["strategy"] == "fedavg" and run.data.params["num_rounds"] == "2"
    assert run.data.tags["xsilo.status"] == "completed"
    history = client.get_metric_history(run.info.run_id, "global/accuracy")
    rows = _rows(exported_run)
    history = sorted(history, key=lambda m: m.step)
    assert [m.step for m in history] == [r["round"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["global_accuracy"] for r in rows])
    assert run.data.metrics["round/contributors"] == 3


def _scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples}


def test_a_prometheus_scrape_during_a_run_returns_the_current_round(tmp_path: Path,
                                                                     make_silos) -> None:
    _need("prometheus_client", "prometheus")
    configs = make_silos(tmp_path / "silos")
    run_dir = tmp_path / "run"
    scrapes: list[tuple[int, dict[str, float]]] = []
    seen = {"updates": 0}

    def during_round(update: object) -> None:  # inside the round, as each update arrives
        seen["updates"] += 1
        if seen["updates"] % 3 == 1:  # the first of the round's three updates
            current = (seen["updates"] - 1) // 3 + 1
            scrapes.append((current, _scrape(_where(run_dir)["prometheus"])))

    config = RunConfig(num_rounds=3, min_silos=3, exports=("prometheus",), prometheus_port=0)
    summary = run_in_process(run_dir, config, configs, observers=Observers(update=during_round))
    assert summary["status"] == "completed"
    assert [r for r, _ in scrapes] == [1, 2, 3]
    for current, metrics in scrapes:
        assert metrics["xsilo_round"] == current
        assert metrics["xsilo_run_finished"] == 0
        # row r is written once model r is evaluated, i.e. with round r + 1's replies
        assert metrics["xsilo_round_completed"] == max(0, current - 2)
    last = scrapes[-1][1]
    rows = _rows(run_dir)
    assert last["xsilo_round_participants"] == 3
    assert last["xsilo_global_accuracy"] == pytest.approx(rows[1]["global_accuracy"])
    assert last["xsilo_payload_bytes_sent_total"] == sum(r["bytes"]["sent"] for r in rows[:2])
    with pytest.raises(urllib.error.URLError):  # the endpoint lives as long as the run
        _scrape(_where(run_dir)["prometheus"])


def test_a_busy_prometheus_port_fails_the_run_before_any_silo_is_contacted(
        tmp_path: Path, make_silos) -> None:
    _need("prometheus_client", "prometheus")
    import socket

    configs = make_silos(tmp_path / "silos")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = RunConfig(num_rounds=1, min_silos=3, exports=("prometheus",),
                           prometheus_port=port)
        with pytest.raises(ConfigError, match=f"prometheus_port {port} .* choose a free port"):
            run_in_process(tmp_path / "run", config, configs)
    events = RunStore(tmp_path / "run").events()
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[-1]["status"] == "failed"


def test_a_missing_extra_is_named_with_its_install_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(exp.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError,
                       match=r"mlflow needs its library.*pip install 'xsilo\[mlflow\]'"):
        exp.check_available(["mlflow"])
    with pytest.raises(ConfigError, match="unknown: \\['wandb'\\]"):
        RunConfig(exports=["wandb"])


class _Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.rows: list[int] = []

    def where(self) -> str:
        return "memory"

    def round_started(self, server_round: int) -> None:
        return None

    def row(self, row: dict) -> None:
        self.rows.append(row["round"])

    def finish(self, summary: dict) -> None:
        return None


class _Broken(_Recorder):
    name = "broken"

    def row(self, row: dict) -> None:
        raise OSError("disk full")


def test_an_export_that_fails_is_switched_off_and_recorded() -> None:
    recorder, errors = _Recorder(), []
    exports = exp.RunExports([_Broken(), recorder], on_error=errors.append)
    exports.row({"round": 0})
    exports.row({"round": 1})
    assert recorder.rows == [0, 1]  # the others go on
    assert errors == [{"event": "export_error", "export": "broken", "on": "row",
                       "error": "OSError: disk full"}]  # once: then it is off
    assert [e.name for e in exports.exports] == ["recorder"]


def test_row_scalars_cover_global_silo_privacy_and_validation() -> None:
    row = {"round": 2, "global_accuracy": 0.9, "global_loss": 0.3, "train_loss": 0.2,
           "round_seconds": 1.5, "contributors": ["a", "b"], "rejected": {"c": "x"},
           "asked": ["a", "b", "c"], "epsilon": 1.2, "validation": {"accuracy": 0.8},
           "silos": {"a": {"accuracy": 1.0, "loss": 0.1, "examples": 5}},
           "fit_seconds": {"a": 0.4}, "bytes": {"sent": 10, "received": 20}, "status": "ok"}
    assert exp.row_scalars(row) == {
        "global/accuracy": 0.9, "global/loss": 0.3, "train/loss": 0.2, "round/seconds": 1.5,
        "round/contributors": 2.0, "round/rejected": 1.0, "round/asked": 3.0,
        "privacy/epsilon": 1.2, "validation/accuracy": 0.8, "bytes/sent": 10.0,
        "bytes/received": 20.0, "silo/a/accuracy": 1.0, "silo/a/loss": 0.1,
        "silo/a/examples": 5.0, "silo/a/fit_seconds": 0.4}


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the coordinator catches it."""


def test_a_resumed_run_continues_its_exports_each_round_once(
        tmp_path: Path, make_silos, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after row 1 was exported, before checkpoint 2: the resume writes row 1 again.
    TensorBoard shows each round once (the resumed attempt's row), and the run stays one
    MLflow run, finished, whose latest value per step is the run's latest row."""
    _need("tensorboard", "tensorboard")
    _need("mlflow", "mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from coordinator.run_record import unique_rounds

    configs = make_silos(tmp_path / "silos")
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=3, min_silos=3, name="resumed",
                       exports=("tensorboard", "mlflow"))
    save = RunStore.save_checkpoint

    def killed_at_checkpoint_2(self, server_round, *args, **kwargs):  # type: ignore[no-untyped-def]
        if server_round == 2:
            raise _Killed("killed writing checkpoint 2")
        return save(self, server_round, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(RunStore, "save_checkpoint", killed_at_checkpoint_2)
        with pytest.raises(_Killed):
            run_in_process(run_dir, config, configs)
    assert [r["round"] for r in _rows(run_dir)] == [0, 1]  # row 1 left before the kill
    assert run_in_process(run_dir, config, configs, resume=True)["status"] == "completed"
    rows, repeated = unique_rounds(RunStore(run_dir).events())
    latest = {r["round"]: r for r in rows}
    assert repeated == [1] and sorted(latest) == [0, 1, 2, 3]

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    scalars = acc.Scalars("global/accuracy")
    assert [s.step for s in scalars] == [0, 1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx(
        [latest[r]["global_accuracy"] for r in range(4)], rel=1e-6)

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("xsilo").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["xsilo.status"] == "completed"
    history = client.get_metric_history(run.info.run_id, "global/accuracy")
    last = {m.step: m for m in sorted(history, key=lambda m: (m.timestamp, m.step))}
    assert sorted(last) == [0, 1, 2, 3]
    assert [last[r].value for r in range(4)] == pytest.approx(
        [latest[r]["global_accuracy"] for r in range(4)])

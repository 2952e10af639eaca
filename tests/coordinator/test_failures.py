"""Every failure has its reason where the operator looks: summary.json (type, message, phase,
round, silo), the run's own log, the report, one line for `coordinator run` / `status`; a
refused or failed start leaves a run directory the next attempt may use."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from coordinator.evaluation import EvaluationConfig
from coordinator.outcome import error_line, failure, start_summary
from coordinator.report import render_report
from coordinator.run_store import RunStore
from coordinator.runs import new_run_dir, prepare_run
from silo_client.config import write_silo_config
from federation.demo_data import demo_schema
from federation.local import run_in_process
from xsilo.errors import ConfigError, DeploymentError, ModelError, StrategyError


@pytest.mark.parametrize("values, kind, needle", [
    ({"strategy": "krum", "secure_aggregation": True}, StrategyError, "secure aggregation"),
    ({"strategy": "fedprox", "strategy_params": {"proximal_mu": -1.0}}, ConfigError,
     "proximal_mu"),
    ({"strategy": "no-such-plugin"}, StrategyError, "unknown strategy 'no-such-plugin'"),
    ({"dp": {"mechanism": "distributed", "noise_multiplier": 1.0, "clip_norm": 1.0}},
     ConfigError, "secure_aggregation = true"),
    ({"num_rounds": 0}, ConfigError, "num_rounds must be an integer"),
])
def test_a_refused_configuration_is_recorded_and_leaves_the_name_free(
        tmp_path: Path, values: dict, kind: type, needle: str) -> None:
    run_dir = new_run_dir(tmp_path / "runs", "trial")
    with pytest.raises(kind, match=needle) as err:
        prepare_run(run_dir, values)
    summary = RunStore(run_dir).summary()
    assert summary["status"] == "refused" and not RunStore(run_dir).started
    assert summary["error"] == {"type": kind.__name__, "message": str(err.value),
                                "phase": "start", "round": None, "silo": None}
    assert error_line(summary) == f"refused before it started: {kind.__name__}: {err.value}"
    again = new_run_dir(tmp_path / "runs", "trial")  # the retry is not blocked …
    assert again == run_dir and RunStore(again).summary() is None  # … nor confused
    assert prepare_run(again, {"num_rounds": 2}).num_rounds == 2
    assert (again / "config.toml").is_file()


def test_a_directory_that_holds_a_run_is_never_reused(tmp_path: Path,
                                                     federation: list[Path]) -> None:
    run_in_process(tmp_path / "runs" / "done", RunConfig(num_rounds=1, min_silos=3), federation)
    with pytest.raises(ConfigError, match="already holds a run.*--resume done"):
        new_run_dir(tmp_path / "runs", "done")


@pytest.mark.parametrize("name", ["trial\n", "../trial", "", "-trial", "t" * 65])
def test_a_run_name_is_matched_whole(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="run name"):
        new_run_dir(tmp_path / "runs", name or "\n")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _refusing(config: Path) -> None:
    (config.parent / "policy.toml").write_text("max_rounds = 1\n")
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))


def test_a_failure_at_join_names_the_phase_and_the_silo(tmp_path: Path, make_silos) -> None:
    silos = make_silos(tmp_path / "silos")
    _refusing(silos[0])
    run_dir = tmp_path / "run"
    with pytest.raises(DeploymentError, match="only 2 silo"):
        run_in_process(run_dir, RunConfig(num_rounds=2, min_silos=3), silos)
    error = RunStore(run_dir).summary()["error"]
    assert error["type"] == "DeploymentError" and error["phase"] == "join"
    assert error["round"] == 0 and error["silo"] == "hospital-a"
    assert "hospital-a: PolicyRefusal[max_rounds]" in error["message"]
    line = error_line(RunStore(run_dir).summary())
    assert line.startswith("failed while silos joined (silo hospital-a): DeploymentError: ")
    assert error["message"] in (run_dir / "coordinator.log").read_text()


EVALUATOR = textwrap.dedent('''
    from xsilo.errors import ModelError

    def factory(settings, *, seed):
        calls = []

        def evaluate(model):
            calls.append(1)
            if len(calls) == 3:  # the model after round 2
                raise ModelError("the held-out evaluator broke on model 2")
            return {"loss": 1.0, "accuracy": 0.5}

        return evaluate
''')


def test_a_failure_inside_a_round_names_the_round(tmp_path: Path, federation: list[Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "breaking_eval.py").write_text(EVALUATOR)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    config = RunConfig(num_rounds=3, min_silos=3,
                       evaluation=EvaluationConfig("breaking_eval:factory"))
    run_dir = tmp_path / "run"
    with pytest.raises(ModelError, match="broke on model 2"):
        run_in_process(run_dir, config, federation)
    summary = RunStore(run_dir).summary()
    assert summary["error"] == {"type": "ModelError", "phase": "round", "round": 2,
                                "silo": None,
                                "message": "the held-out evaluator broke on model 2"}
    assert error_line(summary) == ("failed in round 2: ModelError: the held-out evaluator "
                                   "broke on model 2")
    end = [e for e in RunStore(run_dir).events() if e["event"] == "end"][-1]
    assert end["error"] == summary["error"]
    log = (run_dir / "coordinator.log").read_text()
    assert "the run failed (round 2)" in log and "Traceback" in log
    assert "failed in round 2: ModelError: the held-out evaluator broke" in render_report(run_dir)


def test_a_start_failure_in_the_serverapp_is_recorded_without_touching_another_run(
        tmp_path: Path, federation: list[Path]) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(StrategyError):
        run_in_process(run_dir, RunConfig(strategy="nope"), federation)
    assert RunStore(run_dir).summary()["error"]["phase"] == "start"
    run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=3), federation)  # not blocked
    completed = json.loads((run_dir / "summary.json").read_text())
    with pytest.raises(ConfigError, match="already holds a run"):
        run_in_process(run_dir, RunConfig(num_rounds=1, min_silos=3), federation)
    assert json.loads((run_dir / "summary.json").read_text()) == completed


def test_error_lines_read_old_and_new_summaries() -> None:
    assert error_line({"status": "completed", "error": None}) is None
    assert error_line({"status": "failed", "error": "DeploymentError: x"}) == (
        "failed: DeploymentError: x")  # a summary written before the record existed
    record = failure(ConfigError("bad"), phase="final evaluation", server_round=None)
    assert error_line({"status": "failed", "error": record}) == (
        "failed during the final evaluation: ConfigError: bad")
    assert start_summary("refused", ConfigError("bad"))["error"]["phase"] == "start"
    with pytest.raises(ValueError):
        failure(ConfigError("x"), phase="lunch", server_round=None)


class _Killed(BaseException):
    """A ServerApp killed mid-run (not an Exception: the loop records nothing of it)."""


@pytest.fixture
def full_disk_once(monkeypatch: pytest.MonkeyPatch):
    """``fail(kind)``: the next ``metrics.jsonl`` event of that kind cannot be written
    (ENOSPC, once), as on a disk that fills for a moment."""
    append, armed = RunStore.append_event, {"kind": None}

    def flaky(self, event):
        if event.get("event") == armed["kind"]:
            armed["kind"] = None
            raise OSError(28, "No space left on device")
        return append(self, event)

    monkeypatch.setattr(RunStore, "append_event", flaky)
    return lambda kind: armed.update(kind=kind)


def test_a_budget_stop_that_cannot_be_written_still_says_why(
        tmp_path: Path, federation: list[Path], full_disk_once) -> None:
    from strategies.dp import DPConfig

    full_disk_once("stop")
    config = RunConfig(num_rounds=6, min_silos=3, round_timeout=2.0, dp=DPConfig(
        mechanism="central", noise_multiplier=2.0, clip_norm=1.0, max_epsilon=5.0))
    with pytest.raises(OSError):
        run_in_process(tmp_path / "run", config, federation)
    summary = RunStore(tmp_path / "run").summary()
    assert summary["status"] == "failed" and summary["stop_reason"] == "privacy_budget"
    assert "above max_epsilon=5" in summary["stop_message"]


def test_a_resume_that_cannot_be_recorded_keeps_the_failed_rounds(
        tmp_path: Path, federation: list[Path], full_disk_once) -> None:
    trains: dict[int, int] = {}

    def drop(node: int, kind: str) -> bool:  # round 1 fails (min_silos 3); killed in 3
        if kind == "train":
            trains[node] = trains.get(node, 0) + 1
            if node == 2 and trains[node] == 3:
                raise _Killed()
            return node == 3 and trains[node] == 1
        return False

    config = RunConfig(num_rounds=3, min_silos=3, round_timeout=1.0, straggler_grace=0.0)
    with pytest.raises(_Killed):
        run_in_process(tmp_path / "run", config, federation, drop=drop)
    full_disk_once("resume")
    with pytest.raises(OSError):
        run_in_process(tmp_path / "run", config, federation, resume=True)
    assert RunStore(tmp_path / "run").summary()["rounds_failed"] == [1]


def test_exports_whose_event_cannot_be_written_are_still_finished(
        tmp_path: Path, federation: list[Path], full_disk_once) -> None:
    import threading

    full_disk_once("exports")
    before = set(threading.enumerate())
    config = RunConfig(num_rounds=1, min_silos=3, exports=["prometheus"], prometheus_port=0,
                       prometheus_host="127.0.0.1")
    with pytest.raises(OSError):
        run_in_process(tmp_path / "run", config, federation)
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []  # the Prometheus server was shut down with the run

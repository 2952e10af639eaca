"""Run configuration validation, the run store's atomic files, the coordinator home."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig, load_run_config, write_run_config
from coordinator.home import CoordinatorHome
from coordinator.run_store import RunStore, load_npz
from xsilo.errors import ConfigError


@pytest.mark.parametrize("values, needle", [
    ({"num_rounds": 0}, "num_rounds must be an integer ≥ 1"),
    ({"num_rounds": True}, "num_rounds"),
    ({"min_silos": 3, "expected_silos": 2}, "expected_silos (2) is below min_silos (3)"),
    ({"round_timeout": -1.0}, "round_timeout must be a positive number"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"strategy": ""}, "strategy must be a strategy name"),
    ({"rounds": 3}, "unknown run setting(s) rounds; accepted:"),
])
def test_bad_run_settings_are_named(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    assert needle in str(err.value)


def test_run_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = RunConfig(num_rounds=7, strategy="fedprox", strategy_params={"proximal_mu": 0.1},
                       min_silos=3, round_timeout=30, name="x")
    write_run_config(tmp_path / "config.toml", config)
    assert load_run_config(tmp_path) == config


def test_missing_or_broken_config_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path)
    (tmp_path / "config.toml").write_text("[run\nnum_rounds = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(tmp_path)
    (tmp_path / "config.toml").write_text("num_rounds = 1\n")
    with pytest.raises(ConfigError, match=r"no \[run\] table"):
        load_run_config(tmp_path)


def test_checkpoints_round_trip_model_and_strategy_state(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    model = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)}
    store.save_checkpoint(1, model, {"m": np.zeros(3)})
    store.save_checkpoint(2, {k: v + 1 for k, v in model.items()}, {"m": np.ones(3)})
    rnd, got, state = store.latest_checkpoint()
    assert rnd == 2 and list(got) == ["w", "b"] and got["w"].dtype == np.float32
    assert np.array_equal(got["w"], model["w"] + 1) and np.array_equal(state["m"], np.ones(3))
    assert not list(store.checkpoints.glob(".*tmp"))  # no temp files left behind


def test_a_torn_last_metrics_line_is_ignored(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "round", "round": 0})
    with open(store.metrics_path, "a") as fh:
        fh.write('{"event": "round", "ro')  # a crash mid-write
    assert [e["round"] for e in store.events()] == [0]


def test_final_model_is_written_atomically(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save_model({"w": np.ones(2)})
    store.save_model({"w": np.zeros(2)})
    assert np.array_equal(load_npz(tmp_path / "model.npz")["w"], np.zeros(2))


def test_coordinator_home_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coordinator.toml does not exist"):
        CoordinatorHome.load(tmp_path)
    CoordinatorHome.write(tmp_path, host="127.0.0.1", port=9092)
    with pytest.raises(ConfigError, match="ca_cert file .* does not exist"):
        CoordinatorHome.load(tmp_path)
    (tmp_path / "coordinator.toml").write_text(
        '[coordinator]\nhost = "0.0.0.0"\n[gateway]\nport = 8443\n')
    with pytest.raises(ConfigError, match="must listen on loopback"):
        for name in ("ca.crt", "coordinator.crt", "coordinator.key"):
            (tmp_path / "pki").mkdir(exist_ok=True)
            (tmp_path / "pki" / name).write_text("x")
        CoordinatorHome.load(tmp_path)
    (tmp_path / "coordinator.toml").write_text('[coordinator]\nport = 1\nbogus = 2\n')
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        CoordinatorHome.load(tmp_path)

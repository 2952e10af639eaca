"""Registry, typed parameters, compatibility checks and the `strategies list` CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from strategies.builtin import BUILTINS, FedAvgM, FedMedian, FedProx
from strategies.cli import app
from strategies.registry import (available_strategies, build_strategy, check_compatible,
                                 describe, get_strategy)
from xsilo.errors import ConfigError, StrategyError
from xsilo.terms import PROXIMAL_MU

NAMES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
         "fedtrimmedavg", "krum", "multikrum"]


def test_every_builtin_is_registered_by_entry_point() -> None:
    found = available_strategies()
    for cls in BUILTINS:
        assert found[cls.name] is cls
    assert set(NAMES) <= set(found)


def test_unknown_strategy_lists_installed() -> None:
    with pytest.raises(StrategyError) as err:
        get_strategy("fedawesome")
    msg = str(err.value)
    assert "unknown strategy 'fedawesome'" in msg
    assert all(name in msg for name in NAMES)


def test_unknown_parameter_lists_accepted_with_types_defaults_ranges() -> None:
    with pytest.raises(ConfigError) as err:
        build_strategy("fedavgm", {"momentum": 0.9})
    msg = str(err.value)
    assert "no parameter 'momentum'" in msg
    assert "server_learning_rate: float = 1.0 (> 0)" in msg
    assert "server_momentum: float = 0.0 ([0, 1))" in msg


@pytest.mark.parametrize("name, params, words", [
    ("fedavgm", {"server_momentum": 1.5}, ["server_momentum", "1.5", "[0, 1)"]),
    ("fedtrimmedavg", {"beta": 0.5}, ["beta", "0.5", "[0, 0.5)"]),
    ("fedprox", {"proximal_mu": -0.1}, ["proximal_mu", "-0.1", ">= 0"]),
    ("fedadam", {"tau": float("nan")}, ["tau", "nan", "> 0"]),
    ("multikrum", {"num_nodes_to_keep": 0}, ["num_nodes_to_keep", ">= 1"]),
])
def test_out_of_range_parameter(name, params, words) -> None:
    with pytest.raises(ConfigError) as err:
        build_strategy(name, params)
    msg = str(err.value)
    assert f"strategy '{name}'" in msg and "out of range" in msg and "Accepted parameters" in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("params, words", [
    ({"weighted": "yes"}, ["'weighted' must be bool", "'yes'"]),
    ({"weighted": 1}, ["'weighted' must be bool"]),
    ({"proximal_mu": "0.1"}, ["'proximal_mu' must be float"]),
])
def test_wrong_type(params, words) -> None:
    with pytest.raises(ConfigError) as err:
        build_strategy("fedprox", params)
    for word in words:
        assert word in str(err.value)


def test_typed_build_with_hyphenated_keys_and_int_widening() -> None:
    s = build_strategy("fedprox", {"proximal_mu": 1, "weighted": False})
    assert isinstance(s, FedProx) and s.params.proximal_mu == 1.0
    assert isinstance(s.params.proximal_mu, float) and s.weighted is False
    plan = s.configure_round(3, [5, 7])
    assert plan.silos == (5, 7) and plan.config == {PROXIMAL_MU: 1.0}
    hyphenated = build_strategy("fedavgm", {"server-momentum": 0.5})
    assert hyphenated.params.server_momentum == 0.5
    assert build_strategy("fedavg", {}).configure_round(1, [1]).config == {}


def test_params_are_frozen_and_validated_directly() -> None:
    p = FedAvgM.Params(server_momentum=0.5)
    with pytest.raises(AttributeError):
        p.server_momentum = 0.1  # type: ignore[misc]
    with pytest.raises(ConfigError):
        FedAvgM.Params(server_learning_rate=0.0)
    with pytest.raises(ConfigError, match="expects"):
        FedAvgM(FedProx.Params())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_per_update_refused_under_secure_aggregation(name: str) -> None:
    strategy = build_strategy(name, {})
    with pytest.raises(StrategyError) as err:
        check_compatible(strategy, secure_aggregation=True, differential_privacy=False)
    msg = str(err.value)
    assert f"'{name}' cannot run with secure aggregation" in msg
    assert "needs each individual update" in msg and "reveals only their sum" in msg
    assert "fedavg" in msg and "fedadam" in msg and "fedmedian" not in msg.split("instead")[1]
    with pytest.raises(StrategyError, match="differential privacy"):
        check_compatible(strategy, secure_aggregation=False, differential_privacy=True)
    check_compatible(strategy, secure_aggregation=False, differential_privacy=False)


@pytest.mark.parametrize("name", NAMES[:6])
def test_sum_strategies_compatible_with_everything(name: str) -> None:
    check_compatible(build_strategy(name, {}), secure_aggregation=True, differential_privacy=True)


def test_describe() -> None:
    info = describe(FedMedian)
    assert info == {"name": "fedmedian", "kind": "per-update", "summary": info["summary"],
                    "params": []}
    params = describe(FedAvgM)["params"]
    assert params[1] == {"name": "server_momentum", "type": "float", "default": 0.0,
                         "constraint": "[0, 1)", "doc": "server momentum β"}


def test_cli_list_shows_every_strategy_kind_and_params() -> None:
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.output
    assert "per-update" in result.output and "server_momentum" in result.output

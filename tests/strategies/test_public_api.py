"""The public surface of strategies is pinned (import freedom: test_import_freedom.py)."""

from __future__ import annotations

import strategies
import strategies.builtin
import strategies.conformance
import xsilo.errors


def test_all_is_pinned() -> None:
    assert sorted(strategies.__all__) == [
        "ConfigError", "NDArrays", "PerUpdateStrategy", "RoundPlan", "Strategy", "StrategyError",
        "StrategyParams", "SumAccumulator", "SumStrategy", "Update", "UpdateRejected",
        "aggregate_updates", "available_strategies", "build_strategy", "check_compatible",
        "describe", "get_strategy", "param", "validate_update",
    ]
    assert all(hasattr(strategies, name) for name in strategies.__all__)


def test_error_classes_are_xsilos_own() -> None:
    # Re-exports, not copies: `except strategies.StrategyError` catches what xsilo raises.
    for name in ("ConfigError", "StrategyError", "UpdateRejected"):
        assert getattr(strategies, name) is getattr(xsilo.errors, name)
    assert issubclass(strategies.UpdateRejected, strategies.StrategyError)


def test_builtin_and_conformance_all_are_pinned() -> None:
    assert sorted(strategies.builtin.__all__) == [
        "BUILTINS", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedExP", "FedMedian", "FedProx",
        "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum"]
    assert sorted(strategies.conformance.__all__) == [
        "CHECKS", "NotApplicable", "check_strategy", "load_target", "run_check"]

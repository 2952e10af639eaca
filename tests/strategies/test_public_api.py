"""The public surface of strategies is pinned, and the math modules stay Flower- and torch-free."""

from __future__ import annotations

import subprocess
import sys

import strategies
import strategies.builtin
import strategies.conformance


def test_all_is_pinned() -> None:
    assert sorted(strategies.__all__) == [
        "NDArrays", "PerUpdateStrategy", "RoundPlan", "Strategy", "StrategyParams",
        "SumAccumulator", "SumStrategy", "Update", "aggregate_updates", "available_strategies",
        "build_strategy", "check_compatible", "describe", "get_strategy", "param",
        "validate_update",
    ]
    assert all(hasattr(strategies, name) for name in strategies.__all__)


def test_builtin_and_conformance_all_are_pinned() -> None:
    assert sorted(strategies.builtin.__all__) == [
        "BUILTINS", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedMedian", "FedProx",
        "FedTrimmedAvg", "FedYogi", "Krum", "MultiKrum"]
    assert sorted(strategies.conformance.__all__) == [
        "CHECKS", "NotApplicable", "check_strategy", "load_target", "run_check"]


def test_math_modules_do_not_load_flower_or_torch() -> None:
    code = ("import sys, strategies, strategies.aggregate, strategies.builtin, strategies.registry, "
            "strategies.conformance.checks\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'torch'))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"

"""The example plugin in examples/strategy-plugin is discovered and conforms."""

from __future__ import annotations

import importlib.util

import pytest

from strategies.conformance import check_strategy
from strategies.registry import available_strategies, build_strategy

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("xsilo_example_strategy") is None,
    reason="example plugin not installed: pip install -e examples/strategy-plugin")


def test_discovered_by_registry() -> None:
    import xsilo_example_strategy

    assert available_strategies()["decayavg"] is xsilo_example_strategy.DecayAvg
    strategy = build_strategy("decayavg", {"lr": 2, "decay": 0.5})
    assert strategy.params.lr == 2.0 and strategy.kind == "sum"


def test_passes_conformance_kit() -> None:
    import xsilo_example_strategy

    results = check_strategy(xsilo_example_strategy.DecayAvg)
    assert all(r == "passed" for r in results.values()), results


def test_under_60_lines() -> None:
    import xsilo_example_strategy

    with open(xsilo_example_strategy.__file__, encoding="utf-8") as f:
        assert len(f.readlines()) < 60

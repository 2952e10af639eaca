"""xsilo strategies: a small, transport-free plugin API for aggregation strategies.

A strategy is a class over plain numpy. Sum-decomposable strategies (``SumStrategy``) see
only the weighted sum of updates, so they run in the clear, under secure aggregation and
under DP; per-update strategies (``PerUpdateStrategy``) see each update and run only in
the clear. Strategies are found by name through the ``xsilo.strategies`` entry points.
The errors a strategy raises (``StrategyError``, ``UpdateRejected``, ``ConfigError``) are
re-exported from :mod:`xsilo.errors` (the same classes). See docs/strategies.md.
"""

from strategies.aggregate import SumAccumulator, aggregate_updates, validate_update
from strategies.api import NDArrays, PerUpdateStrategy, RoundPlan, Strategy, SumStrategy, Update
from strategies.params import StrategyParams, param
from strategies.registry import (available_strategies, build_strategy, check_compatible,
                                 describe, get_strategy)
from xsilo.errors import ConfigError, StrategyError, UpdateRejected

__all__ = [
    "ConfigError",
    "NDArrays",
    "PerUpdateStrategy",
    "RoundPlan",
    "Strategy",
    "StrategyError",
    "StrategyParams",
    "SumAccumulator",
    "SumStrategy",
    "Update",
    "UpdateRejected",
    "aggregate_updates",
    "available_strategies",
    "build_strategy",
    "check_compatible",
    "describe",
    "get_strategy",
    "param",
    "validate_update",
]

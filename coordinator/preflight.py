"""Every check the coordinator can make before a silo is contacted (Flower-free).

The ServerApp runs :func:`check_run` first thing, in process, in simulation and in
deployment; ``xsilo coordinator run`` runs the very same function before it starts the
Flower run, so a refused configuration is refused in a second with its own message instead
of a failed Flower run (or a "SuperLink unavailable" that hides it). What it checks:

* the strategy is installed (a plugin missing here is named) and its parameters are valid;
* the strategy can run with secure aggregation and DP as configured, and the DP setup can
  hold (:func:`coordinator.privacy.check_run_privacy`);
* the exports' optional libraries are installed;
* the coordinator-side evaluator imports, and its data load and validate.

What only the silos can know (their site policies, data, model code) is answered at join.
"""

from __future__ import annotations

from coordinator.config import RunConfig
from coordinator.evaluation import load_evaluator
from coordinator.exports import check_available
from coordinator.privacy import check_run_privacy
from strategies.api import Strategy
from strategies.registry import build_strategy

__all__ = ["check_run"]


def check_run(config: RunConfig, *, evaluator: bool = True) -> Strategy:
    """The run's strategy, built, once every check above passed; else the typed error
    (``StrategyError``, ``ConfigError``) naming the setting and the fix. ``evaluator=False``
    skips loading the coordinator-side evaluator (the round loop loads it itself)."""
    strategy = build_strategy(config.strategy, config.strategy_params)
    check_run_privacy(config.dp, strategy, secure_aggregation=config.secure_aggregation)
    if config.exports:
        check_available(config.exports)
    if evaluator and config.evaluation is not None:
        load_evaluator(config.evaluation, seed=config.seed)
    return strategy

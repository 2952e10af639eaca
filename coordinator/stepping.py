"""Where the run's strategy meets the round loop: its plan for a round (the silos, and a
round config that must not shadow xsilo's own term keys), the silo statistics it asks for, and the one place a round's sum (or, for a per-update strategy, its clear
updates) becomes the next model.

Every call into the strategy goes through :func:`strategies.api.call_strategy`, so a
plugin's bug reads as one ``StrategyError`` line naming it. A plan that cannot be made fails
the run (the round cannot even be asked for); a step that raises, or returns a model that is
not finite or not shaped like the current one, fails its round only: the previous model and
the strategy's state are kept, and a refused model is never checkpointed or saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from coordinator.collect import RoundCollector
from coordinator.rows import PendingRow, weighted_mean
from strategies.aggregate import COMPUTED_STATISTICS, SumAccumulator, check_result
from strategies.api import (PerUpdateStrategy, RoundPlan, Strategy, SumStrategy, Update,
                            call_strategy, strategy_label)
from xsilo.errors import StrategyError
from xsilo.terms import MAX_STRATEGY_VALUES, PROXIMAL_MU, TERM_KEYS, Scalar

__all__ = ["Stepper"]

_S = TypeVar("_S", bound=Strategy)
Model = dict[str, np.ndarray]


class Stepper:
    """The run's strategy, as the round loop calls it. ``fail(row, reason)`` marks a round
    failed (the loop's own record of failed rounds)."""

    def __init__(self, strategy: Strategy, fail: Callable[[PendingRow, str], None]) -> None:
        self.strategy = strategy
        self.fail = fail

    @property
    def statistics(self) -> tuple[str, ...]:
        """The silo-side statistics the strategy asks for (none for most)."""
        return tuple(getattr(self.strategy, "statistics", ()))

    def asked_of_silos(self, *, secure: bool) -> tuple[str, ...]:
        """The statistics a round's terms ask the silos for: in a clear round only those the
        coordinator cannot compute from the updates it sees (nothing leaves a silo that the
        step does not use); under secure aggregation all of them, as masked sums."""
        if secure:
            return self.statistics
        return tuple(name for name in self.statistics if name not in COMPUTED_STATISTICS)

    def plan(self, server_round: int, offered: list[int]) -> RoundPlan:
        """The strategy's plan for the round, checked."""
        strategy = self.strategy
        plan = call_strategy(strategy, "configure_round",
                             lambda: strategy.configure_round(server_round, list(offered)))
        if not (isinstance(plan, RoundPlan) and isinstance(plan.silos, tuple | list)
                and all(n in offered for n in plan.silos) and isinstance(plan.config, Mapping)):
            raise StrategyError(
                f"{strategy_label(strategy)} returned {plan!r:.200} from configure_round; it "
                f"must return a RoundPlan whose silos are among the ones offered ({offered}) "
                "and whose config is a mapping")
        clash = sorted(set(plan.config) & (TERM_KEYS - {PROXIMAL_MU}))
        if clash:
            raise StrategyError(
                f"{strategy_label(strategy)} puts {clash} in its round config, which are "
                "xsilo's own term keys; the strategy must name its values differently")
        own = {k: v for k, v in plan.config.items() if k != PROXIMAL_MU}
        if len(own) > MAX_STRATEGY_VALUES or any(
                not isinstance(k, str) or len(k) > 256 or not isinstance(v, int | float | str)
                or (isinstance(v, str) and len(v) > 256) for k, v in own.items()):
            raise StrategyError(
                f"{strategy_label(strategy)} puts {len(own)} values in its round config; a "
                f"silo takes at most {MAX_STRATEGY_VALUES}, each a number, true/false or text "
                "of at most 256 characters under a text key")
        mu = plan.config.get(PROXIMAL_MU, 0.0)
        if not isinstance(mu, int | float) or isinstance(mu, bool) or not 0 <= mu < float("inf"):
            raise StrategyError(f"{strategy_label(strategy)} sends proximal term {mu!r}; it "
                                "must be a finite number ≥ 0")
        return plan

    @staticmethod
    def round_config(plan: RoundPlan) -> tuple[dict[str, Scalar], float]:
        """A checked plan's config as a round's terms carry it: the strategy's own entries,
        and its proximal term (FedProx's μ; 0: none)."""
        return ({k: v for k, v in plan.config.items() if k != PROXIMAL_MU},
                float(plan.config.get(PROXIMAL_MU, 0.0)))

    def state(self) -> dict[str, np.ndarray]:
        """The strategy's state, for a checkpoint: text keys and numeric arrays (what a
        checkpoint can hold and give back), else a StrategyError naming the strategy."""
        state = call_strategy(self.strategy, "state_dict",
                              lambda: dict(self.strategy.state_dict()))
        out: dict[str, np.ndarray] = {}
        for key, value in state.items():
            array = np.asarray(value) if isinstance(value, np.ndarray | np.generic | int | float
                                                   ) and not isinstance(value, bool) else None
            if not isinstance(key, str) or array is None or array.dtype.kind not in "biuf":
                raise StrategyError(
                    f"{strategy_label(self.strategy)} returned {key!r:.60}: {value!r:.60} from "
                    "state_dict; its state must map text keys to numeric numpy arrays (what "
                    "a checkpoint holds)")
            out[key] = array
        return out

    def clear_statistics(self, collector: RoundCollector, folded: SumAccumulator
                         ) -> dict[str, float | None]:
        """A clear round's statistics: what can be computed from an update
        (``COMPUTED_STATISTICS``) computed here from the updates folded in, so no silo's own
        report steers the step; the rest, which only a silo knows, as the contributors
        reported them. (Under secure aggregation only the silos' masked sums exist.)"""
        computed = folded.statistics(self.statistics)
        return {name: computed[name] if name in COMPUTED_STATISTICS
                else weighted_mean(_reported(collector, name)) for name in self.statistics}

    def step_from_sum(self, current: Model, delta_sum: Mapping[str, np.ndarray],
                      total_weight: float, row: PendingRow, *,
                      statistics: Mapping[str, float | None] | None = None) -> Model:
        """The one place a weighted sum of deltas (clear or unmasked) becomes the next model;
        a strategy that asked for silo statistics gets them (recorded in the row)."""
        strategy = self._as(SumStrategy)
        if not strategy.statistics:
            return self._adopt(current, row, "step", lambda: strategy.step(
                current, dict(delta_sum), total_weight, row.server_round))
        stats = {name: (statistics or {}).get(name) for name in strategy.statistics}
        row.extra["statistics"] = stats
        new = self._adopt(current, row, "step_with_statistics",
                          lambda: strategy.step_with_statistics(
                              current, dict(delta_sum), total_weight, row.server_round, stats))
        step_size = getattr(strategy, "last_step_size", None)
        if isinstance(step_size, float):
            row.extra["server_step_size"] = step_size
        return new

    def aggregate(self, current: Model, updates: Sequence[Update], row: PendingRow) -> Model:
        """A per-update strategy's next model from the round's clear updates."""
        strategy = self._as(PerUpdateStrategy)
        return self._adopt(current, row, "aggregate", lambda: strategy.aggregate(
            current, list(updates), row.server_round))

    def _as(self, base: type[_S]) -> _S:
        """The run's strategy as ``base`` (its kind, by class); StrategyError if it is not."""
        if not isinstance(self.strategy, base):
            raise StrategyError(f"{strategy_label(self.strategy)} is not a {base.__name__}, "
                                "which this round needs: a strategy subclasses exactly one of "
                                "SumStrategy and PerUpdateStrategy, and only a SumStrategy "
                                "runs under secure aggregation or DP (check_compatible)")
        return self.strategy

    def _adopt(self, current: Model, row: PendingRow, method: str,
               make: Callable[[], Mapping[str, np.ndarray]]) -> Model:
        """The strategy's next model (``make()``, its ``method``), checked; a failure fails
        the round and restores the strategy's state. A state that cannot be saved or
        restored fails the run."""
        strategy = self.strategy
        before = call_strategy(strategy, "state_dict", lambda: {
            k: np.array(v, copy=True) for k, v in strategy.state_dict().items()})
        try:
            new = call_strategy(strategy, method, make)
            check_result(strategy, current, new)
        except StrategyError as exc:
            call_strategy(strategy, "load_state_dict", lambda: strategy.load_state_dict(before))
            self.fail(row, f"{type(exc).__name__}: {exc}")
            return current
        return dict(new)


def _reported(collector: RoundCollector, name: str) -> list[tuple[float, float]]:
    """(value, example count) of a silo statistic, from the contributors that sent it."""
    return [(float(getattr(m, name)), m.num_examples or 0.0)
            for m in collector.metrics.values() if getattr(m, name) is not None]

"""The strategy plugin API: plain numpy in, plain numpy out, no transport.

Two kinds of strategy exist, and the difference is what they may see:

* ``SumStrategy`` (kind ``"sum"``) receives only the weighted sum of the silos' deltas and
  the total weight — exactly what secure aggregation can reveal — and turns it into the
  next global model (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad).
* ``PerUpdateStrategy`` (kind ``"per-update"``) receives every silo's delta (median,
  trimmed mean, Krum). It cannot run under secure aggregation.

A delta is ``local_model - global_model``; ``weight`` is the silo's sample count, or 1.0
when the strategy is unweighted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from strategies.params import NoParams, parse_params
from xsilo.errors import ConfigError, StrategyError

__all__ = ["NDArrays", "RoundPlan", "Update", "Strategy", "SumStrategy", "PerUpdateStrategy",
           "KINDS", "call_strategy", "kind_of", "strategy_label"]

NDArrays = dict[str, np.ndarray]
"""Named parameters; insertion order is model order."""

KINDS = ("sum", "per-update")


@dataclass(frozen=True)
class RoundPlan:
    """Which silos take part in a round and the extra config sent to them."""

    silos: tuple[int, ...]
    config: dict[str, int | float | str | bool]


@dataclass(frozen=True)
class Update:
    """One silo's contribution, in the clear: ``delta = local - global``."""

    silo: str
    delta: NDArrays
    weight: float


class Strategy(ABC):
    """Base class of every strategy; subclass ``SumStrategy`` or ``PerUpdateStrategy``.

    Class attributes
    ----------------
    name
        Registry name (lowercase), the entry-point name in ``xsilo.strategies``.
    kind
        ``"sum"`` or ``"per-update"`` (set by the two subclasses).
    Params
        Frozen dataclass of typed parameters with defaults (see ``strategies.params``).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Strategy.Params | None = None) -> None:  # type: ignore[name-defined]
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise ConfigError(f"strategy '{self.name}' expects {self.Params.__qualname__}, "
                              f"got {type(params).__name__}; use {type(self).__name__}.from_config")
        self.params = params

    @classmethod
    def from_config(cls, values: Mapping[str, object]) -> Strategy:
        """Build the strategy from raw config values (typed and validated; ConfigError)."""
        return cls(parse_params(cls.Params, values, owner=cls.name))

    @property
    def weighted(self) -> bool:
        """True when silos weight their update by sample count, False for weight 1.0."""
        return bool(getattr(self.params, "weighted", True))

    def configure_round(self, server_round: int, silos: Sequence[int]) -> RoundPlan:
        """Choose the silos and per-round config; by default every silo and no config."""
        return RoundPlan(silos=tuple(silos), config={})

    def state_dict(self) -> dict[str, np.ndarray]:
        """Checkpointable state (optimizer moments, counters as 0-d arrays); default none."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned; unknown keys raise StrategyError."""
        if state:
            raise StrategyError(f"strategy '{self.name}' is stateless but the checkpoint holds "
                                f"{sorted(state)}; the checkpoint belongs to another strategy")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class SumStrategy(Strategy):
    """A strategy that needs only ``Σ weight_i·delta_i`` and ``Σ weight_i`` — and, when it
    declares them in ``statistics``, silo-side statistics from the fixed list
    :data:`xsilo.terms.SILO_STATISTICS` (e.g. ``"update_sq_norm"``), which every silo computes
    on its own update and which arrive as example-weighted means, summed under the masks in
    a secure round. Such a strategy overrides :meth:`step_with_statistics`."""

    kind: ClassVar[str] = "sum"
    statistics: ClassVar[tuple[str, ...]] = ()

    def step_with_statistics(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
                             server_round: int, statistics: Mapping[str, float | None]
                             ) -> NDArrays:
        """:meth:`step` given the round's statistics (each the example-weighted mean over
        the contributors, None where no contributor reported it). By default ``step``."""
        return self.step(current, delta_sum, total_weight, server_round)

    @abstractmethod
    def step(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
             server_round: int) -> NDArrays:
        """Return the next global model (same keys, shapes and dtypes as ``current``).

        ``delta_sum`` is the float64 weighted sum of deltas, ``total_weight`` the sum of
        weights (> 0). Inputs must not be modified.
        """


class PerUpdateStrategy(Strategy):
    """A strategy that needs each silo's individual update (robust aggregators)."""

    kind: ClassVar[str] = "per-update"

    @abstractmethod
    def aggregate(self, current: NDArrays, updates: Sequence[Update],
                  server_round: int) -> NDArrays:
        """Return the next global model from validated individual updates."""


_T = TypeVar("_T")


def strategy_label(strategy: Strategy | type) -> str:
    """``strategy 'name' (module:Class)``: how every error about a strategy names it (the
    class path is a plugin's entry-point value)."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    return f"strategy {getattr(cls, 'name', None)!r} ({cls.__module__}:{cls.__qualname__})"


def kind_of(cls: type) -> str:
    """``"sum"`` or ``"per-update"``, from the class hierarchy (never from a ``kind``
    attribute a plugin could set); StrategyError for a class that is neither, or both."""
    is_sum = isinstance(cls, type) and issubclass(cls, SumStrategy)
    is_per_update = isinstance(cls, type) and issubclass(cls, PerUpdateStrategy)
    if is_sum == is_per_update:
        raise StrategyError(f"{strategy_label(cls)} must subclass exactly one of "
                            "strategies.SumStrategy and strategies.PerUpdateStrategy")
    return "sum" if is_sum else "per-update"


def call_strategy(strategy: Strategy | type, method: str, call: Callable[[], _T], *,
                  passes: tuple[type[Exception], ...] = (StrategyError,)) -> _T:
    """``call()`` — one call into a strategy's code — with any exception that is not one of
    ``passes`` turned into a StrategyError naming the strategy, ``method``, and the original
    exception's type and message (chained), so a plugin's bug reads as one line."""
    try:
        return call()
    except passes:
        raise
    except (Exception, SystemExit) as exc:  # a plugin's sys.exit() must not end the run
        raise StrategyError(f"{strategy_label(strategy)} raised {type(exc).__name__} in "
                            f"{method}: {exc}") from exc

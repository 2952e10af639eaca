"""FedTrimmedAvg (Yin et al., ICML 2018): coordinate-wise β-trimmed mean of the deltas."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from strategies.api import NDArrays, PerUpdateStrategy, Update
from strategies.builtin._math import apply_delta, trimmed_mean
from strategies.params import StrategyParams, param

__all__ = ["FedTrimmedAvg"]


class FedTrimmedAvg(PerUpdateStrategy):
    """Drop the ⌊β·n⌋ smallest and largest values per coordinate, average the rest; unweighted."""

    name: ClassVar[str] = "fedtrimmedavg"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        beta: float = param(0.2, ge=0.0, lt=0.5, doc="fraction cut from each end")

    @property
    def weighted(self) -> bool:
        """Always False: a trimmed mean ignores sample counts."""
        return False

    def aggregate(self, current: NDArrays, updates: Sequence[Update],
                  server_round: int) -> NDArrays:
        """Trimmed mean of each coordinate over silos."""
        return apply_delta(current, trimmed_mean(updates, list(current), self.params.beta))

"""FedMedian (Yin et al., ICML 2018): x ← x + coordinate-wise median of the deltas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from strategies.api import NDArrays, PerUpdateStrategy, Update
from strategies.builtin._math import apply_delta, coordinate_median

__all__ = ["FedMedian"]


class FedMedian(PerUpdateStrategy):
    """Coordinate-wise median; unweighted (every silo counts once)."""

    name: ClassVar[str] = "fedmedian"

    @property
    def weighted(self) -> bool:
        """Always False: a median ignores sample counts."""
        return False

    def aggregate(self, current: NDArrays, updates: Sequence[Update],
                  server_round: int) -> NDArrays:
        """Median of each coordinate over silos."""
        return apply_delta(current, coordinate_median(updates, list(current)))

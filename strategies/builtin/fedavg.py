"""FedAvg (McMahan et al., AISTATS 2017): x ← x + Σ w_i Δ_i / Σ w_i."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strategies.api import NDArrays, SumStrategy
from strategies.builtin._math import apply_delta, require_weight
from strategies.params import StrategyParams, param

__all__ = ["FedAvg"]


class FedAvg(SumStrategy):
    """Federated averaging, weighted by sample count unless ``weighted=false``."""

    name: ClassVar[str] = "fedavg"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        weighted: bool = param(True, doc="weight silos by sample count (false: each silo 1.0)")

    def step(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
             server_round: int) -> NDArrays:
        """Add the weighted mean delta to the model."""
        require_weight(total_weight, self.name)
        return apply_delta(current, delta_sum, 1.0 / total_weight)

"""FedExP (Jhunjhunwala, Wang and Joshi, ICLR 2023): FedAvg with a server step size that
extrapolates when the silos' updates disagree.

    Δ̄ = Σ w_i Δ_i / Σ w_i,    η = max(1, (Σ w_i ‖Δ_i‖² / Σ w_i) / (2 (‖Δ̄‖² + ε))),
    x ← x + η · Δ̄

(the paper's step with example weights p_i = w_i / Σ w_i in place of 1/M). ``Σ w_i ‖Δ_i‖²``
is the statistic ``update_sq_norm``: in a clear round the coordinator computes it from the
updates it folds (the silos are not asked for it), and under secure aggregation each
silo computes the squared norm of its own update and the sum arrives masked beside the
update's, so FedExP runs where the coordinator never sees an individual update. η = 1 is FedAvg; when the
updates point the same way (‖Δ̄‖² ≈ mean ‖Δ_i‖²) η stays 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.api import NDArrays, SumStrategy
from strategies.builtin._math import apply_delta, require_weight
from strategies.params import StrategyParams, param
from xsilo.errors import StrategyError

__all__ = ["FedExP"]


class FedExP(SumStrategy):
    """FedAvg with the FedExP server step size η ≥ 1 from the silos' update norms."""

    name: ClassVar[str] = "fedexp"
    statistics: ClassVar[tuple[str, ...]] = ("update_sq_norm",)

    @dataclass(frozen=True)
    class Params(StrategyParams):
        epsilon: float = param(1e-3, gt=0.0, doc="ε in the step-size denominator (> 0)")

    def __init__(self, params: FedExP.Params | None = None) -> None:
        super().__init__(params)
        self.last_step_size = 1.0

    def step(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
             server_round: int) -> NDArrays:
        raise StrategyError("FedExP needs the silos' update norms; it steps through "
                            "step_with_statistics (the round loop and aggregate_updates call it)")

    def step_with_statistics(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
                             server_round: int, statistics: Mapping[str, float | None]
                             ) -> NDArrays:
        """One FedExP step; without a reported norm (no silo shared it) η = 1 (FedAvg)."""
        require_weight(total_weight, self.name)
        mean_sq = statistics.get("update_sq_norm")
        avg_sq = float(sum(np.dot(v, v) for v in (
            np.asarray(d, dtype=np.float64).reshape(-1) / total_weight
            for d in delta_sum.values())))
        eta = 1.0
        if mean_sq is not None:
            if not np.isfinite(mean_sq) or mean_sq < 0:
                raise StrategyError(f"FedExP got update_sq_norm = {mean_sq!r}; expected a "
                                    "finite number ≥ 0")
            eta = max(1.0, mean_sq / (2.0 * (avg_sq + self.params.epsilon)))
        self.last_step_size = eta
        return apply_delta(current, delta_sum, eta / total_weight)

"""DecayAvg: FedAvg with a server learning rate that decays every round.

x ← x + η·γ^k · Σ w_i Δ_i / Σ w_i, where k counts the steps taken so far (checkpointed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies import NDArrays, StrategyParams, SumStrategy, param


class DecayAvg(SumStrategy):
    """FedAvg with server learning rate η decayed by γ after every round."""

    name: ClassVar[str] = "decayavg"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        lr: float = param(1.0, gt=0.0, le=10.0, doc="initial server learning rate η")
        decay: float = param(0.9, gt=0.0, le=1.0, doc="factor γ applied after each round")

    def __init__(self, params: DecayAvg.Params | None = None) -> None:
        super().__init__(params)
        self.steps = 0

    def step(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
             server_round: int) -> NDArrays:
        """Move the model by the decayed learning rate times the mean delta."""
        scale = self.params.lr * self.params.decay ** self.steps / total_weight
        self.steps += 1
        return {k: (v + scale * delta_sum[k]).astype(v.dtype) for k, v in current.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The step counter, as a 0-d array."""
        return {"steps": np.array(self.steps)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the step counter."""
        self.steps = int(state.get("steps", 0))

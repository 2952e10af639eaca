"""FedAvgM (Hsu et al., 2019): server SGD with momentum on the pseudo-gradient.

g = −Δ̄;  m ← g (first round) or β·m + g;  x ← x − η·m   (η = server_learning_rate,
β = server_momentum; PyTorch SGD convention, no Nesterov). With β = 0 and η = 1 it is FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.api import NDArrays, SumStrategy
from strategies.builtin._math import apply_delta, pack_state, require_weight, scaled, unpack_state
from strategies.params import StrategyParams, param
from xsilo.errors import StrategyError

__all__ = ["FedAvgM"]


class FedAvgM(SumStrategy):
    """FedAvg with server learning rate and server momentum."""

    name: ClassVar[str] = "fedavgm"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        server_learning_rate: float = param(1.0, gt=0.0, doc="server step size η")
        server_momentum: float = param(0.0, ge=0.0, lt=1.0, doc="server momentum β")

    def __init__(self, params: FedAvgM.Params | None = None) -> None:
        super().__init__(params)
        self.momentum: NDArrays | None = None

    def step(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
             server_round: int) -> NDArrays:
        """One server SGD step on g = −Δ̄."""
        require_weight(total_weight, self.name)
        gradient = scaled(delta_sum, -1.0 / total_weight)
        beta = self.params.server_momentum
        if beta > 0.0:
            if self.momentum is not None:
                gradient = {k: beta * self.momentum[k] + g for k, g in gradient.items()}
            self.momentum = gradient
        return apply_delta(current, gradient, -self.params.server_learning_rate)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The momentum buffer under ``momentum/<tensor>`` (empty before the first step)."""
        return pack_state("momentum", self.momentum)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the momentum buffer."""
        unknown = [k for k in state if not k.startswith("momentum/")]
        if unknown:
            raise StrategyError(f"strategy '{self.name}' does not know checkpoint keys "
                                f"{unknown[:3]}; expected only 'momentum/<tensor>'")
        self.momentum = unpack_state("momentum", state)

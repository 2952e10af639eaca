"""FedAdam (Reddi et al., ICLR 2021): v ← β₂·v + (1 − β₂)·Δ̄², bias-corrected η.

η_t = η·√(1 − β₂^(t+1)) / (1 − β₁^(t+1)) for server round t, as in Flower 1.42.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from strategies.builtin.fedopt import FedOpt, FedOptParams

__all__ = ["FedAdam"]


class FedAdam(FedOpt):
    """Adam on the server."""

    name: ClassVar[str] = "fedadam"
    Params: ClassVar[type] = FedOptParams

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Exponential moving average of Δ̄²."""
        b2 = self.params.beta_2
        return b2 * v + (1.0 - b2) * d2

    def learning_rate(self, server_round: int) -> float:
        """Bias-corrected η_t."""
        t = server_round + 1.0
        p = self.params
        return float(p.eta * np.sqrt(1.0 - p.beta_2 ** t) / (1.0 - p.beta_1 ** t))

"""FedAdagrad (Reddi et al., ICLR 2021): β₁ = 0, v ← v + Δ̄²."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.builtin.fedopt import FedOpt
from strategies.params import StrategyParams, param

__all__ = ["FedAdagrad"]


class FedAdagrad(FedOpt):
    """Adagrad on the server (no first-moment decay)."""

    name: ClassVar[str] = "fedadagrad"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        eta: float = param(1e-1, gt=0.0, doc="server learning rate η")
        eta_l: float = param(1e-1, ge=0.0, doc="client learning rate (informational)")
        tau: float = param(1e-3, gt=0.0, doc="adaptivity τ added to √v")

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Running sum of Δ̄²."""
        return v + d2

"""FedYogi (Reddi et al., ICLR 2021): v ← v − (1 − β₂)·Δ̄²·sign(v − Δ̄²)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.builtin.fedopt import FedOpt, FedOptParams
from strategies.params import param

__all__ = ["FedYogi"]


class FedYogi(FedOpt):
    """Yogi on the server (additive, sign-controlled second moment)."""

    name: ClassVar[str] = "fedyogi"

    @dataclass(frozen=True)
    class Params(FedOptParams):
        eta: float = param(1e-2, gt=0.0, doc="server learning rate η")
        eta_l: float = param(0.0316, ge=0.0, doc="client learning rate (informational)")

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Yogi's additive update."""
        return v - (1.0 - self.params.beta_2) * d2 * np.sign(v - d2)

"""Adaptive server optimizers (Reddi et al., ICLR 2021, "Adaptive Federated Optimization").

With Δ̄ the weighted mean delta, each round:

    m ← β₁·m + (1 − β₁)·Δ̄                       (m starts at 0)
    v ← second_moment(v, Δ̄²)                    (v starts at 0; Adagrad, Adam or Yogi rule)
    x ← x + η_t · m / (√v + τ)

``eta_l`` (the silos' learning rate) is kept for parity with Flower's FedOpt family; it is
not used on the server.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from strategies.api import NDArrays, SumStrategy
from strategies.builtin._math import apply_delta, pack_state, require_weight, scaled, unpack_state
from strategies.params import StrategyParams, param
from xsilo.errors import StrategyError

__all__ = ["FedOpt", "FedOptParams"]


@dataclass(frozen=True)
class FedOptParams(StrategyParams):
    """Parameters shared by FedAdam and FedYogi (Flower's names and meanings)."""

    eta: float = param(1e-1, gt=0.0, doc="server learning rate η")
    eta_l: float = param(1e-1, ge=0.0, doc="client learning rate (informational)")
    beta_1: float = param(0.9, ge=0.0, lt=1.0, doc="first-moment decay β₁")
    beta_2: float = param(0.99, ge=0.0, lt=1.0, doc="second-moment decay β₂")
    tau: float = param(1e-3, gt=0.0, doc="adaptivity τ added to √v")


class FedOpt(SumStrategy):
    """Base of FedAdagrad, FedAdam and FedYogi: subclasses give the v rule."""

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.m: NDArrays | None = None
        self.v: NDArrays | None = None

    @property
    def beta_1(self) -> float:
        return float(getattr(self.params, "beta_1", 0.0))

    @abstractmethod
    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Next v from the previous v and Δ̄² (elementwise)."""

    def learning_rate(self, server_round: int) -> float:
        """η_t; a constant η unless a subclass corrects bias."""
        return float(self.params.eta)

    def step(self, current: NDArrays, delta_sum: NDArrays, total_weight: float,
             server_round: int) -> NDArrays:
        """One adaptive server step on Δ̄ = S / W."""
        require_weight(total_weight, self.name)
        mean = scaled(delta_sum, 1.0 / total_weight)
        b1 = self.beta_1
        m_prev = self.m or {k: np.zeros_like(d) for k, d in mean.items()}
        v_prev = self.v or {k: np.zeros_like(d) for k, d in mean.items()}
        self.m = {k: b1 * m_prev[k] + (1.0 - b1) * d for k, d in mean.items()}
        self.v = {k: self.second_moment(v_prev[k], d * d) for k, d in mean.items()}
        direction = {k: self.m[k] / (np.sqrt(self.v[k]) + self.params.tau) for k in mean}
        return apply_delta(current, direction, self.learning_rate(server_round))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Moments under ``m/<tensor>`` and ``v/<tensor>`` (empty before the first step)."""
        return {**pack_state("m", self.m), **pack_state("v", self.v)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore both moments."""
        unknown = [k for k in state if not k.startswith(("m/", "v/"))]
        if unknown:
            raise StrategyError(f"strategy '{self.name}' does not know checkpoint keys "
                                f"{unknown[:3]}; expected 'm/<tensor>' and 'v/<tensor>'")
        self.m, self.v = unpack_state("m", state), unpack_state("v", state)

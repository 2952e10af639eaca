"""FedProx (Li et al., MLSys 2020): FedAvg on the server, μ sent to silos as ``proximal-mu``.

Silos add (μ/2)·‖w − w_global‖² to their local loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from strategies.api import RoundPlan
from strategies.builtin.fedavg import FedAvg
from strategies.params import StrategyParams, param
from xsilo.terms import PROXIMAL_MU

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedAvg whose round config carries the proximal term weight μ."""

    name: ClassVar[str] = "fedprox"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        proximal_mu: float = param(0.0, ge=0.0, doc="proximal term weight μ sent to silos")
        weighted: bool = param(True, doc="weight silos by sample count (false: each silo 1.0)")

    def configure_round(self, server_round: int, silos: Sequence[int]) -> RoundPlan:
        """Every silo, with FedProx's μ (:data:`xsilo.terms.PROXIMAL_MU`)."""
        return RoundPlan(silos=tuple(silos), config={PROXIMAL_MU: self.params.proximal_mu})

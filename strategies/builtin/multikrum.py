"""Multi-Krum (Blanchard et al., NeurIPS 2017): average the k deltas with the lowest Krum score.

The selected deltas are averaged weighted by sample count, as Flower 1.42 does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.api import NDArrays, PerUpdateStrategy, Update
from strategies.builtin._math import apply_delta, krum_scores, weighted_mean
from strategies.params import StrategyParams, param

__all__ = ["MultiKrum"]

log = logging.getLogger(__name__)


class MultiKrum(PerUpdateStrategy):
    """Keep the ``num_nodes_to_keep`` most central updates, then FedAvg them."""

    name: ClassVar[str] = "multikrum"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        num_malicious_nodes: int = param(0, ge=0, doc="assumed Byzantine silos f")
        num_nodes_to_keep: int = param(1, ge=1, doc="updates averaged (1 = Krum)")

    @property
    def keep(self) -> int:
        """How many updates survive selection."""
        return int(getattr(self.params, "num_nodes_to_keep", 1))

    def aggregate(self, current: NDArrays, updates: Sequence[Update],
                  server_round: int) -> NDArrays:
        """Select by Krum score, then weighted mean of the selected deltas."""
        f = self.params.num_malicious_nodes
        if len(updates) <= 2 * f + 2:
            log.warning("%s: %d updates but Krum's guarantee needs n > 2f + 2 = %d",
                        self.name, len(updates), 2 * f + 2)
        scores = krum_scores(updates, list(current), f)
        chosen = np.argsort(scores, kind="stable")[:self.keep]
        log.info("%s round %d kept silos %s", self.name, server_round,
                 [updates[i].silo for i in chosen])
        return apply_delta(current, weighted_mean([updates[i] for i in chosen], list(current)))

"""Streaming collection of one clear round's train replies (no Flower types here).

The transport hands each reply to :meth:`RoundCollector.accept` the moment it arrives.
The collector validates it (tensor names, shapes, finiteness, weight) and, for a
sum-decomposable strategy, folds ``w·Δ`` into a running float64 sum straight away and drops
the reply's arrays — so the coordinator holds the global model, the running sum and one
reply in flight, O(model size) however many silos answer. Under central DP the update is
clipped and folded the same way (:class:`strategies.dp.central.ClipAccumulator`).
Per-update strategies (median, Krum …) need every update, so only they keep the list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from coordinator.messages import Reply
from strategies.aggregate import SumAccumulator, validate_update
from strategies.api import Strategy, SumStrategy, Update
from strategies.dp.central import ClipAccumulator
from xsilo.errors import UpdateRejected
from xsilo.terms import SiloMetrics

__all__ = ["RoundCollector"]

log = logging.getLogger(__name__)


@dataclass
class RoundCollector:
    """Validate and fold train replies as they arrive (see the module docstring).

    ``names`` maps node ids to silo names. ``clip`` is the round's central-DP accumulator
    (None without DP). After the exchange: ``contributors``, ``rejected``, ``metrics``
    (the contributors' metrics: train loss, DP-SGD ε) and either the running sum
    (:attr:`sum`) or the kept :attr:`updates`.
    """

    strategy: Strategy
    current: Mapping[str, np.ndarray]
    names: Mapping[int, str]
    clip: ClipAccumulator | None = None
    contributors: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, SiloMetrics] = field(default_factory=dict)
    updates: list[Update] = field(default_factory=list)
    on_update: Callable[[Update], None] | None = None  # test hook: sees each accepted update

    def __post_init__(self) -> None:
        streaming = self.clip is None and isinstance(self.strategy, SumStrategy)
        self.sum: SumAccumulator | None = SumAccumulator(dict(self.current)) if streaming else None

    @property
    def count(self) -> int:
        """Accepted updates so far."""
        return len(self.contributors)

    def accept(self, node: int, reply: Reply) -> Reply:
        """Fold one reply in; return it without its arrays (what the transport keeps)."""
        name = self.names[node]
        slim = replace(reply, arrays={})
        if reply.error is not None:
            self.rejected[name] = str(reply.error)
            return slim
        n = reply.metrics.num_examples or 0.0
        weight = n if self.strategy.weighted else 1.0
        update = Update(silo=name, delta=reply.arrays, weight=weight)
        try:
            if weight <= 0:
                raise UpdateRejected(f"silo {name} reported weight {weight}; must be > 0")
            if self.sum is None:  # SumAccumulator.add validates as it folds
                validate_update(dict(self.current), reply.arrays, silo=name)
            self._fold(update)
            if self.on_update is not None:
                self.on_update(update)
        except UpdateRejected as exc:
            log.warning("update from %s rejected: %s", name, exc)
            self.rejected[name] = str(exc)
            return slim
        self.contributors.append(name)
        self.metrics[name] = reply.metrics
        return slim

    def _fold(self, update: Update) -> None:
        if self.clip is not None:
            self.clip.add(update.delta, update.weight)
        elif self.sum is not None:
            self.sum.add(update)
        else:
            self.updates.append(update)

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
from strategies.api import Strategy, SumStrategy, Update, call_strategy
from strategies.compression import decode
from strategies.dp.central import ClipAccumulator
from xsilo.errors import ProtocolError, UpdateRejected
from xsilo.protocol import flatten_update, unflatten_update
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
    # The run's compression (method, fraction); None: updates travel as they are.
    compression: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        streaming = self.clip is None and isinstance(self.strategy, SumStrategy)
        self.sum: SumAccumulator | None = SumAccumulator(dict(self.current)) if streaming else None
        self._flat_model: np.ndarray | None = None
        strategy = self.strategy  # read once: a plugin's property may raise (StrategyError)
        self._weighted = call_strategy(strategy, "weighted", lambda: bool(strategy.weighted))

    def _dense(self, name: str, reply: Reply) -> dict[str, np.ndarray]:
        """The update a reply carries: its tensors, or its compressed form decoded against
        the model sent (a form the run did not ask for is the silo's protocol error)."""
        c = reply.compressed
        if c is None:
            if self.compression is not None:
                raise UpdateRejected(f"silo {name} sent an uncompressed update; the run asked "
                                     f"for {self.compression[0]}")
            return reply.arrays
        if self.compression is None or c.method != self.compression[0]:
            raise UpdateRejected(f"silo {name} sent a {c.method} update; the run asked for "
                                 f"{self.compression[0] if self.compression else 'none'}")
        if self._flat_model is None:
            self._flat_model = flatten_update(self.current, self.current, dtype=np.float32)
        try:
            vector = decode(c, length=self._flat_model.size, fraction=self.compression[1],
                            model=self._flat_model)
        except ProtocolError as exc:
            raise UpdateRejected(f"silo {name}: {exc}") from None
        return unflatten_update(vector, self.current)

    @property
    def count(self) -> int:
        """Accepted updates so far."""
        return len(self.contributors)

    def accept(self, node: int, reply: Reply) -> Reply:
        """Fold one reply in; return it without its arrays (what the transport keeps)."""
        name = self.names[node]
        slim = replace(reply, arrays={}, compressed=None)
        if reply.error is not None:
            self.rejected[name] = str(reply.error)
            return slim
        n = reply.metrics.num_examples or 0.0
        weight = n if self._weighted else 1.0
        try:
            update = Update(silo=name, delta=self._dense(name, reply), weight=weight)
            if weight <= 0:
                raise UpdateRejected(f"silo {name} reported weight {weight}; must be > 0")
            if self.sum is None:  # SumAccumulator.add validates as it folds
                validate_update(dict(self.current), update.delta, silo=name)
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

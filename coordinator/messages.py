"""Plain data exchanged between the round loop and its transport (no Flower types).

The loop sends a :class:`Payload` (typed terms from :mod:`xsilo.terms`, the model, a
secure-aggregation record) and gets a :class:`Reply` already parsed at the edge: typed
metrics, the silo's identity, or a :class:`SiloError`. :class:`Transport` is what the loop
needs from the network; :class:`Observers` are optional hooks that see what the
coordinator sees (tests and audits pass them in; nothing here is global).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from xsilo.terms import SiloInfo, SiloMetrics

__all__ = ["Observers", "Payload", "Reply", "SiloError", "Terms", "Transport"]


class Terms(Protocol):
    """Any of the terms types of :mod:`xsilo.terms` (what a message asks of a silo)."""

    def to_config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Payload:
    """What the coordinator sends one silo."""

    terms: Terms
    arrays: Mapping[str, np.ndarray] | None = None
    secagg: Mapping[str, Any] | None = None  # a strategies.secagg message's to_record()


@dataclass(frozen=True)
class SiloError:
    """A typed refusal or failure reported by a silo (or by the transport).

    ``silo`` is the name the silo gave in its error reply, when it could read its config.
    """

    type: str
    reason: str
    message: str
    silo: str | None = None

    def __str__(self) -> str:
        return f"{self.type}[{self.reason}]: {self.message}"


@dataclass
class Reply:
    """One silo's answer, already out of Flower's records and parsed."""

    node_id: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: SiloMetrics = field(default_factory=SiloMetrics)
    info: SiloInfo | None = None  # join replies: the silo's name and schema fingerprint
    error: SiloError | None = None
    secagg: dict[str, Any] | None = None  # a strategies.secagg message record (masked input …)

    @property
    def name(self) -> str | None:
        """The silo's own name, from its join reply or its error reply."""
        if self.info is not None:
            return self.info.name
        return self.error.silo if self.error is not None else None


class Transport(Protocol):
    """What the loop needs from the network (``coordinator.transport.GridTransport``)."""

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]: ...

    def node_ids(self) -> list[int]: ...

    def exchange(self, message_type: str, payloads: Mapping[int, Payload], *, timeout: float,
                 group: str, on_reply: Callable[[int, Reply], Reply] | None = None,
                 until: Callable[[dict[int, Reply]], bool] | None = None
                 ) -> dict[int, Reply]: ...


@dataclass(frozen=True)
class Observers:
    """Optional hooks on what the coordinator process sees (tests and audits).

    ``reply`` gets every raw reply ``Message`` (join, key setup, masked inputs, unmask
    shares, evaluations); ``clipped`` every central-DP ``ClipResult``; ``update`` every
    clear update a round accepts, before it is folded away.
    """

    reply: Callable[[Any], None] | None = None
    clipped: Callable[[Any], None] | None = None
    update: Callable[[Any], None] | None = None

"""Plain data exchanged between the round loop and its transport (no Flower types).

The loop sends a :class:`Payload` (typed terms from :mod:`xsilo.terms`, the model, a
secure-aggregation record) and gets a :class:`Reply` already parsed at the edge: typed
metrics, the silo's identity, or a :class:`SiloError`. :class:`Transport` is what the loop
needs from the network; :class:`Patience` is when an exchange stops waiting for
stragglers; :class:`Observers` are optional hooks that see what the coordinator sees
(tests and audits pass them in; nothing here is global).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from strategies.compression import Compressed
from xsilo.terms import SiloInfo, SiloMetrics

__all__ = ["NODE_UNAVAILABLE", "Observers", "Patience", "Payload", "Reply", "SiloError", "Terms",
           "Transport", "await_online"]

NODE_UNAVAILABLE = "node-unavailable"
"""The :attr:`SiloError.reason` of Flower's "Node Unavailable" reply: the SuperLink answered
for a silo whose SuperNode missed its heartbeats (gone, or still reconnecting to a
restarted SuperLink); the silo itself never saw the message or its reply was replaced."""


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
    # Flower's "Node Unavailable", made by the SuperLink for the silo (:data:`NODE_UNAVAILABLE`;
    # set by the transport only, never from what a silo sends)
    unavailable: bool = False

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
    compressed: Compressed | None = None  # a compressed update (in place of ``arrays``)

    @property
    def name(self) -> str | None:
        """The silo's own name, from its join reply or its error reply."""
        if self.info is not None:
            return self.info.name
        return self.error.silo if self.error is not None else None


@dataclass
class Patience:
    """When an exchange stops waiting for stragglers.

    Once ``quorum(replies)`` holds (enough silos answered), the exchange waits at most
    ``grace`` more seconds (never past its timeout) and then returns without the silos still
    out; ``on_quorum(pending nodes, wall-clock deadline)`` is told when that happens (the
    live table shows who is awaited). After the exchange :attr:`stopped_by` says what ended
    a wait that left silos out: ``"grace"`` or ``"timeout"`` (None: nobody was left out).
    """

    quorum: Callable[[Mapping[int, Reply]], bool]
    grace: float
    on_quorum: Callable[[list[int], float], None] | None = None
    stopped_by: str | None = None

    def missing_reason(self, *, what: str, timeout: float) -> str:
        """Why a silo that did not answer ``what`` was left out (for the round's row)."""
        if self.stopped_by == "grace":
            return (f"no {what} within the straggler grace ({self.grace:g} s after enough "
                    "silos had answered); the round went on without it")
        return f"no {what} within round_timeout ({timeout:g} s)"


class Transport(Protocol):
    """What the loop needs from the network (``coordinator.transport.GridTransport``)."""

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]: ...

    def node_ids(self) -> list[int]: ...

    def exchange(self, message_type: str, payloads: Mapping[int, Payload], *, timeout: float,
                 group: str, on_reply: Callable[[int, Reply], Reply] | None = None,
                 until: Callable[[dict[int, Reply]], bool] | None = None,
                 patience: Patience | None = None) -> dict[int, Reply]: ...


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


def await_online(transport: Transport, nodes: Iterable[int], *, enough: int, grace: float,
                 deadline: float, poll: float = 0.5,
                 on_wait: Callable[[list[int]], None] | None = None) -> set[int]:
    """Wait, until ``deadline`` (``time.monotonic()``), for ``nodes`` the SuperLink reports
    offline (:meth:`Transport.node_ids` lists the nodes whose heartbeat is current); once
    ``enough`` of them are online the others get ``grace`` seconds more. Returns those online.

    Used before a step that fails the run without ``enough`` silos (the key setup): a
    SuperNode that answered a moment ago can still be "unavailable" to a SuperLink it
    reconnected to, until its next heartbeat (Flower 1.42 retries a failed one within 20 s).
    ``on_wait(offline nodes)`` is told once, when the first look finds some offline.
    """
    wanted = set(nodes)
    grace_end: float | None = None
    first = True
    while True:
        online = wanted.intersection(transport.node_ids())
        now = time.monotonic()
        if online == wanted or now >= deadline:
            return online
        if first and on_wait is not None:
            on_wait(sorted(wanted - online))
        first = False
        if len(online) >= enough:
            grace_end = min(deadline, now + grace) if grace_end is None else grace_end
            if now >= grace_end:
                return online
        time.sleep(max(0.0, min(poll, deadline - now)))

"""Count the array bytes that pass through the coordinator's transport.

:class:`MeteredTransport` wraps any :class:`~coordinator.messages.Transport` and adds up the
bytes of every numpy array in the payloads sent (the global model, secure-aggregation
vectors) and in the replies received (updates, masked vectors, unmask records). It counts
tensor payload only: Flower's record framing, gRPC, HTTP/2 and TLS overhead are not seen
here, so the counts are a lower bound on what crossed the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from coordinator.messages import Patience, Payload, Reply, Transport

__all__ = ["MeteredTransport", "payload_bytes", "reply_bytes"]


def _values_bytes(values: Mapping[str, Any] | None) -> int:
    total = 0
    for v in (values or {}).values():
        if isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, bytes | bytearray):
            total += len(v)
    return total


def payload_bytes(payload: Payload) -> int:
    """Array (and byte-string) payload of one outgoing message."""
    return _values_bytes(payload.arrays) + _values_bytes(payload.secagg)


def reply_bytes(reply: Reply) -> int:
    """Array (and byte-string) payload of one reply (a compressed update as it travelled)."""
    compressed = reply.compressed.arrays if reply.compressed is not None else None
    return (_values_bytes(reply.arrays) + _values_bytes(reply.secagg)
            + _values_bytes(compressed))


class MeteredTransport:
    """A transport that counts ``sent`` and ``received`` payload bytes (see the module)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent = 0
        self.received = 0
        self.by_node: dict[int, dict[str, int]] = {}  # node → {"sent": …, "received": …}

    def _count(self, node: int, key: str, n: int) -> None:
        counts = self.by_node.setdefault(node, {"sent": 0, "received": 0})
        counts[key] += n

    def per_node(self) -> dict[int, dict[str, int]]:
        """A snapshot of the per-silo counts (for :meth:`per_node_since`)."""
        return {node: dict(c) for node, c in self.by_node.items()}

    def per_node_since(self, mark: Mapping[int, Mapping[str, int]]) -> dict[int, dict[str, int]]:
        """Bytes sent to and received from each silo since ``mark`` (silos with traffic)."""
        out = {}
        for node, counts in self.by_node.items():
            before = mark.get(node, {})
            diff = {k: v - before.get(k, 0) for k, v in counts.items()}
            if any(diff.values()):
                out[node] = diff
        return out

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        return self.inner.wait_for_nodes(count, timeout)

    def node_ids(self) -> list[int]:
        return self.inner.node_ids()

    def exchange(self, message_type: str, payloads: Mapping[int, Payload], *, timeout: float,
                 group: str, on_reply: Callable[[int, Reply], Reply] | None = None,
                 until: Callable[[dict[int, Reply]], bool] | None = None,
                 patience: Patience | None = None) -> dict[int, Reply]:
        for node, p in payloads.items():
            n = payload_bytes(p)
            self.sent += n
            self._count(node, "sent", n)

        def counted(node: int, reply: Reply) -> Reply:
            n = reply_bytes(reply)  # before on_reply drops its arrays
            self.received += n
            self._count(node, "received", n)
            return on_reply(node, reply) if on_reply is not None else reply

        return self.inner.exchange(message_type, payloads, timeout=timeout, group=group,
                                   on_reply=counted, until=until, patience=patience)

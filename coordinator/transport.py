"""The Flower edge of the coordinator: plain payloads in, Flower ``Message``s on the wire.

The round loop speaks in :class:`Payload` and :class:`Reply` (numpy arrays and plain
dicts); this module alone knows ``Grid``, ``Message`` and the record types. It polls the
grid itself (``push_messages`` / ``pull_messages``) every ``poll_interval`` seconds
instead of ``send_and_receive``'s fixed 3 s sleep, so a round costs one round trip.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid

from coordinator.messages import NODE_UNAVAILABLE, Patience, Payload, Reply, SiloError
from deploy.launch.pulls import within
from xsilo.errors import DeploymentError, ProtocolError
from xsilo.failpoints import reach
from strategies.compression import Compressed
from xsilo.protocol import (ARRAYS, COMPRESSED, COMPRESSED_HEADER, CONFIG, DELTA, METRICS,
                            SECAGG, SECAGG_ARRAYS, SILO)
from xsilo.records import arrays_to_record, record_to_arrays
from xsilo.terms import (SILO_NAME, CompressedHeader, SiloInfo, SiloMetrics, is_silo_name,
                         printable)

__all__ = ["GridTransport"]

log = logging.getLogger(__name__)

PULL_BUDGET = 256 * 1024 * 1024
"""Bytes of replies one pull may bring in (the batch of ids asked is sized from the model)."""
CONTENT_MISSING = "Reply message objects are unavailable"
"""How Flower 1.42's HTTP grid begins the error it hands over for a reply whose content did
not come (its ``MESSAGE_UNAVAILABLE``)."""
LAST_LOOK = 1.0
"""Seconds the look after a deadline waits for the content of a reply there by then."""
_MAX_ERROR = 1 << 20  # an error reply's JSON; a longer one is shown as Flower's error
_MAX_MESSAGE = 4096  # characters of a silo's error message kept


def _parse_error(msg: Message, node_id: int) -> SiloError:
    """A silo's error reply, typed: its JSON fields as printable text of bounded length
    (they reach logs, the run's events and the operator's terminal), the silo's name only
    when it is one; anything else is Flower's error as it came."""
    reason = msg.error.reason if isinstance(msg.error.reason, str) else ""
    try:
        data = json.loads(reason) if len(reason) <= _MAX_ERROR else None
    except (ValueError, RecursionError):
        data = None
    fields = data if isinstance(data, dict) else {}
    if all(isinstance(fields.get(k), str) for k in ("type", "reason", "message")):
        silo = fields.get("silo")
        return SiloError(printable(fields["type"], 256), printable(fields["reason"], 256),
                         printable(fields["message"], _MAX_MESSAGE),
                         silo=silo if is_silo_name(silo) else None)
    reason = printable(reason, _MAX_MESSAGE)
    if msg.error.code == ErrorCode.MESSAGE_UNAVAILABLE and reason.startswith(CONTENT_MISSING):
        return SiloError(DeploymentError.__name__, "reply-content-missing",
                         "its reply came, its content was not complete by the round's "
                         "deadline (still uploading, or its link cut mid-upload); "
                         f"Flower: {reason}")
    # Flower's "Node Unavailable" comes from the SuperLink (a silo's own reply carries its
    # node id: the SuperLink stores no reply from another node than the one addressed)
    if (msg.error.code == ErrorCode.NODE_UNAVAILABLE and node_id != SUPERLINK_NODE_ID
            and msg.metadata.src_node_id == SUPERLINK_NODE_ID):
        return SiloError(DeploymentError.__name__, NODE_UNAVAILABLE,
                         "the SuperLink reports its SuperNode offline (no heartbeat lately: "
                         "stopped, cut off, or still reconnecting after a SuperLink restart); "
                         f"Flower: {reason}", unavailable=True)
    return SiloError("FlowerError", f"code-{msg.error.code}", reason)


def _take_arrays(record: Any, *, keep: bool) -> dict[str, np.ndarray]:
    """Decode an ArrayRecord (:func:`xsilo.records.record_to_arrays`, packed or not) as
    read-only views of its wire bytes, so a reply is never held twice (wire + decoded);
    unless ``keep``, the record lets go of them (the views keep the bytes)."""
    out = record_to_arrays(record, views=True)
    if not keep:
        for name in list(record.keys()):
            del record[name]
    return out


def _to_reply(node_id: int, msg: Message, *, keep_wire: bool = False) -> Reply:
    """The Flower message → a parsed :class:`Reply`; a malformed one becomes that silo's
    ``ProtocolError`` reply (it never escapes as another exception). Unless ``keep_wire``
    (a recorder still wants the message), the message's tensors are emptied as they are
    decoded."""
    if msg.has_error():
        return Reply(node_id, error=_parse_error(msg, node_id))
    try:
        content = msg.content
        arrays: dict[str, np.ndarray] = {}
        for key in (DELTA, ARRAYS):
            if key in content.array_records:
                arrays = _take_arrays(content.array_records[key], keep=keep_wire)
                break
        metrics = (SiloMetrics.from_record(dict(content.metric_records[METRICS]))
                   if METRICS in content.metric_records else SiloMetrics())
        info = (SiloInfo.from_config(dict(content.config_records[SILO]))
                if SILO in content.config_records else None)
        compressed = None
        if COMPRESSED in content.array_records:
            if COMPRESSED_HEADER not in content.config_records:
                raise ProtocolError("a compressed update without its header record")
            header = CompressedHeader.from_config(
                dict(content.config_records[COMPRESSED_HEADER]))
            compressed = Compressed(header.method, header.length,
                                    _take_arrays(content.array_records[COMPRESSED],
                                                 keep=keep_wire))
        secagg = None
        if SECAGG in content.config_records:
            secagg = dict(content.config_records[SECAGG])
            if SECAGG_ARRAYS in content.array_records:
                secagg.update(_take_arrays(content.array_records[SECAGG_ARRAYS],
                                           keep=keep_wire))
    except ProtocolError as exc:
        name = _claimed_name(msg)
        log.warning("silo %s (node %s) sent a malformed reply: %s", name or "?", node_id, exc)
        return Reply(node_id, error=SiloError(ProtocolError.__name__, "malformed-reply", str(exc),
                                              silo=name))
    return Reply(node_id, arrays=arrays, metrics=metrics, info=info, secagg=secagg,
                 compressed=compressed)


def _claimed_name(msg: Message) -> str | None:
    """The silo name a malformed join reply gives, when that one field is well formed."""
    try:
        name = msg.content.config_records[SILO][SILO_NAME]
    except (KeyError, TypeError, AttributeError):
        return None
    return name if is_silo_name(name) else None


class GridTransport:
    """Send payloads to silos through a Flower ``Grid`` and collect replies by a deadline.

    ``recorder``, when given, is called with every raw reply ``Message`` the coordinator
    receives (a debug hook: tests use it to prove what the coordinator could see).
    """

    def __init__(self, grid: Grid, *, poll_interval: float = 0.1,
                 recorder: Callable[[Message], None] | None = None) -> None:
        self.grid = grid
        self.poll_interval = poll_interval
        self.recorder = recorder

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        """Block until ``count`` silos are connected; DeploymentError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.node_ids()
            if len(nodes) >= count:
                return nodes
            if time.monotonic() >= deadline:
                raise DeploymentError(
                    f"only {len(nodes)} of {count} expected silos connected within "
                    f"{timeout:.0f} s; check that every silo's SuperNode is running and "
                    "enrolled, or lower expected_silos / raise join_timeout"
                )
            time.sleep(min(1.0, self.poll_interval * 5))

    def exchange(self, message_type: str, payloads: Mapping[int, Payload], *,
                 timeout: float, group: str,
                 on_reply: Callable[[int, Reply], Reply] | None = None,
                 until: Callable[[dict[int, Reply]], bool] | None = None,
                 patience: Patience | None = None) -> dict[int, Reply]:
        """Send one message per silo; return the replies that arrived before ``timeout``.

        ``on_reply(node, reply)``, when given, sees each reply as soon as it is pulled and
        returns what to keep (the round loop folds an update into its running sum there and
        keeps the reply without its arrays, so memory does not grow with the silo count).
        ``until(replies)``, when given, ends the wait early once it returns True (secure
        aggregation stops at the first ``t`` unmask responses); a later reply is not pulled.
        ``patience``, when given, stops waiting ``patience.grace`` seconds after its quorum
        holds (stragglers are left out; see :class:`~coordinator.messages.Patience`).
        """
        # One ArrayRecord per distinct model: the global model goes to every silo, and a
        # record per message would hold silos × model bytes on the coordinator (Flower's own
        # strategies share one record across a round's messages the same way).
        records: dict[int, Any] = {}
        messages = [self._message(node, message_type, p, group, timeout, records)
                    for node, p in payloads.items()]
        del records
        model_bytes = max((sum(a.nbytes for a in p.arrays.values()) for p in payloads.values()
                           if p.arrays is not None), default=0)
        ids = list(self.grid.push_messages(messages))
        del messages  # pushed: the grid has them; the coordinator need not hold them
        pending = {mid: node for mid, node in zip(ids, payloads)}
        replies: dict[int, Reply] = {}
        # A pull downloads every reply that has arrived for the ids asked, so ask for a few
        # at a time when replies are large: at most ~PULL_BUDGET bytes of replies in memory.
        batch = max(1, PULL_BUDGET // model_bytes) if model_bytes else len(pending) or 1
        deadline = time.monotonic() + timeout
        quorum_at: float | None = None
        done = False

        def pull(by: float) -> bool:
            """Pull what has arrived of ``pending``; True once ``until(replies)`` holds. A
            pull waits for a reply's content at most to ``by``: a silo cut off between
            pushing its reply and the reply's objects leaves a reply whose content never
            comes (Flower would retry for two hours), and the round must end on time."""
            asked = list(pending)
            for start in range(0, len(asked), batch):
                with within(by):
                    pulled = list(self.grid.pull_messages(asked[start:start + batch]))
                while pulled:
                    msg = pulled.pop(0)
                    node = pending.pop(msg.metadata.reply_to_message_id, None)
                    if node is None:
                        continue
                    if self.recorder is not None:
                        self.recorder(msg)
                    reply = _to_reply(node, msg, keep_wire=self.recorder is not None)
                    del msg  # the Flower message (and its record bytes) can go now
                    replies[node] = on_reply(node, reply) if on_reply is not None else reply
                    reach(f"reply:{message_type}")  # a kill test's stop (xsilo.failpoints)
                if until is not None and until(replies):
                    return True
            return False

        while pending and not done and time.monotonic() < deadline:
            done = pull(deadline)
            if patience is not None and quorum_at is None and pending and patience.quorum(replies):
                quorum_at = time.monotonic()
                deadline = min(deadline, quorum_at + patience.grace)
                if patience.on_quorum is not None:
                    patience.on_quorum(sorted(pending.values()),
                                       time.time() + (deadline - time.monotonic()))
            if pending and not done:
                time.sleep(self.poll_interval)
        if pending and not done:
            # The replies at the SuperLink by now, whose pull may have waited behind a reply
            # whose content never came: one last look, waiting little for content.
            done = pull(time.monotonic() + LAST_LOOK)
        if done:
            return replies
        if patience is not None and pending:
            cut = quorum_at is not None and quorum_at + patience.grace <= time.monotonic() + 1e-9
            patience.stopped_by = "grace" if cut and patience.grace < timeout else "timeout"
        graced = patience is not None and patience.stopped_by == "grace"
        for node in pending.values():
            log.warning("silo node %s did not reply to %s %s", node, message_type,
                        f"within the {patience.grace:g} s straggler grace" if graced  # type: ignore[union-attr]
                        else f"within {timeout:.0f} s")
        return replies

    @staticmethod
    def _message(node: int, message_type: str, payload: Payload, group: str,
                 timeout: float, records: dict[int, Any]) -> Message:
        content = RecordDict({CONFIG: ConfigRecord(payload.terms.to_config())})
        if payload.arrays is not None:
            key = id(payload.arrays)
            if key not in records:
                records[key] = arrays_to_record(payload.arrays)
            content[ARRAYS] = records[key]
        if payload.secagg is not None:
            scalars = {k: v for k, v in payload.secagg.items() if not isinstance(v, np.ndarray)}
            vectors = {k: v for k, v in payload.secagg.items() if isinstance(v, np.ndarray)}
            content[SECAGG] = ConfigRecord(scalars)
            if vectors:
                content[SECAGG_ARRAYS] = arrays_to_record(vectors)
        return Message(content, dst_node_id=node, message_type=message_type,
                       group_id=group, ttl=max(timeout + 60.0, 120.0))

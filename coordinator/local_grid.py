"""A Flower ``Grid`` that delivers messages to ClientApps in this process.

It drives the *real* ServerApp logic and the *real* ClientApp handlers without any
SuperLink, SuperNode or process: a federation of N silos in one Python process, in
seconds. Tests use it; so can anyone who wants to try a run configuration quickly.
Messages are deep-copied on the way in and out, as on a real network.
"""

from __future__ import annotations

import copy
import secrets
from typing import Callable, Iterable, Mapping
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid"]

_SUPERLINK_NODE_ID = 0


class LocalGrid(Grid):
    """Deliver each message to ``client_app`` with the destination node's ``Context``.

    ``node_configs`` maps node id → Flower node config (e.g. ``{"silo-config": path}``).
    ``drop`` lets tests make a node silent: ``drop(node_id, message_type) -> bool``.
    ``offline`` lets tests make a node's heartbeat lapse as the SuperLink sees it:
    ``offline(node_id) -> bool``; such a node is left out of :meth:`get_node_ids` and a
    message to it is answered with the SuperLink's own "Node Unavailable" error reply.
    """

    def __init__(self, client_app: ClientApp | Callable[[Message, Context], Message],
                 node_configs: Mapping[int, Mapping[str, object]], *, run_id: int | None = None,
                 drop: Callable[[int, str], bool] | None = None,
                 offline: Callable[[int], bool] | None = None) -> None:
        # a fresh run id per grid, as the SuperLink gives every run its own: what a silo
        # keeps per run (its join record, silo_client/joins.py) never mixes two runs
        run_id = secrets.randbits(63) if run_id is None else run_id
        self.client_app = client_app
        self.drop = drop
        self.offline = offline
        self._run = Run.create_empty(run_id)
        self._contexts = {
            node: Context(run_id=run_id, node_id=node, node_config=dict(cfg),
                          state=RecordDict(), run_config={})
            for node, cfg in node_configs.items()
        }
        self._replies: dict[str, Message] = {}
        # Message() reads the identity of the running task; outside Flower's runtime we
        # are the coordinator of run `run_id`.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = _SUPERLINK_NODE_ID
        TaskIdentity.task_id = 1

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._contexts if self.offline is None or not self.offline(n)]

    def get_nodes(self) -> Iterable[object]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for original in messages:
            msg = copy.deepcopy(original)
            msg.metadata.__dict__["_message_id"] = mid = uuid4().hex
            node = msg.metadata.dst_node_id
            ids.append(mid)
            if self.offline is not None and self.offline(node):
                self._replies[mid] = _node_unavailable(msg)
                continue
            if self.drop is not None and self.drop(node, msg.metadata.message_type):
                continue
            reply = self.client_app(msg, self._contexts[node])
            reply = copy.deepcopy(reply)
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            self._replies[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _node_unavailable(msg: Message) -> Message:
    """The SuperLink's own error reply for a message to a node whose heartbeat lapsed (made
    by Flower's function; imported here only, as it loads the SuperLink's state modules)."""
    from flwr.server.superlink.linkstate.utils import (
        create_message_error_unavailable_res_message)
    return create_message_error_unavailable_res_message(msg.metadata, "node_unavail")

"""Fixtures for strategies tests: a Flower driver that runs flwr.serverapp strategies on
the same updates our strategies see, with real Message replies."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from uuid import uuid4

import numpy as np
import pytest

from strategies.api import NDArrays, Update


class _Grid:
    """Just enough of flwr's Grid for configure_train: the connected node ids."""

    def __init__(self, node_ids: Sequence[int]) -> None:
        self._ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


class FlowerDriver:
    """Runs one flwr strategy round by round with replies built from xsilo Updates."""

    def __init__(self, strategy: object) -> None:
        self.strategy = strategy

    def round(self, server_round: int, current: NDArrays, updates: Sequence[Update]) -> NDArrays:
        from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
        arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in current.items()})
        by_node = {i + 1: u for i, u in enumerate(updates)}
        instructions = list(self.strategy.configure_train(  # type: ignore[attr-defined]
            server_round, arrays, ConfigRecord(), _Grid(list(by_node))))
        replies = []
        for ins in instructions:
            ins.metadata.__dict__["_message_id"] = uuid4().hex
            u = by_node[ins.metadata.dst_node_id]
            local = {k: (current[k] + u.delta[k]).astype(current[k].dtype) for k in current}
            content = RecordDict({
                "arrays": ArrayRecord({k: Array(v) for k, v in local.items()}),
                # the key Flower's strategy weights by (its own name for the example count)
                "metrics": MetricRecord({self.strategy.weighted_by_key: int(u.weight)})})  # type: ignore[attr-defined]
            replies.append(Message(content, reply_to=ins))
        out, _ = self.strategy.aggregate_train(server_round, replies)  # type: ignore[attr-defined]
        assert out is not None
        return {k: out[k].numpy() for k in current}


@pytest.fixture(scope="session")
def flower() -> Iterator[Callable[[object], FlowerDriver]]:
    """Factory of FlowerDriver; sets Flower's task identity for out-of-runtime Messages."""
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity
    unset = []
    for attr in ("run_id", "node_id", "task_id"):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            unset.append(attr)
            setattr(TaskIdentity, attr, 1)
    yield FlowerDriver
    for attr in unset:  # leave Flower as we found it for other test packages
        setattr(TaskIdentity, attr, None)

"""coordinator.transport: a reply is decoded a tensor at a time, its wire bytes dropped as it
goes (the coordinator never holds one reply twice), unless a recorder still wants it."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.transport import _to_reply
from xsilo.protocol import DELTA, METRICS
from xsilo.records import arrays_to_record
from xsilo.terms import NUM_EXAMPLES


def _reply() -> Message:
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    ins = Message(RecordDict(), dst_node_id=1, message_type="train")
    ins.metadata.__dict__["_message_id"] = "m"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    return Message(RecordDict({DELTA: arrays_to_record(arrays),
                               METRICS: MetricRecord({NUM_EXAMPLES: 7})}), reply_to=ins)


def test_decoding_empties_the_wire_record_unless_it_is_kept() -> None:
    msg = _reply()
    reply = _to_reply(3, msg)
    assert list(reply.arrays) == ["w", "b"] and reply.metrics.num_examples == 7
    np.testing.assert_array_equal(reply.arrays["w"], np.arange(6).reshape(2, 3))
    assert list(msg.content.array_records[DELTA].keys()) == []  # the wire bytes are gone
    kept = _reply()
    again = _to_reply(3, kept, keep_wire=True)
    assert list(kept.content.array_records[DELTA].keys()) == ["w", "b"]
    np.testing.assert_array_equal(again.arrays["b"], np.ones(2))

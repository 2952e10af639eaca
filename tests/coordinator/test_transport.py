"""coordinator.transport: a reply is decoded a tensor at a time, its wire bytes dropped as it
goes (the coordinator never holds one reply twice), unless a recorder still wants it; a reply
whose content never comes ends at the round's deadline, and costs no other silo its reply."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from coordinator.messages import Payload
from coordinator.transport import CONTENT_MISSING, LAST_LOOK, GridTransport, _to_reply
from xsilo.protocol import DELTA, METRICS
from xsilo.records import PACKED, arrays_to_record, record_to_arrays
from xsilo.terms import NUM_EXAMPLES


def _reply(record: ArrayRecord | None = None) -> Message:
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    ins = Message(RecordDict(), dst_node_id=1, message_type="train")
    ins.metadata.__dict__["_message_id"] = "m"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float32)}
    return Message(RecordDict({DELTA: record if record is not None else arrays_to_record(arrays),
                               METRICS: MetricRecord({NUM_EXAMPLES: 7})}), reply_to=ins)


def test_a_single_tensor_is_a_read_only_view_of_its_wire_bytes() -> None:
    msg = _reply(arrays_to_record({"w": np.arange(4, dtype=np.float32)}))
    wire = msg.content.array_records[DELTA]["w"].data
    reply = _to_reply(3, msg)
    w = reply.arrays["w"]
    np.testing.assert_array_equal(w, np.arange(4))
    assert not w.flags.writeable and np.shares_memory(w, np.frombuffer(wire, np.uint8))
    assert list(msg.content.array_records[DELTA].keys()) == []


def test_a_tensor_claiming_more_than_it_carries_reserves_nothing() -> None:
    """Flower's ``Array.numpy()`` (``np.load``) reserves what a ``.npy`` header claims before
    reading a byte: a 100-byte reply claiming 64 GiB. The coordinator reads the header itself."""
    import io
    import tracemalloc

    from numpy.lib import format as npy_format

    claim = (2**33,)  # float64: 64 GiB
    head = io.BytesIO()
    npy_format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                             "shape": claim})
    record = ArrayRecord({"w": Array(dtype="float64", shape=claim, stype="numpy.ndarray",
                                     data=head.getvalue() + b"\0" * 16)})
    tracemalloc.start()
    try:
        reply = _to_reply(3, _reply(record))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply.error is not None and reply.error.type == "ProtocolError"
    assert "needs 68719476736 bytes" in reply.error.message, reply.error
    assert peak < 2**20, peak


def test_decoding_empties_the_wire_record_unless_it_is_kept() -> None:
    msg = _reply()
    reply = _to_reply(3, msg)
    assert list(reply.arrays) == ["w", "b"] and reply.metrics.num_examples == 7
    np.testing.assert_array_equal(reply.arrays["w"], np.arange(6).reshape(2, 3))
    assert list(msg.content.array_records[DELTA].keys()) == []  # the wire bytes are gone
    kept = _reply()
    again = _to_reply(3, kept, keep_wire=True)
    assert list(kept.content.array_records[DELTA].keys()) == [PACKED]  # two tensors: packed
    assert list(record_to_arrays(kept.content.array_records[DELTA])) == ["w", "b"]
    np.testing.assert_array_equal(again.arrays["b"], np.ones(2))


class _CutGrid:
    """Three silos answer, but node 3 was cut off between pushing its reply and the reply's
    objects: pulling its reply waits for content that never comes (Flower's object pull, as
    the coordinator's ServerApp runs it). Node 2's reply arrives while that pull waits."""

    def __init__(self) -> None:
        from flwr.supercore.inflatable.inflatable_utils import pull_objects

        from deploy.launch.pulls import quicken

        self.hop = SimpleNamespace(__name__="hop", pull_objects=pull_objects,
                                   caller=lambda: pull_objects([], None))
        quicken(self.hop, "pull_objects", "caller")
        self.sent: dict[str, Message] = {}
        self.pulls: list[list[str]] = []

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        for i, msg in enumerate(messages, start=1):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent[f"m{i}"] = msg
        return list(self.sent)

    def _never(self, object_id: str) -> bytes:
        from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

        raise ObjectUnavailableError(object_id)

    def pull_messages(self, ids):  # noqa: ANN001, ANN201
        from flwr.app import Error
        from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

        self.pulls.append(list(ids))
        out = []
        for mid in ids:
            if mid == "m2" and "m3" in self.sent:  # arrives once node 3's pull began
                continue
            ins = self.sent.pop(mid, None)
            if ins is None:
                continue
            if mid == "m3":  # as flwr.superlink.grid.http_grid.HttpGrid.pull_messages does
                try:
                    self.hop.pull_objects(["x"], self._never)
                except ObjectPullError as exc:
                    reason = (f"{CONTENT_MISSING}. The sender may not have completed the "
                              f"upload. {exc}")
                    out.append(Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=reason),
                                       reply_to=ins))
                continue
            out.append(Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 5})}),
                               reply_to=ins))
        return out


def test_a_reply_whose_content_never_comes_neither_stalls_the_round_nor_loses_the_others() -> None:
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1  # as _reply() does
    grid = _CutGrid()
    payload = Payload(SimpleNamespace(to_config=dict))  # type: ignore[arg-type]
    started = time.monotonic()
    replies = GridTransport(grid, poll_interval=0.02).exchange(  # type: ignore[arg-type]
        "train", {1: payload, 2: payload, 3: payload}, timeout=0.8, group="1")
    took = time.monotonic() - started
    # the pull of node 3's reply gave up at the deadline; node 2's came meanwhile and counts
    assert 0.7 < took < 0.8 + LAST_LOOK + 0.5, took
    assert sorted(replies) == [1, 2, 3]
    assert replies[1].error is None and replies[2].error is None
    assert replies[2].metrics.num_examples == 5
    error = replies[3].error
    assert error is not None and error.reason == "reply-content-missing", error
    assert "deadline" in str(error) and CONTENT_MISSING in str(error)
    assert "m2" in grid.pulls[-1] and len(grid.pulls) >= 2  # the look after the deadline


def test_flowers_grid_still_says_a_replys_content_is_missing_as_xsilo_reads_it() -> None:
    import inspect

    import flwr.superlink.grid.http_grid as http_grid

    source = inspect.getsource(http_grid.HttpGrid.pull_messages)
    assert f'"{CONTENT_MISSING}. ' in source and "ErrorCode.MESSAGE_UNAVAILABLE" in source

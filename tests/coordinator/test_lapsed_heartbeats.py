"""A silo whose SuperNode the SuperLink reports offline for a moment (its heartbeat lapsed,
e.g. while it reconnects to a restarted SuperLink) does not fail a secure run's key setup:
the setup waits for it within ``join_timeout``, and asks it again, with fresh keys, when
Flower answered "Node Unavailable" for it. In process: :class:`LocalGrid`'s ``offline`` hook
answers as the SuperLink does (Flower's own error reply)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from coordinator.local_grid import LocalGrid, _node_unavailable
from coordinator.messages import NODE_UNAVAILABLE, Observers, await_online
from coordinator.transport import _to_reply
from coordinator.run_store import RunStore
from federation.local import run_in_process
from xsilo.errors import SecureAggregationError
from xsilo.protocol import SECAGG_SETUP

LAPSING = 3  # hospital-c's node


class Heartbeat:
    """hospital-c's heartbeat as the SuperLink sees it: current until hospital-c answered the
    join; then ``script`` says, one look at a time, whether it is offline (then current)."""

    def __init__(self, script: list[bool]) -> None:
        self.script = list(script)
        self.joined = False
        self.looks = 0
        self.setup_errors: list[str] = []  # the error replies to key requests that came

    def reply(self, msg) -> None:
        if msg.metadata.message_type == "query" and msg.metadata.reply_to_message_id:
            self.joined = self.joined or not msg.has_error()
        if msg.metadata.message_type == SECAGG_SETUP and msg.has_error():
            self.setup_errors.append(msg.error.reason)

    def run(self, run_dir: Path, config: RunConfig, federation: list[Path], **kw) -> dict:
        """``config`` in process, hospital-c's heartbeat as scripted."""
        return run_in_process(run_dir, config, federation, offline=self.offline,
                              observers=Observers(reply=self.reply), **kw)

    def offline(self, node: int) -> bool:
        if node != LAPSING or not self.joined or not self.script:
            return False
        self.looks += 1
        return self.script.pop(0)


def _secure(**over) -> RunConfig:
    base = dict(num_rounds=1, min_silos=3, expected_silos=3, secure_aggregation=True,
                round_timeout=5.0, join_timeout=30.0, straggler_grace=0.0, name="lapse")
    return RunConfig(**{**base, **over})


def _setup_event(run_dir: Path) -> dict:
    return next(e for e in RunStore(run_dir).events()
                if e["event"] == "secure_aggregation_setup")


def test_the_key_setup_waits_for_a_silo_the_superlink_reports_offline(
        tmp_path: Path, federation: list[Path]) -> None:
    # offline at the setup's first two looks, then back: the setup waits, then asks it
    beat = Heartbeat([True, True])
    summary = beat.run(tmp_path / "run", _secure(), federation)
    assert summary["status"] == "completed", summary
    # both offline looks were the wait's: its KeyRequest went out once it was back, so
    # Flower never answered "Node Unavailable" for it (no re-ask was needed)
    assert not beat.script and beat.setup_errors == []
    assert _setup_event(tmp_path / "run")["not_keyed"] == {}


def test_a_silo_flower_answered_unavailable_for_is_asked_again_with_fresh_keys(
        tmp_path: Path, federation: list[Path]) -> None:
    # online when the setup looks, offline when its KeyRequest is answered (Flower's error
    # reply), online again: three keyed silos are needed (min_silos = 3), so it is asked again
    beat = Heartbeat([False, True])
    summary = beat.run(tmp_path / "run", _secure(), federation)
    assert summary["status"] == "completed", summary
    kinds = beat.setup_errors
    assert len(kinds) == 1 and "Node Unavailable" in kinds[0]  # Flower's own reply came
    assert _setup_event(tmp_path / "run")["not_keyed"] == {}


def test_a_silo_that_stays_offline_fails_the_setup_with_the_reason(
        tmp_path: Path, federation: list[Path]) -> None:
    beat = Heartbeat([True] * 10_000)
    started = time.monotonic()
    with pytest.raises(SecureAggregationError,
                       match=f"only 2 silo.*threshold=3.*node 3: DeploymentError\\[{NODE_UNAVAILABLE}\\]"
                             ".*reports its SuperNode offline"):
        beat.run(tmp_path / "run", _secure(join_timeout=1.5), federation)
    assert time.monotonic() - started >= 1.5  # it waited join_timeout for it
    assert RunStore(tmp_path / "run").summary()["status"] == "failed"


def test_with_enough_silos_keyed_an_offline_one_costs_the_grace_and_is_re_keyed_later(
        tmp_path: Path, federation: list[Path]) -> None:
    # t = 2 of 3: the setup waits the straggler grace (0.5 s), not join_timeout (30 s)
    beat = Heartbeat([True] * 3)  # two looks in the grace, and its KeyRequest
    started = time.monotonic()
    summary = beat.run(tmp_path / "run", _secure(min_silos=2, straggler_grace=0.5),
                       federation)
    assert summary["status"] == "completed", summary
    assert time.monotonic() - started < 20
    not_keyed = _setup_event(tmp_path / "run")["not_keyed"]
    assert list(not_keyed) == ["hospital-c"] and NODE_UNAVAILABLE in not_keyed["hospital-c"]
    rows = {e["round"]: e for e in RunStore(tmp_path / "run").events() if e["event"] == "round"}
    assert rows[1]["secure_aggregation"]["rekeyed"] == {"asked": 1, "keyed": 1}
    assert rows[1]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"]


class _Nodes:
    def __init__(self, timeline: list[list[int]]) -> None:
        self.timeline = timeline

    def node_ids(self) -> list[int]:
        return self.timeline.pop(0) if len(self.timeline) > 1 else self.timeline[0]


def test_await_online_returns_when_all_are_back() -> None:
    nodes = _Nodes([[1], [1, 2], [1, 2, 3]])
    got = await_online(nodes, [1, 2, 3], enough=3, grace=0.0, deadline=time.monotonic() + 5,
                       poll=0.01)
    assert got == {1, 2, 3} and nodes.timeline == [[1, 2, 3]]


def test_await_online_gives_the_others_the_grace_once_enough_are_online() -> None:
    started = time.monotonic()
    got = await_online(_Nodes([[1, 2, 7]]), [1, 2, 3], enough=2, grace=0.2,
                       deadline=started + 5, poll=0.01)
    assert got == {1, 2} and 0.2 <= time.monotonic() - started < 2


def test_await_online_stops_at_the_deadline() -> None:
    started = time.monotonic()
    got = await_online(_Nodes([[]]), [1, 2], enough=1, grace=0.0, deadline=started + 0.2,
                       poll=0.05)
    assert got == set() and 0.2 <= time.monotonic() - started < 2


def test_only_the_superlinks_node_unavailable_reads_as_one() -> None:
    """A silo cannot pass its own answer off as Flower's "Node Unavailable" (which makes the
    key setup ask it again): neither with that reason in its JSON error, nor with the code."""
    grid = LocalGrid(lambda msg, context: msg, {7: {}})
    msg = grid.create_message(RecordDict(), SECAGG_SETUP, 7, "secagg-setup")
    msg.metadata.__dict__["_message_id"] = "m-1"
    link = _to_reply(7, _node_unavailable(msg)).error
    assert link is not None and link.unavailable and link.reason == NODE_UNAVAILABLE
    body = {"type": "DeploymentError", "reason": NODE_UNAVAILABLE, "message": "call again"}
    for claim in (Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=json.dumps(body)),
                  Error(code=ErrorCode.NODE_UNAVAILABLE, reason="offline, honestly")):
        error = _to_reply(7, Message(claim, reply_to=msg)).error
        assert error is not None and not error.unavailable, error


def test_flowers_instant_replies_do_not_start_the_grace_for_live_silos(
        tmp_path: Path, federation: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """t = 2: hospital-c lapses once the setup looked (Flower answers for it at once),
    hospital-b answers after 1 s, past the 0.3 s grace. Only adverts count towards the t
    that ends the wait, so hospital-b is keyed and the run goes on."""
    import coordinator.local_grid as local_grid

    beat, held = Heartbeat([False] + [True] * 10_000), {}
    push, pull = local_grid.LocalGrid.push_messages, local_grid.LocalGrid.pull_messages

    def slow_push(self, messages):
        messages = list(messages)
        ids = list(push(self, messages))
        for mid, msg in zip(ids, messages):
            if msg.metadata.dst_node_id == 2 and msg.metadata.message_type == SECAGG_SETUP:
                held[mid] = time.monotonic() + 1.0  # hospital-b answers after 1 s
        return ids

    def slow_pull(self, ids):
        return pull(self, [i for i in ids if held.get(i, 0) <= time.monotonic()])

    monkeypatch.setattr(local_grid.LocalGrid, "push_messages", slow_push)
    monkeypatch.setattr(local_grid.LocalGrid, "pull_messages", slow_pull)
    summary = beat.run(tmp_path / "run", _secure(min_silos=2, straggler_grace=0.3,
                                                 join_timeout=3.0), federation)
    assert summary["status"] == "completed", summary
    not_keyed = _setup_event(tmp_path / "run")["not_keyed"]
    assert list(not_keyed) == ["hospital-c"] and NODE_UNAVAILABLE in not_keyed["hospital-c"]


def test_no_wait_for_a_re_ask_that_cannot_make_up_t(tmp_path: Path,
                                                    federation: list[Path]) -> None:
    """t = 3: hospital-b never answers the key setup and hospital-c lapses after the setup
    looked. Even back, hospital-c would make 2 keyed silos: the run fails at once, not
    after join_timeout."""
    beat = Heartbeat([False] + [True] * 10_000)
    started = time.monotonic()
    with pytest.raises(SecureAggregationError, match="only 1 silo.*threshold=3"):
        beat.run(tmp_path / "run", _secure(join_timeout=30.0, round_timeout=1.0), federation,
                 drop=lambda node, kind: node == 2 and kind == SECAGG_SETUP)
    assert time.monotonic() - started < 15  # the round timeout (1 s), not join_timeout

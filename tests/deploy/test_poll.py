"""The SuperNode's idle poll (deploy.launch.poll, deploy.launch.supernode): quick right after
an answer, Flower's 3 s when idle, and pinned to the Flower code it adjusts; a reply left over
from a run stopped mid-receipt never takes the place of the next one."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from deploy.launch.poll import (BUDGET_ENV, HINT_ENV, MAX_SILOS, AdaptivePoll, note_federation,
                                read_hint)
from deploy.launch.supernode import _Time, budget_from_env, check_seam, install, owe_replies
from xsilo.errors import DeploymentError


def test_idle_until_the_first_answer_then_quick_then_back_to_idle() -> None:
    poll = AdaptivePoll()
    assert [poll.next_wait() for _ in range(3)] == [3.0, 3.0, 3.0]
    poll.answered()
    waits = [poll.next_wait() for _ in range(30)]
    assert waits[0] == pytest.approx(0.1) and waits[1] == pytest.approx(0.125)
    assert all(a <= b for a, b in zip(waits, waits[1:]))  # never quicker again
    back = waits.index(3.0)
    assert sum(waits[:back]) < 15  # back to Flower's rate within 15 s of silence
    assert waits[back:] == [3.0] * (30 - back)
    poll.answered()  # the next answer: quick again
    assert poll.next_wait() == pytest.approx(0.1)


def test_the_extra_load_per_answer_is_bounded() -> None:
    poll = AdaptivePoll()
    poll.answered()
    looks, spent = 0, 0.0
    while (wait := poll.next_wait()) < 3.0:
        looks, spent = looks + 1, spent + wait
    # Flower would have looked spent / 3 times in the same time
    assert looks - int(spent / 3.0) == poll.extra_polls() <= 16


def _looks_per_second(poll: AdaptivePoll, seconds: float = 60.0) -> float:
    """A silo that answers at once whatever it finds: its quickest sustained rate."""
    t, looks = 0.0, 0
    while t < seconds:
        poll.answered()
        t, looks = t + poll.next_wait(), looks + 1
    return looks / t


@pytest.mark.parametrize("silos", [1, 2, 5, 10, 11, 25, 50, 100, 299, 300, 1000, 5000])
def test_a_whole_federation_looks_within_its_budget(silos: int) -> None:
    """All its silos looking as fast as they ever do, answering all the time: the
    SuperLink sees at most the budget, or Flower's own rate where that is more."""
    poll = AdaptivePoll()
    poll.answered(silos)
    total = silos * _looks_per_second(poll)
    assert total <= max(poll.budget, silos / poll.idle) * 1.01, total
    if silos <= 10:  # a small federation keeps the quick look it had
        assert poll.quickest() == pytest.approx(0.1)
    if silos >= 300:  # a large one is at Flower's rate
        assert poll.quickest() == 3.0


def test_the_pace_follows_the_federation_the_run_names() -> None:
    poll = AdaptivePoll(budget=50)
    poll.answered(100)
    first = poll.next_wait()
    assert first == pytest.approx(2.0) and poll.next_wait() == pytest.approx(2.5)
    assert poll.extra_polls() <= 1  # two quick looks, where Flower's loop made one
    poll.answered()  # an answer that names no size: the last one still holds
    assert poll.next_wait() == pytest.approx(2.0)
    for nonsense in (0, -3, MAX_SILOS + 1):  # ignored, not believed
        poll.answered(nonsense)
        assert poll.next_wait() == pytest.approx(2.0)
    poll.answered(2)
    assert poll.next_wait() == pytest.approx(0.1)


def test_the_clientapp_tells_its_supernode_the_size_through_a_file(tmp_path, monkeypatch) -> None:
    hint = tmp_path / "flwr-home" / "poll-hint"
    monkeypatch.delenv(HINT_ENV, raising=False)
    note_federation(7)  # no xsilo launcher (simulation, in process): nothing written
    assert read_hint(hint) is None and not hint.parent.exists()
    monkeypatch.setenv(HINT_ENV, str(hint))
    note_federation(7)
    assert read_hint(hint) == 7
    note_federation(0)  # not a size: the last one stays
    assert read_hint(hint) == 7 and [p.name for p in hint.parent.iterdir()] == ["poll-hint"]
    assert read_hint(None) is None
    for junk in (b"", b"seven", b"-4", b"\xff\xfe", str(MAX_SILOS + 1).encode(), b"9" * 64):
        hint.write_bytes(junk)
        assert read_hint(hint) is None, junk
    blocked = tmp_path / "a-file"  # a home that cannot hold the hint: the reply goes on
    blocked.write_text("not a directory")
    monkeypatch.setenv(HINT_ENV, str(blocked / "poll-hint"))
    note_federation(9)
    assert blocked.read_text() == "not a directory"


def test_the_budget_is_read_from_the_environment_or_refused(monkeypatch) -> None:
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert budget_from_env() == 100.0
    monkeypatch.setenv(BUDGET_ENV, " 250 ")
    assert budget_from_env() == 250.0
    for bad in ("0", "-1", "nan", "inf", "lots"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(DeploymentError, match=f"{BUDGET_ENV}='{bad}' is not a number"):
            budget_from_env()


def test_a_bad_budget_is_refused_before_the_silo_starts(tmp_path, monkeypatch) -> None:
    from deploy.launch.processes import free_port, start_supernode

    monkeypatch.setenv(BUDGET_ENV, "fast")
    with pytest.raises(DeploymentError, match=f"{BUDGET_ENV}='fast'"):
        start_supernode(flwr_home=tmp_path, log_path=tmp_path / "n.log", superlink="x:1",
                        root_cert=tmp_path / "ca", auth_key=None, silo_config=tmp_path / "s",
                        clientappio_port=free_port(), app_gate="silo_client.apps:admit")
    assert not (tmp_path / "n.log").exists()  # nothing started


@pytest.mark.parametrize("kwargs", [dict(fast=0), dict(fast=4), dict(growth=1.0),
                                    dict(budget=0)])
def test_nonsense_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaptivePoll(**kwargs)


def test_the_flower_seam_is_where_xsilo_expects_it() -> None:
    """Fails on a Flower upgrade that moves the sleeps this launcher adjusts."""
    check_seam()


def test_a_changed_flower_loop_is_refused_with_the_fix(tmp_path, monkeypatch) -> None:
    import flwr.supernode.start_client_internal as real

    (tmp_path / "changed_loop.py").write_text(
        "import time\ndef start_client_internal():\n    time.sleep(1)\n"
        "def _push_messages():\n    time.sleep(0.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = importlib.import_module("changed_loop")
    with pytest.raises(DeploymentError, match=r"no longer sleeps 3 s.*XSILO_FAST_POLL=0"):
        check_seam(fake)
    assert check_seam(real) is real


def test_install_adjusts_only_the_two_sleeps_and_marks_each_push(tmp_path, monkeypatch) -> None:
    import flwr.supernode.start_client_internal as module

    slept: list[float] = []
    monkeypatch.setattr(module, "time", module.time)  # restored after the test
    monkeypatch.setattr(module, "_pull_and_store_message", module._pull_and_store_message)
    monkeypatch.setattr(module, "pull_objects", module.pull_objects)
    monkeypatch.setattr(module, "_push_messages", lambda *a, **k: None)
    monkeypatch.setattr("deploy.launch.supernode.check_seam", lambda: module)  # tested above
    monkeypatch.setattr("deploy.launch.supernode.time.sleep", slept.append)
    hint = tmp_path / "poll-hint"
    poll = install(AdaptivePoll(), hint=hint)
    assert isinstance(module.time, _Time) and install() is poll  # once per process
    module.time.sleep(3)  # idle: no answer yet
    module._push_messages(send=None)
    module.time.sleep(3)
    module.time.sleep(0.5)  # waiting for the local reply
    module.time.sleep(1.7)  # anything else: as asked
    assert slept == [3.0, pytest.approx(0.1), 0.05, 1.7]
    hint.write_text("200\n")  # the ClientApp of a 200-silo run noted its size
    module._push_messages(send=None)
    module.time.sleep(3)
    assert slept[-1] == pytest.approx(2.0)  # 200 silos / 100 looks/s
    assert module.time.monotonic() > 0  # the rest of `time` is the real one


def _message(message_id: str, reply_to: str = "") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(message_id=message_id,
                                                    reply_to_message_id=reply_to))


def test_a_reply_left_over_from_a_stopped_run_does_not_take_the_next_ones_place() -> None:
    """Flower 1.42: a message whose run stopped while its receipt was being confirmed (the
    SuperLink went down and came back) is ignored but still answered by its ClientApp; that
    stale reply went out in place of the next message's, which then waited for good."""
    from flwr.supercore.run import RunNotRunningException

    answered: list[list] = []  # the replies each push finds ready, in turn
    sent: list[str] = []

    def pull(*, confirm_message_received, message: str) -> int | None:  # Flower's, in short
        try:
            confirm_message_received(1, message)
        except RunNotRunningException:
            return None  # "Ignoring message": left in the state, its ClientApp answers it
        return 1

    def push(*, send) -> None:  # Flower's: every reply ready now (at least one)
        for reply in answered.pop(0):
            send(reply, None, 0.0)

    def confirm(run_id: int, message_id: str) -> None:  # the SuperLink's answer
        if message_id == "stale":
            raise RunNotRunningException

    loop = SimpleNamespace(_pull_and_store_message=pull, _push_messages=push)
    owe_replies(loop)
    take = lambda name: loop._pull_and_store_message(  # noqa: E731
        message=name, confirm_message_received=confirm)
    record = lambda reply, *rest: sent.append(reply.metadata.message_id)  # noqa: E731
    assert take("stale") is None  # the coordinator crashed while it was being received
    assert take("join") == 1  # the resumed run's first message
    answered[:] = [[_message("r-stale", "stale")], [_message("r-join", "join")]]
    loop._push_messages(send=record)
    assert sent == ["r-stale", "r-join"] and answered == []  # the join's reply went too
    assert take("train") == 1
    answered[:] = [[_message("r-train", "train")], [_message("later", "x")]]
    loop._push_messages(send=record)
    assert sent[-1] == "r-train" and len(answered) == 1  # in step: one push, as Flower's

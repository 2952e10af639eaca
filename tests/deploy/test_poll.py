"""The SuperNode's idle poll (deploy.launch.poll, deploy.launch.supernode): quick right after
an answer, Flower's 3 s when idle, and pinned to the Flower code it adjusts; a reply left over
from a run stopped mid-receipt never takes the place of the next one."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from deploy.launch.poll import AdaptivePoll
from deploy.launch.supernode import _Time, check_seam, install, owe_replies
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


@pytest.mark.parametrize("kwargs", [dict(fast=0), dict(fast=4), dict(growth=1.0)])
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


def test_install_adjusts_only_the_two_sleeps_and_marks_each_push(monkeypatch) -> None:
    import flwr.supernode.start_client_internal as module

    slept: list[float] = []
    monkeypatch.setattr(module, "time", module.time)  # restored after the test
    monkeypatch.setattr(module, "_pull_and_store_message", module._pull_and_store_message)
    monkeypatch.setattr(module, "_push_messages", lambda *a, **k: None)
    monkeypatch.setattr("deploy.launch.supernode.check_seam", lambda: module)  # tested above
    monkeypatch.setattr("deploy.launch.supernode.time.sleep", slept.append)
    poll = install(AdaptivePoll())
    assert isinstance(module.time, _Time) and install() is poll  # once per process
    module.time.sleep(3)  # idle: no answer yet
    module._push_messages(send=None)
    module.time.sleep(3)
    module.time.sleep(0.5)  # waiting for the local reply
    module.time.sleep(1.7)  # anything else: as asked
    assert slept == [3.0, pytest.approx(0.1), 0.05, 1.7]
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

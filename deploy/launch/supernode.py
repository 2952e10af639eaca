"""``python -m deploy.launch.supernode ARGS`` — Flower's ``flower-supernode ARGS``, with the
idle poll of :mod:`deploy.launch.poll` instead of a fixed 3 s, and every reply it owes sent.

Flower 1.42 has no seam for it: its SuperNode loop (``flwr.supernode.start_client_internal``)
calls ``time.sleep(3)`` after an empty look and ``time.sleep(0.5)`` while it waits for the
local reply to push. This launcher gives that module its own ``time`` whose ``sleep`` turns
the first into :meth:`AdaptivePoll.next_wait` and the second into 0.05 s (a look at local
state, no network), retries a message's missing objects at the poll's pace instead of after
1 s (:mod:`deploy.launch.pulls`), and marks each push as an answer, with the federation's size its
ClientApp last noted (``XSILO_POLL_HINT``, a file the launcher names; the quick look's
total is kept within ``XSILO_POLL_BUDGET`` looks/s, 100 by default: see
:mod:`deploy.launch.poll`).

It also mends how that loop loses a reply. The loop takes one message, then pushes the
replies its ClientApps have left and goes back to taking. A message whose run stopped while
the SuperNode was confirming its receipt (the SuperLink went down meanwhile and came back
with the run stopped: a coordinator crash) is ignored but not removed, so its ClientApp
still answers it, and that stale reply is what the next push sends (the SuperLink drops
it): the reply to the message just taken — a resumed run's join, say — stays behind,
unsent, until another message comes, and the silo is silent in that run. Here the push step
keeps pushing until the reply to every message confirmed for a running run is out
(:func:`owe_replies`). Everything else is Flower's.

The adjustment is pinned to what it relies on: :func:`check_seam` refuses to start (a
:class:`~xsilo.errors.DeploymentError` naming the Flower version) unless the installed Flower
is 1.42 and those calls are where this module expects them; ``tests/deploy/test_poll.py``
fails the same way on a Flower upgrade. ``XSILO_FAST_POLL=0`` runs Flower's loop unchanged.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from deploy.launch.poll import BUDGET_ENV, HINT_ENV, AdaptivePoll, read_hint
from deploy.launch.pulls import quicken
from xsilo.errors import DeploymentError

__all__ = ["FLOWER_SERIES", "budget_from_env", "check_seam", "install", "main", "owe_replies"]

FLOWER_SERIES = "1.42."
IDLE_SLEEP, PUSH_SLEEP, FAST_PUSH_SLEEP = 3, 0.5, 0.05


class _Time:
    """The ``time`` module as the SuperNode loop sees it: its two sleeps adjusted."""

    def __init__(self, poll: AdaptivePoll) -> None:
        self._poll = poll

    def sleep(self, seconds: float) -> None:
        if seconds == IDLE_SLEEP:
            seconds = self._poll.next_wait()
        elif seconds == PUSH_SLEEP:
            seconds = FAST_PUSH_SLEEP
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def check_seam(module: ModuleType | None = None) -> ModuleType:
    """The Flower module the adjustment patches, after checking it is the one it was
    written against."""
    import flwr

    if module is None:
        import flwr.supernode.start_client_internal as module  # type: ignore[no-redef]
    assert module is not None
    version = getattr(flwr, "__version__", "?")
    problems = []
    if not version.startswith(FLOWER_SERIES):
        problems.append(f"Flower is {version}, not {FLOWER_SERIES}x")
    loop = inspect.getsource(module.start_client_internal)
    if f"time.sleep({IDLE_SLEEP})" not in loop or "_push_messages(" not in loop:
        problems.append("start_client_internal no longer sleeps 3 s after an empty look and "
                        "then calls _push_messages")
    if f"time.sleep({PUSH_SLEEP})" not in inspect.getsource(inspect.unwrap(
            module._push_messages)):
        problems.append("_push_messages no longer waits for the reply in 0.5 s sleeps")
    if not isinstance(getattr(module, "time", None), (ModuleType, _Time)):
        problems.append("the module no longer imports `time`")
    if ("confirm_message_received=confirm_message_received" not in loop
            or "send=send" not in loop or "except RunNotRunningException" not in
            inspect.getsource(inspect.unwrap(module._pull_and_store_message))):
        problems.append("the loop no longer hands _pull_and_store_message its receipt "
                        "confirmation and _push_messages its send by keyword, or no longer "
                        "ignores a message whose run stopped while it was received")
    if problems:
        raise DeploymentError(
            "xsilo's SuperNode poll adjustment (deploy/launch/supernode.py) does not fit this "
            f"Flower: {'; '.join(problems)}. Install the Flower xsilo pins (flwr==1.42.*), "
            "or run with XSILO_FAST_POLL=0 (Flower's fixed 3 s polls) until xsilo supports it")
    return module


def install(poll: AdaptivePoll | None = None, *, hint: Path | None = None) -> AdaptivePoll:
    """Adjust the SuperNode loop of this process (see the module docstring); ``hint``: the
    file the silo's ClientApp notes the federation's size in."""
    module = check_seam()
    if isinstance(module.time, _Time):  # installed already
        return module.time._poll
    poll = poll or AdaptivePoll()
    # a message's objects still on their way: ask again at the poll's pace, not after 1 s
    quicken(module, "pull_objects", "_pull_and_store_message", poll.quickest)
    owe_replies(module)
    push = module._push_messages

    def push_then_mark(*args: Any, **kwargs: Any) -> None:
        try:
            push(*args, **kwargs)
        finally:
            poll.answered(read_hint(hint))

    push_then_mark.__wrapped__ = push  # type: ignore[attr-defined]
    module._push_messages = push_then_mark
    module.time = _Time(poll)
    return poll


def owe_replies(module: Any) -> None:
    """Make the loop's push step in ``module`` (checked by :func:`check_seam`) push until
    the reply to every message it confirmed for a running run is out, not only until some
    reply is (see the module docstring)."""
    from flwr.supercore.run import RunNotRunningException

    owed: set[str] = set()  # ids of messages confirmed for a running run, reply not sent
    pull, push = module._pull_and_store_message, module._push_messages

    def pull_owing(*args: Any, confirm_message_received: Any, **kwargs: Any) -> Any:
        def confirm(run_id: int, message_id: str) -> None:
            try:
                confirm_message_received(run_id, message_id)
            except RunNotRunningException:
                raise  # ignored by Flower, answered all the same: its reply is owed nobody
            owed.add(message_id)

        return pull(*args, confirm_message_received=confirm, **kwargs)

    def push_owed(*args: Any, send: Any, **kwargs: Any) -> None:
        def sending(message: Any, *rest: Any) -> Any:
            owed.discard(message.metadata.reply_to_message_id)
            return send(message, *rest)

        push(*args, send=sending, **kwargs)
        while owed:  # a stale reply went first: the one the last message owes is still due
            push(*args, send=sending, **kwargs)

    pull_owing.__wrapped__ = pull  # type: ignore[attr-defined]
    push_owed.__wrapped__ = push  # type: ignore[attr-defined]
    module._pull_and_store_message, module._push_messages = pull_owing, push_owed


def budget_from_env() -> float:
    """``XSILO_POLL_BUDGET``: looks/s all of a federation's quick looks may make (100)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return AdaptivePoll.budget
    try:
        budget = float(text)
    except ValueError:
        budget = math.nan
    if not math.isfinite(budget) or budget <= 0:
        raise DeploymentError(f"{BUDGET_ENV}={text!r} is not a number of looks per second "
                              "above 0: set it to what the coordinator's SuperLink may spend "
                              "on the silos' quick looks (e.g. 100), or unset it")
    return budget


def main() -> None:
    if os.environ.get("XSILO_FAST_POLL", "1") != "0":
        hint = os.environ.get(HINT_ENV)
        install(AdaptivePoll(budget=budget_from_env()), hint=Path(hint) if hint else None)
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()

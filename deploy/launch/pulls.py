"""Quick retries for a message whose objects are not there yet (Flower 1.42's object pulls).

Flower 1.42 moves a message in two steps: the message, then the objects of its content. A
receiver that finds the message but not yet an object of it waits
``PULL_INITIAL_BACKOFF`` = 1 s before it asks again, then 2 s, 4 s … (``pull_objects`` in
``flwr.supercore.inflatable.inflatable_utils``). Every message of a round meets this on one
of three hops, each a separate process:

* a silo's SuperNode pulls the coordinator's message from the SuperLink
  (``flwr.supernode.start_client_internal``), while the ServerApp may still be pushing its
  objects;
* the ClientApp pulls it from its SuperNode (``flwr.supernode.runtime.run_clientapp``):
  the SuperNode creates the task *before* it has pulled the objects, so a ClientApp that
  starts at once finds them missing;
* the ServerApp pulls a silo's reply from the SuperLink (``flwr.superlink.grid.http_grid``)
  while the SuperNode may still be pushing its objects.

Measured on a 5 silos × 1M secure deployment (``benchmarks/RESULTS.md``, *A deployed round
trip, step by step*): the ClientApp's pull took 1.0–1.2 s or 3.0–3.2 s, Flower's first or
second back-off, for about half of all messages, where it takes 20–70 ms otherwise.

:func:`quicken` makes the first retry come after ``first`` seconds instead (doubling up to
Flower's own 10 s cap, 1 s under a deadline (:func:`within`); the same tries and time
limits): 0.05 s on a process's own loopback
(ClientApp ← SuperNode, ServerApp ← SuperLink on the coordinator host), and the SuperNode's
quickest look (:meth:`deploy.launch.poll.AdaptivePoll.quickest`) where a silo asks the
shared SuperLink, so the retries stay within the federation's look budget (never later than
Flower's 1 s: a large federation retries as Flower does). Per object that
is at most ``log2(1 s / first)`` more requests than Flower's, and only while the object is
missing. Like the poll, the adjustment is pinned: it refuses (a
:class:`~xsilo.errors.DeploymentError`) unless the function it wraps is Flower's, with the
parameters it sets, and the caller still calls it by that name. ``XSILO_QUICK_PULLS=0`` in
a process's environment leaves Flower's back-off as it is (``benchmarks/round_trip.py``
compares the two).
"""

from __future__ import annotations

import contextvars
import inspect
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from xsilo.errors import DeploymentError

__all__ = ["DEADLINE_STEP", "LOOPBACK_FIRST", "QUICK_ENV", "quicken", "within"]

LOOPBACK_FIRST = 0.05  # s before the first retry on a process's own host
DEADLINE_STEP = 1.0  # s between retries (±20 %) at most under a deadline, kept within that
QUICK_ENV = "XSILO_QUICK_PULLS"  # "0": Flower's own back-off, unchanged
_FLOWER = "flwr.supercore.inflatable.inflatable_utils"
_PARAMETERS = {"initial_backoff", "backoff_cap", "max_time", "max_tries_per_object"}
# time.monotonic() by which a pull in this context gives up on a missing object (None: Flower's)
_UNTIL: contextvars.ContextVar[float | None] = contextvars.ContextVar("xsilo_pull_until",
                                                                      default=None)


@contextmanager
def within(deadline: float) -> Iterator[None]:
    """Pulls made in this block give up on an object still missing at ``deadline`` (a
    ``time.monotonic()`` value) instead of retrying for Flower's two hours: a silo cut off
    between pushing its reply and pushing the reply's objects leaves a reply whose objects
    never come, and the coordinator's round must still end on time (Flower then hands the
    reply over as an error, "Reply message objects are unavailable"). Flower looks at the
    time only after a try, and then waits up to 10 s for the next: under a deadline the
    retries come about every :data:`DEADLINE_STEP` s at most (Flower's ±20 % jitter), with
    ``XSILO_QUICK_PULLS=0`` too, so the pull ends within about that of the deadline."""
    token = _UNTIL.set(deadline)
    try:
        yield
    finally:
        _UNTIL.reset(token)


def quicken(module: ModuleType | Any, name: str, caller: str,
            first: float | Callable[[], float] = LOOPBACK_FIRST) -> None:
    """Make ``module.name`` (Flower's object pull, called by ``module.caller``, a function
    or ``Class.method``) retry a missing object after ``first`` seconds (a number, or asked
    at each call), never later than Flower's own 1 s. Once per module: a second call leaves
    the first in place."""
    current = getattr(module, name, None)
    if getattr(current, "_xsilo_quick", False):
        return
    keep_flowers = os.environ.get(QUICK_ENV, "1") == "0"  # back-off as Flower's; deadlines kept
    problems = []
    pull = inspect.unwrap(current) if callable(current) else None
    if pull is None or getattr(pull, "__module__", "") != _FLOWER:
        problems.append(f"{module.__name__}.{name} is not Flower's ({_FLOWER})")
    elif not _PARAMETERS <= set(inspect.signature(pull).parameters):
        problems.append(f"{_FLOWER}.{name} no longer takes {', '.join(sorted(_PARAMETERS))}")
    calling: Any = module
    for part in caller.split("."):  # a function of the module, or a class's method
        calling = getattr(calling, part, None)
    if calling is None or f"{name}(" not in inspect.getsource(inspect.unwrap(calling)):
        problems.append(f"{module.__name__}.{caller} no longer calls {name}")
    if problems:
        raise DeploymentError(
            "xsilo's quick object pulls (deploy/launch/pulls.py) do not fit this Flower: "
            f"{'; '.join(problems)}. Install the Flower xsilo pins (flwr==1.42.*), or set "
            f"{QUICK_ENV}=0 (Flower's own 1 s back-off) until xsilo supports it")
    assert pull is not None
    flowers = inspect.signature(pull).parameters["initial_backoff"].default  # never slower
    cap = inspect.signature(pull).parameters["backoff_cap"].default

    def quick(*args: Any, **kwargs: Any) -> Any:
        if not keep_flowers:
            kwargs.setdefault("initial_backoff",
                              min(flowers, first() if callable(first) else first))
        until = _UNTIL.get()
        if until is not None:  # Flower checks the time after a try: try often enough
            kwargs.setdefault("max_time", max(0.0, until - time.monotonic()))
            # never longer than a caller's own cap; the deadline is the caller's too
            kwargs["backoff_cap"] = min(kwargs.get("backoff_cap", cap), DEADLINE_STEP)
        return pull(*args, **kwargs)

    quick.__wrapped__ = pull  # type: ignore[attr-defined]
    quick._xsilo_quick = True  # type: ignore[attr-defined]
    setattr(module, name, quick)

"""Quick retries for a message's missing objects (deploy.launch.pulls): on each of the three
Flower 1.42 hops a round's messages take, pinned to the Flower code it wraps."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.supercore.inflatable.inflatable_utils import (ObjectPullError, ObjectUnavailableError,
                                                         pull_objects)

from deploy.launch.pulls import DEADLINE_STEP, LOOPBACK_FIRST, QUICK_ENV, quicken, within
from xsilo.errors import DeploymentError

# (module, the pull it calls, the caller): the SuperNode from the SuperLink, the ClientApp
# from its SuperNode, the ServerApp from the SuperLink
HOPS = [("flwr.supernode.start_client_internal", "pull_objects", "_pull_and_store_message"),
        ("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree",
         "pull_task_input"),
        ("flwr.superlink.grid.http_grid", "pull_objects", "HttpGrid.pull_messages")]


def _late(missing: int):
    """An object store whose object is missing for the first ``missing`` asks."""
    asks: list[float] = []

    def pull(object_id: str) -> bytes:
        asks.append(time.monotonic())
        if len(asks) <= missing:
            raise ObjectUnavailableError(object_id)
        return b"content"

    return pull, asks


def _hop(first: Any = LOOPBACK_FIRST) -> SimpleNamespace:
    """A module whose caller calls Flower's object pull, quickened with ``first``."""
    module = SimpleNamespace(__name__="hop", pull_objects=pull_objects,
                             caller=lambda: pull_objects([], None))
    quicken(module, "pull_objects", "caller", first=first)
    return module


@pytest.mark.parametrize("module_name, name, caller", HOPS)
def test_each_hop_of_a_round_is_where_xsilo_expects_it(monkeypatch, module_name: str,
                                                        name: str, caller: str) -> None:
    """Fails on a Flower upgrade that moves the pulls this adjusts."""
    module = importlib.import_module(module_name)
    monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    quicken(module, name, caller)
    quick = getattr(module, name)
    assert quick._xsilo_quick and quick.__wrapped__.__module__.startswith("flwr.")
    quicken(module, name, caller)  # once per module
    assert getattr(module, name) is quick


def test_a_missing_object_is_asked_for_again_quickly() -> None:
    module = _hop(first=0.01)
    pull, asks = _late(missing=3)
    started = time.monotonic()
    assert module.pull_objects(["a"], pull) == {"a": b"content"}
    # 0.01 + 0.02 + 0.04 s of back-off (±20 %); Flower's own: 1 + 2 + 4 s
    assert len(asks) == 4 and time.monotonic() - started < 0.9
    pull, asks = _late(missing=1)  # a caller's own setting is kept
    started = time.monotonic()
    module.pull_objects(["a"], pull, initial_backoff=0.3)
    assert asks[1] - asks[0] >= 0.2


def test_the_first_retry_can_follow_the_poll() -> None:
    paces = iter([0.01, 0.2, 3.0])  # the last: a federation of 300 silos or more
    module = _hop(first=lambda: next(paces))
    # asked at each call; never later than Flower's own first retry (1 s ± 20 %)
    for least, most in ((0.0, 0.1), (0.15, 0.5), (0.75, 1.5)):
        pull, asks = _late(missing=1)
        module.pull_objects(["a"], pull)
        assert least <= asks[1] - asks[0] < most


def test_an_operator_can_keep_flowers_back_off(monkeypatch) -> None:
    monkeypatch.setenv(QUICK_ENV, "0")
    module = _hop()
    pull, asks = _late(missing=1)
    module.pull_objects(["a"], pull)
    assert asks[1] - asks[0] >= 0.75  # Flower's own first retry: 1 s ± 20 %


def test_a_reply_whose_content_never_comes_is_given_up_on_by_the_deadline() -> None:
    """A silo cut off between pushing its reply and the reply's objects: the coordinator's
    pull stops at its round's deadline, not after Flower's two hours."""
    module = _hop()
    pull, asks = _late(missing=10**9)
    started = time.monotonic()
    with within(started + 0.5), pytest.raises(ObjectPullError):
        module.pull_objects(["a"], pull)
    assert 0.4 < time.monotonic() - started < 2.0 and len(asks) >= 3
    pull, asks = _late(missing=2)  # outside the block: no deadline
    assert module.pull_objects(["a"], pull) == {"a": b"content"}


def test_a_pull_under_a_deadline_ends_close_to_it() -> None:
    """Flower looks at the time only after a try, and may then wait 10 s for the next one:
    under a deadline the tries come at least every DEADLINE_STEP s (here, unadjusted, the
    try after 3.15 s would come at about 6.3 s)."""
    module = _hop()
    pull, asks = _late(missing=10**9)
    started = time.monotonic()
    with within(started + 3.3), pytest.raises(ObjectPullError):
        module.pull_objects(["a"], pull)
    assert 3.3 <= time.monotonic() - started < 3.3 + 1.2 * DEADLINE_STEP + 0.3
    gaps = [b - a for a, b in zip(asks, asks[1:])]
    assert max(gaps) <= 1.2 * DEADLINE_STEP + 0.4, gaps


def test_a_changed_flower_is_refused_with_the_fix() -> None:
    def pull_objects_of_someone_else(object_ids, fn):  # noqa: ANN001, ANN202
        return {}

    cases = [
        (SimpleNamespace(__name__="m", pull_objects=pull_objects_of_someone_else,
                         caller=lambda: pull_objects_of_someone_else([], None)),
         r"m.pull_objects is not Flower's"),
        (SimpleNamespace(__name__="m", pull_objects=pull_objects, caller=lambda: None),
         r"m.caller no longer calls pull_objects"),
        (SimpleNamespace(__name__="m", pull_objects=pull_objects), r"no longer calls"),
    ]
    for module, problem in cases:
        with pytest.raises(DeploymentError,
                           match=problem + r".*flwr==1\.42.*XSILO_QUICK_PULLS=0"):
            quicken(module, "pull_objects", "caller")
        assert not getattr(module.pull_objects, "_xsilo_quick", False)


def test_every_process_of_a_deployment_pulls_quickly(monkeypatch) -> None:
    """The silo's warm ClientApp server, its SuperNode and the coordinator's ServerApp (on
    Flower's HTTP grid only: in process there is nothing to pull)."""
    import flwr.superlink.grid.http_grid as http_grid
    import flwr.supernode.start_client_internal as supernode

    from coordinator.local_grid import LocalGrid
    from coordinator.server_app import quick_reply_pulls
    from deploy.launch.poll import AdaptivePoll
    from deploy.launch.supernode import install

    for module, name in ((http_grid, "pull_objects"), (supernode, "pull_objects"),
                         (supernode, "time"), (supernode, "_push_messages"),
                         (supernode, "_pull_and_store_message")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    # the warm server makes itself non-dumpable: in a process of its own, as the SuperExec does
    probe = ("import deploy.launch.warm; from flwr.supernode.runtime import run_clientapp as r; "
             "print(r.pull_and_inflate_object_from_tree._xsilo_quick)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "XSILO_WARM_PRELOAD": ""})
    assert out.stdout.strip() == "True", out.stderr
    poll = install(AdaptivePoll())
    assert supernode.pull_objects._xsilo_quick
    quick_reply_pulls(LocalGrid.__new__(LocalGrid))
    assert not getattr(http_grid.pull_objects, "_xsilo_quick", False)
    quick_reply_pulls(http_grid.HttpGrid.__new__(http_grid.HttpGrid))
    assert http_grid.pull_objects._xsilo_quick
    assert poll.quickest() == pytest.approx(0.1) and LOOPBACK_FIRST == 0.05

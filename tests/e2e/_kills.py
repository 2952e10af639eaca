"""Helpers of the kill tests (tests/e2e/test_kills.py, test_superlink_kills.py): start a
local federation with :mod:`xsilo.failpoints` armed in its processes, kill the process that
stopped at one, and read what the silos' egress ledgers say left them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.run_store import RunStore
from federation.deployment import LocalFederation
from xsilo.failpoints import ENV, ENV_DIR, release, wait_reached

SILOS = ["hospital-a", "hospital-b", "hospital-c"]


def start(fed: LocalFederation, monkeypatch: pytest.MonkeyPatch, *points: str) -> Path:
    """Start ``fed`` with ``points`` armed in its processes' environment (not in this one's:
    in-process runs here must not stop at them); return the markers' directory."""
    markers = fed.root / "failpoints"
    markers.mkdir(parents=True)
    with monkeypatch.context() as env:
        env.setenv(ENV, ",".join(points))
        env.setenv(ENV_DIR, str(markers))
        fed.start()
    return markers


def with_serverapp_double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str,
                          **federation: Any) -> LocalFederation:
    """A federation (set up, not started; ``federation``: LocalFederation's options) whose
    Flower processes import ``code`` as their ``sitecustomize``: a test double that decides
    itself where it acts (in ``flwr-serverapp`` only, by its check of ``sys.argv[0]``: a
    hostile or lossy coordinator; or where a silo module is imported: a hostile silo)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", str(site))  # inherited by every Flower process
    return LocalFederation(tmp_path / "fed", **federation).setup()


def kill_serverapp_at(point: str, markers: Path, store: RunStore) -> int:
    """SIGKILL the run's ServerApp once it blocks at ``point``; return its pid."""
    pid = wait_reached(point, markers, timeout=60)
    assert store.owner() == pid, (point, store.owner(), pid)  # the run's own ServerApp
    os.kill(pid, signal.SIGKILL)
    until(lambda: store.owner() is None, 10, f"ServerApp {pid} to end")
    return pid


def superlink_pid(fed: LocalFederation) -> int:
    """The ``flower-superlink`` process of ``fed``'s coordinator (inside its private network
    namespace, with a gateway)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"flower-superlink") for a in argv[:2]) and any(
                str(fed.home_dir).encode() in a for a in argv):
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def silos_up(fed: LocalFederation) -> None:
    """No silo process exited or gave up its connection (SuperNode and its SuperExec)."""
    for supernode in fed.supernodes.values():
        supernode.raise_if_exited()


def until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ledger(fed: LocalFederation, name: str) -> list[dict]:
    silo = next(s for s in fed.silos if s.name == name)
    path = silo.workspace / "egress.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:  # being written right now
            break
    return out


def sent(fed: LocalFederation, message_type: str, server_round: int | None = None) -> dict:
    """Silo name → its ledger entries of ``message_type`` (of ``server_round``)."""
    return {n: [e for e in ledger(fed, n) if e["message_type"] == message_type
                and server_round in (None, e["server_round"])] for n in SILOS}


def online_at(fed: LocalFederation, name: str) -> str | None:
    """When silo ``name``'s node was last activated at the SuperLink, if it is online now."""
    assert fed.coordinator is not None
    node = fed.coordinator.node_ids[name]
    return next((str(n["online-at"]) for n in fed.home.cli().list_nodes()
                 if int(n["node-id"]) == node and n["status"] == "online"), None)


def restart_silo_and_wait(fed: LocalFederation, name: str, timeout: float = 40.0) -> None:
    """Restart silo ``name`` (an empty Flower context: what an operator's restart gives) and
    wait until the SuperLink counts its new SuperNode as online (a SuperNode that exits
    meanwhile, refused, fails the wait with its reason)."""
    before = online_at(fed, name)
    fed.restart_silo(name)

    def back() -> bool:
        fed.supernodes[name].raise_if_exited()
        return online_at(fed, name) not in (None, before)

    until(back, timeout, f"{name} back online")


@contextlib.contextmanager
def while_standing_at(point: str, markers: Path, action: Callable[[], None],
                      timeout: float = 60.0) -> Iterator[None]:
    """Run ``action`` in a thread once the coordinator stands at failpoint ``point``, then
    release it, whatever ``action`` did (the run never stays standing still). Leaving the
    block joins the thread and fails the test with whatever ``action`` raised."""
    problems: list[BaseException] = []

    def body() -> None:
        try:
            wait_reached(point, markers, timeout=timeout)
            action()
        except BaseException as exc:  # reported on leaving the block, not lost in the thread
            problems.append(exc)
        finally:
            release(point, markers)

    thread = threading.Thread(target=body, name=f"at {point}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=5)
    if problems:
        raise AssertionError(f"while the coordinator stood at {point}: {problems[0]!r}") \
            from problems[0]

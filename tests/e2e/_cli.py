"""Real `xsilo` CLI processes for the e2e tests: start one in the background (a session of
its own, its output to a log, optionally inside a network namespace), stop several at once,
and wait for a condition while the ones that must stay up do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["XSILO", "background", "stop", "wait_for"]

XSILO = str(Path(sys.executable).parent / "xsilo")


def background(*args: str, log: Path, netns: str | None = None) -> subprocess.Popen:
    """``xsilo ARGS`` in a session of its own (so :func:`stop` reaches its children), stdout
    and stderr to ``log``, wide enough that rich wraps no line; inside network namespace
    ``netns`` when given (``ip netns exec`` execs the CLI: the pid is the CLI's)."""
    prefix = ["ip", "netns", "exec", netns] if netns is not None else []
    with open(log, "wb") as fh:
        return subprocess.Popen([*prefix, XSILO, *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "COLUMNS": "400"})


def stop(*procs: subprocess.Popen) -> None:
    """SIGTERM to each CLI at once (each stops its own children, then exits), then wait;
    SIGKILL to the session of one that has not exited within 20 s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tails(logs: Iterable[Path]) -> str:
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}"
                     for log in logs if log.exists())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, *,
             logs: Iterable[Path] = (), alive: Iterable[subprocess.Popen] = ()) -> None:
    """Until ``predicate()``, at most ``timeout`` s; every process in ``alive`` must stay up
    meanwhile. A failure names ``what`` and shows the end of each ``logs`` file."""
    shown, watched = list(logs), list(alive)
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in watched:
            assert proc.poll() is None, (f"{' '.join(map(str, proc.args))} exited (code "
                                         f"{proc.returncode}) while waiting for {what}:\n"
                                         + _tails(shown))
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + _tails(shown)
        time.sleep(0.2)

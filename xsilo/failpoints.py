"""Failpoints: named places where a test can stop a real process so that it can kill it
there (test-only; inert unless armed).

A kill test has to SIGKILL a process at one exact point: in the middle of writing a
checkpoint (milliseconds, atomic), while a secure-aggregation phase is half done. No timing
hits such a point reliably; a failpoint does. The environment arms it, and child processes
inherit the environment (the SuperLink passes its own to its SuperExec, and that passes it
to each ``flwr-serverapp``), so a test arms it before it starts the coordinator::

    XSILO_FAILPOINT="reply:train.secagg_setup,checkpoint-write"   points, comma-separated
    XSILO_FAILPOINT_DIR=/tmp/…/failpoints                        where their markers go

The first process that reaches an armed point creates ``<dir>/<point>.pid`` (exclusively,
with its pid in it) and blocks there until it is killed, or until the test lets it go on
(:func:`release`: it creates ``<dir>/<point>.go``), having done what it wanted done while
the process stood still there (restart a silo, say). Every later pass, in that process or
any other, goes on: a resumed run, which inherits the same environment, passes the point
its predecessor was killed at. Without both variables nothing happens and nothing is read
but the environment.

Points in the code:

* ``checkpoint-write`` — :meth:`coordinator.run_store.RunStore.save_checkpoint`, with half
  of the checkpoint written to its temporary file (:func:`xsilo.files.atomic_write`);
* ``reply:<message type>`` — the coordinator's transport, right after it took in the
  first reply of that type (``reply:train.secagg_setup``: during the key setup;
  ``reply:train``: during masked-input collection; ``reply:train.unmask``: during
  unmasking);
* ``round:<n>`` — :meth:`coordinator.loop.RoundLoop._round`, before round ``n`` looks
  at which silos are connected or sends anything: round ``n - 1`` is over and
  checkpointed (a test changes the federation between two rounds there);
* ``dealt`` — :meth:`coordinator.secure.SecureAggregation._deal`, in a round-keys run: the
  round's dealings are in, its mask requests not yet sent.

The test's side: :func:`wait_reached` returns the pid that blocked there; :func:`release`
lets it go on.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["ENV", "ENV_DIR", "armed", "marker", "reach", "release", "wait_reached"]

ENV = "XSILO_FAILPOINT"
ENV_DIR = "XSILO_FAILPOINT_DIR"


def armed(point: str) -> bool:
    """Whether ``point`` is armed in this process's environment (and not yet reached)."""
    names = os.environ.get(ENV, "")
    if not names or not os.environ.get(ENV_DIR):
        return False
    return point in {n.strip() for n in names.split(",")} and not marker(point).exists()


def marker(point: str, directory: str | Path | None = None) -> Path:
    """``<dir>/<point>.pid``: present once a process reached ``point``."""
    base = Path(directory if directory is not None else os.environ.get(ENV_DIR, "."))
    return base / (re.sub(r"[^A-Za-z0-9._-]", "_", point) + ".pid")


def reach(point: str) -> None:
    """Block here for good when ``point`` is armed and no process reached it before."""
    if not armed(point):
        return
    path = marker(point)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, path)  # exclusive: one process blocks, the others go on
    except FileExistsError:
        return
    finally:
        tmp.unlink(missing_ok=True)
    go = _go(path)
    while not go.exists():  # short sleeps: a signal still ends the process (SIGTERM, SIGKILL)
        time.sleep(0.05)


def release(point: str, directory: str | Path) -> None:
    """Let the process blocked at ``point`` (in ``directory``) go on."""
    _go(marker(point, directory)).touch()


def _go(path: Path) -> Path:
    return path.with_suffix(".go")


def wait_reached(point: str, directory: str | Path, *, timeout: float) -> int:
    """The pid of the process blocked at ``point`` (TimeoutError after ``timeout`` s)."""
    path = marker(point, directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise TimeoutError(f"no process reached failpoint {point!r} within {timeout:.0f} s")

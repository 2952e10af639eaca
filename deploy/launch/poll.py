"""When a SuperNode asks the SuperLink for its next message (pure logic, no Flower).

Flower 1.42's SuperNode asks, finds nothing and sleeps a fixed 3 s, so every message that
reaches a silo waits up to 3 s for its next look; a round trip of a round costs that twice
per silo and per message. The next message of a run is expected soon after the silo
answered one (the coordinator folds the others' replies and sends the next step), and
rarely otherwise. So: right after the silo answered, it looks again after ``fast`` seconds,
each further empty look waits ``growth`` times longer, up to Flower's own ``idle`` 3 s.

What it costs the SuperLink is bounded, per answer and in total. Per answer: at most
:meth:`AdaptivePoll.extra_polls` looks more than Flower's (about 16 with the defaults: 0.1 s,
×1.25); an idle silo asks every 3 s as before. In total: one SuperLink serves all the silos
of a federation (140–170 looks/s, one core, ``benchmarks/superlink_load.py``), so a silo
that knows the federation's size ``n`` never looks quicker than every ``n / budget``
seconds: all its silos together then look at most ``max(budget, n / idle)`` times a second
(``budget`` = 100 by default, half to 70 % of a core there), however many are in a round.
Up to ``budget · fast`` = 10 silos that changes nothing; from ``budget · idle`` = 300 silos
on it is Flower's own loop.

The size comes from the run: the silo's ClientApp writes the number of silos the
coordinator named (at join, and each round's participants) to the file named by
``XSILO_POLL_HINT``, which xsilo's SuperNode launcher sets (:func:`note_federation`), and
the SuperNode reads it at each answer (:func:`read_hint`). The number is the coordinator's,
unchecked; it only sets the pace, between Flower's 3 s and ``fast``: a coordinator that
lies slows its own rounds or loads its own SuperLink by at most what the quick look did
before it knew.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from xsilo.files import atomic_write

__all__ = ["AdaptivePoll", "BUDGET_ENV", "HINT_ENV", "MAX_SILOS", "note_federation",
           "read_hint"]

log = logging.getLogger(__name__)

HINT_ENV = "XSILO_POLL_HINT"  # the file a silo's ClientApp tells its SuperNode n through
BUDGET_ENV = "XSILO_POLL_BUDGET"  # looks/s a federation's quick looks may add in all
MAX_SILOS = 10_000_000  # a hint above this is nonsense, not a federation


@dataclass
class AdaptivePoll:
    """The wait before each empty look: ``quickest() · growth^k`` after the k-th empty look
    since the last answer, never above ``idle``; ``idle`` before the first answer.
    ``quickest()`` is ``fast``, or ``silos / budget`` where the federation is larger."""

    fast: float = 0.1
    growth: float = 1.25
    idle: float = 3.0
    budget: float = 100.0  # looks/s the quick looks of a whole federation may make
    silos: int = 1  # the federation's size, as the run last told it
    _empty: int | None = None  # empty looks since the last answer (None: none yet)

    def __post_init__(self) -> None:
        if not 0 < self.fast <= self.idle or self.growth <= 1 or not self.budget > 0:
            raise ValueError(f"need 0 < fast ≤ idle, growth > 1 and budget > 0, got "
                             f"fast={self.fast}, idle={self.idle}, growth={self.growth}, "
                             f"budget={self.budget}")

    def answered(self, silos: int | None = None) -> None:
        """The silo just pushed a reply: its next message is likely close. ``silos``: the
        federation's size, where the run named it."""
        if silos is not None and 1 <= silos <= MAX_SILOS:
            self.silos = silos
        self._empty = 0

    def quickest(self) -> float:
        """The shortest wait this silo makes: all ``silos`` at it look ≤ ``budget`` times a
        second (or at Flower's own rate, where that is more)."""
        return min(self.idle, max(self.fast, self.silos / self.budget))

    def next_wait(self) -> float:
        """Seconds to wait after an empty look (and count it)."""
        if self._empty is None:
            return self.idle
        wait = min(self.idle, self.quickest() * self.growth ** self._empty)
        self._empty = None if wait >= self.idle else self._empty + 1
        return wait

    def extra_polls(self) -> int:
        """How many looks per answer this makes beyond Flower's one per ``idle`` seconds."""
        k = math.ceil(math.log(self.idle / self.quickest(), self.growth))
        spent = sum(min(self.idle, self.quickest() * self.growth ** i) for i in range(k))
        return k - math.floor(spent / self.idle)


def note_federation(silos: int) -> None:
    """Tell this silo's SuperNode the federation's size (the ClientApp's side; nothing
    where no xsilo launcher set ``XSILO_POLL_HINT``: simulation, in process). Never fails:
    the pace is advisory, and the message is answered whatever happens here."""
    path = os.environ.get(HINT_ENV)
    if not path or not 1 <= silos <= MAX_SILOS:
        return
    try:  # the SuperNode reads the old number or the new one, never half of one
        atomic_write(path, f"{silos}\n", durable=False)
    except OSError as exc:
        log.debug("could not tell the SuperNode the federation's size: %s", exc)


def read_hint(path: Path | None) -> int | None:
    """The federation's size as the ClientApp last wrote it to ``path``; None where there
    is none yet or it is not a number of silos (a stranger's file)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            text = f.read(32)
    except OSError:
        return None
    try:
        silos = int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return silos if 1 <= silos <= MAX_SILOS else None

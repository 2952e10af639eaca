"""When a SuperNode asks the SuperLink for its next message (pure logic, no Flower).

Flower 1.42's SuperNode asks, finds nothing and sleeps a fixed 3 s, so every message that
reaches a silo waits up to 3 s for its next look; a round trip of a round costs that twice
per silo and per message. The next message of a run is expected soon after the silo
answered one (the coordinator folds the others' replies and sends the next step), and
rarely otherwise. So: right after the silo answered, it looks again after ``fast`` seconds,
each further empty look waits ``growth`` times longer, up to Flower's own ``idle`` 3 s.

What it costs the SuperLink is bounded: per answer, at most :meth:`AdaptivePoll.extra_polls`
looks more than Flower's (about 16 with the defaults: 0.1 s, ×1.25), whatever the number
of silos; an idle silo asks every 3 s as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AdaptivePoll"]


@dataclass
class AdaptivePoll:
    """The wait before each empty look: ``fast · growth^k`` after the k-th empty look since
    the last answer, never above ``idle``; ``idle`` before the first answer."""

    fast: float = 0.1
    growth: float = 1.25
    idle: float = 3.0
    _empty: int | None = None  # empty looks since the last answer (None: none yet)

    def __post_init__(self) -> None:
        if not 0 < self.fast <= self.idle or self.growth <= 1:
            raise ValueError(f"need 0 < fast ≤ idle and growth > 1, got fast={self.fast}, "
                             f"idle={self.idle}, growth={self.growth}")

    def answered(self) -> None:
        """The silo just pushed a reply: its next message is likely close."""
        self._empty = 0

    def next_wait(self) -> float:
        """Seconds to wait after an empty look (and count it)."""
        if self._empty is None:
            return self.idle
        wait = min(self.idle, self.fast * self.growth ** self._empty)
        self._empty = None if wait >= self.idle else self._empty + 1
        return wait

    def extra_polls(self) -> int:
        """How many looks per answer this makes beyond Flower's one per ``idle`` seconds."""
        k = math.ceil(math.log(self.idle / self.fast, self.growth))
        spent = sum(min(self.idle, self.fast * self.growth ** i) for i in range(k))
        return k - math.floor(spent / self.idle)

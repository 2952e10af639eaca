"""Following a file that another process appends to (a log, the egress ledger)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["Tail"]


class Tail:
    """The complete lines appended to ``path`` since the last look.

    It starts where the file ends now (``from_start=False``) or at its beginning. A line
    still being written (no newline yet) waits for the next look; a file replaced by a
    shorter one (rotated, recreated) is read again from its start. A missing or unreadable
    file has no new lines.
    """

    def __init__(self, path: str | Path, *, from_start: bool = False) -> None:
        self.path = Path(path)
        self._offset = 0
        if not from_start and self.path.exists():
            self._offset = self.path.stat().st_size

    def lines(self) -> list[bytes]:
        try:
            with self.path.open("rb") as fh:
                if fh.seek(0, 2) < self._offset:
                    self._offset = 0
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        return data[:end].splitlines()

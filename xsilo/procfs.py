"""Reading a process's ``/proc/PID/stat`` (Linux): its state, parent and start time.

The command name (field 2) is in parentheses and may itself hold spaces and parentheses, so
the fields are split after the *last* ``)``. A process is known by its pid *and* start time
(clock ticks after boot): the kernel reuses pids.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROC", "is_finished", "parent_pid", "start_time", "stat_fields"]

PROC = Path("/proc")


def stat_fields(pid: int | str, proc: Path = PROC) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the name (``[0]`` is the state, ``[1]`` the
    parent pid, ``[19]`` the start time); None when there is no such process (or no /proc)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def start_time(pid: int | str, proc: Path = PROC) -> int | None:
    """Start time of ``pid`` in clock ticks after boot; None if it is gone."""
    fields = stat_fields(pid, proc)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def parent_pid(pid: int | str, proc: Path = PROC) -> int | None:
    """The parent of ``pid``; None if it is gone."""
    fields = stat_fields(pid, proc)
    return int(fields[1]) if fields is not None and len(fields) > 1 else None


def is_finished(pid: int | str, proc: Path = PROC) -> bool:
    """Whether ``pid`` no longer runs: gone, or a zombie (or dead) not yet reaped."""
    fields = stat_fields(pid, proc)
    return fields is None or not fields or fields[0] in ("Z", "X")

"""xsilo.procfs: /proc/PID/stat read after the last ')' (names with spaces and parentheses),
a gone process, a zombie; and the live process itself."""

from __future__ import annotations

import os
from pathlib import Path

from xsilo.procfs import is_finished, parent_pid, start_time, stat_fields


def _fake(proc: Path, pid: int, name: str, state: str, ppid: int, start: int) -> None:
    (proc / str(pid)).mkdir(parents=True)
    rest = [state, str(ppid), *["0"] * 17, str(start), "0"]
    (proc / str(pid) / "stat").write_text(f"{pid} ({name}) {' '.join(rest)}\n")


def test_fields_after_the_last_parenthesis(tmp_path: Path) -> None:
    _fake(tmp_path, 7, "nginx: worker ) (x", "S", 3, 12345)
    assert stat_fields(7, tmp_path)[:2] == ["S", "3"]
    assert start_time(7, tmp_path) == 12345 and parent_pid(7, tmp_path) == 3
    assert not is_finished(7, tmp_path)


def test_a_zombie_or_a_gone_process_is_finished(tmp_path: Path) -> None:
    _fake(tmp_path, 8, "z", "Z", 1, 5)
    assert is_finished(8, tmp_path) and is_finished(9, tmp_path)
    assert stat_fields(9, tmp_path) is None and start_time(9, tmp_path) is None
    assert parent_pid(9, tmp_path) is None


def test_this_process() -> None:
    assert parent_pid(os.getpid()) == os.getppid()
    assert start_time(os.getpid()) == start_time(os.getpid()) is not None
    assert not is_finished(os.getpid())

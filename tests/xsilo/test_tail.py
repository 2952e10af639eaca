"""xsilo.tail.Tail: complete appended lines only, from where the file stood, again from the
start when the file was replaced by a shorter one, nothing for a missing file."""

from __future__ import annotations

from pathlib import Path

from xsilo.tail import Tail


def test_complete_lines_appended_since_the_last_look(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"before\n")
    tail = Tail(log)
    assert tail.lines() == []
    with log.open("ab") as fh:
        fh.write(b"one\ntw")
    assert tail.lines() == [b"one"]  # "tw" is still being written
    with log.open("ab") as fh:
        fh.write(b"o\nthree\n")
    assert tail.lines() == [b"two", b"three"]
    assert Tail(log, from_start=True).lines() == [b"before", b"one", b"two", b"three"]


def test_a_replaced_shorter_file_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"a long first line\n")
    tail = Tail(log)
    log.write_bytes(b"new\n")
    assert tail.lines() == [b"new"]


def test_a_missing_file_has_no_lines_until_it_appears(tmp_path: Path) -> None:
    tail = Tail(tmp_path / "log")
    assert tail.lines() == []
    (tmp_path / "log").write_bytes(b"first\n")
    assert tail.lines() == [b"first"]

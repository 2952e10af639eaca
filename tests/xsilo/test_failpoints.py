"""xsilo.failpoints: inert unless armed; armed, it stops the first process that gets there
(and only that one) until it is killed or released, and a writer stopped inside atomic_write leaves the target as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xsilo.failpoints import ENV, ENV_DIR, armed, marker, reach, release, wait_reached
from xsilo.files import atomic_write

ROOT = Path(__file__).resolve().parents[2]


def _child(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env},
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_inert_unless_both_variables_are_set(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    reach("checkpoint-write")  # returns at once
    assert not armed("checkpoint-write")
    monkeypatch.setenv(ENV, "checkpoint-write")
    monkeypatch.delenv(ENV_DIR)
    assert not armed("checkpoint-write")
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    assert armed("checkpoint-write") and not armed("reply:train")
    atomic_write(tmp_path / "f", b"data")  # no failpoint named: never stops
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]


def test_the_first_process_stops_there_and_the_next_goes_on(tmp_path: Path) -> None:
    env = {ENV: "reply:train.unmask, other", ENV_DIR: str(tmp_path)}
    code = "from xsilo.failpoints import reach; reach('reply:train.unmask'); print('passed')"
    first = _child(code, env)
    try:
        assert wait_reached("reply:train.unmask", tmp_path, timeout=30) == first.pid
        assert first.poll() is None  # blocked, until killed
        second = _child(code, env)
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 0 and out.strip() == "passed"
        assert first.poll() is None
    finally:
        _kill(first)
    assert marker("reply:train.unmask", tmp_path).name == "reply_train.unmask.pid"
    with pytest.raises(TimeoutError, match="'other'"):
        wait_reached("other", tmp_path, timeout=0.1)


def test_a_released_process_goes_on_from_where_it_stood(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {ENV: "dealt", ENV_DIR: str(tmp_path)}
    code = ("from xsilo.failpoints import reach; print('before', flush=True); reach('dealt'); "
            "print('after')")
    blocked = _child(code, env)
    try:
        assert wait_reached("dealt", tmp_path, timeout=30) == blocked.pid
        assert blocked.stdout is not None and blocked.stdout.readline().strip() == "before"
        with pytest.raises(subprocess.TimeoutExpired):
            blocked.wait(timeout=0.5)  # still standing there
        release("dealt", tmp_path)
        out, _ = blocked.communicate(timeout=30)
    finally:
        if blocked.poll() is None:
            _kill(blocked)
    assert blocked.returncode == 0 and out.strip() == "after"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not armed("dealt")  # reached once: every later pass goes on
    reach("dealt")


def test_a_writer_killed_at_the_checkpoint_failpoint_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "round-0001.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    env = {ENV: "checkpoint-write", ENV_DIR: str(tmp_path)}
    code = (f"from xsilo.files import atomic_write; atomic_write({str(target)!r}, b'x' * 1000, "
            "failpoint='checkpoint-write')")
    writer = _child(code, env)
    try:
        wait_reached("checkpoint-write", tmp_path, timeout=30)
    finally:
        _kill(writer)
    assert target.read_bytes() == b"old"
    torn = list(target.parent.glob(".round-0001.npz.*.tmp"))
    assert len(torn) == 1 and torn[0].read_bytes() == b"x" * 500  # half of it


def test_the_e2e_helper_acts_while_the_point_holds_then_releases_even_when_the_action_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/e2e/_kills.while_standing_at: the action runs while the run stands at the
    point; the run is let go whatever the action did, and the test then fails with it."""
    from tests.e2e._kills import while_standing_at

    monkeypatch.setenv(ENV, "round:2,round:3")
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    seen: list[bool] = []
    with while_standing_at("round:2", tmp_path,
                           lambda: seen.append(marker("round:2", tmp_path).exists()), timeout=10):
        reach("round:2")  # stands here until the helper releases it
    assert seen == [True]

    def broken() -> None:
        raise RuntimeError("the restart failed")

    with pytest.raises(AssertionError, match=r"stood at round:3.*the restart failed"):
        with while_standing_at("round:3", tmp_path, broken, timeout=10):
            reach("round:3")  # released all the same: this returns

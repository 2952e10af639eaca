"""xsilo.files: the one atomic writer and the one TOML reader."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xsilo.errors import ConfigError
from xsilo.files import atomic_write, read_toml


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_creates_parents_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "secret.key"
    atomic_write(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one" and _mode(target) == 0o600
    atomic_write(target, "twö")  # text is UTF-8; the default mode is 0644
    assert target.read_text(encoding="utf-8") == "twö" and _mode(target) == 0o644
    atomic_write(target, "three", durable=False)
    assert target.read_text() == "three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret.key"]  # no temp left


def test_a_secret_is_never_readable_by_others_while_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_replace = os.replace

    def replace(src: str, dst: object) -> None:  # the temp file, just before the rename
        seen.append(_mode(Path(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "k", b"x", mode=0o600)
    assert seen == [0o600]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    atomic_write(target, "old")

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_read_toml_names_the_file_and_the_problem(tmp_path: Path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text('[run]\nname = "x"\n')
    assert read_toml(good, what="run configuration") == {"run": {"name": "x"}}
    with pytest.raises(ConfigError, match=r"run configuration .*nope\.toml does not exist"):
        read_toml(tmp_path / "nope.toml", what="run configuration")
    with pytest.raises(ConfigError, match="^create it with xsilo init$"):
        read_toml(tmp_path / "nope.toml", what="x", missing="create it with xsilo init")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match=r"site policy .*bad\.toml is not valid TOML \(.*line 1"):
        read_toml(bad, what="site policy")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot be read.*UTF-8"):
        read_toml(binary, what="site policy")

"""Files every package writes and reads: one atomic writer, one TOML reader.

:func:`atomic_write` is the only way xsilo replaces a file: a fresh temporary file in the
same directory (created 0600 by ``mkstemp``, then given ``mode``), written, flushed and
fsync-ed, renamed over the target with ``os.replace``, and the directory fsync-ed so the
rename itself survives a crash. A reader sees the old file or the new one, never half of
one; a failure removes the temporary file and leaves the target as it was. ``durable=False``
skips both fsyncs, for files whose loss costs time, not correctness. ``failpoint`` names a
:mod:`xsilo.failpoints` point reached with half of the data in the temporary file (tests
kill a writer there: the target must stay as it was).

:func:`read_toml` reads a TOML file into a dict; a missing or malformed file is a
:class:`~xsilo.errors.ConfigError` that names the file, what it is and the fix.
"""

from __future__ import annotations

import hashlib

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from xsilo.errors import ConfigError
from xsilo.failpoints import reach

__all__ = ["atomic_write", "hashed_name", "read_toml"]


def atomic_write(path: str | Path, data: str | bytes, *, mode: int = 0o644,
                 durable: bool = True, failpoint: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring).

    ``mode`` is the new file's permission bits (0600 for anything secret: the file never
    exists with wider ones). Text is written as UTF-8. The parent directory is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            view = memoryview(payload)  # slices without copies
            half = len(view) // 2 if failpoint is not None else len(view)
            fh.write(view[:half])
            if failpoint is not None:
                fh.flush()
                reach(failpoint)  # inert unless a test armed it
            fh.write(view[half:])
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def hashed_name(text: str) -> str:
    """A file name for text a peer chose (a run token): the first 32 hex digits of its
    SHA-256, so no character of it (a slash, ``..``, a NUL) reaches a path."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def read_toml(path: str | Path, *, what: str, missing: str | None = None) -> dict[str, Any]:
    """The parsed TOML document at ``path``; ``what`` names it in errors (e.g. "site policy").

    ``missing`` replaces the whole "does not exist" message (to say how to create the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(missing or f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML ({exc}); fix the line it "
                          "names") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc}); check its permissions and "
                          "that it is UTF-8 text") from exc

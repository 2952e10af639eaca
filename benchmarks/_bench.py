"""What the benchmark scripts share: each case in a fresh subprocess that prints one
``RESULT {json}`` line, the commit that was measured, and their sections of RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
_TAG = "RESULT "


def emit(result: Any) -> None:
    """The child's side: print its one result line."""
    print(_TAG + json.dumps(result), flush=True)


def child_env(*paths: str | Path, **extra: str) -> dict[str, str]:
    """This environment, with the repository (and ``paths``) importable, Flower's telemetry
    and update check off, and ``extra`` set."""
    pythonpath = [str(ROOT), *map(str, paths), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONPATH": os.pathsep.join(pythonpath), **extra}


def run_child(argv: list[str], *, env: dict[str, str], timeout: float | None = None) -> dict:
    """Run ``python argv`` and return its result, or ``{"error": why}`` (over ``timeout``,
    a non-zero exit or no result line: the last line of its stderr)."""
    try:
        proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over the {timeout:g} s limit"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300],
                "stderr": proc.stderr[-3000:]}
    return json.loads(lines[-1][len(_TAG):])


def proc_status_kib(pid: int | str, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``: peak resident memory, ``VmRSS``:
    resident now); 0 when the process is gone or has no such field."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files): what
    was measured."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def save_raw(out: Path, script: str, **data: Any) -> dict[str, str]:
    """Write ``{"meta": …, **data}`` to ``out`` (a benchmark's raw rows) and return the
    meta: commit, date, and the command that ran (``.venv/bin/python script args``)."""
    meta = {"commit": commit(), "argv": sys.argv[1:],
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "command": " ".join([".venv/bin/python", script, *sys.argv[1:]])}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"meta": meta, **data}, indent=1) + "\n")
    return meta


def replace_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Put ``body`` (which starts with ``heading``) in place of the section ``heading`` of
    ``path`` (up to the next ``## ``), or at the end if there is none."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    body = body.rstrip("\n") + "\n"
    if heading in text:
        head, _, rest = text.partition(heading)
        nxt = rest.find("\n## ")
        text = head + body + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text, encoding="utf-8")

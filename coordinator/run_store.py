"""The run directory: configuration, per-round metrics, checkpoints, final model, summary.

Layout::

    RUN_DIR/
      config.toml             the exact configuration used (written before the run starts)
      metrics.jsonl           one JSON object per event (round, failure, final), appended
      checkpoints/round-0003.npz  global model + strategy state after each round
      model.npz               the final global model
      summary.json            status, rounds completed/failed, final metrics, the error
      coordinator.log         the ServerApp's log (every attempt, appended)
      serverapp.json          which process runs (or ran) the coordinator: pid, start time
      serverapp.lock          flock-ed by the process that runs it (RunStore.exclusive)
      resume.json             present between ``coordinator run --resume`` and the ServerApp
                              taking it up

Every file that replaces an earlier version is written to a temporary name, fsync-ed and
renamed, so a crash leaves either the old or the new file, never a torn one (the torn
temporary, ``.NAME.*.tmp``, is never read; a resume removes it). A checkpoint
also carries the SHA-256 of its own arrays (:mod:`coordinator.checkpoints`): one that was
damaged anyway (a copy cut short, a bad disk, a hand edit: a round, loop state or model that
no run writes) is detected on load and skipped for the one before it. A line of ``metrics.jsonl`` torn by a
crash is skipped, and the next event starts on a line of its own.

A run directory *holds a run* once ``metrics.jsonl`` exists (the ServerApp started it);
one that holds only a refused or failed start (``config.toml``, ``summary.json``) can be
reused by the next attempt under the same name.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from coordinator.checkpoints import (Checkpoint, arrays_digest, checkpoint_bytes,
                                     checkpoint_files, load_npz, npz_bytes, read_checkpoint)
from xsilo.errors import ConfigError, DeploymentError
from xsilo.files import atomic_write
from xsilo.procfs import stat_fields

__all__ = ["Checkpoint", "RunStore", "arrays_digest", "load_npz", "strict_json"]

log = logging.getLogger(__name__)

OWNER_FILE = "serverapp.json"
ENROLLED_FILE = "enrolled.json"
RESUME_FILE = "resume.json"
LOCK_FILE = "serverapp.lock"  # flock-ed by the process that runs the run (RunStore.exclusive)
_MAX_PID = 2**22  # Linux's highest pid_max; a recorded pid of 0 or -1 would mean every process
LOG_FILE = "coordinator.log"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is none (or
    ``pid`` names no single process: 0 and -1 mean groups of processes to ``kill``)."""
    if type(pid) is not int or not 0 < pid <= _MAX_PID:
        return None
    fields = stat_fields(pid)
    if fields is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"  # no /proc: alive, start time unknown
    if fields and fields[0] == "Z":
        return None  # a zombie has finished
    return fields[19] if len(fields) > 19 else "?"


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir)
        self.checkpoints = self.path / "checkpoints"
        self.skipped_lines = 0  # lines of metrics.jsonl that events() could not read

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def started(self) -> bool:
        """Whether this directory holds a run (its ServerApp started it)."""
        return self.metrics_path.exists()

    def prepare(self, *, resume: bool = False) -> None:
        """Create the directory tree. A new run: the directory must not hold another run's
        metrics (a refused or failed start's summary is dropped). ``resume``: continue the
        run it holds."""
        if self.metrics_path.exists() and not resume:
            raise ConfigError(
                f"run directory {self.path} already holds a run (metrics.jsonl exists); "
                "choose a new run name or directory, or continue it with "
                f"`xsilo coordinator run --resume {self.path.name}`"
            )
        try:
            if not self.metrics_path.exists():
                (self.path / "summary.json").unlink(missing_ok=True)  # a refused start's
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"run directory {self.path} cannot hold a run: "
                              f"{exc.filename}: {exc.strerror or exc}; remove what is in the "
                              "way, or restore the directory from a backup") from exc

    # -- who runs it, and resume requests ----------------------------------------------
    def claim(self, pid: int | None = None) -> None:
        """Record that process ``pid`` (default: this one) runs the coordinator of this run."""
        pid = os.getpid() if pid is None else pid
        try:
            atomic_write(self.path / OWNER_FILE, json.dumps(
                {"pid": pid, "start": _process_start(pid), "since": time.time()},
                sort_keys=True))
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path / OWNER_FILE}: {exc.strerror or exc}; "
                              "remove what is in the way") from exc

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this run directory for this process while the block lasts: an exclusive
        ``flock`` on :data:`LOCK_FILE`, which the kernel drops when the process ends, however
        it ends. A second ServerApp started on the run meanwhile (two ``--resume`` at once)
        gets a DeploymentError before it reads or writes anything of the run."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open {self.path / LOCK_FILE}: {exc.strerror}; the run "
                              "directory must be writable by the coordinator's account") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DeploymentError(
                f"run {self.path.name} is being run by another process (it holds "
                f"{LOCK_FILE}); wait for it to end (or stop it: `flwr stop`), then resume"
            ) from None
        try:
            yield
        finally:
            os.close(fd)

    def owner(self) -> int | None:
        """The pid of the process that runs this run's coordinator, if it still lives (a
        damaged record names none)."""
        try:
            data = json.loads((self.path / OWNER_FILE).read_text())
            pid, start = data["pid"], data.get("start")
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None
        if type(pid) is not int or not 0 < pid <= _MAX_PID or not (
                start is None or isinstance(start, str)):
            return None
        now = _process_start(pid)
        if now is None or (start not in (None, "?") and now not in ("?", start)):
            return None  # gone, or the pid now belongs to another process
        return pid

    def orphaned_owner(self) -> int | None:
        """The pid of this run's ServerApp when it still lives although the Flower process
        that started it (its ``--parent-pid``, a SuperExec) is gone; None otherwise."""
        pid = self.owner()
        if pid is None:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(argv[argv.index(b"--parent-pid") + 1])
        except (OSError, ValueError, IndexError):
            return None  # not started by a SuperExec (or no /proc): not ours to judge
        return pid if _process_start(parent) is None else None

    def recorded_owner_record(self) -> str | None:
        """``serverapp.json`` as it stands (None: never claimed); it changes when another
        ServerApp claims the run."""
        try:
            return (self.path / OWNER_FILE).read_text()
        except OSError:
            return None

    def request_resume(self, **details: Any) -> None:
        """Ask the next ServerApp started on this directory to continue its run."""
        atomic_write(self.path / RESUME_FILE,
                     json.dumps({"requested": time.time(), **details}, sort_keys=True))

    def take_resume_request(self) -> dict[str, Any] | None:
        """The pending resume request (removed as it is taken), or None."""
        path = self.path / RESUME_FILE
        try:
            request = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        path.unlink(missing_ok=True)
        return request if isinstance(request, dict) else {}

    def append_event(self, event: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsync-ed); a non-finite
        number is written as null (the file stays strict JSON)."""
        line = json.dumps(strict_json({"time": time.time(), **event}), sort_keys=True,
                          allow_nan=False) + "\n"
        with open(self.metrics_path, "ab+") as fh:
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a line torn by a crash: never glue onto it
                    line = "\n" + line
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every event written so far, in order; a line that is not a JSON object (torn by
        a crash mid-write, or edited) is skipped and counted in :attr:`skipped_lines`."""
        if not self.metrics_path.exists():
            return []
        out, skipped = [], 0
        try:
            with open(self.metrics_path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        event = json.loads(line) if line.strip() else None
                    except (ValueError, RecursionError):
                        event = None
                    if isinstance(event, dict):
                        out.append(event)
                    elif line.strip():
                        skipped += 1
        except OSError as exc:
            raise ConfigError(f"cannot read {self.metrics_path}: {exc.strerror or exc}; it is "
                              "the run's record of events: restore it from a backup") from exc
        if skipped and skipped != self.skipped_lines:  # once per change, not per poll
            log.warning("%s: %d line(s) skipped that are not a JSON object (torn by a crash "
                        "mid-write, or edited by hand)", self.metrics_path, skipped)
        self.skipped_lines = skipped
        return out

    def save_checkpoint(self, server_round: int, model: Mapping[str, np.ndarray],
                        strategy_state: Mapping[str, np.ndarray],
                        meta: Mapping[str, Any] | None = None) -> Path:
        """Write the global model and strategy state after ``server_round`` (atomically,
        with its SHA-256); ``meta`` is the round loop's own JSON state for a resume."""
        path = self.checkpoints / f"round-{server_round:04d}.npz"
        atomic_write(path, checkpoint_bytes(server_round, model, strategy_state, meta),
                     failpoint="checkpoint-write")
        return path

    def load_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; newer ones that do not are skipped (and
        named in :attr:`Checkpoint.skipped`, and logged). None when none verifies."""
        skipped: dict[str, str] = {}
        for named, path in reversed(checkpoint_files(self.checkpoints)):
            try:
                found = read_checkpoint(path, named)
            except ValueError as exc:
                log.warning("checkpoint %s skipped: %s", path, exc)
                skipped[path.name] = str(exc)
                continue
            return Checkpoint(found.server_round, found.model, found.state, found.meta, skipped)
        return None

    def discard_temporaries(self) -> list[str]:
        """Remove what a writer killed mid-write left (the temporary files of atomic writes,
        ``.NAME.*.tmp``, in the run directory and ``checkpoints/``; nothing reads them) and
        return their names. Only while no process runs the run (a resume, before it starts)."""
        found = []
        for folder in (self.path, self.checkpoints):
            for tmp in sorted(folder.glob(".*.tmp")):
                tmp.unlink(missing_ok=True)
                found.append(str(tmp.relative_to(self.path)))
        if found:
            log.warning("removed %d file(s) a killed writer left half-written: %s",
                        len(found), ", ".join(found))
        return found

    def verify_checkpoints(self) -> dict[str, str]:
        """Every checkpoint file that does not verify → why (empty: all are sound)."""
        bad: dict[str, str] = {}
        for named, path in checkpoint_files(self.checkpoints):
            try:
                read_checkpoint(path, named)
            except ValueError as exc:
                bad[path.name] = str(exc)
        return bad

    def latest_checkpoint(self) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(round, model, strategy_state) of the newest checkpoint that verifies, or None."""
        found = self.load_checkpoint()
        return None if found is None else (found.server_round, found.model, found.state)

    def save_model(self, model: Mapping[str, np.ndarray]) -> Path:
        """Write the final global model to ``model.npz``."""
        path = self.path / "model.npz"
        atomic_write(path, npz_bytes(model))
        return path

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` atomically (strict JSON: a non-finite number is null)."""
        atomic_write(self.path / "summary.json", json.dumps(
            strict_json(summary), indent=2, sort_keys=True, allow_nan=False).encode())

    def flower_runs(self) -> list[int | None]:
        """The Flower run id of each attempt that started the run (its ``start`` events, in
        order; None where one is not an integer)."""
        return [e.get("flower_run_id") if isinstance(e.get("flower_run_id"), int) else None
                for e in self.events() if e.get("event") == "start"]

    def ended(self) -> str | None:
        """``"completed"`` or ``"stopped"`` when ``summary.json`` says the run ended so (a run
        that failed can be resumed); None otherwise."""
        status = (self.summary() or {}).get("status")
        return status if status in ("completed", "stopped") else None

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` (None: the run has none yet); ConfigError when it is damaged."""
        return _json_object(self.path / "summary.json", "it is written whole or not at all, "
                            "so it was damaged afterwards: restore it from a backup, or "
                            "remove it")

    def write_enrolled(self, node_ids: Mapping[str, int]) -> None:
        """``enrolled.json``: the node id of each silo the coordinator home enrolled, as the
        run is started or resumed (none: the file is removed). The round loop refuses a node
        that joins under another name than the one it was enrolled with."""
        path = self.path / ENROLLED_FILE
        if not node_ids:
            path.unlink(missing_ok=True)
            return
        atomic_write(path, json.dumps({str(n): int(i) for n, i in sorted(node_ids.items())},
                                      indent=2).encode())

    def enrolled(self) -> dict[str, int] | None:
        """``enrolled.json`` (None: no enrolment is known, e.g. an in-process run);
        ConfigError when it is damaged."""
        path = self.path / ENROLLED_FILE
        fix = "resume the run (`xsilo coordinator run --resume`), which writes it again"
        data = _json_object(path, fix)
        if data is not None and not all(type(v) is int for v in data.values()):
            raise ConfigError(f"{path} is not a JSON object of silo name → node id; {fix}")
        return data

    def clear_summary(self) -> bytes | None:
        """Drop ``summary.json`` (a resumed run writes its own; its end events stay in
        ``metrics.jsonl``); return what it held (None: there was none)."""
        path = self.path / "summary.json"
        try:
            before = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        path.unlink(missing_ok=True)
        return before


def _json_object(path: Path, fix: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None: no such file); ConfigError naming the file and
    ``fix`` when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not the object a run "
                          f"writes; {fix}")
    return data


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value

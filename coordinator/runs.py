"""Start and resume runs on a running coordinator: run directory, config file, ``flwr run``.

Nothing reaches the SuperLink before the whole configuration passed the coordinator's own
checks (:func:`coordinator.preflight.check_run`, :func:`prepare_run`). A start that fails —
refused, or the SuperLink unreachable — leaves a ``summary.json`` that says why, in a
directory the next attempt under the same name may use (:func:`new_run_dir`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.config import RunConfig, load_run_config, write_run_config
from coordinator.outcome import start_summary
from coordinator.preflight import check_run
from coordinator.registrations import enrolled_node_ids
from coordinator.run_store import RESUME_FILE, RunStore
from deploy.launch.fab import XSILO_APP
from deploy.launch.processes import FlowerCLI
from xsilo.errors import ConfigError, DeploymentError, XsiloError
from xsilo.files import atomic_write

__all__ = ["APP_DIR", "end_serverapps", "live_serverapps", "new_run_dir", "prepare_run",
           "resume_run", "stop_orphaned_runs", "submit_run"]

log = logging.getLogger(__name__)

# The thin app `flwr run` ships: its components are the installed coordinator and silo.
# It lives in deploy/ because the silos build it too: by default they run no other app.
APP_DIR = XSILO_APP
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def new_run_dir(runs_root: Path, name: str | None) -> Path:
    """A run directory under ``runs_root`` (``<name>`` or a timestamp) for a new run: fresh,
    or one left by a start that never ran (its ``summary.json`` says why), which is reused."""
    name = name or time.strftime("run-%Y%m%d-%H%M%S")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"run name {name!r} must be 1–64 letters, digits, '.', '_' or '-'")
    path = Path(runs_root) / name
    store = RunStore(path)
    if store.started:
        raise ConfigError(f"run directory {path} already holds a run; choose another --name, "
                          f"or continue it with `xsilo coordinator run --resume {name}`")
    if path.exists():  # a refused or failed start: nothing of it may confuse this one
        store.clear_summary()
        for leftover in (RESUME_FILE, "config.toml"):
            (path / leftover).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_run(run_dir: Path, values: Mapping[str, Any]) -> RunConfig:
    """Validate the run settings ``values`` completely (:func:`check_run`) and write
    ``config.toml``; a refusal is written to ``summary.json`` (status ``refused``) and
    raised, and the directory does not hold a run."""
    try:
        config = RunConfig.from_mapping(values)
        check_run(config)
    except XsiloError as exc:
        RunStore(run_dir).write_summary(start_summary(
            "refused", exc, strategy=values.get("strategy"),
            rounds_requested=values.get("num_rounds")))
        raise
    write_run_config(Path(run_dir) / "config.toml", config)
    return config


def submit_run(cli: FlowerCLI, run_dir: Path, config: RunConfig) -> tuple[int, RunStore]:
    """Write ``config.toml`` into ``run_dir`` and start the run; return (run id, store).
    A SuperLink that cannot take the run: DeploymentError, also in ``summary.json``."""
    write_run_config(run_dir / "config.toml", config)
    return _submit(cli, RunStore(run_dir), config)


def _submit(cli: FlowerCLI, store: RunStore, config: RunConfig) -> tuple[int, RunStore]:
    store.write_enrolled(enrolled_node_ids(cli.flwr_home))  # who may join under which name
    try:
        run_id = cli.submit(APP_DIR, {"run-dir": str(store.path.resolve())})
    except DeploymentError as exc:
        said = " ".join(str(exc).split())  # flwr's own output spans lines
        error = DeploymentError(
            f"run {store.path.name} was not started: {said}; is the coordinator running "
            "(`xsilo coordinator start`)? Nothing of this attempt blocks the next one")
        if not store.started:
            store.write_summary(start_summary("failed", error, strategy=config.strategy,
                                              rounds_requested=config.num_rounds))
        raise error from exc
    return run_id, store


def resume_run(cli: FlowerCLI, run_dir: Path) -> tuple[int, RunStore]:
    """Continue the run in ``run_dir`` from its last complete round (a new Flower run on
    the same run directory: :mod:`coordinator.resume`); return (Flower run id, store).

    Refused when the run completed or stopped, never started, or is still being run by a
    live ServerApp. A previous Flower run of it that Flower still counts as running (its
    ServerApp was killed) is stopped first.
    """
    store = RunStore(run_dir)
    name = store.path.name
    if not (store.path / "config.toml").is_file():
        raise ConfigError(f"{store.path} holds no run configuration (config.toml): not a run "
                          "directory, or a name typo; `ls` the coordinator home's runs/")
    if not store.started:
        raise ConfigError(f"run {name} never started (no metrics.jsonl), so there is nothing "
                          f"to resume; start it with `xsilo coordinator run --name {name}`")
    ended = store.ended()
    if ended is not None:
        raise ConfigError(f"run {name} already {ended}; nothing to resume (start "
                          "a new run under another --name)")
    # Read before the owner check: a ServerApp claims the run before it records its start,
    # so a Flower run read here is never one that another `--resume` started meanwhile
    # (stopping it below would run its rounds twice).
    previous = _last_flower_run(store)
    owner = store.owner()
    if owner is not None:
        raise DeploymentError(f"run {name} is still running (its ServerApp is process "
                              f"{owner}); follow it with `xsilo coordinator status {store.path}`")
    config = load_run_config(store.path)
    check_run(config)  # e.g. a strategy plugin uninstalled since: refused here, not later
    if previous is not None:
        try:
            if not cli.status(previous).startswith("finished"):
                cli.stop_run(previous)  # its ServerApp is gone; Flower need not wait for it
        except DeploymentError:
            pass  # e.g. a restarted SuperLink that no longer knows it
    before = store.clear_summary()  # the new attempt's end is watched for by its summary
    store.request_resume(previous_flower_run=previous)
    try:
        return _submit(cli, store, config)
    except DeploymentError:  # nothing started: the run stays as it was
        (store.path / RESUME_FILE).unlink(missing_ok=True)
        if before is not None:
            atomic_write(store.path / "summary.json", before)
        raise


def stop_orphaned_runs(cli: FlowerCLI, runs_root: Path) -> list[str]:
    """Stop each Flower run that the SuperLink's database still counts as running although
    its ServerApp is gone (the coordinator crashed or was stopped mid-run); return what was
    done, one line per run, for the operator.

    Called at coordinator start before silos can reach the SuperLink: its database still
    holds that run's undelivered instructions, and a SuperNode that takes one while the run
    is running, then sees the run stop before it confirmed receipt, keeps the ClientApp's
    answer and sends it in place of its next reply (Flower 1.42, ``flwr.supernode``), so it
    stays silent in the resumed run. Once the run is stopped such an instruction is refused
    before its content is sent. The run itself continues with ``--resume``.
    """
    done = []
    for run_dir in sorted(p for p in Path(runs_root).glob("*") if p.is_dir()):
        store = RunStore(run_dir)
        if not store.started or store.owner() is not None:
            continue
        try:
            if store.summary() is not None:
                continue
        except ConfigError as exc:  # one damaged run never keeps the coordinator down
            done.append(f"run {run_dir.name} skipped: {exc}")
            continue
        flower_run = _last_flower_run(store)
        if flower_run is None or cli.status(flower_run) != "running":
            continue
        cli.stop_run(flower_run)
        done.append(f"run {run_dir.name} stopped when its ServerApp did (Flower run "
                    f"{flower_run} stopped now); continue it with `xsilo coordinator run "
                    f"--resume {run_dir.name}`")
    return done


def live_serverapps(runs_root: Path, *, orphans_only: bool = False) -> dict[str, int]:
    """Run name → pid of the ServerApp that runs it, for every run under ``runs_root`` whose
    ServerApp lives; ``orphans_only``: only those whose SuperExec is gone.

    Flower means a ServerApp to end when its SuperExec does, and that when its SuperLink
    does, but the ServerApp's watchdog signals its own thread (Flower 1.42,
    ``start_parent_process_monitor``): one whose main thread waits on a request to the gone
    SuperLink — Flower retries those until the SuperLink is back — never ends. It keeps its
    run claimed (``--resume`` is refused) and sends that run's stale messages as soon as a
    SuperLink answers on the same address again.
    """
    found = {}
    for run_dir in sorted(p for p in Path(runs_root).glob("*") if p.is_dir()):
        store = RunStore(run_dir)
        pid = store.orphaned_owner() if orphans_only else store.owner()
        if pid is not None and pid != os.getpid():
            found[run_dir.name] = pid
    return found


def end_serverapps(runs_root: Path, serverapps: Mapping[str, int], *,
                   timeout: float = 5.0) -> list[str]:
    """SIGKILL each of ``serverapps`` (:func:`live_serverapps`) that still runs its run —
    what a crash would do: every checkpoint is whole or absent, and the run resumes from
    the last — and wait until it is gone; return one line per run left without an end
    (no ``summary.json``), for the operator."""
    lines = []
    for name, pid in sorted(serverapps.items()):
        store = RunStore(Path(runs_root) / name)
        if store.owner() == pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + timeout
            while store.owner() == pid and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            if store.summary() is not None:  # it ended by itself meanwhile
                continue
        except ConfigError as exc:
            lines.append(f"run {name}: its ServerApp (process {pid}) was ended, but {exc}")
            continue
        log.warning("run %s interrupted: its ServerApp (process %d) ended with the SuperLink",
                    name, pid)
        lines.append(f"run {name} interrupted: its ServerApp (process {pid}) ended with the "
                     f"SuperLink; once the coordinator is up, continue it with `xsilo "
                     f"coordinator run --resume {name}`")
    return lines


def _last_flower_run(store: RunStore) -> int | None:
    runs = store.flower_runs()
    return runs[-1] if runs else None



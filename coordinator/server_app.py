"""The coordinator as a Flower ServerApp (the Flower edge; the logic is in ``loop``)."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.config import load_run_config
from coordinator.loop import RoundLoop
from coordinator.messages import Observers
from coordinator.outcome import start_summary
from coordinator.preflight import check_run
from coordinator.run_store import LOG_FILE, RunStore
from coordinator.transport import GridTransport
from deploy.launch.pulls import quicken
from xsilo.errors import ConfigError, DeploymentError

__all__ = ["app", "console_logging", "run_coordinator", "run_log", "simulation_app"]

log = logging.getLogger(__name__)
app = ServerApp()

def run_coordinator(grid: Grid, run_dir: str, *, poll_interval: float = 0.1,
                    observers: Observers | None = None) -> dict:
    """Run the federation described by ``run_dir/config.toml`` over ``grid``.

    ``observers`` (tests, audits) see what this coordinator process sees: every raw reply,
    every central-DP clip, every accepted clear update.
    """
    if not run_dir:
        raise ConfigError("run config 'run-dir' is empty; start runs with `xsilo coordinator run`")
    store = RunStore(run_dir)
    # Held for the whole run: a second ServerApp on this run (two `--resume` at once) stops
    # here, before it takes the resume request or writes a line into the live run.
    with store.exclusive(), run_log(store.path / LOG_FILE):
        owner = store.owner()  # one that holds no lock (an older xsilo's ServerApp)
        if owner is not None and owner != os.getpid():
            raise DeploymentError(
                f"run {store.path.name} is still being run by process {owner}; wait for "
                f"it to end (or stop it: `flwr stop`), then resume")
        resume = store.take_resume_request()
        ended = store.ended() if resume is not None else None
        if ended is not None:
            # a request left by a `--resume` that another, quicker one overtook: the run it
            # asks to continue has ended since (each resume clears the summary first)
            raise DeploymentError(
                f"run {store.path.name} already {ended}; its resume request is one another "
                "`--resume` overtook, and nothing of the run is run again")
        config = None
        try:
            config = load_run_config(run_dir)
            # Every check that needs no silo (the same `xsilo coordinator run` makes first).
            strategy = check_run(config, evaluator=False)
            enrolled = store.enrolled()
            store.prepare(resume=resume is not None)
            store.claim()
        except Exception as exc:
            log.exception("the run could not start")
            if not store.started or resume is not None:  # never over another run's summary
                store.write_summary(start_summary(
                    "failed", exc, strategy=config.strategy if config else None,
                    rounds_requested=config.num_rounds if config else None))
            raise
        store.append_event({"event": "start", **provenance(grid),
                            **({"resumed": True} if resume is not None else {})})
        observers = observers or Observers()
        transport = GridTransport(grid, poll_interval=poll_interval, recorder=observers.reply)
        return RoundLoop(config, transport, store, strategy, observers=observers,
                         resume=resume is not None, enrolled=enrolled).run()


_LOGGERS = ("coordinator", "strategies", "xsilo")


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """The coordinator's log (INFO and up) also goes to ``path`` while the run lasts: the
    operator finds the reason for a failure in the run directory, whatever Flower's own log
    forwarding does with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in _LOGGERS]  # xsilo's own, not Flower's
    raised = [lg for lg in loggers if lg.level == logging.NOTSET]
    for lg in raised:
        lg.setLevel(logging.INFO)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
        for lg in raised:
            lg.setLevel(logging.NOTSET)


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def provenance(grid: Grid) -> dict[str, Any]:
    """What ran this run: xsilo, Flower and Python versions, and the Flower app (FAB) that
    ``flwr run`` shipped, with its hash (empty for in-process runs, which ship none)."""
    run = getattr(grid, "run", None)
    return {"xsilo_version": _version("xsilo"), "flwr_version": _version("flwr"),
            "python": platform.python_version(),
            "flower_run_id": getattr(run, "run_id", None),
            "fab_id": getattr(run, "fab_id", "") or None,
            "fab_version": getattr(run, "fab_version", "") or None,
            "fab_hash": getattr(run, "fab_hash", "") or None}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: read the run directory from the run config and run."""
    console_logging()
    quick_reply_pulls(grid)
    summary = run_coordinator(grid, str(context.run_config.get("run-dir", "")))
    log.info("run finished: %s", summary)


def console_logging() -> None:
    """The ServerApp's output, which Flower uploads as the run's log: xsilo's own lines from
    INFO up, everything else's from WARNING up.

    Not INFO for all: httpx logs every request at INFO, the output goes to the SuperLink in
    a request every 0.2 s while there is any (``flwr.supercore.logger``), and that request
    logs a line of its own. A run then uploaded its every request (about 11 uploads a
    round, a row each in the SuperLink's database) and never stopped uploading, which held
    up the end of every run by Flower's 3 s flush."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    levels = {**dict.fromkeys(_LOGGERS, logging.INFO), "httpx": logging.WARNING,
              "httpcore": logging.WARNING}  # the latter also where a root set up at INFO
    for name, level in levels.items():
        if logging.getLogger(name).level == logging.NOTSET:  # what someone set, stays
            logging.getLogger(name).setLevel(level)


def quick_reply_pulls(grid: Grid) -> None:
    """On the deployment engine: pull a reply whose objects are still on their way again
    after 0.05 s, not Flower's 1 s (:mod:`deploy.launch.pulls`; the SuperLink is on this
    host)."""
    from flwr.superlink.grid import http_grid

    if isinstance(grid, http_grid.HttpGrid):
        quicken(http_grid, "pull_objects", "HttpGrid.pull_messages")


def simulation_app(run_dir: str, *, poll_interval: float = 0.005,
                   observers: Observers | None = None) -> ServerApp:
    """The coordinator ServerApp for Flower's Ray simulation (``run_simulation`` passes no
    run config, so the run directory is bound here)."""
    sim = ServerApp()

    @sim.main()
    def _main(grid: Grid, context: Context) -> None:
        summary = run_coordinator(grid, run_dir, poll_interval=poll_interval,
                                  observers=observers)
        log.info("run finished: %s", summary)

    return sim

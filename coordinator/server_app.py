"""The coordinator as a Flower ServerApp (the Flower edge; the logic is in ``loop``)."""

from __future__ import annotations

import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.config import load_run_config
from coordinator.loop import RoundLoop
from coordinator.messages import Observers
from coordinator.privacy import check_run_privacy
from coordinator.run_store import RunStore
from coordinator.transport import GridTransport
from strategies.registry import build_strategy
from xsilo.errors import ConfigError

__all__ = ["app", "run_coordinator", "simulation_app"]

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
    config = load_run_config(run_dir)
    strategy = build_strategy(config.strategy, config.strategy_params)
    # DP and secure-aggregation checks happen before any silo is contacted.
    check_run_privacy(config.dp, strategy, secure_aggregation=config.secure_aggregation)
    store = RunStore(run_dir)
    store.prepare()
    store.append_event({"event": "start", **provenance(grid)})
    observers = observers or Observers()
    transport = GridTransport(grid, poll_interval=poll_interval, recorder=observers.reply)
    return RoundLoop(config, transport, store, strategy, observers=observers).run()


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
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = run_coordinator(grid, str(context.run_config.get("run-dir", "")))
    log.info("run finished: %s", summary)


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

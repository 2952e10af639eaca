"""Run a whole federation in one process: the real ServerApp logic and ClientApp handlers,
connected by :class:`coordinator.local_grid.LocalGrid` instead of a SuperLink.

Useful to try a run configuration in seconds, and the basis of the fast test suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from coordinator.config import RunConfig, write_run_config
from coordinator.local_grid import LocalGrid
from coordinator.server_app import run_coordinator
from silo_client.client_app import app as client_app

__all__ = ["run_in_process"]


def run_in_process(run_dir: Path, config: RunConfig, silo_configs: Sequence[Path], *,
                   drop: Callable[[int, str], bool] | None = None) -> dict:
    """Run ``config`` over silos given by their ``silo.toml`` paths; return the summary.

    Node ids are 1..N in the order given. ``drop(node_id, message_type)`` makes a silo
    silent for that message (to exercise dropouts).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir / "config.toml", config)
    grid = LocalGrid(client_app, {i + 1: {"silo-config": str(Path(p).resolve())}
                                  for i, p in enumerate(silo_configs)}, drop=drop)
    return run_coordinator(grid, str(run_dir), poll_interval=0.0)

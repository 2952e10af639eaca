"""Run a whole federation on this machine without a SuperLink: the real ServerApp logic and
ClientApp handlers, either in one process (:func:`run_in_process`, over
:class:`coordinator.local_grid.LocalGrid`) or on Flower's Ray simulation engine
(:func:`run_in_simulation`, every silo's ClientApp in a Ray actor).

Useful to try a run configuration in seconds, and the basis of the fast test suite.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

# Institutions must not phone home, also when they only simulate: before Flower is imported.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from coordinator.config import RunConfig, write_run_config
from coordinator.local_grid import LocalGrid
from coordinator.messages import Observers
from coordinator.run_store import RunStore
from coordinator.server_app import run_coordinator
from silo_client.client_app import app as client_app
from silo_client.client_app import build_app
from xsilo.errors import DeploymentError

__all__ = ["run_in_process", "run_in_simulation"]

log = logging.getLogger(__name__)


def run_in_process(run_dir: Path, config: RunConfig, silo_configs: Sequence[Path], *,
                   drop: Callable[[int, str], bool] | None = None,
                   offline: Callable[[int], bool] | None = None,
                   observers: Observers | None = None,
                   silo_clipped: Callable[[Any], None] | None = None,
                   resume: bool = False) -> dict:
    """Run ``config`` over silos given by their ``silo.toml`` paths; return the summary.

    Node ids are 1..N in the order given. ``drop(node_id, message_type)`` makes a silo
    silent for that message (to exercise dropouts); ``offline(node_id)`` makes the
    "SuperLink" report it offline (:class:`~coordinator.local_grid.LocalGrid`). ``observers`` see what the coordinator
    sees; ``silo_clipped`` every DP clip a silo makes before masking (audits and tests).
    ``resume``: continue the run ``run_dir`` holds from its last complete round (what
    ``xsilo coordinator run --resume`` asks of a deployed coordinator), as its own
    ``config.toml`` says (``config`` is written only where there is none).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume or not (run_dir / "config.toml").exists():
        write_run_config(run_dir / "config.toml", config)
    if resume:
        RunStore(run_dir).request_resume()
    silos = client_app if silo_clipped is None else build_app(on_clipped=silo_clipped)
    grid = LocalGrid(silos, {i + 1: {"silo-config": str(Path(p).resolve())}
                             for i, p in enumerate(silo_configs)}, drop=drop, offline=offline)
    return run_coordinator(grid, str(run_dir), poll_interval=0.0, observers=observers)


def run_in_simulation(run_dir: Path, config: RunConfig, silo_configs: Sequence[Path], *,
                      cpus_per_silo: float = 1.0, verbose: bool = False,
                      observers: Observers | None = None) -> dict:
    """Run ``config`` on Flower's Ray simulation engine (``flwr.simulation.run_simulation``):
    one virtual SuperNode per ``silo.toml``, the silos' ClientApps in Ray actors, the
    coordinator's ServerApp driving them over Flower's in-memory grid. Returns the summary.

    Needs ``flwr[simulation]`` (Ray), which xsilo depends on. ``observers`` see what the
    coordinator sees (the ServerApp runs in this process).
    """
    telemetry = sys.modules.get("flwr.supercore.telemetry")
    if telemetry is not None and getattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0") != "0":
        log.warning("Flower was imported before xsilo with telemetry on; set "
                    "FLWR_TELEMETRY_ENABLED=0 in the environment to keep the simulation silent")
    from flwr.simulation import run_simulation

    from coordinator.server_app import simulation_app as server_sim
    from silo_client.client_app import simulation_app as client_sim

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir / "config.toml", config)
    paths = [str(Path(p).resolve()) for p in silo_configs]
    run_simulation(server_app=server_sim(str(run_dir), observers=observers),
                   client_app=client_sim(paths),
                   num_supernodes=len(paths), verbose_logging=verbose,
                   backend_config={"client_resources": {"num_cpus": cpus_per_silo},
                                   "init_args": {"logging_level": logging.WARNING,
                                                 "log_to_driver": verbose}})
    summary = RunStore(run_dir).summary()
    if summary is None:
        raise DeploymentError(f"the simulated run in {run_dir} ended without a summary; the "
                              "ServerApp failed before finishing (see the log above)")
    return summary

"""Start runs on a running coordinator: run directory, config file, ``flwr run``."""

from __future__ import annotations

import re
import time
from pathlib import Path

from coordinator.config import RunConfig, write_run_config
from coordinator.run_store import RunStore
from deploy.launch.processes import FlowerCLI
from xsilo.errors import ConfigError

__all__ = ["APP_DIR", "new_run_dir", "submit_run"]

# The thin app `flwr run` ships: its components are the installed coordinator and silo.
APP_DIR = Path(__file__).parent / "flower_app"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_run_dir(runs_root: Path, name: str | None) -> Path:
    """A fresh run directory under ``runs_root`` (``<name>`` or a timestamp)."""
    name = name or time.strftime("run-%Y%m%d-%H%M%S")
    if not _NAME.match(name):
        raise ConfigError(f"run name {name!r} must be 1–64 letters, digits, '.', '_' or '-'")
    path = Path(runs_root) / name
    if path.exists():
        raise ConfigError(f"run directory {path} already exists; choose another --name")
    path.mkdir(parents=True)
    return path


def submit_run(cli: FlowerCLI, run_dir: Path, config: RunConfig) -> tuple[int, RunStore]:
    """Write ``config.toml`` into ``run_dir`` and start the run; return (run id, store)."""
    write_run_config(run_dir / "config.toml", config)
    run_id = cli.submit(APP_DIR, {"run-dir": str(Path(run_dir).resolve())})
    return run_id, RunStore(run_dir)



"""The run directory: configuration, per-round metrics, checkpoints, final model, summary.

Layout::

    RUN_DIR/
      config.toml             the exact configuration used (written before the run starts)
      metrics.jsonl           one JSON object per event (round, failure, final), appended
      checkpoints/round-0003.npz  global model + strategy state after each round
      model.npz               the final global model
      summary.json            status, rounds completed/failed, final metrics

Every file that replaces an earlier version is written to a temporary name, fsync-ed and
renamed, so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xsilo.errors import ConfigError
from xsilo.files import atomic_write

__all__ = ["RunStore", "load_npz"]

_STATE_PREFIX = "strategy/"


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load an ``.npz`` written by :class:`RunStore` into an ordered dict."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir)
        self.checkpoints = self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def prepare(self) -> None:
        """Create the directory tree (the run directory must not hold another run's metrics)."""
        if self.metrics_path.exists():
            raise ConfigError(
                f"run directory {self.path} already holds a run (metrics.jsonl exists); "
                "choose a new run name or directory"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def append_event(self, event: Mapping[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsync-ed)."""
        record = {"time": time.time(), **event}
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        """All complete events written so far (a partially written last line is skipped)."""
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def save_checkpoint(self, server_round: int, model: Mapping[str, np.ndarray],
                        strategy_state: Mapping[str, np.ndarray]) -> Path:
        """Write the global model and strategy state after ``server_round``."""
        arrays = dict(model)
        arrays.update({_STATE_PREFIX + k: v for k, v in strategy_state.items()})
        arrays["__round__"] = np.asarray(server_round)
        path = self.checkpoints / f"round-{server_round:04d}.npz"
        atomic_write(path, _npz_bytes(arrays))
        return path

    def latest_checkpoint(self) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """(round, model, strategy_state) of the newest checkpoint, or None."""
        files = sorted(self.checkpoints.glob("round-*.npz"))
        if not files:
            return None
        arrays = load_npz(files[-1])
        server_round = int(arrays.pop("__round__"))
        state = {k[len(_STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(_STATE_PREFIX)}
        model = {k: v for k, v in arrays.items() if not k.startswith(_STATE_PREFIX)}
        return server_round, model, state

    def save_model(self, model: Mapping[str, np.ndarray]) -> Path:
        """Write the final global model to ``model.npz``."""
        path = self.path / "model.npz"
        atomic_write(path, _npz_bytes(model))
        return path

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        atomic_write(self.path / "summary.json",
                           json.dumps(summary, indent=2, sort_keys=True).encode())

    def summary(self) -> dict[str, Any] | None:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

"""Optional exports of a run as it goes: TensorBoard event files, an MLflow store, and a
Prometheus text endpoint (run setting ``exports``; each one is an optional extra).

=============  ==============================  ============================================
export         extra (``pip install …``)       where
=============  ==============================  ============================================
tensorboard    ``xsilo[tensorboard]``          ``RUN_DIR/tensorboard/`` (event files; one
                                               scalar per row value, step = round)
mlflow         ``xsilo[mlflow]``               ``mlflow_tracking_uri`` (default
                                               ``sqlite:///RUN_DIR/mlflow.db``), experiment
                                               ``mlflow_experiment``, one MLflow run per run
prometheus     ``xsilo[prometheus]``           ``http://prometheus_host:prometheus_port/metrics``
                                               while the run lasts (port 0: any free port)
=============  ==============================  ============================================

Where each export went is written to ``metrics.jsonl`` (an ``exports`` event) when the run
starts. A resumed run continues its exports as ``metrics.jsonl`` does, the latest row of a
round winning: its TensorBoard events from the first round it writes again on are purged
(a ``SessionLog.START`` at that step, which TensorBoard's readers honour), and it continues
the same MLflow run (a round written again is logged again at its step, with a later
timestamp: MLflow keeps a metric's history). An export is an observer: one that fails during the run is logged, recorded as an
``export_error`` event and switched off; the run goes on. A missing library or a busy port
is a :class:`~xsilo.errors.ConfigError` before any silo is contacted.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from xsilo.errors import ConfigError

__all__ = ["EXPORTS", "Export", "RunExports", "check_available", "row_scalars"]

log = logging.getLogger(__name__)

# export → (module it needs, the xsilo extra that installs it)
EXPORTS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "prometheus": ("prometheus_client", "prometheus"),
}


def check_available(names: Sequence[str]) -> None:
    """ConfigError naming the extra to install for each export whose library is missing."""
    missing = [n for n in names if importlib.util.find_spec(EXPORTS[n][0]) is None]
    if missing:
        extras = ",".join(EXPORTS[n][1] for n in missing)
        raise ConfigError(f"run setting exports = {list(names)}: {', '.join(missing)} needs "
                          f"its library, which is not installed; pip install 'xsilo[{extras}]' "
                          "on the coordinator, or remove it from exports")


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def row_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one round row, by tag (``global/accuracy``, ``silo/<name>/loss`` …)."""
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        v = _number(value)
        if v is not None:
            out[tag] = v

    for key in ("accuracy", "loss", "mae", "mse"):
        put(f"global/{key}", row.get(f"global_{key}"))
    put("train/loss", row.get("train_loss"))
    put("round/seconds", row.get("round_seconds"))
    if row.get("round", 0) >= 1:
        put("round/contributors", len(row.get("contributors") or []))
        put("round/rejected", len(row.get("rejected") or {}))
        put("round/asked", len(row.get("asked") or []) or None)
    put("privacy/epsilon", row.get("epsilon"))
    put("privacy/clip_norm", row.get("clip_norm"))
    for key, value in (row.get("validation") or {}).items():
        put(f"validation/{key}", value)
    for direction, value in (row.get("bytes") or {}).items():
        put(f"bytes/{direction}", value)
    for silo, scores in sorted((row.get("silos") or {}).items()):
        for key, value in scores.items():
            put(f"silo/{silo}/{key}", value)
    for silo, value in (row.get("fit_seconds") or {}).items():
        put(f"silo/{silo}/fit_seconds", value)
    for silo, value in (row.get("dpsgd_epsilon") or {}).items():
        put(f"silo/{silo}/dpsgd_epsilon", value)
    return out


class Export(Protocol):
    """One destination of a run's rows."""

    name: str

    def where(self) -> str: ...

    def round_started(self, server_round: int) -> None: ...

    def row(self, row: Mapping[str, Any]) -> None: ...

    def finish(self, summary: Mapping[str, Any]) -> None: ...


class TensorBoardExport:
    """Scalars into ``RUN_DIR/tensorboard`` (read them with TensorBoard or its
    ``EventAccumulator``); flushed after every row so a live TensorBoard follows the run."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, *, rewrite_from: int | None = None) -> None:
        """``rewrite_from``: a resumed run writes its rows again from this round on; the
        earlier attempts' events from it on are purged."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.path = Path(run_dir) / "tensorboard"
        self.writer = EventFileWriter(str(self.path))
        if rewrite_from is not None:
            self.writer.add_event(Event(wall_time=time.time(), step=rewrite_from,
                                        session_log=SessionLog(status=SessionLog.START)))
            self.writer.flush()

    def where(self) -> str:
        return str(self.path)

    def round_started(self, server_round: int) -> None:
        return None

    def row(self, row: Mapping[str, Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in row_scalars(row).items()]
        self.writer.add_event(Event(wall_time=float(row.get("time", time.time())),
                                    step=int(row["round"]), summary=Summary(value=values)))
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.writer.close()


def _mlflow_client(uri: str) -> Any:
    # Institutions must not phone home: MLflow's usage telemetry off before it is imported.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MLflowExport:
    """One MLflow run per xsilo run: the run settings as params, every row's numbers as
    metrics (step = round), the end status and summary as tags."""

    name = "mlflow"

    def __init__(self, run_dir: Path, settings: Mapping[str, Any], *, uri: str,
                 experiment: str, run_name: str, previous: str | None = None) -> None:
        """``previous``: where a resumed run's earlier attempt exported to (its ``exports``
        event's ``mlflow`` entry); its MLflow run is continued when it is in this store."""
        self.uri = uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        self.client = _mlflow_client(self.uri)
        self.run_id = self._continued(previous, run_dir)
        if self.run_id is not None:
            from mlflow.entities import RunStatus

            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else self.client.create_experiment(
            experiment, artifact_location=(Path(run_dir).resolve() / "mlflow-artifacts").as_uri())
        run = self.client.create_run(exp_id, run_name=run_name,
                                     tags={"xsilo.run_dir": str(Path(run_dir).resolve())})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k[:250], v[:6000])
                                                   for k, v in _flat_params(settings).items()])

    def _continued(self, previous: str | None, run_dir: Path) -> str | None:
        """The earlier attempt's MLflow run id, when it is in this store and of this run."""
        match = re.fullmatch(r"(.*) \(run ([0-9a-f]{1,64})\)", previous or "")
        if match is None or match.group(1) != self.uri:
            return None
        try:
            run = self.client.get_run(match.group(2))
        except Exception:  # noqa: BLE001 - deleted, or another store: a new run
            return None
        if run.data.tags.get("xsilo.run_dir") != str(Path(run_dir).resolve()):
            return None
        return str(run.info.run_id)

    def where(self) -> str:
        return f"{self.uri} (run {self.run_id})"

    def round_started(self, server_round: int) -> None:
        return None

    def row(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(float(row.get("time", time.time())) * 1000)
        metrics = [Metric(_mlflow_key(k), v, stamp, int(row["round"]))
                   for k, v in row_scalars(row).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: Mapping[str, Any]) -> None:
        status = summary.get("status")
        for key in ("status", "error", "stop_reason"):
            if summary.get(key):
                self.client.set_tag(self.run_id, f"xsilo.{key}", str(summary[key])[:5000])
        self.client.set_terminated(self.run_id,
                                   status="FAILED" if status == "failed" else "FINISHED")


def _mlflow_key(tag: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in tag)[:250]


def _flat_params(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class PrometheusExport:
    """A Prometheus text endpoint for the run's lifetime (its own registry, so runs in one
    process do not collide). Gauges describe the round in progress and the last row."""

    name = "prometheus"

    def __init__(self, host: str, port: int, *, run_name: str, strategy: str,
                 dp: bool) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server

        reg = self.registry = CollectorRegistry()
        self.current = Gauge("xsilo_round", "Round in progress (0: joining)", registry=reg)
        self.completed = Gauge("xsilo_round_completed",
                               "Latest round whose row was written (its model evaluated)",
                               registry=reg)
        self.asked = Gauge("xsilo_round_asked", "Silos the latest round was sent to",
                           registry=reg)
        self.contributors = Gauge("xsilo_round_participants",
                                  "Silos whose update the latest round used", registry=reg)
        self.rejected = Gauge("xsilo_round_rejected", "Silos refused or rejected in the latest "
                              "round", registry=reg)
        self.seconds = Gauge("xsilo_round_seconds", "Wall time of the latest round",
                             registry=reg)
        self.accuracy = Gauge("xsilo_global_accuracy", "Global model accuracy (latest row)",
                              registry=reg)
        self.loss = Gauge("xsilo_global_loss", "Global model loss (latest row)", registry=reg)
        self.epsilon = (Gauge("xsilo_epsilon", "Privacy spent (ε at the run's δ)", registry=reg)
                        if dp else None)
        self.failed = Counter("xsilo_rounds_failed", "Rounds that failed", registry=reg)
        self.sent = Counter("xsilo_payload_bytes_sent", "Array payload bytes the coordinator "
                            "sent (models, secure-aggregation records; no framing)", registry=reg)
        self.received = Counter("xsilo_payload_bytes_received", "Array payload bytes the "
                                "coordinator received (updates, masked vectors; no framing)",
                                registry=reg)
        self.finished = Gauge("xsilo_run_finished", "1 once the run has ended", registry=reg)
        Info("xsilo_run", "The run", registry=reg).info({"run": run_name, "strategy": strategy})
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=reg)
        except OSError as exc:
            raise ConfigError(f"prometheus_port {port} on {host} cannot be opened ({exc}); "
                              "choose a free port, or 0 for any free one") from exc
        self.address = "%s:%d" % self.server.server_address[:2]

    def where(self) -> str:
        return f"http://{self.address}/metrics"

    def round_started(self, server_round: int) -> None:
        self.current.set(server_round)

    def row(self, row: Mapping[str, Any]) -> None:
        self.completed.set(row["round"])
        for gauge, key in ((self.seconds, "round_seconds"), (self.accuracy, "global_accuracy"),
                           (self.loss, "global_loss")):
            if _number(row.get(key)) is not None:
                gauge.set(row[key])
        if self.epsilon is not None and _number(row.get("epsilon")) is not None:
            self.epsilon.set(row["epsilon"])
        if row.get("round", 0) >= 1:
            self.asked.set(len(row.get("asked") or []))
            self.contributors.set(len(row.get("contributors") or []))
            self.rejected.set(len(row.get("rejected") or {}))
            if row.get("status") == "failed":
                self.failed.inc()
        counted = row.get("bytes") or {}
        self.sent.inc(counted.get("sent", 0))
        self.received.inc(counted.get("received", 0))

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.finished.set(1)
        self.server.shutdown()
        self.server.server_close()


class RunExports:
    """The run's exports, fanned out; an export that raises is switched off (see module)."""

    def __init__(self, exports: Sequence[Export] = (),
                 on_error: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.exports = list(exports)
        self.on_error = on_error

    @classmethod
    def start(cls, config: Any, run_dir: Path, *,
              on_error: Callable[[dict[str, Any]], None] | None = None,
              rewrite_from: int | None = None,
              previous: Mapping[str, Any] | None = None) -> RunExports:
        """Open every export ``config.exports`` names (``config``: a ``RunConfig``). A
        resumed run: ``rewrite_from``, the first round whose row it writes (again), and
        ``previous``, the earlier attempt's ``exports`` event (see the module docstring)."""
        names = list(config.exports)
        check_available(names)
        opened: list[Export] = []
        try:
            for name in names:
                opened.append(_open(name, config, Path(run_dir), rewrite_from,
                                    dict(previous or {})))
        except BaseException:
            cls(opened).finish({"status": "failed"})
            raise
        return cls(opened, on_error)

    def where(self) -> dict[str, str]:
        return {e.name: e.where() for e in self.exports}

    def _each(self, what: str, call: Callable[[Export], None]) -> None:
        for export in list(self.exports):
            try:
                call(export)
            except Exception as exc:  # noqa: BLE001 - an observer must not fail the run
                log.error("export %s failed on %s (%s: %s); it is switched off for this run",
                          export.name, what, type(exc).__name__, exc, exc_info=True)
                self.exports.remove(export)
                if self.on_error is not None:
                    self.on_error({"event": "export_error", "export": export.name, "on": what,
                                   "error": f"{type(exc).__name__}: {exc}"})

    def round_started(self, server_round: int) -> None:
        self._each("round_started", lambda e: e.round_started(server_round))

    def row(self, row: Mapping[str, Any]) -> None:
        self._each("row", lambda e: e.row(row))

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._each("finish", lambda e: e.finish(summary))
        self.exports.clear()


def _open(name: str, config: Any, run_dir: Path, rewrite_from: int | None,
          previous: dict[str, Any]) -> Export:
    if name == "tensorboard":
        return TensorBoardExport(run_dir, rewrite_from=rewrite_from)
    if name == "mlflow":
        where = previous.get("mlflow")
        return MLflowExport(run_dir, config.to_dict(), uri=config.mlflow_tracking_uri,
                            experiment=config.mlflow_experiment, run_name=config.name,
                            previous=where if isinstance(where, str) else None)
    return PrometheusExport(config.prometheus_host, config.prometheus_port, run_name=config.name,
                            strategy=config.strategy, dp=config.dp is not None)

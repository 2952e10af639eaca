"""A run directory, read once for reporting: its configuration, rows and summary.

:func:`load_run` reads ``config.toml``, ``metrics.jsonl`` and ``summary.json`` as they are
(a missing or partial file leaves its part empty); :func:`unique_rounds` keeps one row per
round number (a resumed run writes the rounds it re-runs again); :func:`provenance` and
:func:`time_split` derive what the report shows about where the run came from and where its
time went. Nothing here renders HTML (:mod:`coordinator.report` does).
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.run_store import RunStore
from xsilo.errors import ConfigError
from xsilo.terms import MAX_ROUNDS
from xsilo.files import read_toml

__all__ = ["RunRecord", "load_run", "local_time", "number", "provenance", "readable_events",
           "readable_summary", "time_split", "unique_rounds", "utc"]


@dataclass(frozen=True)
class RunRecord:
    """What a run directory holds, read once (missing parts are empty)."""

    path: Path
    config_text: str | None
    settings: Mapping[str, Any]
    events: list[dict[str, Any]]
    summary: Mapping[str, Any] | None
    summary_problem: str | None = None  # why summary.json could not be read (it exists)

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """One row per round number, the latest written (see :func:`unique_rounds`)."""
        return unique_rounds(self.events)[0]

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == kind), None)

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("event") == kind), None)


def load_run(run_dir: Path) -> RunRecord:
    """Read a run directory; ConfigError when it is not one (no config, no metrics)."""
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    config_path = run_dir / "config.toml"
    if not config_path.is_file() and not store.metrics_path.is_file():
        raise ConfigError(f"{run_dir} holds no config.toml and no metrics.jsonl: not a run "
                          "directory; pass a directory under the coordinator home's runs/")
    text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    settings: Mapping[str, Any] = {}
    if text is not None:
        try:
            settings = read_toml(config_path, what="run configuration").get("run", {})
        except ConfigError:
            settings = {}  # the report still shows the rows; the hash names the file
    summary, problem = None, None
    try:
        summary = store.summary()
    except ConfigError as exc:  # the report still shows the rows, and says why no summary
        problem = str(exc)
    return RunRecord(run_dir, text, settings, readable_events(store.events()),
                     readable_summary(summary), problem)


def readable_events(events: Sequence[Any]) -> list[dict[str, Any]]:
    """Every event in the shape its readers expect, whatever a damaged or hand-edited line
    holds: a table where one is read, a list of names where one is read (rows:
    :func:`_readable`). Other fields are read through :func:`number` or ``str`` where used."""
    out = []
    for event in events:
        if not isinstance(event, Mapping):
            continue
        kind = event.get("event")
        if kind == "round":
            out.append(_readable(event))
            continue
        shaped = dict(event)
        for key in _EVENT_TABLES.get(kind, ()):
            if key in shaped:
                shaped[key] = _str_table(shaped[key])
        for key in _EVENT_LISTS.get(kind, ()):
            if key in shaped:
                shaped[key] = _names(shaped[key])
        out.append(shaped)
    return out


def readable_summary(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``summary.json`` in the shape the report reads (see :func:`readable_events`)."""
    if summary is None:
        return None
    shaped = dict(summary)
    for key in ("rounds_failed", "silos"):
        if key in shaped:
            shaped[key] = _names(shaped[key])
    for key in ("status", "stop_reason", "stop_message", "strategy"):
        if key in shaped and shaped[key] is not None:
            shaped[key] = str(shaped[key])
    return shaped


_EVENT_TABLES = {"join": ("silos", "refused")}
_EVENT_LISTS = {"join": ("silent_nodes",), "awaiting": ("silos",)}


def _names(value: Any) -> list[str]:
    """A list of names as text (anything but a list: none)."""
    return [str(v) for v in value] if isinstance(value, list) else []


def _str_table(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def unique_rounds(events: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """(round rows by round number, the latest of each; round numbers written more than once)."""
    latest: dict[int, dict[str, Any]] = {}
    repeated: set[int] = set()
    for e in events:
        r = e.get("round")
        if (e.get("event") != "round" or not isinstance(r, int) or isinstance(r, bool)
                or not 0 <= r <= MAX_ROUNDS + 1):  # a damaged row: no round of any run
            continue
        if e["round"] in latest:
            repeated.add(e["round"])
        latest[e["round"]] = _readable(e)
    return [latest[r] for r in sorted(latest)], sorted(repeated)


_TABLES = ("silos", "validation", "dpsgd_epsilon", "bytes", "rejected", "secure_aggregation",
           "fit_seconds")
_LISTS = ("contributors", "asked", "scored_by", "unscored")


def _readable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with the shape the report reads (a table where it expects one, a list, text
    status), whatever a damaged or hand-edited line holds; numbers go through :func:`number`."""
    out = dict(row)
    for key in _TABLES:
        if key in out and not isinstance(out[key], Mapping):
            out[key] = {}
    if "silos" in out:
        out["silos"] = {k: v for k, v in out["silos"].items() if isinstance(v, Mapping)}
    for key in _LISTS:
        if key in out:
            out[key] = _names(out[key])
    out["status"] = str(out.get("status", ""))
    return out


def utc(ts: Any) -> str | None:
    """A timestamp as UTC text; None for anything that is not a representable time."""
    return _strftime("%Y-%m-%d %H:%M:%S UTC", ts, time.gmtime)


def local_time(spec: str, ts: Any) -> str | None:
    """A timestamp in local time as ``spec``; None for anything that is not a time."""
    return _strftime(spec, ts, time.localtime)


def _strftime(spec: str, ts: Any, convert: Any) -> str | None:
    value = number(ts)
    if value is None:
        return None
    try:
        return time.strftime(spec, convert(value))
    except (OverflowError, ValueError, OSError):  # beyond the platform's time_t
        return None


def provenance(run: RunRecord) -> list[tuple[str, Any]]:
    """Versions, app hash, configuration hash and times, as (label, value) pairs."""
    start = run.first("start") or {}
    end = run.last("end")
    first_time = run.events[0].get("time") if run.events else None
    config_hash = (hashlib.sha256(run.config_text.encode("utf-8")).hexdigest()
                   if run.config_text is not None else None)
    fab = start.get("fab_hash") or None
    return [
        ("xsilo version", start.get("xsilo_version") or "not recorded"),
        ("Flower version", start.get("flwr_version") or "not recorded"),
        ("Python", start.get("python") or "not recorded"),
        ("Flower app", f"{start.get('fab_id')} {start.get('fab_version')}".strip()
         if start.get("fab_id") else "none (run without a Flower app: in-process)"),
        ("app hash (FAB SHA-256)", fab or "not recorded (no app was shipped)"),
        ("Flower run id", start.get("flower_run_id")),
        ("configuration hash (SHA-256 of config.toml)", config_hash or "config.toml missing"),
        ("started", utc(start.get("time", first_time))),
        ("ended", utc(end.get("time")) if end else "not yet (no end event)"),
        ("report rendered", utc(time.time())),
        ("rendered by", f"xsilo {_version('xsilo')} on Python {platform.python_version()}"),
    ]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def number(value: Any) -> float | None:
    """``value`` as a finite float, None when it is anything else (rows are read as written,
    and a hand-edited or damaged one must not stop the report)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return value if math.isfinite(value) else None


def _table(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def time_split(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], dict[str, list[float]]]:
    xs, compute, secagg, waiting = [], [], [], []
    for r in rows:
        total = number(r.get("round_seconds"))
        if r.get("round", 0) < 1 or total is None:
            continue
        fits = [v for v in map(number, _table(r.get("fit_seconds")).values()) if v is not None]
        slowest = min(max(fits), total) if fits else 0.0
        sec = _table(_table(r.get("secure_aggregation")).get("seconds"))
        extra = min(sum(number(sec.get(k)) or 0.0 for k in ("unmasking", "rekey")),
                    total - slowest)
        xs.append(r["round"])
        compute.append(slowest)
        secagg.append(extra)
        waiting.append(max(0.0, total - slowest - extra))
    stacks = {"computing": compute}
    if any(secagg):
        stacks["secure aggregation"] = secagg
    stacks["waiting"] = waiting
    return xs, stacks

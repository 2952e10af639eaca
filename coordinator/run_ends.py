"""A run's two ends around its rounds: where it starts from and how it is closed (Flower-free).

* **start** — a resumed run (:func:`restore_run`) puts the run directory's last verified
  checkpoint back into the strategy and the accountant (:func:`coordinator.resume.restore`),
  keeps the run token the silos already know (the checkpoint's, else the earlier attempt's
  ``join`` event) and records a ``resume`` event: from which round, the checkpoints skipped,
  the temporaries discarded (e.g. a checkpoint cut off by a kill). The run's exports are
  opened (:func:`open_exports`; a resumed run's continue the earlier attempts' from the
  first round it writes again);
* **a clean early stop** — a round that would take ε above ``max_epsilon`` is not run
  (:func:`budget_stop`): the run stops with status ``stopped``, and says why.

Each step's event is written by a ``record_*`` function of its own, after the loop took
what the step gave (the exports it must finish, the failed rounds, the stop's reason): a
``metrics.jsonl`` that cannot be written for a moment fails the run, and its summary still
says all of it.
* **end** — however the run ends (completed, stopped, failed), :func:`run_summary` is what
  ``summary.json`` records (status and error, rounds failed, the silos, the final scores and
  whose model they are of, ε when DP, why it stopped early), and :func:`close_run` writes
  it: the ``end`` event, ``summary.json``, the exports' last word and the HTML report (a
  report that cannot be rendered is logged, never fatal).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from coordinator.config import RunConfig
from coordinator.exports import RunExports
from coordinator.privacy import RunPrivacy
from coordinator.report import safe_write_report
from coordinator.resume import Resumed, restore
from coordinator.run_store import RunStore
from strategies.api import Strategy
from xsilo.errors import PrivacyBudgetExceeded

__all__ = ["budget_stop", "close_run", "open_exports", "restore_run", "run_summary"]


def restore_run(store: RunStore, strategy: Strategy, privacy: RunPrivacy | None
                ) -> tuple[Resumed | None, str | None, list[str]]:
    """The last verified checkpoint back into ``strategy`` and ``privacy`` (None: there is
    none), the run token the silos already know (None: none recorded; ``privacy`` is given
    it) and the temporaries discarded; :func:`record_resume` records it (the loop first
    takes what it needs, so a failing write loses nothing of it)."""
    discarded = store.discard_temporaries()  # e.g. a checkpoint cut off by a kill
    resumed = restore(store.load_checkpoint(), strategy, privacy)
    token = resumed.run_token if resumed is not None else None
    if token is None:  # no checkpoint (or an old one): the token the silos already know
        token = next((e["run_token"] for e in store.events()
                      if e.get("event") == "join" and e.get("run_token")), None)
    if token is not None and privacy is not None:
        privacy.run_token = token
    return resumed, token, discarded


def record_resume(store: RunStore, resumed: Resumed | None, discarded: list[str]) -> None:
    """The ``resume`` event: from which round, the checkpoints skipped, the temporaries
    discarded."""
    store.append_event({
        "event": "resume", "from_round": resumed.server_round if resumed else 0,
        "skipped_checkpoints": store.verify_checkpoints(),
        "discarded_temporaries": discarded})


def open_exports(config: RunConfig, store: RunStore, *, rewrite_from: int | None) -> RunExports:
    """The exports ``config`` names (ConfigError: one is not available); ``rewrite_from``:
    a resumed run's first round to write again (the earlier attempt's exports continue).
    :func:`record_exports` records where they go (once the loop holds them: they are
    finished however the run ends)."""
    previous = [e for e in store.events() if e.get("event") == "exports"]
    return RunExports.start(
        config, store.path, on_error=store.append_event, rewrite_from=rewrite_from,
        previous=previous[-1] if previous else None)


def record_exports(store: RunStore, exports: RunExports, *, log: Any) -> None:
    """The ``exports`` event (where the run's exports go), when there are any."""
    where = exports.where()
    if where:
        store.append_event({"event": "exports", **where})
        log.info("exports: %s", where)


def budget_stop(privacy: RunPrivacy | None, server_round: int) -> tuple[str, str] | None:
    """The clean early stop (reason, message) when ``server_round`` would take ε above
    ``max_epsilon``; None: the round may run. :func:`record_stop` records it."""
    if privacy is None:
        return None
    try:
        privacy.check_budget(server_round)
    except PrivacyBudgetExceeded as exc:
        return ("privacy_budget", str(exc))
    return None


def record_stop(store: RunStore, server_round: int, stop: tuple[str, str], *,
                log: Any) -> None:
    """The ``stop`` event of a clean early stop before ``server_round``."""
    reason, message = stop
    log.warning("privacy budget: %s", message)
    store.append_event({"event": "stop", "round": server_round, "reason": reason,
                        "message": message})


def run_summary(status: str, config: RunConfig, events: Iterable[Mapping[str, Any]], *,
                started: float, failed_rounds: list[int], silos: list[str],
                privacy: RunPrivacy | None, stop: tuple[str, str] | None,
                error: dict[str, Any] | None) -> dict[str, Any]:
    """``summary.json`` of a run that ended with ``status`` (``events``: the run's events so
    far; ``started``: its ``time.monotonic()`` start; ``stop``: why it stopped early)."""
    rows = [e for e in events if e.get("event") == "round"]
    last = rows[-1] if rows else {}
    summary = {
        "status": status, "error": error, "rounds_requested": config.num_rounds,
        "rounds_failed": failed_rounds, "silos": silos,
        "final_loss": last.get("global_loss"), "final_accuracy": last.get("global_accuracy"),
        "final_round": last.get("round"),  # whose model the final scores are of
        "seconds": round(time.monotonic() - started, 3), "strategy": config.strategy}
    if privacy is not None:
        summary.update(privacy.summary_fields())
    if stop is not None:
        summary.update({"stop_reason": stop[0], "stop_message": stop[1]})
    return summary


def close_run(store: RunStore, exports: RunExports | None, summary: dict[str, Any], *,
              log: Any) -> None:
    """Write ``summary``: the ``end`` event, ``summary.json``, the exports and the report
    (a report that cannot be written is logged to ``log``)."""
    store.append_event({"event": "end", **summary})
    store.write_summary(summary)
    if exports is not None:
        exports.finish(summary)
    safe_write_report(store.path, log)

"""How a run ended, as ``summary.json`` records it and as the operator reads it (Flower-free).

A failure is one record, the same wherever it is read (``summary.json``, the ``end`` event,
``xsilo coordinator run`` and ``status``, the HTML report)::

    "error": {"type": "DeploymentError", "message": "only 2 silo(s) joined …",
              "phase": "join", "round": 0, "silo": "hospital-c"}

``phase`` is where the run was: ``start`` (refused or failed before the ServerApp ran a
round trip), ``join``, ``key setup``, ``round`` (``round`` is its number) or ``final
evaluation``; ``silo`` names the silo(s) to blame when the error is about one. A start that
never reached the ServerApp (the configuration refused by ``coordinator run``, the SuperLink
unreachable) writes a summary of its own with status ``refused`` or ``failed``; the run
directory then holds no run and the next attempt under the same name may use it.

Summaries written before this record existed hold ``error`` as one string;
:func:`error_line` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PHASES", "error_line", "failure", "start_summary"]

PHASES = ("start", "join", "key setup", "round", "final evaluation")


def failure(exc: BaseException, *, phase: str, server_round: int | None,
            silo: str | None = None) -> dict[str, Any]:
    """The ``error`` record of a run that failed with ``exc`` in ``phase``."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {PHASES}")
    return {"type": type(exc).__name__, "message": str(exc), "phase": phase,
            "round": server_round, "silo": silo or getattr(exc, "silo", None)}


def _where(error: Mapping[str, Any]) -> str:
    phase, server_round = error.get("phase"), error.get("round")
    if phase == "round" and server_round is not None:
        place = f"in round {server_round}"
    elif phase == "start":
        place = "before it started"
    elif phase in ("join", "key setup", "final evaluation"):
        place = f"during the {phase}" if phase != "join" else "while silos joined"
    else:
        place = f"in round {server_round}" if server_round is not None else ""
    silo = error.get("silo")
    return place + (f" (silo {silo})" if silo else "")


def error_line(summary: Mapping[str, Any] | None) -> str | None:
    """One line for the operator: ``failed in round 3 (silo x): Type: message``; None when
    the summary holds no error."""
    if not summary or not summary.get("error"):
        return None
    error = summary["error"]
    status = str(summary.get("status") or "failed")
    if not isinstance(error, Mapping):  # a string: a summary written before the record
        return f"{status}: {error}"  # existed (anything else: a hand-edited one)
    where = _where(error)
    return (f"{status}{' ' + where if where else ''}: {error.get('type', 'Error')}: "
            f"{error.get('message', '')}")


def start_summary(status: str, exc: BaseException, *, strategy: str | None = None,
                  rounds_requested: int | None = None) -> dict[str, Any]:
    """``summary.json`` of a start that never reached a round trip (``refused``: the run
    configuration; ``failed``: e.g. the SuperLink could not be reached)."""
    return {"status": status, "error": failure(exc, phase="start", server_round=None),
            "rounds_requested": rounds_requested, "rounds_failed": [], "silos": [],
            "final_loss": None, "final_accuracy": None, "final_round": None,
            "strategy": strategy}

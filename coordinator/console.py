"""Rich rendering of a run for the terminal (CLI layer only)."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from coordinator.run_record import local_time, number, readable_events, unique_rounds
from coordinator.run_store import RunStore
from xsilo.errors import DeploymentError
from xsilo.terms import printable

__all__ = ["follow_run", "make_console", "round_table"]


def make_console() -> Console:
    """A console for CLI output; logs and pipes get 120 columns instead of rich's 80."""
    import sys

    return Console(width=None if sys.stdout.isatty() else 120)


def _fmt(value: Any, spec: str = ".4f") -> str:
    """A number as ``spec``; "–" for anything else (rows are read as written, and a
    hand-edited or damaged one must not stop the operator's table)."""
    value = number(value)
    return "–" if value is None else format(value, spec)


def _join_notes(events: list[dict[str, Any]]) -> list[str]:
    """Silos that never made it into the table: refused at join (with the reason) or silent.
    ``events`` are in their readable shapes (:func:`coordinator.run_record.readable_events`)."""
    notes = []
    for e in events:
        if e.get("event") != "join":
            continue
        for silo, why in sorted(e.get("refused", {}).items()):
            notes.append(f"refused at join: {silo}: {why}"[:200])
        if e.get("silent_nodes"):
            notes.append(f"silent at join: node(s) {', '.join(e['silent_nodes'])}")
    return notes


def _rejection_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Each silo's reason in full (the status column has room for its start only), once per
    silo and reason, with the rounds it came in."""
    rounds: dict[tuple[str, str], list[str]] = {}
    for e in rows:
        for silo, why in sorted((e.get("rejected") or {}).items()):
            rounds.setdefault((silo, str(why)), []).append(str(e.get("round")))
    return [f"rejected in round{'s' * (len(at) > 1)} {', '.join(at)}: {silo}: {why}"[:200]
            for (silo, why), at in rounds.items()]


def _awaited(events: list[dict[str, Any]]) -> str | None:
    """The silos the round in progress still waits for (its latest ``awaiting`` event, if no
    row or end came after it)."""
    for e in reversed(events):
        if e.get("event") in ("round", "end"):
            return None
        if e.get("event") == "awaiting":
            when = local_time(" (until %H:%M:%S)", e.get("until")) or ""
            silos = ", ".join(e.get("silos", [])) or "nobody"
            return f"round {e.get('round')}: awaiting {silos}{when}"
    return None


def round_table(events: Iterable[dict[str, Any]], *, title: str = "rounds") -> Table:
    """One row per round: global accuracy/loss (MAE/MSE for regressors), per-silo accuracy
    (MAE), train loss, time.

    The caption explains the columns, marks (``*``) global scores that leave some of the
    run's silos out (a partial population: the row's ``unscored``), lists the silos refused
    (with their reason) or silent at join and each silo's reason for a rejection in a round,
    and says who the round in progress awaits.
    """
    events = readable_events(list(events))  # damaged or hand-edited lines: readable shapes
    rows, _ = unique_rounds(events)  # the latest row of each round
    silos = sorted({s for e in rows for s in e.get("silos", {})})
    for e in events:
        if e.get("event") == "join":
            silos = sorted(set(silos) | set(e.get("silos", {})))
    regression = any(e.get("global_mae") is not None for e in rows)
    score, glob = ("mae", "global_mae") if regression else ("accuracy", "global_accuracy")
    table = Table(title=title, title_justify="left", caption_justify="left")
    table.add_column("round", justify="right")
    table.add_column("MAE" if regression else "acc", justify="right", style="bold green")
    table.add_column("MSE" if regression else "loss", justify="right")
    for silo in silos:  # a name is the silo's own text: never rich markup
        table.add_column(escape(printable(str(silo), 63)), justify="right")
    table.add_column("train loss", justify="right")
    dp = any("epsilon" in e for e in rows)
    if dp:
        table.add_column("ε", justify="right", style="bold magenta")
        table.add_column("C", justify="right")
    table.add_column("s", justify="right")
    table.add_column("status")
    table.caption = ("MAE/MSE: global model on all silos' test splits; per silo: MAE"
                     if regression else
                     "acc/loss: global model on all silos' test splits; per silo: accuracy")
    if dp:
        delta = next((f"{number(e['delta']):g}" for e in rows if number(e.get("delta")) is not None),
                     "?")
        table.caption += f"; ε: privacy spent after the round at δ={delta}; C: clip norm used"
    partial = sorted({s for e in rows for s in e.get("unscored") or []})
    if partial:
        table.caption += (f"; *: global scores over a partial population (without "
                          f"{escape(printable(', '.join(map(str, partial)), 400))} in some "
                          "rows: see each row's scored_by)")
    # Reasons read like "PolicyRefusal[max_rounds]: …": escaped, or rich takes [..] as markup.
    awaited = _awaited(events)
    table.caption = "\n".join([table.caption, *map(escape, _join_notes(events)),
                               *map(escape, _rejection_notes(rows)),
                               *([escape(awaited)] if awaited else [])])
    for e in rows:
        per = e.get("silos", {})
        status = e.get("status", "")
        if e.get("rejected"):
            status += " (" + "; ".join(f"{k}: {v}" for k, v in e["rejected"].items())[:80] + ")"
        mark = "*" if e.get("unscored") else ""
        table.add_row(
            str(e["round"]), _fmt(e.get(glob)) + mark, _fmt(e.get("global_loss")) + mark,
            *[_fmt(per.get(s, {}).get(score)) for s in silos],
            _fmt(e.get("train_loss")),
            *([_fmt(e.get("epsilon"), ".3f"), _fmt(e.get("clip_norm"), ".3g")] if dp else []),
            _fmt(e.get("round_seconds"), ".1f"), escape(status))
    return table


def follow_run(store: RunStore, status: Callable[[], str], *, console: Console,
               timeout: float, poll: float = 0.5, status_every: float = 5.0) -> str:
    """Show the live round table until the run finishes; return Flower's final status.

    The table follows ``metrics.jsonl``; Flower's own status (``flwr ls``, about a second
    of CPU per call) is asked every ``status_every`` s and once ``summary.json`` appears.
    """
    deadline = time.monotonic() + timeout
    state, next_status = "starting", 0.0
    with Live(round_table([]), console=console, refresh_per_second=4) as live:
        while True:
            live.update(round_table(store.events(), title=f"rounds ({state})"))
            done = store.summary() is not None
            if done or time.monotonic() >= next_status:
                state = status()
                next_status = time.monotonic() + status_every
            if state.startswith("finished"):
                live.update(round_table(store.events(), title=f"rounds ({state})"))
                break
            if time.monotonic() > deadline:
                raise DeploymentError(f"run did not finish within {timeout:.0f} s "
                                      f"(last status {state!r}); see the SuperLink log")
            time.sleep(poll)
    console.print()
    return state

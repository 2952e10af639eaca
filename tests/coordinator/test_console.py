"""The round table's caption gives each silo's rejection reason in full (the status column
has room for its start only), once per silo and reason, with the rounds it came in."""

from __future__ import annotations

import io

from rich.console import Console

from coordinator.console import round_table

LONG = ("ProtocolError[malformed-reply]: packed arrays: 'intercept' (8 bytes at 64) runs past "
        "the buffer's 71 bytes")


def _render(events: list[dict]) -> str:
    out = io.StringIO()
    Console(file=out, width=120).print(round_table(events))
    return "".join(out.getvalue().split())  # rich wraps long lines, also inside long words


def _row(n: int, rejected: dict[str, str]) -> dict:
    return {"event": "round", "round": n, "status": "ok", "rejected": rejected,
            "silos": {"hospital-b": {"accuracy": 0.9}}, "round_seconds": 1.0}


def test_each_rejection_reason_is_shown_in_full_once_with_its_rounds() -> None:
    shown = _render([_row(1, {"hospital-a": LONG}), _row(2, {"hospital-a": LONG}),
                     _row(3, {"hospital-a": "DeploymentError[reply-content-missing]: cut",
                              "hospital-c": LONG})])
    squeeze = lambda text: "".join(text.split())  # noqa: E731
    assert squeeze(f"rejected in rounds 1, 2: hospital-a: {LONG}") in shown
    assert squeeze("rejected in round 3: hospital-a: DeploymentError[reply-content-missing]: "
                   "cut") in shown
    assert squeeze(f"rejected in round 3: hospital-c: {LONG}") in shown
    assert shown.count(squeeze(LONG)) == 2  # once per silo and reason, not once per round


def test_no_rejection_no_note() -> None:
    assert "rejectedin" not in _render([_row(1, {})])

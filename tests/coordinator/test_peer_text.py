"""A silo's words — its error replies and the name it joins under — reach the coordinator's
logs, the run's events and the operator's terminal: each parsed as text of bounded length
with no control character, and shown as text, never as rich markup or escape sequences."""

from __future__ import annotations

import json
import logging

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from rich.console import Console

from coordinator.console import round_table
from coordinator.transport import _to_reply
from xsilo.terms import SiloInfo, printable


def _error_reply(reason: str) -> Message:
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    ins = Message(RecordDict(), dst_node_id=1, message_type="train")
    ins.metadata.__dict__["_message_id"] = "m"
    return Message(Error(code=0, reason=reason), reply_to=ins)


def _reply_error(reason: str):  # type: ignore[no-untyped-def]
    return _to_reply(3, _error_reply(reason)).error


def test_an_error_reply_nested_past_the_recursion_limit_ends_nothing() -> None:
    """A 100 KB reply ended the whole run with a RecursionError out of the transport."""
    error = _reply_error("[" * 50_000 + "]" * 50_000)
    assert error.type == "FlowerError" and error.message.startswith("[[[")
    assert len(error.message) < 5000


def test_an_error_replys_fields_are_bounded_printable_text() -> None:
    forged = "x\n2099-01-01 00:00:00,000 INFO coordinator.loop: round 1 completed"
    error = _reply_error(json.dumps({
        "type": "ProtocolError", "reason": "r\x1b[2K", "silo": forged,
        "message": "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07" + "m" * 10**6}))
    assert error.type == "ProtocolError" and error.silo is None  # not a silo name: no name
    assert "\x1b" not in error.reason + error.message and "\\u001b" in error.message
    assert len(error.message) < 5000 and error.message.endswith(" characters)")
    for fields in ({"type": 1, "reason": "r", "message": "m"}, ["type"], "text"):
        assert _reply_error(json.dumps(fields)).type == "FlowerError"


def test_a_join_under_a_name_with_control_characters_is_malformed() -> None:
    info = SiloInfo("hospital-a\n2099 INFO forged", {"digest": "ab" * 32})
    with pytest.raises(Exception, match="silo name of 1 to 63 printable characters"):
        SiloInfo.from_config(info.to_config())
    assert SiloInfo.from_config(SiloInfo("[red]a", {"digest": "ab" * 32}).to_config()).name


@pytest.mark.parametrize("name", ["[/]", "[/red]", "[link=https://evil.example/x]click[/link]",
                                  "[red blink]ALERT"])
def test_a_silo_name_is_shown_as_text_not_markup(name: str) -> None:
    events = [{"event": "join", "silos": {name: "fp"}},
              {"event": "round", "round": 1, "status": "ok", "silos": {name: {"accuracy": 0.5}},
               "unscored": [name], "contributors": [name]}]
    console = Console(width=400, record=True, color_system=None)
    console.print(round_table(events))
    text = console.export_text()
    assert name in text  # the literal name, no tag taken, no link made


def test_printable_keeps_text_and_escapes_controls() -> None:
    assert printable("hospital-a") == "hospital-a"
    assert printable("a\nb\x1b[0m") == "a\\u000ab\\u001b[0m"
    assert printable("a\nb", lines=True) == "a\nb"
    assert printable("x" * 10, 4) == "xxxx… (10 characters)"


def test_the_cli_error_line_carries_no_escape_sequence(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure whose message quotes a silo (say, a join refusal) cannot erase the
    terminal's line, move the cursor or print a fake "completed"."""
    import typer

    from federation import cli
    from xsilo.errors import DeploymentError

    app = typer.Typer()

    @app.command()
    def fails() -> None:
        raise DeploymentError("silo said: \x1b[2K\x1b[1A\x1b[32mcompleted\x1b[0m")

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setitem(cli._state, "registered", True)
    monkeypatch.setattr("sys.argv", ["xsilo"])
    with pytest.raises(SystemExit):
        cli.main()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\u001b[2K" in err and "completed" in err

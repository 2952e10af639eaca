"""On real processes: a silo's error reply is text the coordinator's operator reads, so a
hostile silo's cannot drive the operator's terminal or forge log lines.

hospital-b's site policy refuses the run (``max_rounds = 1``, the run asks 2). Its ClientApp
process runs a test double (a ``sitecustomize`` on the Flower processes' ``PYTHONPATH`` that
patches ``silo_client.client_app._error_reply`` when that module is imported, in the silo's
warm executor) whose refusal carries ESC sequences (cursor up, erase line, a green
"completed"), a carriage return, a newline followed by a forged log line, and a silo name
that is rich markup. The run goes on with the other two; the refusal is shown, in `xsilo coordinator
run`, `xsilo coordinator status` and the run's ``coordinator.log``, as text: every control
character written out as ``\\uXXXX``, the markup shown, not applied. In process:
``tests/coordinator/test_peer_text.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e._kills import start, with_serverapp_double

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~40 s alone
XSILO = str(Path(sys.executable).parent / "xsilo")

FORGED = "2026-12-06 12:00:00,000 INFO coordinator.loop: every silo agreed"
HOSTILE_SILO = '''
"""hospital-b's refusals, made hostile (test double, silo processes only)."""
import importlib.abc
import importlib.util
import json
import sys

TARGET = "silo_client.client_app"
MESSAGE = "\\x1b[1A\\x1b[2K\\x1b[32mround 2 completed\\x1b[0m\\n" + %r


def _patch(module):
    from flwr.app import Error, Message

    honest = module._error_reply

    def hostile(msg, exc, silo=None):
        reply = honest(msg, exc, silo)
        if silo != "hospital-b":
            return reply
        body = {"type": "PolicyRefusal\\x1b[5m", "reason": "max_rounds\\r", "message": MESSAGE,
                "silo": "[blink]hospital-b"}
        return Message(Error(code=reply.error.code, reason=json.dumps(body)), reply_to=msg)

    module._error_reply = hostile


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
''' % FORGED


def _squeeze(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines, also inside long words


def test_a_hostile_silos_refusal_reaches_the_operator_as_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = with_serverapp_double(tmp_path, monkeypatch, HOSTILE_SILO,
                                policies={"hospital-b": "max_rounds = 1\n"})
    wide = {**os.environ, "COLUMNS": "400"}
    with fed:
        start(fed, monkeypatch)
        ran = subprocess.run([XSILO, "coordinator", "run", "--home", str(fed.home_dir),
                              "--name", "text", "--rounds", "2", "--min-silos", "2",
                              "--expected-silos", "3", "--timeout", "90"],
                             capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL, env=wide)
        run_dir = fed.home_dir / "runs" / "text"
        shown = subprocess.run([XSILO, "coordinator", "status", str(run_dir)],
                               capture_output=True, text=True, timeout=60, env=wide)
        silo = next(s for s in fed.silos if s.name == "hospital-b")
        ledger = [json.loads(line)
                  for line in (silo.workspace / "egress.jsonl").read_text().splitlines()]

    assert ran.returncode == 0, ran.stdout + ran.stderr
    # the double acted: hospital-b's own ledger holds what it sent, as it sent it
    (sent,) = [e for e in ledger if e["message_type"] == "query.refusal"]
    assert json.loads(sent["extra"]["reason"])["message"].startswith("\x1b[1A\x1b[2K")
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (join,) = [e for e in events if e["event"] == "join"]
    assert sorted(join["silos"]) == ["hospital-a", "hospital-c"], join
    (refusal,) = join["refused"].values()
    shown_as = "\\u001b[32mround 2 completed\\u001b[0m\\u000a" + FORGED  # text, not codes
    assert shown_as in refusal, refusal
    log = (run_dir / "coordinator.log").read_text()
    assert shown_as in log, log[-3000:]
    for where, text in (("coordinator run", ran.stdout + ran.stderr),
                        ("coordinator status", shown.stdout), ("coordinator.log", log)):
        assert "\x1b" not in text and "\r" not in text, (where, text[-3000:])
        assert not any(line.lstrip().startswith(FORGED) for line in text.splitlines()), where
    for where, text in (("coordinator run", ran.stdout), ("coordinator status", shown.stdout)):
        # the join note (cut at 200 characters) shows the codes as text and the markup of
        # the name the silo gave as it is, not applied
        assert _squeeze("refused at join: [blink]hospital-b: PolicyRefusal\\u001b[5m"
                        "[max_rounds\\u000d]: \\u001b[1A\\u001b[2K" + shown_as[:60]
                        ) in _squeeze(text), (where, text)

"""Approved code only, on real SuperLink/SuperNode processes (silo_client.apps).

A rogue app — xsilo's own ServerApp, so the operator's run directory records what the silos
answer, but a ClientApp of its own that, on import, reads every silo's node key and
training data — is submitted the way `xsilo coordinator run` submits runs (FlowerCLI.submit
of an app directory). Warm silos refuse it before any of its code runs; the default app still
runs; once a silo approves the rogue app's hash, it runs there. A silo configured with
Flower's own executor does not start at all, unless its site policy opts out — and then the
rogue code does run (the unprotected mode, documented as such).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from coordinator.config import RunConfig, write_run_config
from coordinator.console import round_table
from coordinator.run_store import RunStore
from coordinator.runs import new_run_dir
from deploy.launch.fab import build_fab, fab_digest, xsilo_app_hash
from federation.deployment import LocalFederation
from silo_client.cli import app as silo_cli
from silo_client.ledger import LEDGER_FILE, verify_ledger
from silo_client.member import start_member
from xsilo.errors import ConfigError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone

MARKER = "rogue-ran"
ROGUE_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rogue"
version = "1.0.0"
description = "not the consortium's app"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "coordinator.server_app:app"
clientapp = "rogue_client:app"

[tool.flwr.app.config]
run-dir = ""
"""
ROGUE_CLIENT = """\
import glob, os, pathlib
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

ROOT = pathlib.Path({root!r})
# At import: what any app the SuperNode loads could do as the silo's user.
LOOT = {{p: len(pathlib.Path(p).read_bytes()) for p in
        glob.glob(str(ROOT / "silos" / "*" / "node.key"))
        + glob.glob(str(ROOT / "silos" / "*" / "data" / "train.csv"))}}
with open(ROOT / {marker!r}, "a") as fh:
    fh.write(f"imported pid={{os.getpid()}} read={{sorted(LOOT)}}\\n")

app = ClientApp()


@app.query()
def loot(msg, context):
    with open(ROOT / {marker!r}, "a") as fh:
        fh.write(f"ran at {{context.node_config['silo-config']}}\\n")
    return Message(RecordDict({{"loot": ConfigRecord({{"bytes": sum(LOOT.values())}})}}),
                   reply_to=msg)
"""


def _rogue_app(root: Path) -> Path:
    app = root / "rogue"
    app.mkdir()
    (app / "pyproject.toml").write_text(ROGUE_PYPROJECT)
    (app / "rogue_client.py").write_text(ROGUE_CLIENT.format(root=str(root), marker=MARKER))
    return app


def _config(name: str) -> RunConfig:
    return RunConfig(num_rounds=1, min_silos=3, expected_silos=3, round_timeout=30.0,
                     join_timeout=40.0, name=name)


def _submit(fed: LocalFederation, app: Path, name: str, timeout: float = 50.0
            ) -> tuple[int, str, RunStore]:
    """Start a run of ``app`` as `xsilo coordinator run` does; wait for Flower's verdict."""
    run_dir = new_run_dir(fed.home.runs, name)
    config = _config(name)
    write_run_config(run_dir / "config.toml", config)
    cli = fed.home.cli()
    run_id = cli.submit(app, {"run-dir": str(run_dir.resolve())})
    store = RunStore(run_dir)
    deadline = time.monotonic() + timeout
    while store.summary() is None:  # the ServerApp writes it last, failed or not
        assert time.monotonic() < deadline, f"run {name} wrote no summary in {timeout:.0f} s"
        time.sleep(0.5)
    while not (status := cli.status(run_id)).startswith("finished"):
        assert time.monotonic() < deadline + 20, status
        time.sleep(1)
    return run_id, status, store


def _ledger(silo) -> list[dict]:  # type: ignore[no-untyped-def]
    path = silo.workspace / LEDGER_FILE
    assert verify_ledger(path).ok
    return [json.loads(line) for line in path.read_text().splitlines()]


def _event(store: RunStore, kind: str) -> dict:
    return next(e for e in store.events() if e["event"] == kind)


def test_warm_silos_refuse_an_unapproved_app_and_run_the_default(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rogue = _rogue_app(tmp_path)
    rogue_hash = fab_digest(build_fab(rogue))  # what `flwr run` uploads for it
    fed = LocalFederation(tmp_path).setup()
    caplog.set_level(logging.WARNING, logger="silo_client.member")
    with fed:
        fed.start()
        run_id, status, store = _submit(fed, rogue, "rogue")
        outcome = fed.run(_config("approved"), timeout=50)
        logs = {s.name: fed.supernodes[s.name].companions[0].log_tail(400) for s in fed.silos}
        processes = list(fed.processes)
    names = [s.name for s in fed.silos]
    assert not (tmp_path / MARKER).exists(), (tmp_path / MARKER).read_text()

    # What the operator sees: Flower's verdict and, in the run directory, each silo by name.
    assert status == "finished:failed"
    assert _event(store, "start")["fab_hash"] == rogue_hash
    join = _event(store, "join")
    assert join["silos"] == {} and sorted(join["refused"]) == names
    for name, why in join["refused"].items():
        assert why.startswith(f"PolicyRefusal[approved_apps]: silo {name} runs only approved "
                              f"apps, and run {run_id}'s app @mallory/rogue==1.0.0 (sha256 "
                              f"{rogue_hash}) is not one of them: none of its code ran"), why
        assert f"xsilo silo approve-app --hash {rogue_hash}" in why
    summary = store.summary()
    assert summary["status"] == "failed" and "only 0 silo(s) joined" in summary["error"]["message"]
    shown = Console(record=True, width=250)  # what `xsilo coordinator status RUN_DIR` prints
    shown.print(round_table(store.events()))
    caption = " ".join(shown.export_text().split())  # the caption wraps at the table's width
    for name in names:
        assert (f"refused at join: {name}: PolicyRefusal[approved_apps]: silo {name} runs only "
                "approved apps") in caption, caption

    # What each silo keeps: a refusal line in its ledger, a warning in its log and console.
    for silo in fed.silos:
        refusals = [e for e in _ledger(silo) if e["message_type"].endswith(".refusal")]
        assert [(e["message_type"], e["run_id"], e["extra"]["fab_hash"]) for e in refusals] \
            == [("query.refusal", str(run_id), rogue_hash)]
        body = json.loads(refusals[0]["extra"]["reason"])
        assert (body["type"], body["reason"], body["silo"]) == ("PolicyRefusal", "approved_apps",
                                                                silo.name)
        assert f"PolicyRefusal[approved_apps]: silo {silo.name} runs only" in logs[silo.name]
        assert "Exit Code:" not in logs[silo.name]  # every task, refused or run, exited 0
    console = [r.getMessage() for r in caplog.records if r.name == "silo_client.member"]
    for name in names:
        assert any(m.startswith(f"silo {name} refused query of run {run_id}: "
                                "PolicyRefusal[approved_apps]") for m in console), console

    # The release's own app is approved by default: its hash is the one that reached them.
    assert outcome.completed, outcome.summary
    assert _event(outcome.store, "start")["fab_hash"] == xsilo_app_hash()
    assert sorted(_event(outcome.store, "join")["silos"]) == names
    assert all(not p.alive() for p in processes)


def test_a_silo_runs_the_app_once_it_approved_its_hash(tmp_path: Path) -> None:
    """One executor (warm): the flower executor is refused at start, or runs anything."""
    rogue = _rogue_app(tmp_path)
    rogue_hash = fab_digest(build_fab(rogue))
    fed = LocalFederation(tmp_path).setup()
    runner = CliRunner(env={"COLUMNS": "250"})
    for silo in fed.silos[:2]:  # hospital-c does not approve it
        res = runner.invoke(silo_cli, ["approve-app", "--hash", rogue_hash, "--config",
                                       str(silo.path), "--note", "reviewed by the board"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(silo_cli, ["apps", "--config", str(silo.path)])
        assert rogue_hash in res.output and "reviewed by the board" in res.output
    with fed:
        fed.start()
        run_id, status, store = _submit(fed, rogue, "approved-rogue")
        processes = list(fed.processes)
    ran = (tmp_path / MARKER).read_text().splitlines()
    a, b, c = fed.silos
    assert sorted(line for line in ran if line.startswith("ran at ")) \
        == sorted(f"ran at {s.path}" for s in (a, b)), ran
    assert sum(line.startswith("imported") for line in ran) == 2, ran
    # installed from the verified bytes, in a directory named by their full hash
    assert [(s.workspace / "flwr-home" / "approved" / rogue_hash / "apps").is_dir()
            for s in (a, b, c)] == [True, True, False]
    refused = _event(store, "join")["refused"]
    assert refused[c.name].startswith("PolicyRefusal[approved_apps]: silo hospital-c"), refused
    # the rogue app's replies carry no silo identity: xsilo's ServerApp admits nobody
    others = sorted(k for k in refused if k != c.name)
    assert len(others) == 2 and all(k.startswith("node-") for k in others), refused
    assert status == "finished:failed"
    assert [e["extra"]["fab_hash"] for e in _ledger(c)] == [rogue_hash]
    assert all(not e["message_type"].endswith(".refusal") for s in (a, b) for e in
               (_ledger(s) if (s.workspace / LEDGER_FILE).exists() else []))
    assert all(not p.alive() for p in processes)


def test_a_flower_executor_silo_does_not_start_without_the_opt_out(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, executor="flower").setup()
    silo = fed.silos[0]
    with pytest.raises(ConfigError, match=r'executor = "flower" runs whatever app a run carries'
                       r'.*--trusted-entities.*Use executor = "warm".*allow_unapproved_code'):
        start_member(silo)
    assert not (silo.workspace / "supernode.log").exists()  # nothing was started
    res = CliRunner().invoke(silo_cli, ["start", "--config", str(silo.path)])
    assert isinstance(res.exception, ConfigError), res.output


def test_with_the_opt_out_the_flower_executor_runs_any_app(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The documented unprotected mode: the rogue app's code runs at every silo. Flower's
    own executor runs the consortium's app too: no SuperExec of xsilo's beside the
    SuperNode (no isolation flag, no shared secret), and a real run completes."""
    rogue = _rogue_app(tmp_path)
    fed = LocalFederation(tmp_path, executor="flower", allow_unapproved_code=True).setup()
    caplog.set_level(logging.WARNING, logger="silo_client.apps")
    with fed:
        fed.start()
        for silo in fed.silos:
            node = fed.supernodes[silo.name]
            assert "--isolation" not in node.popen.args and node.companions == []
            assert not (silo.workspace / "flwr-home" / "superexec-auth.secret").exists()
        _, status, _ = _submit(fed, rogue, "unprotected", timeout=70.0)
        outcome = fed.run(_config("consortium-app"), timeout=70)
        processes = list(fed.processes)
    assert outcome.status == "finished:completed", outcome.summary
    rows = [e for e in outcome.store.events() if e["event"] == "round"]
    assert rows[1]["contributors"] == sorted(s.name for s in fed.silos), rows[1]
    assert sum("UNSAFE" in r.getMessage() and "ANY app" in r.getMessage()
               for r in caplog.records) == 3
    ran = (tmp_path / MARKER).read_text().splitlines()
    assert sorted(line for line in ran if line.startswith("ran at ")) == sorted(
        f"ran at {s.path}" for s in fed.silos), ran
    assert status == "finished:failed"
    assert all(not p.alive() for p in processes)

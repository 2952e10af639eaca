"""Approved code only, without processes: the default app's hash, the approvals file, the
CLI commands, the warm executor's app gate (silo_client.apps) and what starts a silo."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run
from typer.testing import CliRunner

from deploy.launch.fab import (XSILO_APP, build_fab, fab_app_id, fab_digest, normalize_fab_hash,
                               xsilo_app_hash)
from deploy.launch.processes import find_binary, flower_env, start_supernode
from deploy.launch.runner import Task, load_gate
from federation.demo_data import demo_schema
from silo_client import apps
from silo_client.cli import app as silo_cli
from silo_client.config import SiloConfig, load_silo_config, write_silo_config
from silo_client.ledger import LEDGER_FILE, EgressLedger, payload_digest, verify_ledger
from silo_client.member import RefusalWatch
from silo_client.policy import SitePolicy
from xsilo.errors import ConfigError
from xsilo.protocol import ERROR_CODES

runner = CliRunner(env={"COLUMNS": "250"})
ROGUE = """\
[project]
name = "rogue"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "rogue_server:app"
clientapp = "rogue_client:app"
"""


@pytest.fixture()
def silo(tmp_path: Path) -> SiloConfig:
    path = write_silo_config(tmp_path / "silo" / "silo.toml", name="hospital-a",
                             train=Path("train.csv"), schema=demo_schema(),
                             model="sklearn:LogisticRegression")
    return load_silo_config(path)


@pytest.fixture()
def rogue(tmp_path: Path) -> Path:
    app = tmp_path / "rogue"
    app.mkdir()
    (app / "pyproject.toml").write_text(ROGUE)
    (app / "rogue_client.py").write_text("raise SystemExit('never imported here')\n")
    return app


# ------------------------------------------------------------------------- the default
def test_the_default_hash_is_the_hash_of_what_flwr_builds(tmp_path: Path) -> None:
    """`flwr build` (the builder `flwr run` uses) writes the very bytes the silo hashes;
    the directory's name and place play no part (it wants a hyphenated name)."""
    app = tmp_path / "xsilo-app"
    shutil.copytree(XSILO_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([find_binary("flwr"), "build", "--app", str(app)], cwd=tmp_path,
                         env=flower_env(tmp_path / "flwr-home"), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    (fab,) = tmp_path.glob("*.fab")
    assert fab.name == f"xsilo.xsilo-app.0-1-0.{xsilo_app_hash()[:8]}.fab"
    assert fab_digest(fab.read_bytes()) == xsilo_app_hash()


def test_the_default_app_is_deterministic_and_carries_no_code() -> None:
    content = build_fab(XSILO_APP)
    assert build_fab(XSILO_APP) == content and fab_digest(content) == xsilo_app_hash()
    with zipfile.ZipFile(io.BytesIO(content)) as fab:
        assert sorted(fab.namelist()) == [".info/CONTENT", "README.md", "pyproject.toml"]
        project = fab.read("pyproject.toml").decode()
    assert 'clientapp = "silo_client.client_app:app"' in project
    assert 'serverapp = "coordinator.server_app:app"' in project
    assert fab_app_id(content) == "@xsilo/xsilo-app==0.1.0"


def test_coordinator_submits_the_app_the_silos_build() -> None:
    from coordinator.runs import APP_DIR

    assert APP_DIR == XSILO_APP and (APP_DIR / "pyproject.toml").is_file()


def test_a_hash_is_64_hex_digits() -> None:
    h = "AB" * 32
    assert normalize_fab_hash(f" sha256:{h} ") == h.lower()
    for bad in ("ab" * 31, "zz" * 32, ""):
        with pytest.raises(ConfigError, match="not a SHA-256 hash"):
            normalize_fab_hash(bad)


# ---------------------------------------------------------------------- approvals file
def test_approvals_are_kept_in_the_workspace(silo: SiloConfig) -> None:
    assert [a.default for a in apps.approved_apps(silo)] == [True]
    h = "ab" * 32
    approval = apps.approve(silo, f"sha256:{h.upper()}", note=" reviewed by the board ",
                            approved_by="alice@site")
    assert (approval.fab_hash, approval.note, approval.source) == (h, "reviewed by the board",
                                                                   "hash")
    data = json.loads((silo.workspace / apps.APPROVALS_FILE).read_text())
    assert data["version"] == 1 and data["apps"] == [approval.to_json()]
    assert data["apps"][0]["approved_by"] == "alice@site"
    assert data["apps"][0]["approved_at"].endswith("Z")
    listed = apps.approved_apps(silo)
    assert [(a.fab_hash, a.default) for a in listed] == [(xsilo_app_hash(), True), (h, False)]
    assert apps.find_approval(silo, h) == approval
    assert apps.find_approval(silo, xsilo_app_hash()).default  # type: ignore[union-attr]
    assert apps.find_approval(silo, "cd" * 32) is None


def test_approving_refuses_duplicates_the_default_and_no_note(silo: SiloConfig) -> None:
    apps.approve(silo, "ab" * 32, note="ok")
    with pytest.raises(ConfigError, match="approved already"):
        apps.approve(silo, "ab" * 32, note="again")
    with pytest.raises(ConfigError, match="this xsilo release's own run stub"):
        apps.approve(silo, xsilo_app_hash(), note="x")
    with pytest.raises(ConfigError, match="needs a note"):
        apps.approve(silo, "cd" * 32, note="  ")
    assert len(apps.load_approvals(apps.approvals_path(silo))) == 1


@pytest.mark.parametrize("text, match", [
    ("{", "cannot be read"),
    ('{"version": 2, "apps": []}', "expected"),
    ('{"version": 1, "apps": [{"hash": "ab"}]}', "needs string fields"),
    ('{"version": 1, "apps": [{"hash": "xyz", "note": "", "approved_by": "", '
     '"approved_at": "", "source": ""}]}', "not a SHA-256 hash"),
])
def test_a_broken_approvals_file_is_a_config_error(silo: SiloConfig, text: str,
                                                   match: str) -> None:
    path = apps.approvals_path(silo)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        apps.load_approvals(path)


def test_a_fab_file_and_its_app_directory_have_one_hash(tmp_path: Path, rogue: Path) -> None:
    fab = tmp_path / "rogue.fab"
    fab.write_bytes(build_fab(rogue))
    by_file, by_dir = apps.fab_of(fab), apps.fab_of(rogue)
    assert by_file[:2] == by_dir[:2] == (fab_digest(fab.read_bytes()), "@mallory/rogue==1.0.0")
    assert (by_file[2], by_dir[2]) == ("file:rogue.fab", f"dir:{rogue.resolve()}")
    (tmp_path / "junk.fab").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a Flower app bundle"):
        apps.fab_of(tmp_path / "junk.fab")
    with pytest.raises(ConfigError, match="does not exist"):
        apps.fab_of(tmp_path / "missing.fab")


# ------------------------------------------------------------------------------ the CLI
def test_cli_approves_by_hash_and_by_file_and_lists_them(tmp_path: Path, silo: SiloConfig,
                                                         rogue: Path) -> None:
    h = "ab" * 32
    res = runner.invoke(silo_cli, ["approve-app", "--hash", h, "--note", "board #12",
                                   "--config", str(silo.path)])
    assert res.exit_code == 0 and f"sha256 {h}" in res.output, res.output
    fab = tmp_path / "rogue.fab"
    fab.write_bytes(build_fab(rogue))
    res = runner.invoke(silo_cli, ["approve-app", str(fab), "--note", "board #13",
                                   "--config", str(silo.path)])
    assert res.exit_code == 0 and "@mallory/rogue==1.0.0" in res.output, res.output
    res = runner.invoke(silo_cli, ["apps", "--config", str(silo.path)])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines()
            if line.count("│") > 3 and line.split("│")[1].strip()}
    assert list(rows) == [xsilo_app_hash(), h, fab_digest(fab.read_bytes())]
    assert "default" in rows[xsilo_app_hash()] and "@xsilo/xsilo-app==0.1.0" in rows[
        xsilo_app_hash()]
    assert "board #12" in rows[h] and "default" not in rows[h]
    assert "board #13" in rows[fab_digest(fab.read_bytes())]


@pytest.mark.parametrize("args, match", [
    ([], "either as a .fab file"),
    (["x.fab", "--hash", "ab" * 32], "either as a .fab file"),
    (["--hash", "nothex"], "not a SHA-256 hash"),
])
def test_cli_approve_app_errors(silo: SiloConfig, args: list[str], match: str) -> None:
    res = runner.invoke(silo_cli, ["approve-app", *args, "--note", "n", "--config",
                                   str(silo.path)])
    assert isinstance(res.exception, ConfigError) and match in str(res.exception)
    assert not apps.approvals_path(silo).exists()


def test_cli_approve_app_needs_a_note(silo: SiloConfig) -> None:
    res = runner.invoke(silo_cli, ["approve-app", "--hash", "ab" * 32, "--config",
                                   str(silo.path)])
    assert res.exit_code == 2 and "--note" in res.output


# ----------------------------------------------------------------------------- the gate
@pytest.fixture(autouse=True)
def _task_identity(task_identity: None) -> None:
    """Every test here builds messages outside a Flower runtime (tests/conftest.py)."""


def _task(silo: SiloConfig | None, content: bytes, *, claimed: str | None = None,
          message_type: str = "query") -> Task:
    msg = Message(RecordDict(), dst_node_id=1, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = "m1"
    node_config = {"silo-config": str(silo.path)} if silo else {}
    context = Context(run_id=7, node_id=1, node_config=node_config, state=RecordDict(),
                      run_config={})
    run = Run.create_empty(7)
    run.fab_id, run.fab_version = "mallory/rogue", "1.0.0"
    digest = fab_digest(content)
    return Task(msg, context, run, Fab(claimed or digest, content, {}))


def test_the_gate_answers_the_default_app_with_the_installed_clientapp(
        silo: SiloConfig) -> None:
    from silo_client.client_app import app as installed

    assert apps.admit(_task(silo, build_fab(XSILO_APP))) is installed
    assert not (silo.workspace / LEDGER_FILE).exists()


def test_the_gate_refuses_an_unapproved_app_records_and_logs_it(
        silo: SiloConfig, rogue: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    content = build_fab(rogue)
    task = _task(silo, content, message_type="train")
    with caplog.at_level(logging.WARNING, logger="silo_client.apps"):
        handler = apps.admit(task)
    reply = handler(message=task.message, context=task.context)
    assert reply.has_error() and reply.error.code == ERROR_CODES["PolicyRefusal"] == 9001
    body = json.loads(reply.error.reason)
    assert (body["type"], body["reason"], body["silo"]) == ("PolicyRefusal", "approved_apps",
                                                            "hospital-a")
    assert f"@mallory/rogue==1.0.0 (sha256 {fab_digest(content)})" in body["message"]
    assert reply.metadata.reply_to_message_id == "m1"
    assert "refusing train of run 7: PolicyRefusal[approved_apps]" in caplog.text
    assert verify_ledger(silo.workspace / LEDGER_FILE).ok
    (entry,) = [json.loads(line) for line in (silo.workspace / LEDGER_FILE).read_text()
                .splitlines()]
    assert (entry["message_type"], entry["run_id"], entry["tensors"]) == ("train.refusal", "7",
                                                                          {})
    assert entry["extra"] == {"reason": reply.error.reason, "fab_hash": fab_digest(content),
                              "app": "mallory/rogue==1.0.0"}
    # approved: the bundle's own ClientApp is what the gate hands back (loaded from it)
    apps.approve(silo, fab_digest(content), note="reviewed")
    loaded: list[Task] = []
    monkeypatch.setattr(apps, "_bundle_app", lambda t: loaded.append(t) or "bundle-app")
    assert apps.admit(task) == "bundle-app" and loaded == [task]


def test_the_gate_refuses_a_bundle_whose_bytes_do_not_match_its_name(
        silo: SiloConfig) -> None:
    task = _task(silo, build_fab(XSILO_APP), claimed="00" * 32)
    reply = apps.admit(task)(message=task.message, context=task.context)
    assert "hashes to" in json.loads(reply.error.reason)["message"]
    assert task.fab_hash == xsilo_app_hash()  # computed from the bytes, not the claim


def test_the_gate_fails_closed(silo: SiloConfig, rogue: Path) -> None:
    task = _task(None, build_fab(XSILO_APP))  # no silo config: nothing to check against
    body = json.loads(apps.admit(task)(message=task.message, context=task.context).error.reason)
    assert body["reason"] == "approved_apps" and "silo" not in body
    apps.approvals_path(silo).parent.mkdir(parents=True)
    apps.approvals_path(silo).write_text("{")  # a broken list: only the default runs
    task = _task(silo, build_fab(rogue))
    body = json.loads(apps.admit(task)(message=task.message, context=task.context).error.reason)
    assert "cannot be read" in body["message"]
    from silo_client.client_app import app as installed

    assert apps.admit(_task(silo, build_fab(XSILO_APP))) is installed


def test_a_failed_task_is_reported_as_flower_reports_it() -> None:
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode
    from flwr.supercore.exit import ExitCode

    from deploy.launch.runner import _failure

    msg = _task(None, b"").message
    reply, details, code = _failure(ImportError("no module named x"), msg)
    assert code == ExitCode.COMMON_APP_IMPORT_ERROR and "no module named x" in details
    assert reply is not None and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    reply, _, code = _failure(LoadClientAppError("bad ref"), msg)
    assert reply is not None and code == ExitCode.TASK_PROC_EXCEPTION
    assert reply.error.code == ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    assert _failure(RuntimeError("x"), None)[0] is None  # nothing pulled: nothing to answer


def test_the_runner_loads_its_gate() -> None:
    assert load_gate("silo_client.apps:admit") is apps.admit
    for bad, match in (("silo_client.apps", "MODULE:ATTR"), ("silo_client.apps:nope", "no "
                                                             "callable")):
        with pytest.raises(ConfigError, match=match):
            load_gate(bad)


# ----------------------------------------------------------------- what starts a silo
def test_the_flower_executor_starts_only_with_the_opt_out(
        silo: SiloConfig, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    flower = replace(silo, executor="flower")
    with pytest.raises(ConfigError, match=r'executor = "flower" runs whatever app.*'
                       r'--trusted-entities.*executor = "warm"'):
        apps.check_executor(flower, SitePolicy())
    with caplog.at_level(logging.WARNING, logger="silo_client.apps"):
        apps.check_executor(flower, SitePolicy(allow_unapproved_code=True))
        apps.check_executor(silo, SitePolicy())
        assert "UNSAFE" in caplog.text and "ANY app" in caplog.text
        apps.check_executor(silo, SitePolicy(allow_unapproved_code=True))
        assert "has no effect with the 'warm' executor" in caplog.text
    with pytest.raises(ConfigError, match="allow_unapproved_code = 'yes': must be true or"):
        SitePolicy(allow_unapproved_code="yes")  # type: ignore[arg-type]


def test_the_warm_executor_needs_an_app_gate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an app gate"):
        start_supernode(flwr_home=tmp_path, log_path=tmp_path / "n.log", superlink="x:1",
                        root_cert=tmp_path / "ca", auth_key=None, silo_config=tmp_path / "s",
                        clientappio_port=1)
    assert not (tmp_path / "n.log").exists()
    out = subprocess.run([sys.executable, "-m", "deploy.launch.executor",
                          "--runtime-api-address", "127.0.0.1:1"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--app-gate" in out.stderr


def test_the_console_shows_each_refusal_the_ledger_gains(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = EgressLedger(path)

    def append(kind: str, extra: dict) -> None:
        ledger.append(run_id="7", server_round=0, message_type=kind, tensors={},
                      payload_sha256=payload_digest({}, {}), masked=False, clip_norm=None,
                      noise_sigma=None, epsilon=None, extra=extra)

    append("query.refusal", {"reason": "old"})  # before the silo started: not shown again
    watch = RefusalWatch(path, "hospital-a")
    reason = json.dumps({"type": "PolicyRefusal", "reason": "approved_apps", "message": "no"})
    append("query", {})
    append("query.refusal", {"reason": reason, "fab_hash": "ab" * 32})
    with path.open("ab") as fh:
        fh.write(b'{"message_type": "train.refusal"')  # half a line: read next time
    with caplog.at_level(logging.WARNING, logger="silo_client.member"):
        assert [e["message_type"] for e in watch.poll()] == ["query.refusal"]
        assert watch.poll() == []
    assert caplog.messages == ["silo hospital-a refused query of run 7: "
                               "PolicyRefusal[approved_apps]: no"]


def test_the_console_shows_a_refusal_as_text(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A refusal may quote what the coordinator sent: its control characters are shown as
    ``\\uXXXX``, never sent to the silo operator's terminal or log as they are."""
    path = tmp_path / LEDGER_FILE
    watch = RefusalWatch(path, "hospital-a")
    reason = json.dumps({"type": "ConfigError", "reason": "ConfigError",
                         "message": "run \x1b[2K\x1b[32mok\x1b[0m\nINFO forged"})
    EgressLedger(path).append(
        run_id="7\x1b[1A", server_round=0, message_type="query.refusal", tensors={},
        payload_sha256=payload_digest({}, {}), masked=False, clip_norm=None, noise_sigma=None,
        epsilon=None, extra={"reason": reason})
    with caplog.at_level(logging.WARNING, logger="silo_client.member"):
        assert len(watch.poll()) == 1
    (said,) = caplog.messages
    assert "\x1b" not in said and "\n" not in said, said
    assert said == ("silo hospital-a refused query of run 7\\u001b[1A: ConfigError[ConfigError]: "
                    "run \\u001b[2K\\u001b[32mok\\u001b[0m\\u000aINFO forged")

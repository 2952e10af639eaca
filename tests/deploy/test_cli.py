"""deploy.pki.cli: the operator and silo commands end to end on disk (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deploy.pki.cli import enroll_cmd, import_cmd, pki_app, renew_cmd
from xsilo.errors import EnrollmentError

runner = CliRunner(env={"COLUMNS": "250"})


def _silo_app() -> typer.Typer:
    app = typer.Typer()
    app.command("enroll")(enroll_cmd)
    app.command("import-bundle")(import_cmd)
    app.command("renew")(renew_cmd)
    return app


def test_operator_and_silo_flow(tmp_path: Path) -> None:
    pki, kit = ["--pki-dir", str(tmp_path / "pki")], tmp_path / "kit"
    silo = _silo_app()
    res = runner.invoke(pki_app, ["init", *pki, "--organization", "Consortium", "--no-encrypt"])
    assert res.exit_code == 0, res.output
    fp = next(line.strip() for line in res.output.splitlines() if line.count(":") == 31)
    assert runner.invoke(pki_app, ["issue-coordinator", *pki, "--host", "localhost",
                                   "--ip", "127.0.0.1", "--port", "9443"]).exit_code == 0
    res = runner.invoke(silo, ["enroll", "hospital-a", "--kit", str(kit), "--email", "a@b.example"])
    assert res.exit_code == 0 and "node key SHA256:" in res.output, res.output
    res = runner.invoke(pki_app, ["approve", str(kit / "request.json"), *pki], input="n\n")
    assert isinstance(res.exception, EnrollmentError)
    assert json.loads((tmp_path / "pki" / "index.json").read_text())["certificates"][-1]["kind"] \
        == "superlink"
    res = runner.invoke(pki_app, ["approve", str(kit / "request.json"), *pki, "--yes"])
    assert res.exit_code == 0 and "hospital-a" in res.output
    bundle = tmp_path / "pki" / "bundles" / "hospital-a.json"
    res = runner.invoke(silo, ["import-bundle", str(bundle), "--kit", str(kit),
                               "--ca-fingerprint", fp])
    assert res.exit_code == 0, res.output
    assert runner.invoke(silo, ["renew", "--kit", str(kit)]).exit_code == 0
    res = runner.invoke(pki_app, ["renew", "hospital-a", *pki,
                                  "--request", str(kit / "renew-request.json")])
    assert res.exit_code == 0, res.output
    assert runner.invoke(silo, ["renew", "--kit", str(kit), "--bundle", str(bundle)]).exit_code == 0
    res = runner.invoke(pki_app, ["status", *pki])
    assert res.exit_code == 0 and "superseded" in res.output and "coordinator" in res.output
    assert runner.invoke(pki_app, ["revoke", "hospital-a", *pki, "--yes"]).exit_code == 0
    res = runner.invoke(pki_app, ["list", *pki])
    assert "revoked" in res.output
    assert runner.invoke(pki_app, ["crl", *pki]).exit_code == 0


def test_errors_surface_as_xsilo_errors(tmp_path: Path) -> None:
    res = runner.invoke(pki_app, ["status", "--pki-dir", str(tmp_path / "none")])
    assert isinstance(res.exception, EnrollmentError)
    assert "xsilo pki init" in str(res.exception)


def test_fingerprints_are_never_cut_in_a_narrow_terminal(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """At 40 columns every fingerprint a command prints is there whole, on one line: the
    operator reads it out by phone and compares it character by character (issue 18)."""
    import deploy.pki.cli as pki_cli
    import silo_client.apps_cli as apps_cli
    from deploy.pki.authority import Pki
    from deploy.pki.messages import read_request
    from federation.demo_data import demo_schema
    from silo_client.cli import app as silo_cli
    from silo_client.config import write_silo_config

    monkeypatch.setenv("COLUMNS", "40")
    for console in (pki_cli._out, apps_cli.console):
        # a console made while another test's CliRunner had COLUMNS set keeps that width
        monkeypatch.setattr(console, "_width", None)
    assert pki_cli._out.width == 40 and apps_cli.console.width == 40  # the test is real
    narrow = CliRunner(env={"COLUMNS": "40"})
    pki, kit = ["--pki-dir", str(tmp_path / "pki")], tmp_path / "kit"

    def run(app: typer.Typer, *args: str) -> list[str]:
        res = narrow.invoke(app, list(args))
        assert res.exit_code == 0, res.output
        return res.output.splitlines()

    def whole(fp: str, lines: list[str]) -> None:
        assert any(fp in line for line in lines), (fp, lines)

    created = run(pki_app, "init", *pki, "--no-encrypt")
    ca = Pki(tmp_path / "pki")
    run(pki_app, "issue-coordinator", *pki, "--host", "coordinator.consortium.example")
    whole(ca.ca_fingerprint, created)
    enrolled = run(_silo_app(), "enroll", "hospital-a", "--kit", str(kit), "--email", "a@b.c")
    req = read_request(kit / "request.json")
    approved = run(pki_app, "approve", str(kit / "request.json"), *pki, "--yes")
    for fp in (req.tls_key_fingerprint, req.node_key_fingerprint):
        assert len(fp) > 40
        whole(fp, enrolled)
        whole(fp, approved)
    node_key = ca.records()[-1].node_key_sha256
    assert node_key
    whole(node_key, run(pki_app, "list", *pki))
    status = run(pki_app, "status", *pki)
    whole(node_key, status)
    whole(ca.ca_fingerprint, status)

    site = write_silo_config(tmp_path / "silo" / "silo.toml", name="hospital-a",
                             train=Path("train.csv"), schema=demo_schema(),
                             model="sklearn:LogisticRegression")
    digest = "ab" * 32
    whole(digest, run(silo_cli, "approve-app", "--hash", digest, "--note", "board #12",
                      "--config", str(site)))
    whole(digest, run(silo_cli, "apps", "--config", str(site)))


def test_request_contents_are_shown_as_written_never_as_markup(tmp_path: Path) -> None:
    """Contact fields come from the silo's file: `[/]` must not crash `pki approve`, and
    markup must not restyle or hide what the operator reads beside the fingerprints."""
    pki, kit = ["--pki-dir", str(tmp_path / "pki")], tmp_path / "kit"
    assert runner.invoke(pki_app, ["init", *pki, "--no-encrypt"]).exit_code == 0
    assert runner.invoke(pki_app, ["issue-coordinator", *pki, "--host", "localhost"]).exit_code == 0
    res = runner.invoke(_silo_app(), ["enroll", "hospital-a", "--kit", str(kit), "--email",
                                      "a@b.example", "--phone", "[/]",
                                      "--person", "[on black]Eve[/]"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(pki_app, ["approve", str(kit / "request.json"), *pki, "--yes"])
    assert res.exit_code == 0, res.output
    assert "[/]" in res.output and "[on black]Eve[/]" in res.output

"""deploy.pki.cli: the operator and silo commands end to end on disk (no network)."""

from __future__ import annotations

import json
from pathlib import Path

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
    res = runner.invoke(pki_app, ["init", *pki, "--organization", "Consortium"])
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

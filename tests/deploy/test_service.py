"""systemd units: `xsilo coordinator install-service` and `xsilo silo install-service` write
units that `systemd-analyze verify` accepts, with the sandbox the docs promise; the reminder
commands they schedule fail when something needs doing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from coordinator.home import CoordinatorHome, write_gateway_home
from coordinator.service import coordinator_service, install_service_cmd as coord_install
from deploy.pki.authority import Pki
from deploy.service import HARDENING, Service, render_units, systemd_quote
from silo_client.config import load_silo_config
from silo_client.service import install_service_cmd as silo_install
from silo_client.status import silo_notices
from tests.deploy.conftest import enroll_silo, make_pki
from xsilo.errors import ConfigError

runner = CliRunner(env={"COLUMNS": "250"})
XSILO = Path(sys.executable).parent / "xsilo"  # verify needs ExecStart to exist
SITE = """
[data]
train = "/srv/xsilo/data/train.csv"
test = "/srv/xsilo/data/test.csv"

[data.schema]
label = "label"
label_values = [0, 1]
features = { "age" = "float" }

[model]
spec = "sklearn:LogisticRegression"
"""


def _app(command) -> typer.Typer:
    app = typer.Typer()
    app.command("install-service")(command)
    app.command("unused")(lambda: None)  # two commands: typer keeps the sub-command name
    return app


def _units(out: Path) -> dict[str, dict[str, list[str]]]:
    """unit file name → {"Key": [values]} over all its sections."""
    parsed = {}
    for path in sorted(out.iterdir()):
        keys: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                keys.setdefault(key, []).append(value)
        parsed[path.name] = keys
    return parsed


def _verify(out: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: `apt-get install systemd`); "
                    "the units were written but not verified")
    files = sorted(str(p) for p in out.iterdir())
    res = subprocess.run([tool, "verify", "--man=no", *files], capture_output=True, text=True,
                         timeout=60)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    assert not [line for line in text.splitlines() if str(out) in line], text  # no warning


@pytest.fixture
def home(tmp_path: Path) -> CoordinatorHome:
    make_pki(tmp_path / "pki")
    write_gateway_home(tmp_path / "coord", pki_dir=tmp_path / "pki")
    return CoordinatorHome.load(tmp_path / "coord")


def test_coordinator_units_verify_and_are_sandboxed(home: CoordinatorHome,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "units"
    res = runner.invoke(_app(coord_install), ["install-service", "--home", str(home.root),
                                              "--output-dir", str(out), "--user", "xsilo-test",
                                              "--xsilo", str(XSILO)])
    assert res.exit_code == 0, res.output
    units = _units(out)
    assert sorted(units) == ["xsilo-coordinator-certs.service", "xsilo-coordinator-certs.timer",
                             "xsilo-coordinator-crl.service", "xsilo-coordinator-crl.timer",
                             "xsilo-coordinator.service"]
    main = units["xsilo-coordinator.service"]
    assert main["ExecStart"] == [f"{XSILO} coordinator start --home {home.root}"]
    assert main["Type"] == ["simple"] and main["Restart"] == ["on-failure"]
    assert main["KillMode"] == ["mixed"] and main["User"] == ["xsilo-test"]
    assert main["ReadWritePaths"] == [f"{home.root} {home.gateway.pki}"]
    for name in ("xsilo-coordinator.service", "xsilo-coordinator-crl.service",
                 "xsilo-coordinator-certs.service"):
        for key, value in HARDENING:
            assert units[name][key] == [value], (name, key)
        assert units[name]["PrivateDevices"] == ["yes"]
        assert units[name]["NoNewPrivileges"] == ["yes"]
        assert units[name]["ProtectSystem"] == ["strict"]
        assert units[name]["PrivateTmp"] == ["yes"]
    assert units["xsilo-coordinator-crl.service"]["ExecStart"] == [
        f"{XSILO} pki crl --pki-dir {home.gateway.pki}"]
    assert units["xsilo-coordinator-crl.service"]["ReadWritePaths"] == [str(home.gateway.pki)]
    assert units["xsilo-coordinator-certs.service"]["ExecStart"] == [
        f"{XSILO} coordinator status --home {home.root} --warn-days 14 --check"]
    assert units["xsilo-coordinator-crl.timer"]["OnCalendar"] == ["daily"]
    assert units["xsilo-coordinator-crl.timer"]["Persistent"] == ["true"]
    assert "systemctl enable --now xsilo-coordinator.service xsilo-coordinator-crl.timer " \
           "xsilo-coordinator-certs.timer" in res.output
    assert f"chown -R xsilo-test: {home.root} {home.gateway.pki}" in res.output
    _verify(out)


def test_silo_units_verify_and_keep_the_data_read_only(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    kit = enroll_silo(pki, "hospital-a", tmp_path / "kit")
    with open(kit.root / "silo.toml", "a") as fh:
        fh.write(SITE)
    out = tmp_path / "units"
    res = runner.invoke(_app(silo_install), ["install-service", "--kit", str(kit.root),
                                             "--output-dir", str(out), "--xsilo", str(XSILO)])
    assert res.exit_code == 0, res.output
    units = _units(out)
    assert sorted(units) == ["xsilo-silo-certs.service", "xsilo-silo-certs.timer",
                             "xsilo-silo.service"]
    main = units["xsilo-silo.service"]
    assert main["ExecStart"] == [f"{XSILO} silo start --kit {kit.root}"]
    assert main["ReadWritePaths"] == [str(kit.root)]  # the workspace is inside the kit
    assert main["User"] == ["xsilo"] and main["ProtectSystem"] == ["strict"]
    assert main["PrivateDevices"] == ["yes"] and main["Restart"] == ["on-failure"]
    assert "/srv/xsilo/data" in res.output and "read-only" in res.output
    assert units["xsilo-silo-certs.service"]["ExecStart"] == [
        f"{XSILO} silo status --kit {kit.root} --warn-days 14 --check"]
    _verify(out)
    gpu = tmp_path / "gpu"
    assert runner.invoke(_app(silo_install), ["install-service", "--kit", str(kit.root),
                                              "--output-dir", str(gpu), "--gpu",
                                              "--xsilo", str(XSILO)]).exit_code == 0
    assert "PrivateDevices" not in (gpu / "xsilo-silo.service").read_text()


def test_crl_timer_only_where_the_ca_key_can_be_unlocked(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", passphrase=b"s3cret")
    write_gateway_home(tmp_path / "coord", pki_dir=pki.root)
    home = CoordinatorHome.load(tmp_path / "coord")
    svc, notes = coordinator_service(home, user="xsilo", xsilo=XSILO)
    assert [t.job for t in svc.timers] == ["certs"]
    assert "encrypted" in notes[0] and "--passphrase-file" in notes[0]
    secret = tmp_path / "ca.pass"
    svc, notes = coordinator_service(home, user="xsilo", xsilo=XSILO, passphrase_file=secret)
    assert [t.job for t in svc.timers] == ["crl", "certs"] and notes == []
    assert svc.timers[0].argv[-2:] == ("--passphrase-file", str(secret))
    assert svc.argv[-2:] == ("--passphrase-file", str(secret))
    pki.ca_key_path.unlink()  # the CA key kept offline
    svc, notes = coordinator_service(home, user="xsilo", xsilo=XSILO)
    assert [t.job for t in svc.timers] == ["certs"] and "not on this host" in notes[0]


def test_quoting_and_refusals() -> None:
    assert systemd_quote("/srv/x") == "/srv/x"
    assert systemd_quote("/srv/my kit") == '"/srv/my kit"'
    assert systemd_quote("50%$HOME") == "50%%$$HOME"
    assert systemd_quote('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ConfigError, match="control character"):
        systemd_quote("/srv/x\nExecStartPre=/bin/sh")
    kw = dict(name="xsilo-x", description="d", argv=("/x",), working_directory=Path("/srv"),
              writable=(Path("/srv"),))
    with pytest.raises(ConfigError, match="dedicated account"):
        Service(user="root", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a valid account"):
        Service(user="x y", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="absolute"):
        Service(user="xsilo", **{**kw, "writable": (Path("rel"),)})  # type: ignore[arg-type]
    text = render_units(Service(user="xsilo", **kw, bind_low_port=True))["xsilo-x.service"]
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    # a description or header (a silo name, a path) that would start a setting of its own
    hostile = "b\n[Service]\nExecStartPre=+/bin/sh -c 'id>/tmp/pwned'"
    for field in ("description", "header"):
        with pytest.raises(ConfigError, match=f"unit's {field} .* control character"):
            render_units(Service(user="xsilo", **{**kw, field: hostile}))  # type: ignore[arg-type]


def test_reminders_fail_when_something_needs_doing(home: CoordinatorHome,
                                                   tmp_path: Path) -> None:
    from coordinator.cli import app as coordinator_app

    args = ["status", "--home", str(home.root), "--check"]
    assert runner.invoke(coordinator_app, args).exit_code == 0
    res = runner.invoke(coordinator_app, [*args, "--warn-days", "400"])  # coordinator cert: 365 d
    assert res.exit_code == 1 and "xsilo pki issue-coordinator" in res.output

    kit = enroll_silo(Pki(home.gateway.pki), "hospital-b", tmp_path / "kit", days=10)
    with open(kit.root / "silo.toml", "a") as fh:
        fh.write(SITE)
    cfg = load_silo_config(kit.root / "silo.toml")
    (notice,) = silo_notices(cfg, warn_days=14)
    assert notice.level == "warning" and notice.command == f"xsilo silo renew --kit {kit.root}"
    assert silo_notices(cfg, warn_days=5) == []

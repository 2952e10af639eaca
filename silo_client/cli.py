"""``xsilo silo …``: what a silo operator runs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from deploy.pki.cli import enroll_cmd, import_cmd, renew_cmd
from deploy.launch.processes import interrupt_on_sigterm
from silo_client.apps_cli import approve_app_cmd, apps_cmd
from silo_client.config import load_silo_config
from silo_client.member import start_member
from silo_client.supervise import Supervisor
from silo_client.ledger_cli import app as ledger_app
from silo_client.report import REPORT_FILE, render_silo_report
from silo_client.service import install_service_cmd
from silo_client.status import status_cmd
from xsilo.files import atomic_write

app = typer.Typer(help="Run a silo: join a federation with local data that never leaves.",
                  no_args_is_help=True)
console = Console()
app.command("enroll")(enroll_cmd)
app.command("import-bundle")(import_cmd)
app.command("renew")(renew_cmd)
app.command("approve-app")(approve_app_cmd)
app.command("apps")(apps_cmd)
app.command("status")(status_cmd)
app.command("install-service")(install_service_cmd)
app.add_typer(ledger_app, name="ledger", help="Audit what this silo sent (egress ledger).")


@app.command()
def start(
    config: Path = typer.Option(Path("silo.toml"), "--config", help="The silo's silo.toml."),
    kit: Path = typer.Option(None, "--kit", help="A member kit directory (uses KIT/silo.toml "
                             "and starts the silo's mTLS gateway)."),
) -> None:
    """Validate local data and start this silo (gateway + SuperNode); serve until Ctrl-C."""
    cfg = load_silo_config(kit / "silo.toml" if kit else config)
    interrupt_on_sigterm()  # before any child starts: start_member stops what it started
    try:
        silo = start_member(cfg)
    except KeyboardInterrupt:
        _interrupted_start("silo")
    try:
        via = "through its mTLS gateway" if silo.gateway is not None else "directly (TLS)"
        where = (f"SuperNode in a private network namespace (Runtime API and gateway: this "
                 f"account and root only; pid {silo.supernode.pid})" if silo.uplink is not None
                 else "SuperNode on this host's network (Runtime API: every local account)")
        console.print(f"[green]silo {cfg.name} started[/], connecting {via}; {where} "
                      f"(log: {silo.supernode.log_path}). Ctrl-C stops it.")
        # CRL kept fresh; a SuperNode that lost its connection restarted (or the silo stops)
        Supervisor(cfg, silo, say=console.print, start=silo.start_supernode).run()
    except KeyboardInterrupt:
        console.print("stopping silo")
    finally:
        silo.stop()


@app.command()
def report(
    config: Path = typer.Option(Path("silo.toml"), "--config", help="The silo's silo.toml."),
    kit: Path = typer.Option(None, "--kit", help="A member kit directory (uses KIT/silo.toml)."),
    out: Path = typer.Option(None, "--out", help=f"Where to write the HTML report (default: "
                             f"the workspace's {REPORT_FILE})."),
) -> None:
    """Write this silo's own HTML report: what left the site per run and round (from the
    egress ledger), ε spent per run (privacy tally) and every refusal."""
    cfg = load_silo_config(kit / "silo.toml" if kit else config)
    target = out if out is not None else cfg.workspace / REPORT_FILE
    atomic_write(target, render_silo_report(cfg))
    console.print(f"silo report: {target.resolve()}")


def _interrupted_start(what: str) -> None:
    # Typer, run with standalone_mode=False, would turn KeyboardInterrupt into exit code 0
    console.print(f"[yellow]interrupted while starting the {what}[/]: what had started "
                  "was stopped")
    sys.exit(130)

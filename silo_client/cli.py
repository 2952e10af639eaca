"""``xsilo silo …``: what a silo operator runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from deploy.pki.cli import enroll_cmd, import_cmd, renew_cmd
from deploy.launch.processes import interrupt_on_sigterm
from silo_client.config import load_silo_config
from silo_client.member import start_member
from silo_client.ledger_cli import app as ledger_app

app = typer.Typer(help="Run a silo: join a federation with local data that never leaves.",
                  no_args_is_help=True)
console = Console()
app.command("enroll")(enroll_cmd)
app.command("import-bundle")(import_cmd)
app.command("renew")(renew_cmd)
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
        console.print(f"[green]silo {cfg.name} started[/], connecting {via} "
                      f"(log: {silo.supernode.log_path}). Ctrl-C stops it.")
        while silo.alive():
            silo.supernode.raise_if_exited()  # its SuperExec (ClientApps) must be alive too
            time.sleep(1)
        silo.supernode.raise_if_exited()
    except KeyboardInterrupt:
        console.print("stopping silo")
    finally:
        silo.stop()


def _interrupted_start(what: str) -> None:
    # Typer, run with standalone_mode=False, would turn KeyboardInterrupt into exit code 0
    console.print(f"[yellow]interrupted while starting the {what}[/]: what had started "
                  "was stopped")
    sys.exit(130)

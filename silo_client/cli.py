"""``xsilo silo …``: what a silo operator runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer
from rich.console import Console

from deploy.cli import enroll_cmd, import_cmd, renew_cmd
from silo_client.config import load_silo_config
from silo_client.launch import start_silo
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
) -> None:
    """Validate local data and start this silo's SuperNode; serve until Ctrl-C."""
    cfg = load_silo_config(config)
    proc = start_silo(cfg)
    console.print(f"[green]silo {cfg.name} connected to {cfg.superlink}[/] "
                  f"(log: {proc.log_path}). Ctrl-C stops it.")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while proc.alive():
            time.sleep(1)
        proc.raise_if_exited()
    except KeyboardInterrupt:
        console.print("stopping silo")
    finally:
        proc.stop()

"""``xsilo silo approve-app`` and ``xsilo silo apps``: the app bundles this silo runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from deploy.pki.cli import print_whole
from silo_client.apps import approvals_path, approve, approved_apps, fab_of
from silo_client.config import load_silo_config
from xsilo.errors import ConfigError

__all__ = ["approve_app_cmd", "apps_cmd"]

console = Console()

_CONFIG = typer.Option(Path("silo.toml"), "--config", help="The silo's silo.toml.")
_KIT = typer.Option(None, "--kit", help="A member kit directory (uses KIT/silo.toml).")


def approve_app_cmd(
    bundle: Path = typer.Argument(None, help="The app to approve: a .fab file (`flwr build`) "
                                  "or an app directory (built as `flwr run` builds it)."),
    fab_hash: str = typer.Option(None, "--hash", help="Or the app bundle's SHA-256 (64 hex "
                                 "digits), e.g. from a review board's record."),
    note: str = typer.Option(..., "--note", help="Who reviewed the app and why it may run "
                             "here (kept with the approval)."),
    config: Path = _CONFIG,
    kit: Path = _KIT,
) -> None:
    """Let this silo run one more app bundle, after reviewing its code. Takes effect for the
    next message; a running silo need not restart."""
    if (bundle is None) == (fab_hash is None):
        raise ConfigError("give the app to approve either as a .fab file or app directory, "
                          "or with --hash, not both")
    cfg = load_silo_config(kit / "silo.toml" if kit else config)
    app_id, source = None, "hash"
    if bundle is not None:
        fab_hash, app_id, source = fab_of(bundle)
    approval = approve(cfg, str(fab_hash), note=note, source=source, app=app_id)
    console.print(f"[green]approved[/] {approval.app or 'app'} sha256 {approval.fab_hash} "
                  f"at silo {cfg.name} ({approvals_path(cfg)})", soft_wrap=True)


def apps_cmd(config: Path = _CONFIG, kit: Path = _KIT) -> None:
    """List the app bundles this silo runs: the xsilo release's own (default) and the
    approved ones; every other app is refused before any of its code runs."""
    cfg = load_silo_config(kit / "silo.toml" if kit else config)
    table = Table(title=f"apps silo {cfg.name} runs ({approvals_path(cfg)})")
    table.add_column("sha256", no_wrap=True)  # copied whole: never folded, cut or cropped
    for column in ("app", "note", "approved by", "when", ""):
        table.add_column(column, overflow="fold")
    for a in approved_apps(cfg):
        table.add_row(a.fab_hash, a.app or "-", a.note, a.approved_by, a.approved_at,
                      "default" if a.default else "")
    print_whole(console, table)
    if cfg.executor == "flower":
        console.print("[yellow]executor = \"flower\": this list is NOT enforced[/] (Flower's "
                      "SuperExec runs any app); the silo starts only with "
                      "allow_unapproved_code = true in its site policy")

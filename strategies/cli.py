"""``xsilo strategies ...``: inspect installed strategies (mounted by the root CLI)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from strategies.registry import strategy_catalogue

__all__ = ["app"]

app = typer.Typer(help="Aggregation strategies: list the installed ones and their parameters.",
                  no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Aggregation strategies: list the installed ones and their parameters."""


def _params_text(params: list[dict[str, object]]) -> str:
    if not params:
        return "-"
    lines = []
    for p in params:
        line = f"{p['name']}: {p['type']} = {p['default']!r}"
        lines.append(line + (f"  ({p['constraint']})" if p["constraint"] else ""))
    return "\n".join(lines)


@app.command("list")
def list_strategies() -> None:
    """Show every installed strategy: name, kind and parameters (a plugin that does not load
    is named on stderr, one line each, and the command exits 1)."""
    infos, broken = strategy_catalogue()
    table = Table(title="Installed strategies (entry-point group xsilo.strategies)")
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("parameters")
    table.add_column("summary")
    for info in infos.values():
        table.add_row(info["name"], info["kind"], _params_text(info["params"]), info["summary"])
    Console().print(table)
    errors = Console(stderr=True, soft_wrap=True)  # a StrategyError naming the plugin
    for why in broken.values():
        errors.print(f"[red]error:[/red] {escape(why)}", markup=True, highlight=False)
    if broken:
        raise typer.Exit(1)

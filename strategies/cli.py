"""``xsilo strategies ...``: inspect installed strategies (mounted by the root CLI)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from strategies.registry import available_strategies, describe
from xsilo.errors import XsiloError

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
    """Show every installed strategy: name, kind and parameters."""
    try:  # a broken plugin is a StrategyError naming it (strategies.registry), never a traceback
        infos = [describe(cls) for cls in available_strategies().values()]
    except XsiloError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    table = Table(title="Installed strategies (entry-point group xsilo.strategies)")
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("parameters")
    table.add_column("summary")
    for info in infos:
        table.add_row(info["name"], info["kind"], _params_text(info["params"]), info["summary"])
    Console().print(table)

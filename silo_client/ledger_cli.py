"""``xsilo silo ledger``: verify and show a silo's egress ledger (mounted by silo_client.cli)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from silo_client.ledger import LEDGER_FILE, summarize, verify_ledger
from xsilo.terms import AGGREGATED_METRICS

__all__ = ["app"]

app = typer.Typer(
    help=f"Inspect the egress ledger (workspace/{LEDGER_FILE}): what this silo sent, when, and "
         "how it was protected.",
    no_args_is_help=True,
    add_completion=False,
)

_PATH = typer.Argument(..., help=f"Path to the ledger: workspace/{LEDGER_FILE} next to silo.toml "
                       "(the [silo] workspace directory).")


def _require(path: Path, err: Console) -> None:
    if not path.is_file():
        err.print(f"[red]error:[/red] ledger {path} not found")
        raise typer.Exit(2)


@app.command()
def verify(path: Path = _PATH) -> None:
    """Check the hash chain; exit 0 when intact, 1 when tampered (the first bad line is named)."""
    out, err = Console(), Console(stderr=True)
    _require(path, err)
    result = verify_ledger(path)
    if not result.ok:
        err.print(f"[red]TAMPERED:[/red] {path} line {result.line}: {result.reason} "
                  f"({result.entries} entries before it are intact)", soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"[green]OK[/green] {path}: {result.entries} entries, chain intact, head {result.head}",
              soft_wrap=True)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics(values: object) -> str | None:
    """The clear metrics of an entry, ``key=value`` each."""
    if not isinstance(values, dict) or not values:
        return None
    return " ".join(f"{k}={_fmt(v)}" for k, v in sorted(values.items()))


def _summed(values: object) -> str | None:
    """What the silo put into a secure sum: each metric's value and the count it is over."""
    if not isinstance(values, list) or len(values) != 2 * len(AGGREGATED_METRICS):
        return None if not values else str(values)
    parts = []
    for k, (metric, _) in enumerate(AGGREGATED_METRICS):
        count, total = float(values[2 * k]), float(values[2 * k + 1])
        if count > 0:
            parts.append(f"{metric.replace('_', '-')}={total / count:.4g} (n={count:g})")
    return " ".join(parts) or "zeros"


@app.command()
def show(path: Path = _PATH,
         run: str = typer.Option(None, "--run", help="Only entries of this run id.")) -> None:
    """Print a readable table of every outgoing message recorded in the ledger: its tensors,
    protection, the metrics it carried in the clear and the values it put into secure sums."""
    out, err = Console(), Console(stderr=True)
    _require(path, err)
    rows = [r for r in summarize(path) if run is None or str(r.get("run")) == run]
    table = Table(title=f"Egress ledger {path}", title_justify="left")
    columns = ("seq", "time", "run", "round", "type", "tensors", "values", "payload",
               "masked", "clip_norm", "noise_sigma", "epsilon", "metrics", "summed")
    for name in columns:
        table.add_column(name.replace("_", " "),
                         justify="left" if name in ("type", "metrics", "summed") else "right")
    for row in rows:
        row = {**row, "time": str(row.get("time") or "")[:19].replace("T", " ") or None,
               "metrics": _metrics(row.get("metrics")), "summed": _summed(row.get("summed"))}
        table.add_row(*(_fmt(row.get(name)) for name in columns))
    out.print(table)
    result = verify_ledger(path)
    if result.ok:
        out.print(f"[green]chain intact[/green] ({result.entries} entries)")
    else:
        out.print(f"[red]chain broken at line {result.line}:[/red] {result.reason}", soft_wrap=True)

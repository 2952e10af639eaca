"""``xsilo coordinator …``: start the coordinator, start and watch runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from coordinator.config import RunConfig, load_run_config
from coordinator.console import follow_run, make_console, round_table
from coordinator.home import CoordinatorHome, start_coordinator, write_gateway_home
from coordinator.run_store import RunStore
from deploy.launch.processes import interrupt_on_sigterm
from coordinator.runs import new_run_dir, submit_run
from xsilo.errors import ConfigError, DeploymentError

app = typer.Typer(help="Run the coordinator (a Flower SuperLink + the xsilo ServerApp).",
                  no_args_is_help=True)
console = make_console()

HomeOpt = typer.Option(Path("."), "--home", help="Coordinator home (has coordinator.toml).")


@app.command()
def init(
    home: Path = HomeOpt,
    pki_dir: Path = typer.Option(..., "--pki-dir", help="PKI made with `xsilo pki init` and "
                                 "`xsilo pki issue-coordinator`."),
    host: str = typer.Option("0.0.0.0", help="Public bind address of the mTLS gateway."),
    port: int = typer.Option(8443, help="Public port of the mTLS gateway."),
    superlink_port: int = typer.Option(9092, help="Loopback port of the SuperLink."),
) -> None:
    """Write coordinator.toml for the full path: SuperLink on loopback behind the mTLS gateway."""
    path = write_gateway_home(home, pki_dir=pki_dir, public_host=host, gateway_port=port,
                              superlink_port=superlink_port)
    console.print(f"wrote {path}; start it with `xsilo coordinator start --home {home}`")


@app.command()
def start(home: Path = HomeOpt) -> None:
    """Start the SuperLink (TLS + node auth) and, if configured, the mTLS gateway; register
    enrolled silos; apply approvals and revocations as they happen; serve until Ctrl-C."""
    h = CoordinatorHome.load(home)
    interrupt_on_sigterm()  # before any child starts: start_coordinator stops what it started
    try:
        running = start_coordinator(h)
    except KeyboardInterrupt:
        # Typer, run with standalone_mode=False, would turn it into exit code 0
        console.print("[yellow]interrupted while starting the coordinator[/]: what had "
                      "started was stopped")
        sys.exit(130)
    try:
        link = (f"SuperLink in a private network namespace (Control API: this account and "
                f"root only; pid {running.superlink.pid})" if running.bridge is not None
                else f"SuperLink on {h.address} (Control API: every local account)")
        where = (f"mTLS gateway on {h.gateway.host}:{h.gateway.port} → {link}" if h.gateway
                 else link)
        console.print(f"[green]coordinator up[/]: {where} ({len(running.node_ids)} silo key(s) "
                      f"registered: {', '.join(running.node_ids) or 'none'})")
        console.print(f"SuperLink log: {running.superlink.log_path}. Ctrl-C stops it.")
        while running.superlink.alive():
            time.sleep(2)
            for change in running.reconcile():
                console.print(f"[cyan]{change}[/]")
        raise DeploymentError(f"the SuperLink exited; log tail:\n{running.superlink.log_tail()}")
    except KeyboardInterrupt:
        console.print("stopping coordinator")
    finally:
        running.stop()


def _parse_params(values: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r} must look like name=value")
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        out[key] = value
    return out


@app.command()
def run(
    home: Path = HomeOpt,
    name: Optional[str] = typer.Option(None, help="Run name (directory under runs/)."),
    config: Optional[Path] = typer.Option(None, help="A run config TOML ([run] table)."),
    rounds: Optional[int] = typer.Option(None, help="Number of rounds."),
    strategy: Optional[str] = typer.Option(None, help="Strategy name (`xsilo strategies list`)."),
    param: list[str] = typer.Option([], help="Strategy parameter name=value (repeatable)."),
    min_silos: Optional[int] = typer.Option(None, help="Fewest silos per round."),
    expected_silos: Optional[int] = typer.Option(None, help="Silos to wait for at start."),
    local_epochs: Optional[int] = typer.Option(None, help="Local epochs per round."),
    secure_aggregation: Optional[bool] = typer.Option(None, help="Masked secure aggregation."),
    timeout: float = typer.Option(3600.0, help="Give up following after this many seconds."),
) -> None:
    """Start a run on the running coordinator and follow it with a live table."""
    h = CoordinatorHome.load(home)
    base = load_run_config(config) if config else RunConfig()
    overrides = {k: v for k, v in {
        "num_rounds": rounds, "strategy": strategy, "min_silos": min_silos,
        "expected_silos": expected_silos, "local_epochs": local_epochs,
        "secure_aggregation": secure_aggregation}.items() if v is not None}
    values = {**base.to_dict(), **overrides}
    if param:
        values["strategy_params"] = {**dict(base.strategy_params), **_parse_params(param)}
    run_dir = new_run_dir(h.runs, name)
    values["name"] = run_dir.name
    cfg = RunConfig.from_mapping(values)
    cli = h.cli()
    run_id, store = submit_run(cli, run_dir, cfg)
    console.print(f"run [bold]{run_dir.name}[/] (Flower run {run_id}) → {run_dir}")
    final = follow_run(store, lambda: cli.status(run_id), console=console, timeout=timeout)
    _report_end(store, final)


def _report_end(store: RunStore, final: str) -> None:
    summary = store.summary() or {}
    status = summary.get("status")
    if final != "finished:completed" or status not in ("completed", "stopped"):
        raise DeploymentError(f"run ended as {final} ({summary.get('error') or 'no summary'}); "
                              f"see {store.path} and the SuperLink log")
    failed = summary.get("rounds_failed") or []
    if status == "stopped":  # a clean, intended stop (e.g. the privacy budget)
        console.print(f"[yellow]stopped[/] ({summary.get('stop_reason')}): "
                      f"{summary.get('stop_message', '')}")
    console.print(f"[green]{status}[/]: final accuracy {summary.get('final_accuracy')}, "
                  f"failed rounds {failed or 'none'}; model at {store.path / 'model.npz'}")


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
) -> None:
    """Show a run's round table and summary from its run directory."""
    store = RunStore(run_dir)
    if not store.metrics_path.exists():
        raise ConfigError(f"{run_dir} has no metrics.jsonl: not a run directory, or not started")
    console.print(round_table(store.events(), title=str(run_dir)))
    console.print(store.summary() or "[yellow]running (no summary yet)[/]")

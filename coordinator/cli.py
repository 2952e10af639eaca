"""``xsilo coordinator …``: start the coordinator, start and watch runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape

from coordinator.console import follow_run, make_console, round_table
from coordinator.home import CoordinatorHome, start_coordinator, write_gateway_home
from coordinator.outcome import error_line
from coordinator.run_store import LOG_FILE, RunStore
from coordinator.service import install_service_cmd
from deploy.launch.processes import interrupt_on_sigterm
from coordinator.runs import new_run_dir, prepare_run, resume_run, submit_run
from xsilo.errors import ConfigError, DeploymentError
from xsilo.files import read_toml

app = typer.Typer(help="Run the coordinator (a Flower SuperLink + the xsilo ServerApp).",
                  no_args_is_help=True)
console = make_console()

HomeOpt = typer.Option(Path("."), "--home", help="Coordinator home (has coordinator.toml).")
app.command("install-service")(install_service_cmd)


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
def start(
    home: Path = HomeOpt,
    passphrase_file: Optional[Path] = typer.Option(
        None, "--passphrase-file", help="The CA key's passphrase, so the CRL is re-issued "
        "before it lapses (else [gateway] passphrase_file, else XSILO_CA_PASSPHRASE; an "
        "unencrypted key needs none)."),
) -> None:
    """Start the SuperLink (TLS + node auth) and, if configured, the mTLS gateway; register
    enrolled silos; apply approvals and revocations as they happen; keep the CRL fresh;
    serve until Ctrl-C."""
    h = CoordinatorHome.load(home)
    interrupt_on_sigterm()  # before any child starts: start_coordinator stops what it started
    try:
        running = start_coordinator(h, passphrase_file=passphrase_file)
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
        for change in running.notices:
            _show_change(change)
        while running.superlink.alive():
            time.sleep(2)
            for change in running.reconcile():
                _show_change(change)
        code = running.superlink.popen.returncode
        raise DeploymentError(
            f"the SuperLink exited (code {code}), so the coordinator stops; the runs it was "
            "running stop too: start the coordinator again (a service restarts by itself), "
            "then continue each with `xsilo coordinator run --resume NAME`. SuperLink log "
            f"{running.superlink.log_path} ends with:\n{running.superlink.log_tail()}")
    except KeyboardInterrupt:
        console.print("stopping coordinator")
    finally:
        for line in running.stop():
            _show_change(f"warning: {line}")


def _show_change(change: str) -> None:
    loud = change.startswith("warning:")  # e.g. a CRL this coordinator cannot re-issue
    text = escape(change)
    console.print(f"[bold red]{text}[/]" if loud else f"[cyan]{text}[/]", soft_wrap=loud)


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
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="RUN", help="Continue run RUN (a name under runs/) from its "
        "last complete round, with the configuration it started with."),
) -> None:
    """Start a run on the running coordinator and follow it with a live table.

    The whole configuration is checked first (strategy, parameters, secure aggregation and
    DP); a refusal is one line here and in runs/NAME/summary.json, and NAME stays free."""
    h = CoordinatorHome.load(home)
    cli = h.cli()
    if resume is not None:
        given = [flag for flag, v in (("--name", name), ("--config", config), ("--rounds", rounds),
                                      ("--strategy", strategy), ("--param", param or None),
                                      ("--min-silos", min_silos),
                                      ("--expected-silos", expected_silos),
                                      ("--local-epochs", local_epochs),
                                      ("--secure-aggregation", secure_aggregation))
                 if v is not None]
        if given:
            raise ConfigError(f"--resume continues a run with the configuration it started "
                              f"with; drop {', '.join(given)}")
        starts_before = len(RunStore(h.runs / resume).flower_runs())  # attempts so far
        run_id, store = resume_run(cli, h.runs / resume)
        console.print(f"run [bold]{resume}[/] resumed (Flower run {run_id}) → {store.path}")
    else:
        base = _run_table(config) if config else {}
        overrides = {k: v for k, v in {
            "num_rounds": rounds, "strategy": strategy, "min_silos": min_silos,
            "expected_silos": expected_silos, "local_epochs": local_epochs,
            "secure_aggregation": secure_aggregation}.items() if v is not None}
        values = {**base, **overrides}
        if param:
            values["strategy_params"] = {**dict(base.get("strategy_params") or {}),
                                         **_parse_params(param)}
        run_dir = new_run_dir(h.runs, name)
        values["name"] = run_dir.name
        cfg = prepare_run(run_dir, values)  # refused: summary.json says why, the name stays free
        starts_before = 0
        run_id, store = submit_run(cli, run_dir, cfg)
        console.print(f"run [bold]{run_dir.name}[/] (Flower run {run_id}) → {run_dir}")
    final = follow_run(store, _watch(store, lambda: cli.status(run_id)), console=console,
                       timeout=timeout)
    _report_end(store, final, run_id, starts_before)


def _run_table(path: Path) -> dict[str, object]:
    """The raw ``[run]`` table of a config file (validated with the rest by prepare_run)."""
    data = read_toml(path, what="run configuration")
    if not isinstance(data.get("run"), dict):
        raise ConfigError(f"{path} has no [run] table; put the run settings under [run]")
    return dict(data["run"])


def _watch(store: RunStore, status: Callable[[], str]) -> Callable[[], str]:
    """Flower's status of the run, but a ServerApp that died (killed, out of memory) ends
    the wait at once, and a SuperLink that vanished is said plainly."""
    before = store.recorded_owner_record()

    def current() -> str:
        try:
            state = status()
        except DeploymentError as exc:
            if store.summary() is not None:
                return "finished:unknown (the SuperLink no longer answers)"
            raise DeploymentError(
                f"lost contact with the SuperLink ({exc}). If the coordinator restarted, its "
                f"run {store.path.name} stopped there: once `xsilo coordinator start` is up "
                f"again, continue it with `xsilo coordinator run --resume {store.path.name}`"
            ) from exc
        claimed = store.recorded_owner_record()
        if (not state.startswith("finished") and store.summary() is None
                and claimed is not None and claimed != before and store.owner() is None):
            return "finished:failed (the ServerApp process is gone)"
        return state

    return current


def _report_end(store: RunStore, final: str, run_id: int, starts_before: int) -> None:
    """The run's end in one line (an error for anything but a completed or stopped run).
    ``starts_before``: the run's ``start`` events before this command submitted ``run_id``
    (the attempts that began since are told from this one)."""
    summary = store.summary() or {}
    status = summary.get("status")
    name = store.path.name
    if final != "finished:completed" or status not in ("completed", "stopped"):
        runs = store.flower_runs()
        others = [r for r in runs[starts_before:] if r != run_id]
        owner = store.owner()
        if run_id not in runs and (others or owner):
            # this Flower run's ServerApp never started the run: another one ran it (a
            # second `--resume` at once); it stopped before it read or wrote the run
            doing = (f"is being run by another process ({owner}" if owner is not None else
                     f"was run by another attempt meanwhile (Flower run {others[-1]}")
            raise DeploymentError(
                f"run {name} {doing}; e.g. a `--resume` started at the same time), so this "
                f"attempt (Flower run {run_id}) stopped without touching it; see it with "
                f"`xsilo coordinator status {store.path}`")
        line = error_line(summary)
        resume = (f"; continue it from its last complete round with `xsilo coordinator run "
                  f"--resume {name}`")
        if line is None:
            raise DeploymentError(
                f"run {name} ended as {final} without a summary: its ServerApp ended before it "
                f"could record why (killed, out of memory, or the coordinator stopped); log: "
                f"{store.path / LOG_FILE}{resume}")
        raise DeploymentError(f"run {name} {line} (log: {store.path / LOG_FILE}"
                              f"{resume if any(store.checkpoints.glob('round-*.npz')) else ''})")
    failed = summary.get("rounds_failed") or []
    if status == "stopped":  # a clean, intended stop (e.g. the privacy budget)
        console.print(f"[yellow]stopped[/] ({summary.get('stop_reason')}): "
                      f"{summary.get('stop_message', '')}")
    of_round = (f" (model of round {summary['final_round']})"
                if summary.get("final_round") is not None else "")
    console.print(f"[green]{status}[/]: final accuracy {summary.get('final_accuracy')}"
                  f"{of_round}, "
                  f"failed rounds {failed or 'none'}; model at {store.path / 'model.npz'}")


@app.command()
def status(
    run_dir: Optional[Path] = typer.Argument(None, help="A run directory (runs/<name>)."),
    home: Optional[Path] = typer.Option(None, "--home", help="Coordinator home: warn about "
                                        "its certificates and CRL (default: the home the run "
                                        "directory is in, if any)."),
    warn_days: float = typer.Option(7, "--warn-days", help="Warn about certificates that "
                                    "expire within this many days."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when a certificate or the CRL "
                               "needs doing (for a timer or monitoring)."),
) -> None:
    """Show a run's round table and summary from its run directory, and what the
    coordinator's PKI needs soon (certificates expiring, the CRL), with the commands."""
    if run_dir is None and home is None:
        raise ConfigError("give a run directory (runs/<name>), --home HOME, or both")
    if run_dir is not None:
        _run_status(RunStore(run_dir))
    notices = _pki_warnings(home, run_dir, warn_days)
    if check and any(n.level in ("warning", "error") for n in notices):
        raise typer.Exit(1)


def _run_status(store: RunStore) -> None:
    """The round table, the summary and, when the run failed or was refused, its one line."""
    summary = store.summary()
    if not store.started and summary is None:
        raise ConfigError(f"{store.path} has no metrics.jsonl: not a run directory, or not "
                          "started")
    if store.started:
        console.print(round_table(store.events(), title=str(store.path)))
    if summary is not None:
        console.print(summary)
    elif store.recorded_owner_record() is not None and store.owner() is None:
        console.print(f"[yellow]no summary, and its ServerApp is gone[/] (killed or the "
                      f"coordinator stopped): continue it with `xsilo coordinator run --resume "
                      f"{store.path.name}`")
    else:
        console.print("[yellow]running (no summary yet)[/]")
    line = error_line(summary)
    if line is not None:
        console.print(f"[bold red]{escape(line)}[/]", soft_wrap=True)


def _pki_warnings(home: Path | None, run_dir: Path | None, warn_days: float) -> list:
    from deploy.pki.authority import Pki
    from deploy.pki.freshness import pki_notices

    guessed = home is None
    if home is None:  # a run directory is HOME/runs/NAME
        home = Path(run_dir).resolve().parent.parent  # type: ignore[arg-type]
        if not (home / "coordinator.toml").is_file():
            return []
    h = CoordinatorHome.load(home)
    if h.gateway is None:
        if not guessed:
            console.print(escape(f"{h.root} has no [gateway]: no consortium PKI to check"))
        return []
    pki = Pki(h.gateway.pki)
    notices = pki_notices(pki, warn_days=warn_days)
    for notice in notices:
        style = "bold red" if notice.level == "error" else "bold yellow"
        console.print(f"[{style}]{notice.level}:[/] {escape(str(notice))}", soft_wrap=True)
    if not notices:
        console.print(f"PKI {pki.root}: no certificate expires within {warn_days:g} days; CRL "
                      f"valid until {pki.crl_next_update():%Y-%m-%d %H:%M} UTC")
    return notices

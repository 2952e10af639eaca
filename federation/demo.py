"""``xsilo demo``: three hospitals train one model over real, authenticated, encrypted links.

Everything is real and local: a throw-away CA and certificates, a Flower SuperLink with
TLS and SuperNode authentication, one SuperNode per hospital with its own key and data,
the xsilo ServerApp/ClientApp, on 127.0.0.1 with ports chosen at run time and a private
``FLWR_HOME``. The hospitals train a logistic model by SGD (``sklearn:SGDClassifier``, a few
local epochs per round), so the global model improves round after round. The run ends with
federated vs. centralized vs. local-only accuracy, measured in the same process on the same
test splits, and names the run's HTML report. Every process is stopped on success, error or
Ctrl-C; the work directory is removed unless ``--keep`` (or ``--workdir``).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from coordinator.config import RunConfig
from coordinator.console import make_console
from coordinator.report import REPORT_FILE, write_report
from coordinator.run_store import RunStore, load_npz
from silo_client.adapters.base import FitSettings
from silo_client.adapters.build import build_model
from silo_client.config import SiloConfig
from silo_client.data import LocalDataset, load_dataset
from coordinator.outcome import error_line
from xsilo.errors import DeploymentError
from federation.deployment import LocalFederation

__all__ = ["demo"]

console = make_console()
MODEL = "sklearn:SGDClassifier"
LEARNING_RATE, BATCH_SIZE = 0.1, 32
# Where the report of a demo whose work directory is removed is kept.
KEPT_REPORT = Path(tempfile.gettempdir()) / "xsilo-demo-report.html"


def _pooled(parts: list[LocalDataset]) -> LocalDataset:
    return LocalDataset(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                        parts[0].schema, "pooled")


def _score(silo: SiloConfig, params: dict | None, train: LocalDataset | None, epochs: int,
           tests: dict[str, LocalDataset], seed: int) -> dict[str, float]:
    model = build_model(MODEL, schema=silo.schema, seed=seed, learning_rate=LEARNING_RATE,
                        batch_size=BATCH_SIZE)
    if params is not None:
        model.set_parameters(params)
    if train is not None:  # the same SGD as the silos: same rate and batch, as many epochs
        model.fit(train, epochs=epochs, config=FitSettings(
            seed=seed, learning_rate=LEARNING_RATE, batch_size=BATCH_SIZE))
    scores = {"pooled": model.evaluate(_pooled(list(tests.values())))["accuracy"]}
    scores.update({name: model.evaluate(t)["accuracy"] for name, t in tests.items()})
    return scores


def _comparison(silos: list[SiloConfig], model_path: Path, epochs: int, seed: int) -> Table:
    trains = {s.name: load_dataset(s.train, s.schema) for s in silos}
    tests = {s.name: load_dataset(s.test, s.schema) for s in silos}  # type: ignore[arg-type]
    ref = silos[0]
    rows = [("federated (xsilo, 3 hospitals)", _score(ref, load_npz(model_path), None, 0, tests, seed)),
            ("centralized (pooled data)", _score(ref, None, _pooled(list(trains.values())),
                                                epochs, tests, seed))]
    rows += [(f"{name} alone", _score(ref, None, data, epochs, tests, seed))
             for name, data in trains.items()]
    table = Table(title="accuracy on the hospitals' held-out test splits", title_justify="left")
    table.add_column("model")
    table.add_column("all test data", justify="right", style="bold")
    for name in tests:
        table.add_column(name, justify="right")
    for label, scores in rows:
        table.add_row(label, f"{scores['pooled']:.4f}", *[f"{scores[n]:.4f}" for n in tests])
    table.caption = (f"federated − centralized = "
                     f"{(rows[0][1]['pooled'] - rows[1][1]['pooled']) * 100:+.2f} points")
    return table


def _accuracy_line(store: RunStore) -> str:
    """Global accuracy of model 0 (initial), 1, … as one line."""
    rows = [e for e in store.events() if e.get("event") == "round"]
    accs = " → ".join("–" if e.get("global_accuracy") is None else f"{e['global_accuracy']:.3f}"
                      for e in rows)
    return f"global accuracy by round (0 = initial model): {accs}"


def _report(run_dir: Path) -> Path | None:
    """The run's report (the coordinator writes it when the run ends; rendered here if not)."""
    path = run_dir / REPORT_FILE
    if path.exists():
        return path
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the demo's result stands without its report
        console.print(f"[yellow]could not render the report: {exc}[/]")
        return None


def demo(
    rounds: int = typer.Option(4, help="Federated rounds."),
    local_epochs: int = typer.Option(2, help="Local epochs per round."),
    workdir: Optional[Path] = typer.Option(None, help="Keep everything here (default: a temp dir)."),
    keep: bool = typer.Option(False, help="Keep the work directory (certificates, data, run)."),
    timeout: float = typer.Option(600.0, help="Give up after this many seconds."),
) -> None:
    """Run a real 3-hospital federation on this machine (mTLS gateways + node auth) and compare."""
    started = time.monotonic()
    report: Path | None = None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="xsilo-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    fed = LocalFederation(root, model=MODEL, mtls=True)
    try:
        fed.setup()
        console.print(f"[bold]xsilo demo[/] in {root}: consortium CA, {len(fed.silos)} "
                      "hospitals enrolled on site (keys never left their kit), non-IID data")
        fed.start()
        console.print(f"coordinator gateway 127.0.0.1:{fed.port} (mTLS, CRL) → SuperLink on "
                      f"loopback (TLS, node auth); {len(fed.supernodes)} SuperNodes, each "
                      "behind its own silo gateway")
        config = RunConfig(num_rounds=rounds, local_epochs=local_epochs, min_silos=3,
                           expected_silos=3, round_timeout=120.0, join_timeout=60.0, name="demo",
                           secure_aggregation=True, learning_rate=LEARNING_RATE,
                           batch_size=BATCH_SIZE)
        outcome = fed.run(config, console=console, timeout=timeout)
        report = _report(outcome.store.path)
        if not outcome.completed:
            raise DeploymentError(
                f"the run ended as {outcome.status}: {error_line(outcome.summary)}; SuperLink "
                f"log tail:\n{fed.coordinator.superlink.log_tail() if fed.coordinator else ''}")
        console.print(_accuracy_line(outcome.store))
        console.print(_comparison(fed.silos, outcome.store.path / "model.npz",
                                  rounds * local_epochs, 0))
        console.print(f"({time.monotonic() - started:.0f} s in all)")
    finally:
        fed.stop()
        signal.signal(signal.SIGTERM, previous)
        _leave(root, report, kept=keep or workdir is not None)


def _leave(root: Path, report: Path | None, *, kept: bool) -> None:
    """Keep or remove the work directory; name the report (copied out if it goes)."""
    if report is not None and not kept:
        try:
            shutil.copyfile(report, KEPT_REPORT)
            report = KEPT_REPORT
        except OSError as exc:  # e.g. another account's file there: the demo still cleans up
            console.print(f"[yellow]could not keep the report at {KEPT_REPORT} ({exc}); run "
                          "with --keep to keep it in the work directory[/]")
            report = None
    if report is not None:
        console.print(f"report: {report}  (one HTML file; open it in a browser)")
    if kept:
        console.print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        console.print(f"work directory {root} removed (pass --keep to keep it)")


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt

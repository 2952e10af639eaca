"""``xsilo demo``: three hospitals train one model over real, authenticated, encrypted links.

Everything is real and local: a throw-away CA and certificates, a Flower SuperLink with
TLS and SuperNode authentication, one SuperNode per hospital with its own key and data,
the xsilo ServerApp/ClientApp, on 127.0.0.1 with ports chosen at run time and a private
``FLWR_HOME``. The run ends with federated vs. centralized vs. local-only accuracy,
measured in the same process on the same test splits. Every process is stopped on
success, error or Ctrl-C.
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
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table

from coordinator.config import RunConfig
from coordinator.console import follow_run
from coordinator.home import CoordinatorHome, start_coordinator, stop_quietly
from coordinator.run_store import load_npz
from coordinator.runs import new_run_dir, submit_run
from deploy import certs
from deploy.launch import ManagedProcess, free_port
from silo_client.adapters.base import build_model
from silo_client.config import SiloConfig, load_silo_config, write_silo_config
from silo_client.data import LocalDataset, load_dataset
from silo_client.launch import start_silo
from xsilo.demo_data import demo_schema, write_demo_data
from xsilo.errors import DeploymentError

__all__ = ["demo"]

console = Console()
MODEL = "sklearn:LogisticRegression"


def _setup_pki(home: Path, silo_root: Path, names: list[str]) -> None:
    """Throw-away CA, coordinator certificate (localhost/127.0.0.1), one node key per silo."""
    pki = home / "pki"
    ca = certs.make_ca("xsilo demo CA", organization="xsilo demo consortium")
    certs.write_public_pem(pki / "ca.crt", ca.cert)
    certs.write_private_key(pki / "ca.key", ca.key)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = certs.issue_leaf(ca, "coordinator", public_key=key.public_key(), days=2,
                            server_hosts=["localhost", "127.0.0.1", "::1"])
    certs.write_public_pem(pki / "coordinator.crt", cert)
    certs.write_private_key(pki / "coordinator.key", key)
    for name in names:
        certs.make_node_auth_key(silo_root / name / "node.key", home / "nodes" / f"{name}.pub")
        shutil.copy(pki / "ca.crt", silo_root / name / "ca.crt")


def _write_silos(silo_root: Path, superlink: str) -> list[SiloConfig]:
    configs = []
    for silo in write_demo_data(silo_root):
        base = silo_root / silo.name
        path = write_silo_config(
            base / "silo.toml", name=silo.name, train="data/train.csv", test="data/test.csv",
            schema=demo_schema(), model=MODEL, superlink=superlink, root_certificates="ca.crt",
            auth_key="node.key")
        configs.append(load_silo_config(path))
    return configs


def _pooled(parts: list[LocalDataset]) -> LocalDataset:
    return LocalDataset(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                        parts[0].schema, "pooled")


def _score(silo: SiloConfig, params: dict | None, train: LocalDataset | None, epochs: int,
           tests: dict[str, LocalDataset], seed: int) -> dict[str, float]:
    model = build_model(MODEL, schema=silo.schema, config={"seed": seed})
    if params is not None:
        model.set_parameters(params)
    if train is not None:
        model.fit(train, epochs=epochs, config={"seed": seed})
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


def demo(
    rounds: int = typer.Option(5, help="Federated rounds."),
    local_epochs: int = typer.Option(1, help="Local epochs per round."),
    workdir: Optional[Path] = typer.Option(None, help="Keep everything here (default: a temp dir)."),
    keep: bool = typer.Option(False, help="Keep the work directory (certificates, data, run)."),
    timeout: float = typer.Option(600.0, help="Give up after this many seconds."),
) -> None:
    """Run a real 3-hospital federation on this machine (TLS + node auth) and compare."""
    started = time.monotonic()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="xsilo-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    processes: list[ManagedProcess] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        port = free_port()
        home_dir, silo_root = root / "coordinator", root / "silos"
        CoordinatorHome.write(home_dir, host="127.0.0.1", port=port)
        names = ["hospital-a", "hospital-b", "hospital-c"]
        for n in names:
            (silo_root / n).mkdir(parents=True, exist_ok=True)
        _setup_pki(home_dir, silo_root, names)
        silos = _write_silos(silo_root, f"127.0.0.1:{port}")
        home = CoordinatorHome.load(home_dir)
        console.print(f"[bold]xsilo demo[/] in {root}: CA + coordinator certificate + 3 node keys")
        coordinator = start_coordinator(home)
        processes.append(coordinator.superlink)
        console.print(f"SuperLink on 127.0.0.1:{port} (TLS, node auth), registered "
                      f"{', '.join(coordinator.node_ids)}")
        for silo in silos:
            processes.append(start_silo(silo))
        console.print("3 SuperNodes started (TLS, own auth key, own data)")
        config = RunConfig(num_rounds=rounds, local_epochs=local_epochs, min_silos=3,
                           expected_silos=3, round_timeout=120.0, join_timeout=60.0, name="demo")
        run_dir = new_run_dir(home.runs, "demo")
        cli = home.cli()
        run_id, store = submit_run(cli, run_dir, config)
        final = follow_run(store, lambda: cli.status(run_id), console=console, timeout=timeout)
        summary = store.summary() or {}
        if final != "finished:completed" or summary.get("status") != "completed":
            raise DeploymentError(f"the run ended as {final}: {summary.get('error')}; "
                                  f"SuperLink log tail:\n{coordinator.superlink.log_tail()}")
        console.print(_comparison(silos, run_dir / "model.npz", rounds * local_epochs, 0))
        console.print(f"run directory: {run_dir}  ({time.monotonic() - started:.0f} s in all)")
    finally:
        stop_quietly(processes)
        signal.signal(signal.SIGTERM, previous)
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        elif keep or workdir:
            console.print(f"kept {root}")


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt

"""Train a scikit-learn model across three non-IID clinics (wine cultivars) in one command.

    .venv/bin/python examples/tabular-sklearn/run.py --rounds 5
    .venv/bin/python examples/tabular-sklearn/run.py --model wine_model:build --engine deployment
    .venv/bin/python examples/tabular-sklearn/run.py --engine simulation --secure-aggregation

Splits scikit-learn's bundled wine data across ``clinic-north/south/east``
(``prepare_data.py``), writes each silo's ``silo.toml`` with the chosen model (a built-in
``sklearn:<Estimator>`` or this folder's ``wine_model:build``), runs FedAvg and prints the
round table and the final accuracy. ``--engine inprocess`` (default) runs the coordinator
loop and the silo handlers in this process; ``--engine simulation`` runs the same on
Flower's Ray simulation engine (each silo's ClientApp in a Ray actor); ``--engine
deployment`` starts a real ``flower-superlink`` (TLS, node authentication) and one
``flower-supernode`` per silo on 127.0.0.1, and stops them all at the end.
``--secure-aggregation`` masks every update.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# A silo's own model (wine_model:build) is declared by import path: this folder must be
# importable here and in every ClientApp process the SuperNodes start (they inherit PYTHONPATH).
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)

from rich.console import Console  # noqa: E402

import prepare_data  # noqa: E402
from coordinator.config import RunConfig  # noqa: E402
from coordinator.console import round_table  # noqa: E402
from coordinator.run_store import RunStore  # noqa: E402
from silo_client.config import write_silo_config  # noqa: E402
from xsilo.errors import XsiloError  # noqa: E402

MODELS = ("sklearn:LogisticRegression", "sklearn:SGDClassifier", "sklearn:MLPClassifier",
          "wine_model:build")
console = Console()


def _silos(root: Path, config: RunConfig, model: str) -> list[Path]:
    return [write_silo_config(root / "silos" / s.name / "silo.toml", name=s.name,
                              train=Path("data/train.csv"), test=Path("data/test.csv"),
                              schema=prepare_data.schema(), model=model)
            for s in prepare_data.write_silos(root / "silos", seed=config.seed)]


def run_inprocess(root: Path, config: RunConfig, *, model: str) -> RunStore:
    """Coordinator loop and silo handlers in this process, no Flower processes."""
    from federation.local import run_in_process

    run_in_process(root / "run", config, _silos(root, config, model))
    store = RunStore(root / "run")
    console.print(round_table(store.events()))
    return store


def run_simulation(root: Path, config: RunConfig, *, model: str) -> RunStore:
    """Flower's Ray simulation engine: one virtual SuperNode per silo, ClientApps in actors."""
    from federation.local import run_in_simulation

    run_in_simulation(root / "run", config, _silos(root, config, model))
    store = RunStore(root / "run")
    console.print(round_table(store.events()))
    return store


def run_deployment(root: Path, config: RunConfig, *, model: str) -> RunStore:
    """Real SuperLink + one SuperNode per silo on loopback; every process stopped at the end."""
    from federation.deployment import LocalFederation

    fed = LocalFederation(root, model=model, schema=prepare_data.schema(),
                          write_data=lambda d: prepare_data.write_silos(d, seed=config.seed))
    with fed:
        fed.setup().start()
        console.print(f"SuperLink on 127.0.0.1:{fed.port} (TLS, node auth), "
                      f"{len(fed.supernodes)} SuperNodes")
        outcome = fed.run(config, console=console, timeout=120 + 60 * config.num_rounds)
        console.line()
    if not outcome.completed:
        raise XsiloError(f"the run ended as {outcome.status}: {outcome.summary.get('error')}")
    return outcome.store


ENGINES = {"inprocess": run_inprocess, "simulation": run_simulation,
           "deployment": run_deployment}


def report(store: RunStore) -> None:
    rows = [e for e in store.events() if e["event"] == "round"]
    first, last = rows[0], rows[-1]
    console.print(f"[bold]final global accuracy {last['global_accuracy']:.4f}[/] "
                  f"(initial model {first['global_accuracy']:.4f}); "
                  f"loss {last['global_loss']:.4f} (initial {first['global_loss']:.4f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="inprocess")
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="mask every update (the coordinator sees only the sum)")
    parser.add_argument("--workdir", type=Path, help="keep data, silo configs and the run here")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="xsilo-wine-"))
    started = time.monotonic()
    try:
        config = RunConfig(num_rounds=args.rounds, local_epochs=args.local_epochs,
                           learning_rate=args.learning_rate, min_silos=3, expected_silos=3,
                           round_timeout=120.0, join_timeout=60.0, name="wine",
                           secure_aggregation=args.secure_aggregation)
        run = ENGINES[args.engine]
        report(run(root, config, model=args.model))
    except XsiloError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    console.print(f"{args.engine}: {time.monotonic() - started:.0f} s"
                  + (f"; kept {root}" if args.workdir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the digits CNN across three non-IID silos in one command.

    .venv/bin/python examples/digits-torch/run.py --rounds 5
    .venv/bin/python examples/digits-torch/run.py --rounds 5 --engine deployment

Splits scikit-learn's bundled digits across ``hospital-a/b/c`` (``prepare_data.py``), writes
each silo's ``silo.toml`` with ``model = "digits_cnn:build"``, runs FedAvg and prints the
round table and the final accuracy. ``--engine inprocess`` (default) runs the coordinator
loop and the silo handlers in this process; ``--engine deployment`` starts a real
``flower-superlink`` (TLS, node authentication) and one ``flower-supernode`` per silo on
127.0.0.1, and stops them all at the end.
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
# The silo's model is declared by import path: this folder must be importable here and in
# every ClientApp process the SuperNodes start (they inherit PYTHONPATH).
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

MODEL = "digits_cnn:build"
console = Console()


def run_inprocess(root: Path, config: RunConfig, *, alpha: float) -> RunStore:
    """Coordinator loop and silo handlers in this process, no Flower processes."""
    from federation.local import run_in_process

    configs = [write_silo_config(root / "silos" / s.name / "silo.toml", name=s.name,
                                 train=Path("data/train.csv"), test=Path("data/test.csv"),
                                 schema=prepare_data.schema(), model=MODEL)
               for s in prepare_data.write_silos(root / "silos", alpha=alpha, seed=config.seed)]
    run_in_process(root / "run", config, configs)
    store = RunStore(root / "run")
    console.print(round_table(store.events()))
    return store


def run_deployment(root: Path, config: RunConfig, *, alpha: float) -> RunStore:
    """Real SuperLink + one SuperNode per silo on loopback; every process stopped at the end."""
    from federation.deployment import LocalFederation

    fed = LocalFederation(root, model=MODEL, schema=prepare_data.schema(),
                          write_data=lambda d: prepare_data.write_silos(d, alpha=alpha,
                                                                        seed=config.seed))
    with fed:
        fed.setup().start()
        console.print(f"SuperLink on 127.0.0.1:{fed.port} (TLS, node auth), "
                      f"{len(fed.supernodes)} SuperNodes")
        outcome = fed.run(config, console=console, timeout=120 + 60 * config.num_rounds)
        console.line()
    if not outcome.completed:
        raise XsiloError(f"the run ended as {outcome.status}: {outcome.summary.get('error')}")
    return outcome.store


def report(store: RunStore) -> None:
    rows = [e for e in store.events() if e["event"] == "round"]
    first, last = rows[0], rows[-1]
    console.print(f"[bold]final global accuracy {last['global_accuracy']:.4f}[/] "
                  f"(initial model {first['global_accuracy']:.4f}); "
                  f"loss {last['global_loss']:.4f} (initial {first['global_loss']:.4f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet skew (lower = more non-IID)")
    parser.add_argument("--engine", choices=("inprocess", "deployment"), default="inprocess")
    parser.add_argument("--workdir", type=Path, help="keep data, silo configs and the run here")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="xsilo-digits-"))
    started = time.monotonic()
    try:
        config = RunConfig(num_rounds=args.rounds, local_epochs=args.local_epochs,
                           learning_rate=args.learning_rate, min_silos=3, expected_silos=3,
                           round_timeout=120.0, join_timeout=60.0, name="digits")
        run = run_inprocess if args.engine == "inprocess" else run_deployment
        report(run(root, config, alpha=args.alpha))
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

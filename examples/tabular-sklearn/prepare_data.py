"""Split scikit-learn's bundled wine data into three non-IID silos as CSV files.

    python examples/tabular-sklearn/prepare_data.py --out /tmp/wine-silos

Writes ``<out>/<silo>/data/train.csv`` / ``test.csv`` and ``<out>/schema.toml``. Features are
standardised with constants the consortium agrees on up front (here: computed once by this
script, which plays every site); each silo then applies the same fixed scaling.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_wine

SILOS = ("clinic-north", "clinic-south", "clinic-east")


@dataclass(frozen=True)
class SiloData:
    """Where one silo's files are, and its class counts (train + test)."""

    name: str
    train: Path
    test: Path
    n_train: int
    n_test: int
    classes: list[int]


def write_csv(path: Path, header: list[str], X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*header, "label"])
        w.writerows([*(f"{v:.6g}" for v in row), int(label)] for row, label in zip(X, y))


def feature_names() -> list[str]:
    return [n.replace("/", "_") for n in load_wine().feature_names]


def schema() -> dict[str, object]:
    """The ``[data.schema]`` table every silo declares."""
    return {"label": "label", "task": "classification", "label_values": [0, 1, 2],
            "missing": "error", "features": {n: "float" for n in feature_names()}}


def schema_toml() -> str:
    import tomli_w

    return tomli_w.dumps({"data": {"schema": schema()}})


def write_silos(out: Path, *, test_fraction: float = 0.3, seed: int = 0) -> list[SiloData]:
    """Write ``<out>/<silo>/data/{train,test}.csv`` for every silo; return where they are."""
    wine = load_wine()
    names = feature_names()
    X = (wine.data - wine.data.mean(axis=0)) / wine.data.std(axis=0)
    rng = np.random.default_rng(seed)
    # non-IID: each silo over-represents one cultivar (class) and has its own size
    weights = np.array([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.2, 0.1, 0.7]])
    owner = np.array([rng.choice(3, p=weights[:, label] / weights[:, label].sum()) for label in wine.target])
    silos = []
    for i, silo in enumerate(SILOS):
        rows = rng.permutation(np.flatnonzero(owner == i))
        n_test = int(len(rows) * test_fraction)
        base = Path(out) / silo / "data"
        write_csv(base / "test.csv", names, X[rows[:n_test]], wine.target[rows[:n_test]])
        write_csv(base / "train.csv", names, X[rows[n_test:]], wine.target[rows[n_test:]])
        silos.append(SiloData(silo, base / "train.csv", base / "test.csv", len(rows) - n_test,
                              n_test, np.bincount(wine.target[rows], minlength=3).tolist()))
    return silos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for silo in write_silos(args.out, test_fraction=args.test_fraction, seed=args.seed):
        print(f"{silo.name}: {silo.n_train} train / {silo.n_test} test rows, classes {silo.classes}")
    (args.out / "schema.toml").write_text(schema_toml())
    print(f"schema: {args.out / 'schema.toml'}")


if __name__ == "__main__":
    main()

"""Split scikit-learn's bundled wine data into three non-IID silos as CSV files.

    python examples/tabular-sklearn/prepare_data.py --out /tmp/wine-silos

Writes ``<out>/<silo>/train.csv`` / ``test.csv`` and ``<out>/schema.toml``. Features are
standardised with constants the consortium agrees on up front (here: computed once by this
script, which plays every site); each silo then applies the same fixed scaling.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_wine

SILOS = ("clinic-north", "clinic-south", "clinic-east")


def write_csv(path: Path, header: list[str], X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*header, "label"])
        w.writerows([*(f"{v:.6g}" for v in row), int(label)] for row, label in zip(X, y))


def schema_toml(names: list[str]) -> str:
    feats = "\n".join(f'{n} = "float"' for n in names)
    return ('[data.schema]\nlabel = "label"\ntask = "classification"\nlabel_values = [0, 1, 2]\n'
            f'missing = "error"\n\n[data.schema.features]\n{feats}\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    wine = load_wine()
    names = [n.replace("/", "_") for n in wine.feature_names]
    X = (wine.data - wine.data.mean(axis=0)) / wine.data.std(axis=0)
    rng = np.random.default_rng(args.seed)
    # non-IID: each silo over-represents one cultivar (class) and has its own size
    weights = np.array([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.2, 0.1, 0.7]])
    owner = np.array([rng.choice(3, p=weights[:, label] / weights[:, label].sum()) for label in wine.target])
    for i, silo in enumerate(SILOS):
        rows = rng.permutation(np.flatnonzero(owner == i))
        n_test = int(len(rows) * args.test_fraction)
        write_csv(args.out / silo / "test.csv", names, X[rows[:n_test]], wine.target[rows[:n_test]])
        write_csv(args.out / silo / "train.csv", names, X[rows[n_test:]], wine.target[rows[n_test:]])
        print(f"{silo}: {len(rows) - n_test} train / {n_test} test rows, "
              f"classes {np.bincount(wine.target[rows], minlength=3).tolist()}")
    (args.out / "schema.toml").write_text(schema_toml(names))
    print(f"schema: {args.out / 'schema.toml'}")


if __name__ == "__main__":
    main()

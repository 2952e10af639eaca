"""Split scikit-learn's bundled digits into non-IID hospital silos as CSV files.

    python examples/digits-torch/prepare_data.py --out /tmp/digits-silos

Writes ``<out>/<silo>/train.csv`` and ``test.csv`` (columns ``px0..px63,label``) and
``<out>/schema.toml`` (the ``[data.schema]`` table every silo declares). Label skew is drawn
from a Dirichlet(alpha) per class, so silos differ in size and class mix.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

SILOS = ("hospital-a", "hospital-b", "hospital-c")


def split_non_iid(y: np.ndarray, n_silos: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices per silo: each class is shared out by Dirichlet(alpha) proportions."""
    parts: list[list[int]] = [[] for _ in range(n_silos)]
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * n_silos)) * len(rows)).astype(int)[:-1]
        for silo, chunk in enumerate(np.split(rows, cuts)):
            parts[silo].extend(chunk.tolist())
    return [rng.permutation(np.array(p, dtype=int)) for p in parts]


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"px{i}" for i in range(X.shape[1])] + ["label"])
        w.writerows([*map(int, row), int(label)] for row, label in zip(X, y))


def schema_toml() -> str:
    feats = "\n".join(f'px{i} = "int"' for i in range(64))
    return ('[data.schema]\nlabel = "label"\ntask = "classification"\n'
            f"label_values = {list(range(10))}\nmissing = \"error\"\n\n"
            f"[data.schema.features]\n{feats}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet skew (lower = more non-IID)")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    for silo, rows in zip(SILOS, split_non_iid(digits.target, len(SILOS), args.alpha, rng)):
        n_test = int(len(rows) * args.test_fraction)
        write_csv(args.out / silo / "test.csv", digits.data[rows[:n_test]], digits.target[rows[:n_test]])
        write_csv(args.out / silo / "train.csv", digits.data[rows[n_test:]], digits.target[rows[n_test:]])
        print(f"{silo}: {len(rows) - n_test} train / {n_test} test rows, "
              f"classes {np.bincount(digits.target[rows], minlength=10).tolist()}")
    (args.out / "schema.toml").write_text(schema_toml())
    print(f"schema: {args.out / 'schema.toml'}")


if __name__ == "__main__":
    main()

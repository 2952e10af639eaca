"""Split scikit-learn's bundled digits into non-IID hospital silos as CSV files.

    python examples/digits-torch/prepare_data.py --out /tmp/digits-silos

Writes ``<out>/<silo>/data/train.csv`` and ``test.csv`` (columns ``px0..px63,label``) and
``<out>/schema.toml`` (the ``[data.schema]`` table every silo declares). Label skew is drawn
from a Dirichlet(alpha) per class, so silos differ in size and class mix.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

PIXELS = 64
SILOS = ("hospital-a", "hospital-b", "hospital-c")


@dataclass(frozen=True)
class SiloData:
    """Where one silo's files are, and its class counts (train + test)."""

    name: str
    train: Path
    test: Path
    n_train: int
    n_test: int
    classes: list[int]


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


def schema() -> dict[str, object]:
    """The ``[data.schema]`` table every silo declares."""
    return {"label": "label", "task": "classification", "label_values": list(range(10)),
            "missing": "error", "features": {f"px{i}": "int" for i in range(PIXELS)}}


def schema_toml() -> str:
    import tomli_w

    return tomli_w.dumps({"data": {"schema": schema()}})


def write_silos(out: Path, *, alpha: float = 1.0, test_fraction: float = 0.25,
                seed: int = 0) -> list[SiloData]:
    """Write ``<out>/<silo>/data/{train,test}.csv`` for every silo; return where they are."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    silos = []
    for silo, rows in zip(SILOS, split_non_iid(digits.target, len(SILOS), alpha, rng)):
        n_test = int(len(rows) * test_fraction)
        base = Path(out) / silo / "data"
        write_csv(base / "test.csv", digits.data[rows[:n_test]], digits.target[rows[:n_test]])
        write_csv(base / "train.csv", digits.data[rows[n_test:]], digits.target[rows[n_test:]])
        silos.append(SiloData(silo, base / "train.csv", base / "test.csv", len(rows) - n_test,
                              n_test, np.bincount(digits.target[rows], minlength=10).tolist()))
    return silos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet skew (lower = more non-IID)")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for silo in write_silos(args.out, alpha=args.alpha, test_fraction=args.test_fraction,
                            seed=args.seed):
        print(f"{silo.name}: {silo.n_train} train / {silo.n_test} test rows, classes {silo.classes}")
    (args.out / "schema.toml").write_text(schema_toml())
    print(f"schema: {args.out / 'schema.toml'}")


if __name__ == "__main__":
    main()

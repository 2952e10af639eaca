"""The demo federation's data: scikit-learn's breast-cancer set, split non-IID.

Three hospitals get different sizes *and* different label ratios (a referral centre sees
mostly malignant cases, a screening clinic mostly benign ones), and each keeps a local,
stratified test split. Features are written in the consortium's reference units: every
measurement divided by the maximum published in the dataset's data dictionary (sklearn's
``DESCR`` table) — an agreed, public scale, so no silo needs another's statistics.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DemoSilo", "HOSPITALS", "demo_schema", "write_demo_data"]

# name → (share of malignant cases, share of benign cases)
HOSPITALS: dict[str, tuple[float, float]] = {
    "hospital-a": (0.20, 0.60),  # large screening clinic, mostly benign
    "hospital-b": (0.35, 0.30),  # general hospital, mixed
    "hospital-c": (0.45, 0.10),  # small referral centre, mostly malignant
}
TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DemoSilo:
    """Where one demo hospital's files are."""

    name: str
    train: Path
    test: Path
    n_train: int
    n_test: int
    benign_share: float


def _feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return [str(n) for n in load_breast_cancer().feature_names]


def _write_csv(path: Path, names: list[str], X: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*names, "label"])
        for row, label in zip(X, y):
            writer.writerow([f"{v:.6g}" for v in row] + [int(label)])


def _split_indices(y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {name: [] for name in HOSPITALS}
    for label, column in ((0, 0), (1, 1)):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = np.array([HOSPITALS[n][column] for n in HOSPITALS])
        cuts = np.round(np.cumsum(shares / shares.sum())[:-1] * len(idx)).astype(int)
        for name, chunk in zip(HOSPITALS, np.split(idx, cuts)):
            parts[name].append(chunk)
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def write_demo_data(root: Path, *, seed: int = 0) -> list[DemoSilo]:
    """Write ``root/<hospital>/data/{train,test}.csv``; return where each silo's files are.

    Data shuffling only (``numpy`` generator, seeded): nothing secret is drawn here.
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = data.data / data.data.max(axis=0)  # reference units (published maxima)
    y = data.target
    rng = np.random.default_rng(seed)
    names = _feature_names()
    silos = []
    for name, idx in _split_indices(y, rng).items():
        train_idx, test_idx = [], []
        for label in (0, 1):
            cls = rng.permutation(idx[y[idx] == label])
            n_test = int(round(len(cls) * TEST_FRACTION))
            test_idx.append(cls[:n_test])
            train_idx.append(cls[n_test:])
        tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
        tr, te = rng.permutation(tr), rng.permutation(te)
        base = Path(root) / name / "data"
        _write_csv(base / "train.csv", names, X[tr], y[tr])
        _write_csv(base / "test.csv", names, X[te], y[te])
        silos.append(DemoSilo(name, base / "train.csv", base / "test.csv", len(tr), len(te),
                              float(y[idx].mean())))
    return silos


def demo_schema() -> dict[str, object]:
    """The ``[data.schema]`` table every demo silo declares."""
    return {"label": "label", "label_values": [0, 1], "task": "classification",
            "missing": "error", "features": {n: "float" for n in _feature_names()}}

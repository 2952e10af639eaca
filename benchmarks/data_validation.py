"""How long does a silo take to validate its local data before joining a run?

    .venv/bin/python benchmarks/data_validation.py [--repeats 5]

Generates CSV (and Parquet, if pyarrow is installed) files of N rows x 30 float features plus
a binary label, times ``silo_client.data.load_dataset`` (read + full validation + encoding),
prints a table and writes ``benchmarks/out/data_validation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from silo_client.data import Column, DataSchema, load_dataset

ROWS = (10_000, 100_000, 300_000)
N_FEATURES = 30
OUT = Path(__file__).resolve().parent / "out" / "data_validation.json"


def make_files(folder: Path, rows: int, rng: np.random.Generator) -> dict[str, Path]:
    X = rng.normal(size=(rows, N_FEATURES)).round(6)
    y = rng.integers(0, 2, size=rows)
    header = [f"f{i}" for i in range(N_FEATURES)] + ["label"]
    csv_path = folder / f"data_{rows}.csv"
    with csv_path.open("w") as fh:
        fh.write(",".join(header) + "\n")
        np.savetxt(fh, np.column_stack([X, y]), delimiter=",", fmt=["%.6f"] * N_FEATURES + ["%d"])
    files = {"csv": csv_path}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return files
    table = pa.table({**{h: X[:, i] for i, h in enumerate(header[:-1])}, "label": y})
    files["parquet"] = folder / f"data_{rows}.parquet"
    pq.write_table(table, files["parquet"])
    return files


def time_load(path: Path, schema: DataSchema, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ds = load_dataset(path, schema)
        times.append(time.perf_counter() - start)
        assert ds.X.shape[1] == N_FEATURES
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    schema = DataSchema(tuple(Column(f"f{i}", "float") for i in range(N_FEATURES)), "label", (0, 1))
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in ROWS:
            for fmt, path in make_files(Path(tmp), rows, rng).items():
                times = time_load(path, schema, args.repeats)
                results.append({"format": fmt, "rows": rows, "columns": N_FEATURES + 1,
                                "file_mb": round(path.stat().st_size / 1e6, 1),
                                "median_s": round(statistics.median(times), 3),
                                "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                                "rows_per_s": int(rows / statistics.median(times))})
    print(f"{'format':8} {'rows':>8} {'MB':>6} {'median s':>9} {'min s':>7} {'max s':>7} {'rows/s':>10}")
    for r in results:
        print(f"{r['format']:8} {r['rows']:>8} {r['file_mb']:>6} {r['median_s']:>9} "
              f"{r['min_s']:>7} {r['max_s']:>7} {r['rows_per_s']:>10}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "repeats": args.repeats,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    OUT.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

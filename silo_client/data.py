"""Validated local data: CSV/Parquet loading checked against the declared schema.

A silo validates its data against the schema in its config before joining any run; every
problem is a :class:`~xsilo.errors.DataValidationError` naming file, column and 1-based data
row. The schema types and the fingerprint a silo publishes live in :mod:`silo_client.schema`
and are re-exported here, so ``from silo_client.data import DataSchema`` keeps working.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from silo_client.schema import Column, DataSchema, fingerprints_agree, schema_fingerprint
from xsilo.errors import DataValidationError

__all__ = [
    "Column",
    "DataSchema",
    "LocalDataset",
    "fingerprints_agree",
    "infer_schema",
    "load_dataset",
    "schema_fingerprint",
]

log = logging.getLogger(__name__)

MISSING_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
_BOOL_TOKENS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "yes": 1.0, "no": 0.0}


@dataclass(frozen=True)
class LocalDataset:
    """Validated local data. ``X`` is float32 2-D; ``y`` holds class indices into
    ``schema.label_values`` (int64) for classification, float32 targets for regression."""

    X: np.ndarray
    y: np.ndarray
    schema: DataSchema
    source: str

    def __len__(self) -> int:
        return int(self.X.shape[0])


class _Raw:
    """Columns of one file as read: strings for CSV (tuples, converted lazily), typed for Parquet."""

    def __init__(self, path: Path, columns: dict[str, tuple | np.ndarray], n_rows: int) -> None:
        self.path, self.columns, self.n_rows = path, columns, n_rows

    def array(self, name: str) -> np.ndarray:
        col = self.columns[name]
        if isinstance(col, tuple):
            col = self.columns[name] = np.asarray(col, dtype=str)
        return col

    def fail(self, column: str, row: int | None, what: str, *, cell: object = None,
             noun: str = "value") -> DataValidationError:
        """The error for ``column`` (``row``): ``what``, after the offending ``cell`` when one
        is named. The coordinator reads it without the cell and with the file's name only
        (raw data never leaves the silo, not even in an error reply)."""
        where = f", row {row + 1} (line {row + 2})" if row is not None else ""
        local = what if cell is None else f"{noun} {_cell(cell)!r} {what}"
        public = what if cell is None else f"a {noun} {what} (withheld: it is local data)"
        return DataValidationError(f"{self.path}: column {column!r}{where}: {local}",
                                   public=f"{self.path.name}: column {column!r}{where}: {public}")


def _read_csv(path: Path) -> _Raw:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header or header == [""]:
                raise DataValidationError(f"{path}: the file is empty (no header row); nothing sent")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataValidationError(f"{path}: not a readable UTF-8 CSV file ({exc})") from exc
    while rows and not rows[-1]:
        rows.pop()
    width = len(header)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataValidationError(
                f"{path}: row {i + 1} (line {i + 2}) has {len(row)} fields, header has {width}"
            )
    dup = [n for n, k in Counter(header).items() if k > 1]
    if dup:
        raise DataValidationError(f"{path}: column {dup[0]!r} appears twice in the header")
    cols = list(zip(*rows)) if rows else [()] * width
    return _Raw(path, dict(zip(header, cols)), len(rows))


def _read_parquet(path: Path) -> _Raw:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # optional extra
        raise DataValidationError(
            f"{path}: reading Parquet needs pyarrow; install it with pip install 'xsilo[parquet]'"
        ) from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataValidationError(f"{path}: not a readable Parquet file ({exc})") from exc
    arrays = {}
    for name in table.column_names:
        col = table.column(name)
        arrays[name] = col.to_numpy(zero_copy_only=False)
        if col.null_count and arrays[name].dtype.kind in "iub":
            arrays[name] = col.cast("float64").to_numpy(zero_copy_only=False)
    return _Raw(path, arrays, table.num_rows)


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "iub":
        return np.zeros(values.shape, dtype=bool)
    if values.dtype.kind == "O":
        return np.array([v is None or str(v) in MISSING_TOKENS for v in values], dtype=bool)
    return np.isin(values, MISSING_TOKENS)


def _first_bad(values: np.ndarray, ok: Callable[[object], bool]) -> int:
    return next(i for i, v in enumerate(values) if not ok(v))


def _cell(v: object) -> object:
    """A numpy scalar as a plain Python value, for readable messages."""
    return v.item() if isinstance(v, np.generic) else v


def _parses_float(v: object) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _to_float(raw: _Raw, name: str, dtype: str) -> np.ndarray:
    """Numeric column -> float64 with NaN at missing cells; errors name the first bad row."""
    values = raw.columns[name]
    out = None
    if isinstance(values, tuple):  # fast path: a clean CSV column parses without a string array
        try:
            out = np.fromiter(map(float, values), np.float64, count=len(values))
        except ValueError:
            values = raw.array(name)
    if out is None and values.dtype.kind in "fiub":
        out = values.astype(np.float64)
    elif out is None:
        missing = _missing_mask(values)
        filled = np.where(missing, "nan", values.astype(str))
        try:
            out = filled.astype(np.float64)
        except ValueError:
            i = _first_bad(filled, _parses_float)
            raise raw.fail(name, i, f"is not a number (declared {dtype})", cell=values[i]) from None
    if np.isinf(out).any():
        i = int(np.argmax(np.isinf(out)))
        raise raw.fail(name, i, "is not finite", cell=values[i])
    if dtype == "int":
        frac = ~np.isnan(out) & (out != np.round(out))
        if frac.any():
            i = int(np.argmax(frac))
            raise raw.fail(name, i, "is not an integer (declared int)", cell=values[i])
    return out


def _encode_levels(raw: _Raw, name: str, values: np.ndarray, missing: np.ndarray,
                   levels: dict[str, int], what: str) -> np.ndarray:
    """Map each cell to its level index (-1 where missing); unknown levels are errors."""
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    codes = np.empty(len(uniq), dtype=np.int64)
    for j, u in enumerate(uniq):
        code = levels.get(u)
        if code is None:
            code = levels.get(_numeric_key(u), -2)
        codes[j] = code
    idx = codes[inverse.reshape(-1)]
    idx[missing] = -1
    bad = idx == -2
    if bad.any():
        i = int(np.argmax(bad))
        allowed = sorted(k for k in levels if not k.startswith("\0"))
        raise raw.fail(name, i, f"is not one of the declared {allowed}", cell=values[i],
                       noun=what)
    return idx


def _numeric_key(v: object) -> str:
    """Match 1, 1.0 and "1" to one label: a hidden key for numeric levels."""
    try:
        return "\0" + repr(float(v))
    except (TypeError, ValueError):
        return "\0?"


def _level_map(values: tuple) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, v in enumerate(values):
        out.setdefault(str(v), i)
        if not isinstance(v, bool) and isinstance(v, int | float):
            out.setdefault(_numeric_key(v), i)
    return out


def _encode_feature(raw: _Raw, col: Column) -> np.ndarray:
    """One declared column -> float64 block of shape (n, width) with NaN for missing."""
    if col.dtype in ("float", "int"):
        return _to_float(raw, col.name, col.dtype)[:, None]
    values = raw.array(col.name)
    missing = _missing_mask(values)
    if col.dtype == "bool":
        if values.dtype.kind in "fiub":
            out = values.astype(np.float64)
            bad = ~missing & ~np.isin(out, (0.0, 1.0))
            if bad.any():
                i = int(np.argmax(bad))
                raise raw.fail(col.name, i, "is not a boolean", cell=values[i])
            return np.where(missing, np.nan, out)[:, None]
        levels = {k: int(v) for k, v in _BOOL_TOKENS.items()}
        lowered = np.char.lower(values.astype(str))
        idx = _encode_levels(raw, col.name, lowered, missing, levels, "value")
        return np.where(idx < 0, np.nan, idx.astype(np.float64))[:, None]
    idx = _encode_levels(raw, col.name, values, missing, _level_map(col.values), "category")
    block = np.zeros((len(idx), col.width), dtype=np.float64)
    block[np.arange(len(idx))[idx >= 0], idx[idx >= 0]] = 1.0
    block[idx < 0] = np.nan
    return block


def _encode_label(raw: _Raw, schema: DataSchema) -> np.ndarray:
    if schema.task == "regression":
        return _to_float(raw, schema.label, "float")
    values = raw.array(schema.label)
    missing = _missing_mask(values)
    idx = _encode_levels(raw, schema.label, values, missing, _level_map(schema.label_values), "label")
    return np.where(idx < 0, np.nan, idx.astype(np.float64))


def _apply_missing_policy(raw: _Raw, schema: DataSchema, X: np.ndarray, y: np.ndarray):
    bad_x = np.isnan(X).any(axis=1)
    bad_y = np.isnan(y)
    if not (bad_x.any() or bad_y.any()):
        return X, y
    if schema.missing == "error" or (schema.missing == "mean" and bad_y.any()):
        i = int(np.argmax(bad_x | bad_y))
        name = schema.label if bad_y[i] else _column_of(schema, int(np.argmax(np.isnan(X[i]))))
        fix = ('set data.schema.missing = "drop" or "mean"' if schema.missing == "error"
               else 'a missing label cannot be imputed; set missing = "drop" or fix the row')
        raise raw.fail(name, i, f"missing value ({fix})")
    if schema.missing == "drop":
        keep = ~(bad_x | bad_y)
        log.info("%s: dropped %d row(s) with missing values", raw.path, int((~keep).sum()))
        return X[keep], y[keep]
    present = ~np.isnan(X)
    counts = present.sum(axis=0)
    means = np.where(present, X, 0.0).sum(axis=0) / np.maximum(counts, 1)
    empty = counts == 0
    if empty.any():
        raise raw.fail(_column_of(schema, int(np.argmax(empty))), None,
                       "every value is missing; mean imputation is impossible")
    return np.where(np.isnan(X), means, X), y


def _column_of(schema: DataSchema, feature_index: int) -> str:
    for c in schema.features:
        if feature_index < c.width:
            return c.name
        feature_index -= c.width
    raise IndexError(feature_index)


def _read(path: str | Path) -> _Raw:
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(f"{p}: data file not found (check [data] path in the silo config)")
    if p.stat().st_size == 0:
        raise DataValidationError(f"{p}: the file is empty (0 bytes); nothing sent")
    if p.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(p)
    if p.suffix.lower() in (".csv", ".txt"):
        return _read_csv(p)
    raise DataValidationError(f"{p}: unsupported file type {p.suffix!r}; use .csv or .parquet")


def load_dataset(path: str | Path, schema: DataSchema) -> LocalDataset:
    """Read a CSV or Parquet file and validate it against ``schema``.

    Raises
    ------
    DataValidationError
        Missing/empty file, missing column, unparseable value, unknown label or category,
        or a missing value under ``missing = "error"``; the message names file, column, row.
    """
    raw = _read(path)
    if raw.n_rows == 0:
        raise DataValidationError(f"{raw.path}: the file has a header but no data rows")
    for name in [c.name for c in schema.features] + [schema.label]:
        if name not in raw.columns:
            raise raw.fail(name, None, f"column is missing; the file has {sorted(raw.columns)}")
    X = np.concatenate([_encode_feature(raw, c) for c in schema.features], axis=1)
    y = _encode_label(raw, schema)
    X, y = _apply_missing_policy(raw, schema, X, y)
    if len(X) == 0:
        raise DataValidationError(f"{raw.path}: no rows left after dropping missing values")
    y_out = y.astype(np.int64) if schema.task == "classification" else y.astype(np.float32)
    return LocalDataset(X=np.ascontiguousarray(X, dtype=np.float32), y=y_out,
                        schema=schema, source=str(raw.path))


def infer_schema(path: str | Path, *, label: str, task: str = "classification") -> DataSchema:
    """Guess a schema from a file (for demos and quickstarts; review it before production)."""
    raw = _read(path)
    if label not in raw.columns:
        raise raw.fail(label, None, f"label column is missing; the file has {sorted(raw.columns)}")
    feats = []
    for name in list(raw.columns):
        if name == label:
            continue
        values = raw.array(name)
        present = values[~_missing_mask(values)]
        if values.dtype.kind in "fiub" or all(_parses_float(v) for v in np.unique(present)):
            feats.append(Column(name, "float"))
        else:
            feats.append(Column(name, "category", tuple(sorted(np.unique(present.astype(str))))))
    labels = None
    if task == "classification":
        present = raw.array(label)[~_missing_mask(raw.array(label))]
        uniq = np.unique(present.astype(str))
        as_num = [float(u) for u in uniq] if all(_parses_float(u) for u in uniq) else None
        if as_num is not None and all(v == int(v) for v in as_num):
            labels = tuple(sorted({int(v) for v in as_num}))
        else:
            labels = tuple(sorted(uniq.tolist()))
    return DataSchema(features=tuple(feats), label=label, label_values=labels, task=task)

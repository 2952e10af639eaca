"""The declared shape of a silo's data and the fingerprint a silo publishes about it.

``DataSchema`` is parsed from the ``[data.schema]`` table of ``silo.toml``; only
:func:`schema_fingerprint` output ever leaves the site (column names, dtypes, label set and a
coarse row-count bucket), never values or statistics. Reading and validating the data
itself is :mod:`silo_client.data`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from xsilo.errors import ConfigError

__all__ = [
    "DTYPES",
    "MISSING_POLICIES",
    "TASKS",
    "Column",
    "DataSchema",
    "fingerprints_agree",
    "schema_fingerprint",
]

DTYPES = ("float", "int", "bool", "category")
TASKS = ("classification", "regression")
MISSING_POLICIES = ("error", "drop", "mean")
_SCHEMA_KEYS = {"features", "label", "label_values", "task", "missing"}


@dataclass(frozen=True)
class Column:
    """One feature column. ``values`` lists the allowed levels of a ``category`` column."""

    name: str
    dtype: str
    values: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"column {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}"
            )
        if (self.dtype == "category") != (self.values is not None):
            raise ConfigError(
                f"column {self.name!r}: declare `values = [...]` for a category column "
                "(and only for one), so every silo encodes it identically"
            )

    @property
    def width(self) -> int:
        """Number of model features this column becomes (one-hot for categories)."""
        return len(self.values) if self.values is not None else 1


@dataclass(frozen=True)
class DataSchema:
    """The declared shape of a silo's data (the ``[data.schema]`` table of the silo config)."""

    features: tuple[Column, ...]
    label: str
    label_values: tuple | None
    task: str = "classification"
    missing: str = "error"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"data.schema.task = {self.task!r}; use one of {TASKS}")
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"data.schema.missing = {self.missing!r}; use one of {MISSING_POLICIES}")
        if not self.features:
            raise ConfigError("data.schema.features is empty; declare at least one feature column")
        names = [c.name for c in self.features]
        dup = [n for n, k in Counter(names).items() if k > 1]
        if dup or self.label in names:
            raise ConfigError(f"data.schema: column {(dup or [self.label])[0]!r} is declared twice")
        if self.task == "classification" and not self.label_values:
            raise ConfigError("data.schema.label_values must list the classes for classification")
        if self.task == "regression" and self.label_values is not None:
            raise ConfigError("data.schema.label_values must be absent for regression")

    @property
    def n_features(self) -> int:
        """Width of the feature matrix (categories are one-hot encoded)."""
        return sum(c.width for c in self.features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the model features, ``col=level`` for one-hot category levels."""
        out: list[str] = []
        for c in self.features:
            out.extend([f"{c.name}={v}" for v in c.values] if c.values else [c.name])
        return tuple(out)

    @classmethod
    def from_mapping(cls, m: Mapping) -> DataSchema:
        """Build from the silo TOML ``[data.schema]`` table.

        ``features`` is either a table ``{name = "dtype"}`` or an array of tables
        ``[{name = "x", dtype = "category", values = ["a", "b"]}]``.
        """
        unknown = set(m) - _SCHEMA_KEYS
        if unknown:
            raise ConfigError(
                f"data.schema: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SCHEMA_KEYS)}"
            )
        if "label" not in m or "features" not in m:
            raise ConfigError("data.schema needs `label` and `features`")
        labels = m.get("label_values")
        if labels is not None and not isinstance(labels, list):
            raise ConfigError(f"data.schema.label_values = {labels!r:.80}: must be a list of the "
                              "label's values, e.g. [0, 1]")
        return cls(
            features=_parse_features(m["features"]),
            label=str(m["label"]),
            label_values=tuple(labels) if labels is not None else None,
            task=str(m.get("task", "classification")),
            missing=str(m.get("missing", "error")),
        )

    def to_mapping(self) -> dict[str, object]:
        """Inverse of :meth:`from_mapping` (TOML-ready)."""
        feats = [
            {"name": c.name, "dtype": c.dtype, **({"values": list(c.values)} if c.values else {})}
            for c in self.features
        ]
        out: dict[str, object] = {"features": feats, "label": self.label, "task": self.task}
        if self.label_values is not None:
            out["label_values"] = list(self.label_values)
        out["missing"] = self.missing
        return out


def _parse_features(raw: object) -> tuple[Column, ...]:
    if isinstance(raw, Mapping):
        return tuple(Column(str(k), str(v)) for k, v in raw.items())
    if isinstance(raw, list):
        cols = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or not {"name", "dtype"} <= set(item) or (
                set(item) - {"name", "dtype", "values"}
            ):
                raise ConfigError(
                    f"data.schema.features[{i}] = {item!r}; expected "
                    '{name = "...", dtype = "...", values = [...] (category only)}'
                )
            vals = item.get("values")
            cols.append(Column(str(item["name"]), str(item["dtype"]),
                               tuple(str(v) for v in vals) if vals is not None else None))
        return tuple(cols)
    raise ConfigError(f"data.schema.features must be a table or an array of tables, got {raw!r}")


def _row_bucket(n_rows: int) -> str:
    if n_rows < 10:
        return "0-9"
    lo = 10 ** (len(str(n_rows)) - 1)
    return f"{lo}-{lo * 10 - 1}"


def schema_fingerprint(schema: DataSchema, n_rows: int) -> dict[str, object]:
    """What a silo publishes about its data: no values, no statistics.

    ``digest`` is SHA-256 over the canonical JSON of everything except ``rows`` (the coarse
    bucket), so silos of different sizes with the same schema agree.
    """
    body = {
        "columns": [[c.name, c.dtype, list(c.values) if c.values else None] for c in schema.features],
        "label": schema.label,
        "label_values": [str(v) for v in schema.label_values] if schema.label_values else None,
        "task": schema.task,
    }
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return {**body, "rows": _row_bucket(n_rows), "digest": hashlib.sha256(canon.encode()).hexdigest()}


def fingerprints_agree(fps: Mapping[str, Mapping[str, object]]) -> None:
    """Raise :class:`ConfigError` naming each silo whose schema differs from the majority."""
    if not fps:
        return
    counts = Counter(fp["digest"] for fp in fps.values())
    if len(counts) == 1:
        return
    ref_digest = counts.most_common(1)[0][0]
    ref_name, ref = next((n, fp) for n, fp in fps.items() if fp["digest"] == ref_digest)
    problems = []
    for name, fp in fps.items():
        if fp["digest"] == ref_digest:
            continue
        diffs = [k for k in ("columns", "label", "label_values", "task") if fp.get(k) != ref.get(k)]
        detail = "; ".join(f"{k}: {fp.get(k)!r} vs {ref.get(k)!r}" for k in diffs) or "digest"
        problems.append(f"silo {name!r} disagrees with {ref_name!r} on {detail}")
    raise ConfigError("data schemas differ across silos, refusing the run before any round: "
                      + " | ".join(problems))

"""Typed, validated strategy parameters.

A strategy's ``Params`` is a frozen dataclass whose fields have defaults. Fields declared
with :func:`param` carry their constraint (a numeric range or a set of choices) as
dataclass metadata, so the same declaration drives validation, error messages and
``xsilo strategies list``.

Run configs written in TOML often use hyphens (``proximal-mu``); :func:`parse_params`
accepts both spellings and maps them onto the field name (``proximal_mu``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from xsilo.errors import ConfigError

__all__ = ["StrategyParams", "NoParams", "param", "parse_params", "describe_params",
           "format_accepted"]

_SCALARS: tuple[type, ...] = (bool, int, float, str)


def param(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: tuple[str, ...] | None = None, doc: str = "") -> Any:
    """Declare a strategy parameter with a default and an optional constraint.

    ``ge``/``gt``/``le``/``lt`` bound numbers (inclusive/exclusive); ``choices`` lists
    the accepted strings; ``doc`` is one line shown by ``xsilo strategies list``.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    return dataclasses.field(default=default, metadata={"xsilo": meta})


def _bounds(field: dataclasses.Field[Any]) -> dict[str, Any]:
    return dict(field.metadata.get("xsilo", {}))


def constraint_text(field: dataclasses.Field[Any]) -> str:
    """Human-readable constraint of one field, e.g. ``[0, 1)`` or ``> 0``."""
    b = _bounds(field)
    if b.get("choices"):
        return "one of " + ", ".join(repr(c) for c in b["choices"])
    lo = (f"[{b['ge']:g}" if b.get("ge") is not None
          else f"({b['gt']:g}" if b.get("gt") is not None else None)
    hi = (f"{b['le']:g}]" if b.get("le") is not None
          else f"{b['lt']:g})" if b.get("lt") is not None else None)
    if lo and hi:
        return f"{lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    if hi:
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
    return ""


def _violates(field: dataclasses.Field[Any], value: Any) -> bool:
    b = _bounds(field)
    if b.get("choices") and value not in b["choices"]:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return True
        return any([
            b.get("ge") is not None and value < b["ge"],
            b.get("gt") is not None and value <= b["gt"],
            b.get("le") is not None and value > b["le"],
            b.get("lt") is not None and value >= b["lt"],
        ])
    return False


def _coerce(name: str, kind: type, value: Any) -> Any:
    """Return ``value`` as ``kind`` or raise ConfigError; ints widen to floats, nothing else."""
    ok = (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(
            f"parameter '{name}' must be {kind.__name__}, got {value!r} "
            f"({type(value).__name__}); write it as a TOML {kind.__name__}")
    return value


def field_types(params_cls: type) -> dict[str, type]:
    """Map each dataclass field of ``params_cls`` to its scalar type."""
    hints = typing.get_type_hints(params_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(params_cls)}


@dataclasses.dataclass(frozen=True)
class StrategyParams:
    """Base class for ``Strategy.Params``: checks types and declared constraints."""

    def __post_init__(self) -> None:
        types = field_types(type(self))
        for field in dataclasses.fields(self):
            kind = types[field.name]
            if kind not in _SCALARS:
                raise ConfigError(f"parameter '{field.name}' has unsupported type {kind!r}; "
                                  "use int, float, str or bool")
            value = _coerce(field.name, kind, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
            if _violates(field, value):
                raise ConfigError(
                    f"parameter '{field.name}' = {value!r} is out of range: "
                    f"it must be {constraint_text(field)}")


@dataclasses.dataclass(frozen=True)
class NoParams(StrategyParams):
    """Parameters of a strategy that takes none."""


def describe_params(params_cls: type) -> list[dict[str, Any]]:
    """One dict per parameter: name, type, default, constraint and doc."""
    types = field_types(params_cls)
    return [{"name": f.name, "type": types[f.name].__name__, "default": f.default,
             "constraint": constraint_text(f), "doc": _bounds(f).get("doc", "")}
            for f in dataclasses.fields(params_cls)]


def format_accepted(params_cls: type) -> str:
    """``name: type = default (constraint)`` for each parameter, comma separated."""
    items = []
    for p in describe_params(params_cls):
        text = f"{p['name']}: {p['type']} = {p['default']!r}"
        items.append(text + (f" ({p['constraint']})" if p["constraint"] else ""))
    return ", ".join(items) if items else "(none)"


def parse_params(params_cls: type, values: Mapping[str, object], *, owner: str) -> Any:
    """Build ``params_cls`` from raw config values, raising ConfigError that lists what is accepted.

    Parameters
    ----------
    params_cls
        The strategy's frozen ``Params`` dataclass.
    values
        Raw values, e.g. the ``strategy-params`` table of a run config.
    owner
        Strategy name used in error messages.
    """
    names = {f.name for f in dataclasses.fields(params_cls)}
    kwargs: dict[str, object] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(
                f"strategy '{owner}' has no parameter '{key}' (got {value!r}). "
                f"Accepted parameters: {format_accepted(params_cls)}")
        kwargs[name] = value
    try:
        return params_cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"strategy '{owner}': {exc}. "
                          f"Accepted parameters: {format_accepted(params_cls)}") from None

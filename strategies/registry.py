"""Find strategies by name through the ``xsilo.strategies`` entry-point group.

Built-ins are registered there by xsilo's own ``pyproject.toml``; a plugin distribution
adds ``[project.entry-points."xsilo.strategies"] myname = "my_pkg.module:MyStrategy"``.
The entry-point name must equal the class's ``name``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from strategies.api import KINDS, Strategy
from strategies.params import describe_params
from xsilo.errors import StrategyError
from xsilo.terms import SILO_STATISTICS

__all__ = ["GROUP", "available_strategies", "get_strategy", "build_strategy",
           "check_compatible", "describe"]

GROUP = "xsilo.strategies"


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value} (from {dist.name if dist else 'unknown distribution'})"


def _load(name: str, eps: list[EntryPoint]) -> type[Strategy]:
    values = {ep.value for ep in eps}
    if len(values) > 1:
        raise StrategyError(f"strategy name '{name}' is registered twice: "
                            f"{', '.join(_origin(ep) for ep in eps)}; uninstall one of them")
    ep = eps[0]
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must name itself, not crash obscurely
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} failed to import: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)) or inspect.isabstract(cls):
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} is not a concrete subclass of "
                            "strategies.SumStrategy or strategies.PerUpdateStrategy")
    if getattr(cls, "name", None) != name or getattr(cls, "kind", None) not in KINDS:
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} declares name "
                            f"{getattr(cls, 'name', None)!r} and kind "
                            f"{getattr(cls, 'kind', None)!r}; the entry-point name must equal "
                            f"the class's name and kind must be one of {KINDS}")
    return cls


def available_strategies() -> dict[str, type[Strategy]]:
    """Every installed strategy by name (sorted); StrategyError names any broken plugin."""
    return {name: _load(name, eps) for name, eps in sorted(_entry_points().items())}


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered as ``name``; StrategyError lists installed names."""
    eps = _entry_points()
    if name not in eps:
        installed = ", ".join(sorted(eps)) or "(none: is xsilo installed with `pip install -e .`?)"
        raise StrategyError(f"unknown strategy '{name}'. Installed strategies: {installed}. "
                            "Third-party strategies are found once their package is installed "
                            f"and registers an entry point in the '{GROUP}' group")
    return _load(name, eps[name])


def build_strategy(name: str, params: Mapping[str, object]) -> Strategy:
    """Look up ``name`` and build it from raw parameters (ConfigError on bad ones)."""
    return get_strategy(name).from_config(params)


def _check_statistics(strategy: Strategy, *, differential_privacy: bool) -> None:
    asked = tuple(getattr(strategy, "statistics", ()))
    unknown = [n for n in asked if n not in SILO_STATISTICS]
    if unknown:
        raise StrategyError(f"strategy '{strategy.name}' asks silos for {unknown}; the "
                            f"statistics a silo computes are {list(SILO_STATISTICS)}")
    if asked and differential_privacy:
        raise StrategyError(
            f"strategy '{strategy.name}' needs the silos' {list(asked)}, which xsilo's "
            "differential privacy does not cover (they would leave un-noised); run it "
            "without dp, or choose a strategy that needs only the sum")


def check_compatible(strategy: Strategy, *, secure_aggregation: bool,
                     differential_privacy: bool) -> None:
    """Refuse a per-update strategy under secure aggregation or differential privacy.

    Both layers operate on the weighted sum only: secure aggregation hides individual
    updates from the coordinator, and xsilo's DP adds noise to the clipped sum. A strategy
    that needs each update cannot run there.
    """
    if strategy.kind not in KINDS:
        raise StrategyError(f"strategy '{strategy.name}' has kind {strategy.kind!r}; "
                            f"expected one of {KINDS}")
    if strategy.kind == "sum":
        _check_statistics(strategy, differential_privacy=differential_privacy)
        return
    layers = [n for n, on in (("secure aggregation", secure_aggregation),
                              ("differential privacy", differential_privacy)) if on]
    if not layers:
        return
    why = []
    if secure_aggregation:
        why.append("secure aggregation hides each silo's update and reveals only their sum")
    if differential_privacy:
        why.append("differential privacy in xsilo noises the clipped sum, so individual "
                   "updates are never available un-noised")
    raise StrategyError(
        f"strategy '{strategy.name}' cannot run with {' and '.join(layers)}: it is a "
        f"per-update strategy that needs each individual update, but {'; and '.join(why)}. "
        f"Choose a sum-decomposable strategy instead ({', '.join(_sum_names())}), or turn "
        f"{' and '.join(layers)} off")


def _sum_names() -> list[str]:
    names = []
    for name, eps in sorted(_entry_points().items()):
        try:
            if _load(name, eps).kind == "sum":
                names.append(name)
        except StrategyError:
            continue  # only suggestions; a broken plugin is reported when it is selected
    return names or ["fedavg"]


def describe(cls: type[Strategy]) -> dict[str, Any]:
    """Name, kind, one-line summary and parameters of a strategy class."""
    doc = inspect.getdoc(cls) or ""
    return {"name": cls.name, "kind": cls.kind, "summary": doc.splitlines()[0].replace("``", "") if doc else "",
            "params": describe_params(cls.Params)}

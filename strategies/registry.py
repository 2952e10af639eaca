"""Find strategies by name through the ``xsilo.strategies`` entry-point group.

Built-ins are registered there by xsilo's own ``pyproject.toml``; a plugin distribution
adds ``[project.entry-points."xsilo.strategies"] myname = "my_pkg.module:MyStrategy"``.
The entry-point name must equal the class's ``name``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from strategies.api import Strategy, call_strategy, kind_of, strategy_label
from strategies.params import describe_params
from xsilo.errors import ConfigError, StrategyError
from xsilo.terms import SILO_STATISTICS

__all__ = ["GROUP", "available_strategies", "get_strategy", "build_strategy",
           "check_compatible", "declaration_problem", "describe", "strategy_catalogue"]

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
    except (Exception, SystemExit) as exc:  # a broken plugin names itself (sys.exit too)
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} failed to import: "
                            f"{type(exc).__name__}: {exc}") from exc
    try:
        return _checked(name, ep, cls)
    except StrategyError:
        raise
    except (Exception, SystemExit) as exc:  # its class's own code ran (a metaclass, a property)
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} failed its checks: "
                            f"{type(exc).__name__}: {exc}") from exc


def _checked(name: str, ep: EntryPoint, cls: object) -> type[Strategy]:
    """``cls`` as a strategy class named ``name`` (StrategyError naming what is wrong)."""
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)) or inspect.isabstract(cls):
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} is not a concrete subclass of "
                            "strategies.SumStrategy or strategies.PerUpdateStrategy")
    if getattr(cls, "name", None) != name:
        raise StrategyError(f"strategy '{name}' = {_origin(ep)} declares name "
                            f"{getattr(cls, 'name', None)!r}; the entry-point name must equal "
                            "the class's name")
    problem = declaration_problem(cls)
    if problem is not None:
        raise StrategyError(f"strategy '{name}' = {_origin(ep)}: {problem}")
    return cls


def _kind_problem(cls: type[Strategy]) -> str | None:
    try:
        kind = kind_of(cls)
    except StrategyError:
        return "must subclass exactly one of strategies.SumStrategy and PerUpdateStrategy"
    declared = getattr(cls, "kind", None)
    if declared != kind:
        return (f"declares kind {declared!r} but subclasses "
                f"{'SumStrategy' if kind == 'sum' else 'PerUpdateStrategy'} (kind {kind!r}); "
                "the kind follows the base class: remove the kind attribute")
    return None


def _statistics_problem(cls: type[Strategy]) -> str | None:
    asked = getattr(cls, "statistics", ())
    if not isinstance(asked, (tuple, list)) or not all(isinstance(n, str) for n in asked):
        return (f"declares statistics = {asked!r}; it must be a tuple of names from "
                f"{list(SILO_STATISTICS)} (empty when the strategy needs none)")
    if len(set(asked)) != len(asked) or not set(asked) <= set(SILO_STATISTICS):
        return (f"asks silos for statistics {list(asked)}; they must be distinct names from "
                f"{list(SILO_STATISTICS)}, the statistics a silo computes")
    if asked and kind_of(cls) != "sum":
        return (f"asks silos for statistics {list(asked)}, but only a SumStrategy receives "
                "them; drop statistics or subclass SumStrategy")
    return None


def _params_problem(cls: type[Strategy]) -> str | None:
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        return (f"has Params = {params!r}, which is not a dataclass; declare it as a frozen "
                "dataclass deriving from strategies.StrategyParams")
    try:
        describe_params(params)
    except Exception as exc:  # e.g. an annotation that does not resolve
        return (f"has a Params whose fields cannot be read ({type(exc).__name__}: {exc}); "
                "give every field a type among int, float, str, bool and a default")
    return None


def declaration_problem(cls: type[Strategy]) -> str | None:
    """What is wrong with what a strategy class declares — its kind against its base class,
    its ``statistics``, its ``Params`` — or None; checked when a strategy is loaded and
    again by :func:`check_compatible`, so a plugin's attribute is never trusted as is."""
    for check in (_kind_problem, _statistics_problem, _params_problem):
        problem = check(cls)
        if problem is not None:
            return problem
    return None


def available_strategies() -> dict[str, type[Strategy]]:
    """Every installed strategy by name (sorted); StrategyError names any broken plugin."""
    return {name: _load(name, eps) for name, eps in sorted(_entry_points().items())}


def strategy_catalogue() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every installed strategy that loads, described (:func:`describe`), and every one
    that does not, with why (its StrategyError's message): one broken plugin does not hide
    the others (``xsilo strategies list``)."""
    described: dict[str, dict[str, Any]] = {}
    broken: dict[str, str] = {}
    for name, eps in sorted(_entry_points().items()):
        try:
            described[name] = describe(_load(name, eps))
        except StrategyError as exc:
            broken[name] = str(exc)
    return described, broken


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
    """Look up ``name`` and build it from raw parameters (ConfigError on bad ones; a plugin
    whose own code fails while building, e.g. a ValueError in its ``Params``: StrategyError)."""
    cls = get_strategy(name)
    return call_strategy(cls, "from_config", lambda: cls.from_config(params),
                         passes=(ConfigError, StrategyError))


def _check_statistics(strategy: Strategy, *, differential_privacy: bool) -> None:
    asked = tuple(getattr(strategy, "statistics", ()))
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
    problem = declaration_problem(type(strategy))
    if problem is not None:
        raise StrategyError(f"{strategy_label(strategy)} {problem}")
    if kind_of(type(strategy)) == "sum":
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
            if kind_of(_load(name, eps)) == "sum":
                names.append(name)
        except StrategyError:
            continue  # only suggestions; a broken plugin is reported when it is selected
    return names or ["fedavg"]


def describe(cls: type[Strategy]) -> dict[str, Any]:
    """Name, kind, one-line summary and parameters of a strategy class (StrategyError, naming
    the class, when what it declares is unusable)."""
    problem = declaration_problem(cls)
    if problem is not None:
        raise StrategyError(f"{strategy_label(cls)} {problem}")
    doc = inspect.getdoc(cls) or ""
    return {"name": cls.name, "kind": kind_of(cls),
            "summary": doc.splitlines()[0].replace("``", "") if doc else "",
            "params": describe_params(cls.Params)}

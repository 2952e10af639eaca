"""Conformance kit: check a strategy class against the xsilo strategy contract.

In code::

    from strategies.conformance import check_strategy
    check_strategy(MyStrategy)            # raises AssertionError on the first violation

From the command line (the pytest plugin is registered by xsilo)::

    pytest --xsilo-conformance my_pkg.module:MyStrategy
    pytest --xsilo-conformance fedavg        # a registered name works too

See ``strategies.conformance.checks`` for what each check asserts.
"""

from __future__ import annotations

from collections.abc import Iterable

from strategies.api import Strategy
from strategies.conformance.checks import CHECKS, NotApplicable

__all__ = ["CHECKS", "NotApplicable", "check_strategy", "run_check", "load_target"]


def run_check(cls: type[Strategy], check: str, params: object = None) -> str | None:
    """Run one named check; returns None when it passed, or the not-applicable reason."""
    try:
        CHECKS[check](cls, params)
    except NotApplicable as exc:
        return str(exc)
    return None


def check_strategy(cls: type[Strategy], params: object = None, *,
                   only: Iterable[str] | None = None) -> dict[str, str]:
    """Run every check (or ``only`` these) on ``cls`` built with ``params`` (default params).

    Returns ``{check: "passed" | "n/a: <reason>"}``; raises AssertionError (prefixed with
    the check's name) on the first violation.
    """
    results = {}
    for name in only or CHECKS:
        try:
            skipped = run_check(cls, name, params)
        except AssertionError as exc:
            raise AssertionError(f"{cls.__name__} fails conformance check '{name}': {exc}") from exc
        results[name] = "passed" if skipped is None else f"n/a: {skipped}"
    return results


def load_target(target: str) -> type[Strategy]:
    """Resolve ``module.path:ClassName`` or a registered strategy name to a class."""
    if ":" not in target:
        from strategies.registry import get_strategy
        return get_strategy(target)
    module_name, _, attr = target.partition(":")
    import importlib
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise TypeError(f"{target} is not a strategies.Strategy subclass")
    return obj

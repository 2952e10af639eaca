"""pytest plugin (entry point ``pytest11``): ``pytest --xsilo-conformance TARGET``.

TARGET is ``module.path:ClassName`` or a registered strategy name; repeat the option to
check several strategies. One test item per (strategy, check) is added to the session;
checks that do not apply to a strategy are reported as skipped with the reason.
Nothing is imported from xsilo unless the option is given, so the plugin costs nothing
in other test sessions.
"""

from __future__ import annotations

from typing import Any

import pytest

OPTION = "--xsilo-conformance"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--xsilo-conformance``."""
    parser.getgroup("xsilo").addoption(
        OPTION, action="append", default=[], metavar="MODULE:CLASS",
        help="run the xsilo strategy conformance checks on this strategy class "
             "(or registered strategy name); may be repeated")


class ConformanceItem(pytest.Item):
    """One contract check applied to one strategy class."""

    def __init__(self, *, target: str, check: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target, self.check = target, check

    def runtest(self) -> None:
        from strategies.conformance import load_target, run_check
        reason = run_check(load_target(self.target), self.check)
        if reason is not None:
            pytest.skip(reason)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, AssertionError):
            return f"{self.target} fails '{self.check}': {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[str, int, str]:
        return "xsilo-conformance", 0, f"{self.target}::{self.check}"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Append one item per (target, check) when the option is given."""
    targets = config.getoption(OPTION) or []
    if not targets:
        return
    from strategies.conformance import CHECKS, load_target
    for target in targets:
        try:
            load_target(target)
        except Exception as exc:
            raise pytest.UsageError(f"{OPTION} {target}: cannot load it: {exc}") from exc
        for check in CHECKS:
            items.append(ConformanceItem.from_parent(
                session, name=f"xsilo-conformance[{target}::{check}]", target=target, check=check))

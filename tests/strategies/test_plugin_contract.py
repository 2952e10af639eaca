"""A broken or garbage plugin is a StrategyError that names it, never an untyped crash.

Plugins are installed for real: a fake distribution (a module and its ``.dist-info`` with
``entry_points.txt``) on ``sys.path``, found by the registry like any installed package.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from typer.testing import CliRunner

from strategies.aggregate import SumAccumulator, aggregate_updates, check_result, update_statistics
from strategies.api import PerUpdateStrategy, SumStrategy, Update
from strategies.builtin import FedAvg
from strategies.cli import app
from strategies.registry import build_strategy, check_compatible, describe, get_strategy
from xsilo.errors import ConfigError, StrategyError

MODULE = "xsilo_test_plugins"

SOURCE = '''
import dataclasses
from strategies import PerUpdateStrategy, StrategyParams, SumStrategy
from strategies.api import Strategy
from xsilo.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _LrParams(StrategyParams):
    lr: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.lr > 0.5:
            raise ValueError("lr too big")  # the plugin's own check, the wrong exception type


class _Keep(SumStrategy):
    def step(self, current, delta_sum, total_weight, server_round):
        return dict(current)


class BadParams(_Keep):
    name = "xt-badparams"
    Params = _LrParams


class NotDataclassParams(_Keep):
    name = "xt-notdc"

    class Params:
        pass


class FakeSum(PerUpdateStrategy):  # sees every update, claims to be a sum strategy
    name = "xt-fakesum"
    kind = "sum"

    def aggregate(self, current, updates, server_round):
        return dict(current)


class FakePerUpdate(_Keep):
    name = "xt-fakeperupdate"
    kind = "per-update"


class Neither(Strategy):
    name = "xt-neither"


class Both(SumStrategy, PerUpdateStrategy):
    name = "xt-both"

    def step(self, current, delta_sum, total_weight, server_round):
        return dict(current)

    def aggregate(self, current, updates, server_round):
        return dict(current)


class NoneStats(_Keep):
    name = "xt-nonestats"
    statistics = None


class DupStats(_Keep):
    name = "xt-dupstats"
    statistics = ("update_sq_norm", "update_sq_norm")


class UnknownStats(_Keep):
    name = "xt-unknownstats"
    statistics = ("gradient_norm",)


class StringStats(_Keep):
    name = "xt-stringstats"
    statistics = "update_sq_norm"  # a string, not a tuple: would ask for 14 letters


class PerUpdateStats(PerUpdateStrategy):
    name = "xt-perupdatestats"
    statistics = ("update_sq_norm",)

    def aggregate(self, current, updates, server_round):
        return dict(current)
'''

ENTRY_POINTS = {
    "xt-badparams": "BadParams", "xt-notdc": "NotDataclassParams", "xt-fakesum": "FakeSum",
    "xt-fakeperupdate": "FakePerUpdate", "xt-neither": "Neither", "xt-both": "Both",
    "xt-nonestats": "NoneStats", "xt-dupstats": "DupStats", "xt-unknownstats": "UnknownStats",
    "xt-stringstats": "StringStats", "xt-perupdatestats": "PerUpdateStats",
}

REF = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float64)}


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Callable[[Iterable[str]], ModuleType]]:
    """``install(names)``: the plugins above as distribution ``xsilo-test-plugins`` on
    ``sys.path`` for this test, registering the entry points ``names``; returns the module."""
    def install(names: Iterable[str]) -> ModuleType:
        site = tmp_path / "site"
        info = site / f"{MODULE}-0.1.dist-info"
        info.mkdir(parents=True)
        (site / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xsilo-test-plugins\n"
                                       "Version: 0.1\n", encoding="utf-8")
        (info / "entry_points.txt").write_text("[xsilo.strategies]\n" + "".join(
            f"{name} = {MODULE}:{ENTRY_POINTS[name]}\n" for name in names), encoding="utf-8")
        monkeypatch.syspath_prepend(str(site))
        return importlib.import_module(MODULE)

    sys.modules.pop(MODULE, None)
    yield install
    sys.modules.pop(MODULE, None)


@pytest.fixture
def plugins(install: Callable[[Iterable[str]], ModuleType]) -> ModuleType:
    """Every plugin above installed; the module."""
    return install(ENTRY_POINTS)


def _updates() -> list[Update]:
    return [Update("a", {k: np.full_like(v, 1.0) for k, v in REF.items()}, 1.0),
            Update("b", {k: np.full_like(v, 3.0) for k, v in REF.items()}, 3.0)]


# --------------------------------------------------------------- building and listing
def test_a_plugins_own_exception_while_building_is_a_strategy_error_naming_it(
        plugins: ModuleType) -> None:
    with pytest.raises(StrategyError) as err:
        build_strategy("xt-badparams", {"lr": 0.9})
    assert str(err.value) == (f"strategy 'xt-badparams' ({MODULE}:BadParams) raised "
                              "ValueError in from_config: lr too big")
    assert isinstance(err.value.__cause__, ValueError)
    assert build_strategy("xt-badparams", {"lr": 0.2}).params.lr == 0.2
    with pytest.raises(ConfigError, match="'lr' must be float"):  # xsilo's own check: as is
        build_strategy("xt-badparams", {"lr": "fast"})


def test_a_params_that_is_not_a_dataclass_is_refused_when_loaded(plugins: ModuleType) -> None:
    for attempt in (lambda: get_strategy("xt-notdc"), lambda: build_strategy("xt-notdc", {})):
        with pytest.raises(StrategyError, match=f"'xt-notdc' = {MODULE}:NotDataclassParams "
                                                r"\(from xsilo-test-plugins\).*not a dataclass"):
            attempt()
    with pytest.raises(StrategyError, match=f"{MODULE}:NotDataclassParams.*not a dataclass"):
        describe(plugins.NotDataclassParams)


@pytest.mark.parametrize("name", ["xt-notdc", "xt-nonestats", "xt-fakesum"])
def test_strategies_list_reports_a_broken_plugin_in_one_line(
        install: Callable[[Iterable[str]], ModuleType], name: str) -> None:
    install([name])  # alone, so that it is the one listed
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "error:" in result.output and f"'{name}' = {MODULE}" in result.output
    assert "Traceback" not in result.output
    assert "fedavg" in result.output and "fedadam" in result.output  # the others still listed


# ------------------------------------------------------------------- kind by class
@pytest.mark.parametrize("name, cls, words", [
    ("xt-fakesum", "FakeSum", "declares kind 'sum' but subclasses PerUpdateStrategy"),
    ("xt-fakeperupdate", "FakePerUpdate", "declares kind 'per-update' but subclasses SumStrategy"),
    ("xt-neither", "Neither", "must subclass exactly one of"),
    ("xt-both", "Both", "must subclass exactly one of"),
])
def test_the_kind_comes_from_the_class_hierarchy(plugins: ModuleType, name: str, cls: str,
                                                 words: str) -> None:
    with pytest.raises(StrategyError, match=f"'{name}' = {MODULE}:{cls} .*{words}"):
        get_strategy(name)
    # built without the registry, the run's own check refuses it just the same
    with pytest.raises(StrategyError, match=f"'{name}' \\({MODULE}:{cls}\\) {words}"):
        check_compatible(getattr(plugins, cls)(), secure_aggregation=True,
                         differential_privacy=True)


# ---------------------------------------------------------------- statistics declared
@pytest.mark.parametrize("name, cls, words", [
    ("xt-nonestats", "NoneStats", "declares statistics = None; it must be a tuple"),
    ("xt-stringstats", "StringStats", "declares statistics = 'update_sq_norm'"),
    ("xt-dupstats", "DupStats", r"\['update_sq_norm', 'update_sq_norm'\]; they must be distinct"),
    ("xt-unknownstats", "UnknownStats", r"\['gradient_norm'\]; they must be distinct names"),
    ("xt-perupdatestats", "PerUpdateStats", "only a SumStrategy receives them"),
])
def test_statistics_are_checked_when_a_plugin_is_loaded(plugins: ModuleType, name: str,
                                                        cls: str, words: str) -> None:
    with pytest.raises(StrategyError, match=f"'{name}' = {MODULE}:{cls} .*{words}"):
        build_strategy(name, {})
    with pytest.raises(StrategyError, match=f"{MODULE}:{cls}\\) .*{words}"):
        check_compatible(getattr(plugins, cls)(), secure_aggregation=False,
                         differential_privacy=False)


# ------------------------------------------------------------ what a strategy returns
FEDAVG = r"strategy 'fedavg' \(strategies.builtin.fedavg:FedAvg\) produced an unusable model: "


W, B = np.zeros((2, 2), np.float32), np.zeros(3)


@pytest.mark.parametrize("new, words", [
    (None, "it is a NoneType, not a mapping of tensor names to numpy arrays"),
    ([W, B], "it is a list, not a mapping"),
    ({"w": W.tolist(), "b": B}, "tensor 'w' is a list, not a numpy array"),
    ({"w": W}, "tensor 'b' is missing"),
    ({"w": W, "b": np.zeros(4)}, r"tensor 'b' has shape \(4,\), expected \(3,\)"),
    ({"w": W.astype(np.float64), "b": B}, "tensor 'w' has dtype float64, expected float32"),
    ({"w": W, "b": np.array([0, np.nan, 0])}, "tensor 'b' contains NaN or Inf"),
    ({"w": W.astype(object), "b": B}, "tensor 'w' has non-numeric dtype object"),
    ({"b": B, "w": W}, r"tensors in the order \['b', 'w'\]"),
])
def test_a_result_that_is_not_a_finite_model_is_a_strategy_error(new: object,
                                                                  words: str) -> None:
    with pytest.raises(StrategyError, match=FEDAVG + words):
        check_result(FedAvg(), REF, new)  # type: ignore[arg-type]


class _Raises(SumStrategy):
    name = "raises"

    def step(self, current, delta_sum, total_weight, server_round):
        raise ZeroDivisionError("division by zero")


class _Exits(SumStrategy):
    name = "exits"

    def step(self, current, delta_sum, total_weight, server_round):
        sys.exit("gave up")  # would end the coordinator's process, not just the round


class _RaisesWithStatistics(SumStrategy):
    name = "raises-stats"
    statistics = ("update_sq_norm",)

    def step(self, current, delta_sum, total_weight, server_round):
        raise AssertionError("not called: the strategy asks for statistics")

    def step_with_statistics(self, current, delta_sum, total_weight, server_round, statistics):
        raise KeyError("momentum")


class _RaisesPerUpdate(PerUpdateStrategy):
    name = "raises-per-update"

    def aggregate(self, current, updates, server_round):
        raise RuntimeError("no quorum")


class _Refuses(SumStrategy):
    name = "refuses"
    error = StrategyError("refuses: a message the plugin wrote for the operator")

    def step(self, current, delta_sum, total_weight, server_round):
        raise self.error


@pytest.mark.parametrize("strategy, text", [
    (_Raises(), "raised ZeroDivisionError in step: division by zero"),
    (_Exits(), "raised SystemExit in step: gave up"),
    (_RaisesWithStatistics(), "raised KeyError in step_with_statistics: 'momentum'"),
    (_RaisesPerUpdate(), "raised RuntimeError in aggregate: no quorum"),
])
def test_an_exception_in_a_strategys_code_names_the_strategy_and_the_method(
        strategy: SumStrategy | PerUpdateStrategy, text: str) -> None:
    with pytest.raises(StrategyError) as err:
        aggregate_updates(strategy, REF, _updates(), 1)
    cls = type(strategy)
    assert str(err.value) == f"strategy '{cls.name}' ({cls.__module__}:{cls.__qualname__}) {text}"
    assert err.value.__cause__ is not None


def test_a_strategy_error_the_strategy_raises_itself_is_kept_as_it_is() -> None:
    with pytest.raises(StrategyError) as err:
        aggregate_updates(_Refuses(), REF, _updates(), 1)
    assert err.value is _Refuses.error


# ------------------------------------------------------------ statistics computed here
def test_the_accumulators_statistics_equal_those_of_the_list_even_for_huge_weights() -> None:
    names = ("update_sq_norm", "local_steps")
    for weights in ((1.0, 3.0), (1e307, 1e307)):  # Σ w·‖Δ‖² would overflow: 7e308
        ups = [Update(u.silo, u.delta, w) for u, w in zip(_updates(), weights)]
        acc = SumAccumulator(REF)
        for u in ups:
            acc.add(u)
        # ‖1‖² = 7 and ‖3‖² = 63 over the 7 elements; weights 1:3 and 1:1
        expected = 7 * (1 + 3 * 9) / 4 if weights[0] == 1.0 else 7 * (1 + 9) / 2
        assert acc.statistics(names) == {"update_sq_norm": pytest.approx(expected),
                                         "local_steps": None}
        assert update_statistics(ups, names) == acc.statistics(names)
    assert SumAccumulator(REF).statistics(names) == {"update_sq_norm": None, "local_steps": None}


def test_a_strategy_that_cannot_take_its_checkpoint_state_or_say_its_weighting_is_named(
        ) -> None:
    """Two more calls into a plugin's code: resuming loads its state, collecting reads its
    ``weighted``; either failing is a StrategyError naming it, not the plugin's exception."""
    from coordinator.collect import RoundCollector
    from coordinator.resume import restore
    from coordinator.run_store import Checkpoint

    class Brittle(FedAvg):
        def load_state_dict(self, state):  # type: ignore[no-untyped-def]
            raise KeyError("momentum")

        @property
        def weighted(self) -> bool:  # type: ignore[override]
            raise RuntimeError("undecided")

    model = {"w": np.zeros(2)}
    with pytest.raises(StrategyError, match=r"raised KeyError in load_state_dict: 'momentum'"):
        restore(Checkpoint(1, model, {}), Brittle(), None)
    with pytest.raises(StrategyError, match=r"raised RuntimeError in weighted: undecided"):
        RoundCollector(Brittle(), model, {1: "a"})


def test_a_plugin_that_exits_while_imported_or_checked_is_named_and_the_others_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin module that calls ``sys.exit`` when imported, and a class whose ``name``
    raises: each one StrategyError naming it; ``xsilo strategies list`` lists the rest."""
    site = tmp_path / "site"
    info = site / "xsilo_exiting-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "xsilo_exiting.py").write_text("import sys\nsys.exit('plugin gave up')\n")
    (site / "xsilo_odd.py").write_text(textwrap.dedent('''
        from strategies import SumStrategy

        class _Meta(type(SumStrategy)):
            @property
            def name(cls):
                raise RuntimeError("name lookup blew up")

        class Odd(SumStrategy, metaclass=_Meta):
            def step(self, current, delta_sum, total_weight, server_round):
                return dict(current)
        '''))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xsilo-exiting\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[xsilo.strategies]\nxp-exit = xsilo_exiting:X\n"
                                           "xp-odd = xsilo_odd:Odd\n")
    monkeypatch.syspath_prepend(str(site))
    for module in ("xsilo_exiting", "xsilo_odd"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(StrategyError, match="'xp-exit' = xsilo_exiting:X .*failed to import: "
                                            "SystemExit: plugin gave up"):
        get_strategy("xp-exit")
    with pytest.raises(StrategyError, match="'xp-odd' = xsilo_odd:Odd .*failed its checks: "
                                            "RuntimeError: name lookup blew up"):
        get_strategy("xp-odd")
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "400"})
    assert "xp-exit" in result.output and "xp-odd" in result.output, result.output
    assert "fedavg" in result.output and "Traceback" not in result.output

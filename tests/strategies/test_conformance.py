"""Every built-in passes the conformance kit; the kit catches broken strategies; the
pytest plugin works from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strategies.api import PerUpdateStrategy, SumStrategy
from strategies.builtin import (BUILTINS, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg,
                                MultiKrum)
from strategies.conformance import CHECKS, check_strategy, run_check
from strategies.conformance import checks
from strategies.conformance.checks import NotApplicable

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("cls", BUILTINS, ids=lambda c: c.name)
def test_builtin_conforms(cls, check) -> None:
    reason = run_check(cls, check)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("cls, params", [
    (FedAvgM, FedAvgM.Params(server_learning_rate=0.5, server_momentum=0.9)),
    (FedAdam, FedAdam.Params(eta=0.01, beta_1=0.5)),
    (FedTrimmedAvg, FedTrimmedAvg.Params(beta=0.4)),
    (MultiKrum, MultiKrum.Params(num_malicious_nodes=1, num_nodes_to_keep=3)),
], ids=lambda x: getattr(x, "name", ""))
def test_builtin_conforms_with_non_default_params(cls, params) -> None:
    check_strategy(cls, params)


class _Forgetful(FedAvgM):
    """Bug: loses its momentum on checkpoint restore."""

    name = "forgetful"

    def load_state_dict(self, state) -> None:
        self.momentum = None


class _Mutating(SumStrategy):
    """Bug: modifies the global model it was given."""

    name = "mutating"

    def step(self, current, delta_sum, total_weight, server_round):
        for v in current.values():
            v += 1
        return {k: v.copy() for k, v in current.items()}


def test_kit_catches_lost_state() -> None:
    params = FedAvgM.Params(server_momentum=0.9)
    with pytest.raises(AssertionError, match="state_roundtrip"):
        check_strategy(_Forgetful, params, only=["state_roundtrip"])


def test_kit_catches_input_mutation() -> None:
    with pytest.raises(AssertionError, match="shapes_and_purity"):
        check_strategy(_Mutating, only=["shapes_and_purity"])


def _moved(current, delta, scale=1.0):
    return {k: (v + scale * delta[k]).astype(v.dtype) for k, v in current.items()}


class _IgnoresTotalWeight(SumStrategy):
    """Bug: adds the weighted sum without dividing by the total weight."""

    name = "ignores-total-weight"

    def step(self, current, delta_sum, total_weight, server_round):
        return _moved(current, delta_sum)


class _OffByOne(SumStrategy):
    """Bug: divides by total_weight + 1 (close to FedAvg, but not scale-free)."""

    name = "off-by-one"

    def step(self, current, delta_sum, total_weight, server_round):
        return _moved(current, delta_sum, 1.0 / (total_weight + 1.0))


class _Inert(SumStrategy):
    """Bug: never moves the model (ignores delta_sum); scale-free, so only the pull check
    sees it."""

    name = "inert"

    def step(self, current, delta_sum, total_weight, server_round):
        return {k: v.copy() for k, v in current.items()}


def _mean(updates, key, weights):
    return sum(w * u.delta[key].astype(np.float64) for u, w in zip(updates, weights))


class _FirstReply(PerUpdateStrategy):
    """Bug: takes whichever update arrived first."""

    name = "first-reply"

    def aggregate(self, current, updates, server_round):
        return _moved(current, updates[0].delta)


class _Unnormalised(PerUpdateStrategy):
    """Bug: weighted sum divided by the number of updates instead of the total weight."""

    name = "unnormalised"

    def aggregate(self, current, updates, server_round):
        w = [u.weight / len(updates) for u in updates]
        return _moved(current, {k: _mean(updates, k, w) for k in current})


class _SecretlyWeighted(PerUpdateStrategy):
    """Bug: declares weighted=False but averages by weight."""

    name = "secretly-weighted"

    @property
    def weighted(self) -> bool:
        return False

    def aggregate(self, current, updates, server_round):
        total = sum(u.weight for u in updates)
        return _moved(current, {k: _mean(updates, k, [u.weight / total for u in updates])
                                for k in current})


@pytest.mark.parametrize("cls, check", [
    (_IgnoresTotalWeight, "weights_normalised"),
    (_OffByOne, "weights_normalised"),
    (_Inert, "weights_honoured"),
    (_FirstReply, "order_invariance"),
    (_Unnormalised, "weights_normalised"),
    (_SecretlyWeighted, "weights_honoured"),
], ids=lambda x: getattr(x, "name", x))
def test_kit_catches_broken_strategy(cls, check) -> None:
    # the full kit stops at the first violation: every earlier check passes, this one fails
    with pytest.raises(AssertionError, match=f"'{check}'"):
        check_strategy(cls)


def test_pull_check_is_what_catches_an_inert_strategy() -> None:
    results = check_strategy(_Inert, only=[c for c in CHECKS if c != "weights_honoured"])
    assert all(r == "passed" for r in results.values()), results


def test_weights_checks_apply_to_every_sum_strategy() -> None:
    unweighted = FedAvg.Params(weighted=False)
    assert check_strategy(FedAvg, unweighted)["weights_honoured"] == "passed"
    for cls in BUILTINS:
        if cls.kind == "sum":
            assert all(r == "passed" for r in check_strategy(cls).values()), cls.name


def test_not_applicable_is_reported() -> None:
    assert check_strategy(FedTrimmedAvg)["weights_honoured"] == "passed"  # weights ignored
    assert "weighted per-update" in check_strategy(MultiKrum)["weights_honoured"]
    with pytest.raises(NotApplicable):
        CHECKS["sum_decomposable"](FedTrimmedAvg)


def test_nonfinite_check_guards_the_framework(monkeypatch) -> None:
    # A plugin cannot fail it (aggregate_updates validates first); without that
    # validation the check fails.
    monkeypatch.setattr(checks, "aggregate_updates",
                        lambda s, current, ups, rnd: s.aggregate(current, list(ups), rnd))
    with pytest.raises(AssertionError, match="was accepted"):
        CHECKS["nonfinite_rejected"](FedMedian)


def test_pytest_plugin_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--xsilo-conformance", "strategies.builtin.fedavg:FedAvg",
         "--xsilo-conformance", "fedmedian", "-rs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "17 passed, 1 skipped" in proc.stdout, proc.stdout
    assert "per-update strategy" in proc.stdout


def test_pytest_plugin_reports_bad_target(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--xsilo-conformance", "no_such_module:Thing"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "cannot load it" in proc.stdout + proc.stderr


def test_model_layout_used_by_kit_is_mixed_precision() -> None:
    from strategies.conformance.checks import model
    assert {v.dtype for v in model().values()} == {np.dtype(np.float32), np.dtype(np.float64)}

"""Every built-in passes the conformance kit; the kit catches broken strategies; the
pytest plugin works from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from strategies.api import SumStrategy
from strategies.builtin import BUILTINS, FedAdam, FedAvgM, FedTrimmedAvg, MultiKrum
from strategies.conformance import CHECKS, check_strategy, run_check
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


def test_not_applicable_is_reported() -> None:
    assert "unweighted" in check_strategy(FedTrimmedAvg)["weights_honoured"]
    with pytest.raises(NotApplicable):
        CHECKS["sum_decomposable"](FedTrimmedAvg)


def test_pytest_plugin_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--xsilo-conformance", "strategies.builtin.fedavg:FedAvg",
         "--xsilo-conformance", "fedmedian", "-rs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "14 passed, 2 skipped" in proc.stdout, proc.stdout
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

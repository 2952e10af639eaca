"""Damaged or hand-edited files at a silo (its config, ledger, privacy tally, join record)
are a ConfigError naming the file, or a failed verification; never another exception, and
never a number that switches a check off (a NaN ε passes every budget comparison)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from silo_client.config import load_silo_config, write_silo_config
from silo_client.joins import joined
from silo_client.ledger import EgressLedger, verify_ledger
from silo_client.policy import PrivacyTally
from federation.demo_data import demo_schema
from strategies.dp import Accountant
from xsilo.errors import ConfigError

DEEP = "[" * 100_000 + "]" * 100_000


def _silo_toml(tmp_path: Path, **edits: str) -> Path:
    path = write_silo_config(tmp_path / "silo.toml", name="h", train="t.csv",
                             schema=demo_schema(), model="sklearn:LogisticRegression")
    text = path.read_text()
    for old, new in edits.items():
        text, n = re.subn(old, new, text, flags=re.S)
        assert n == 1, old
    path.write_text(text)
    return path


@pytest.mark.parametrize("old, new, needle", [
    (r"\n\[model\.params\]\n", "\nparams = 5\n", "[model] params = 5 must be a table"),
    (r"label_values = \[[^]]*\]", "label_values = 5", "label_values = 5: must be a list"),
])
def test_a_silo_toml_value_of_the_wrong_type_is_a_config_error(
        tmp_path: Path, old: str, new: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_silo_config(_silo_toml(tmp_path, **{old: new}))
    assert needle in str(err.value)


@pytest.mark.parametrize("delta", ["x", True, None, [1e-5]])
def test_an_accountants_delta_that_is_not_a_number_is_a_config_error(delta: object) -> None:
    with pytest.raises(ConfigError, match="delta must be a number in"):
        Accountant(delta, "rdp")  # type: ignore[arg-type]


@pytest.mark.parametrize("line", ['{"seq": NaN}', DEEP])
def test_a_ledger_line_with_nan_or_deep_nesting_fails_verification(
        tmp_path: Path, line: str) -> None:
    path = tmp_path / "egress.jsonl"
    path.write_text(line + "\n")
    result = verify_ledger(path)
    assert not result.ok and result.line == 1 and "not valid JSON" in result.reason
    with pytest.raises(ConfigError, match="fails verification"):
        EgressLedger(path)


@pytest.mark.parametrize("text", [
    DEEP, json.dumps({"runs": {"old": {"round": 1, "epsilon": "nan"}}}),
    json.dumps({"runs": {"old": {"round": 1, "epsilon": -1.0}}}),
])
def test_a_privacy_tally_that_could_switch_budgets_off_is_a_config_error(
        tmp_path: Path, text: str) -> None:
    path = tmp_path / "privacy-tally.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="privacy tally .* is unreadable"):
        PrivacyTally(path, max_epsilon=1.0)


def test_a_deeply_nested_join_record_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "joined").mkdir()
    (tmp_path / "joined" / "7.json").write_text(DEEP)
    with pytest.raises(ConfigError, match="join record .* is unreadable"):
        joined(tmp_path, 7)

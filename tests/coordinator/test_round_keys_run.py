"""Round keys in the real round loop (in-process: real ServerApp logic and ClientApp).

A round-keys run deals every round first (``train.secagg_setup`` carrying a DealRequest),
then masks and unmasks as a pair-seed run does; the result is the same weighted sum within
the reported quantization bound. A silo lost after dealing is unmasked with its round key;
one lost during the dealing is not in that round; every dealing is in the silo's ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig
from coordinator.run_store import RunStore
from coordinator.secure_settings import ROUND_KEYS_FROM, use_round_keys
from federation.local import run_in_process
from silo_client.ledger import verify_ledger
from xsilo.errors import ConfigError
from xsilo.protocol import SECAGG_SETUP

from tests.coordinator.test_secure_run import (  # noqa: F401  (the fixture)
    NAMES, _close_within_row_bound, _fedavg, _rows, trained)


def _setup(run_dir: Path) -> dict:
    return next(e for e in RunStore(run_dir).events() if e["event"] == "secure_aggregation_setup")


def test_a_round_keys_run_deals_each_round_and_sums_what_a_clear_round_would(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=3, min_silos=3, expected_silos=3, seed=0, name="rk",
                       secure_aggregation=True, secagg_round_keys="on")
    summary = run_in_process(run_dir, config, federation)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    assert _setup(run_dir)["round_keys"] is True
    rows = _rows(run_dir)
    for r in (1, 2, 3):
        assert rows[r]["status"] == "ok" and rows[r]["contributors"] == NAMES
        trips = rows[r]["secure_aggregation"]["seconds"]
        assert set(trips) == {"dealing", "masked_input", "unmasking"} and min(trips.values()) > 0
        _close_within_row_bound(run_dir, r, _fedavg(trained, r, NAMES))
    for config_path in federation:  # every dealing left the silo on the record
        ledger = config_path.parent / "workspace" / "egress.jsonl"
        assert verify_ledger(ledger).ok
        lines = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert "round_sk" not in ledger.read_text() and "round_seed" not in ledger.read_text()
        dealt = [e for e in lines if e["extra"].get("secagg") == "secagg/dealt"]
        assert sorted(e["server_round"] for e in dealt) == [1, 2, 3, 4]  # + final evaluation
        assert all(e["extra"]["dealt_to"] == 3 and e["message_type"] == SECAGG_SETUP
                   for e in dealt)


def test_a_silo_lost_after_dealing_is_unmasked_with_its_round_key(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    """hospital-c deals in round 2 but its masked input never comes: its round key is
    reconstructed, the masks the others added for it are removed, the round completes."""
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=2, min_silos=2, expected_silos=3, seed=0, name="rk",
                       secure_aggregation=True, secagg_round_keys="on", straggler_grace=0)
    trains = {"n": 0}

    def drop(node: int, message_type: str) -> bool:
        if node == 3 and message_type == "train":
            trains["n"] += 1
            return trains["n"] == 2
        return False

    assert run_in_process(run_dir, config, federation, drop=drop)["rounds_failed"] == []
    row = _rows(run_dir)[2]
    assert row["contributors"] == NAMES[:2]
    assert row["secure_aggregation"]["dropped"] == 1
    _close_within_row_bound(run_dir, 2, _fedavg(trained, 2, NAMES[:2]))


def test_a_silo_lost_during_the_dealing_is_not_in_that_round(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=2, min_silos=2, expected_silos=3, seed=0, name="rk",
                       secure_aggregation=True, secagg_round_keys="on", straggler_grace=0,
                       round_timeout=5)
    setups = {"n": 0}

    def drop(node: int, message_type: str) -> bool:  # the key setup passes, round 1's dealing not
        if node == 3 and message_type == SECAGG_SETUP:
            setups["n"] += 1
            return setups["n"] == 2
        return False

    assert run_in_process(run_dir, config, federation, drop=drop)["rounds_failed"] == []
    rows = _rows(run_dir)
    assert rows[1]["contributors"] == NAMES[:2] and rows[2]["contributors"] == NAMES
    assert rows[1]["secure_aggregation"]["dropped"] == 0  # not dealt: not in the round at all
    _close_within_row_bound(run_dir, 1, _fedavg(trained, 1, NAMES[:2]))


def test_auto_deals_round_keys_from_the_documented_size_and_bad_settings_are_named() -> None:
    assert not use_round_keys("auto", ROUND_KEYS_FROM - 1)
    assert use_round_keys("auto", ROUND_KEYS_FROM) and use_round_keys("on", 3)
    assert not use_round_keys("off", 10 * ROUND_KEYS_FROM)
    with pytest.raises(ConfigError, match='secagg_round_keys must be "auto", "on" or "off"'):
        RunConfig(secure_aggregation=True, secagg_round_keys="yes")
    assert np.isfinite(ROUND_KEYS_FROM)


def test_too_few_dealings_fail_the_round_the_model_stays_and_the_run_goes_on(
        tmp_path: Path, federation: list[Path]) -> None:
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=2, min_silos=3, expected_silos=3, seed=0, name="rk",
                       secure_aggregation=True, secagg_round_keys="on", straggler_grace=0,
                       round_timeout=5)
    setups: dict[int, int] = {}

    def drop(node: int, message_type: str) -> bool:  # hospital-c: key setup yes, dealing 1 no
        if message_type == SECAGG_SETUP:
            setups[node] = setups.get(node, 0) + 1
            return node == 3 and setups[node] == 2
        return False

    summary = run_in_process(run_dir, config, federation, drop=drop)
    assert summary["status"] == "completed" and summary["rounds_failed"] == [1]
    rows = _rows(run_dir)
    assert "2 silos dealt their round keys" in rows[1]["reason"]
    assert "fewer than threshold=3" in rows[1]["reason"]
    assert rows[1]["rejected"]["hospital-c"].startswith("dealing: ")
    assert rows[1]["global_accuracy"] is not None  # the silos still evaluated the model
    assert rows[2]["status"] == "ok" and rows[2]["contributors"] == NAMES

"""Mutated valid records of every message type, on both sides, end in xsilo's error tree.

The targets (what each side receives, with a valid record recorded from real in-process
runs and from the secure-aggregation state machines) and the mutation operators are
``benchmarks/fuzz.py``'s; hypothesis picks the target and the mutation here, and shrinks
any failure to a small case. ``benchmarks/fuzz.py`` runs ≥ 10,000 mutations per side.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402

ALLOWED = fuzz.XSILO_ERRORS | {fuzz.ACCEPTED, "unsendable"}


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> list:
    return fuzz.build_targets(tmp_path_factory.mktemp("fuzz"))


def test_every_message_type_of_both_sides_is_a_target(targets: list) -> None:
    names = {(t.side, t.name) for t in targets}
    silo = {n for s, n in names if s == "silo"}
    coordinator = {n for s, n in names if s == "coordinator"}
    assert {"ClientApp query", "ClientApp train", "ClientApp evaluate",
            "ClientApp train.secagg_setup+mask", "ClientApp train+mask",
            "ClientApp train.unmask+mask", "silo_step KeyRequest", "silo_step MaskRequest",
            "silo_step UnmaskRequest", "silo_step DealRequest",
            "silo_step MaskRequest (round keys)", "silo_step UnmaskRequest (round keys)"} <= silo
    assert {"receive_advert", "receive_masked", "receive_unmask", "receive_dealt",
            "receive_masked (round keys)", "receive_unmask (round keys)"} <= coordinator
    assert len([n for n in coordinator if n.startswith("transport reply")]) == 5


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pick=st.integers(0, 10**6), case=st.integers(0, 2**32 - 1))
def test_mutated_records_end_in_the_error_tree_without_hanging(targets: list, pick: int,
                                                               case: int) -> None:
    target = targets[pick % len(targets)]
    started = time.perf_counter()
    outcome = fuzz.fuzz_once(target, random.Random(case))
    assert outcome in ALLOWED, f"{target.side} {target.name}: {outcome} (case {case})"
    assert time.perf_counter() - started < 5.0


def test_a_short_seeded_run_finds_nothing_outside_the_tree(targets: list) -> None:
    outcomes, failures, slowest = fuzz.run(targets, mutations=300, seed=7)
    assert failures == []
    refused = sum(n for counts in outcomes.values() for c, n in counts.items()
                  if c not in (fuzz.ACCEPTED, "unsendable"))
    assert refused > 300  # the mutations bite: most are refused, each with a typed error
    assert max(slowest.values()) < 5.0

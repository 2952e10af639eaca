"""silo_client.privacy: the coordinator's [dp] table parsed as hostile input, every release
counted, and the run's own max_epsilon enforced once the join projection relied on it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from silo_client.policy import PrivacyTally, SitePolicy
from silo_client.privacy import TALLY_FILE, SiloPrivacy, parse_dp
from strategies.dp import DPConfig
from xsilo.errors import ConfigError, PolicyRefusal, PrivacyBudgetExceeded, ProtocolError
from xsilo.terms import DPTerms, JoinTerms, TrainTerms

TABLE = {"mechanism": "central", "noise_multiplier": 2.0, "clip_norm": 1.0}
DISTRIBUTED = {"mechanism": "distributed", "noise_multiplier": 1.0, "clip_norm": 1.0}


def _join(table: dict, **kw) -> JoinTerms:
    return JoinTerms(run_name="r", strategy="fedavg", num_rounds=kw.pop("num_rounds", 5),
                     seed=0, min_silos=2, num_silos=3, dp=DPTerms(table=table, run="run-1"),
                     **kw)


def _round(server_round: int, table: dict = TABLE) -> TrainTerms:
    terms = TrainTerms(server_round=server_round, num_rounds=50, local_epochs=1,
                       learning_rate=0.1, batch_size=32, seed=0, strategy="fedavg",
                       run_token="t", participants=3,
                       dp=DPTerms(table=table, run="run-1", clip_norm=1.0, noise_stddev=1.0))
    return TrainTerms.from_config(terms.to_config())  # as the silo parses it from the wire


def _expected(table: dict, releases: int) -> float:
    dp = DPConfig.from_mapping(table)
    acct = dp.accountant()
    for _ in range(releases):
        acct.compose_round(dp.round_event())
    return acct.epsilon()


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("noise_multiplier", "1.0", "a finite number"),
    ("noise_multiplier", None, "a finite number"),
    ("noise_multiplier", True, "a finite number"),
    ("delta", "x", "a finite number"),
    ("sampling_probability", [0.5], "a finite number"),
    ("max_weight", 2**60, "a finite number"),  # not exactly a float
    ("max_epsilon", "x", "a finite number or nothing"),
    ("k_stddevs", "x", "a finite number"),
    ("modulus_bits", 1.5, "an integer"),
    ("mechanism", 3, "a string"),
])
def test_a_dp_value_of_the_wrong_type_is_a_protocol_error(key: str, value: object,
                                                          expected: str) -> None:
    with pytest.raises(ProtocolError, match=f"dp.{key} = .*; expected {expected}"):
        parse_dp(DPTerms(table={**TABLE, key: value}, run="r"))
    with pytest.raises(ProtocolError, match="unknown key"):  # the coordinator's fault too
        parse_dp(DPTerms(table={**TABLE, "no_such_key": "x"}, run="r"))


@pytest.mark.parametrize(("key", "value", "says"), [
    ("sampling_probability", 0.01, "xsilo asks every silo every round"),
    ("sampling_probability", 0.999, "leave dp.sampling_probability at 1"),
    ("k_stddevs", float("inf"), "expected a finite number"),
    ("k_stddevs", "6", "expected a finite number"),
    ("k_stddevs", 1e308, r"must be a number in \[2, 40\]"),
    ("k_stddevs", 1, r"must be a number in \[2, 40\]"),
    ("modulus_bits", 32.5, "expected an integer"),
    ("modulus_bits", "32", "expected an integer"),
    ("modulus_bits", 100, "must be an integer in 8..64"),
    ("clip_norm", None, "without clipping"),
])
def test_a_table_the_silo_cannot_check_is_a_protocol_error_at_the_edge(
        tmp_path: Path, key: str, value: object, says: str) -> None:
    """Whatever DPConfig refuses in the coordinator's [dp] table is refused where it enters,
    at join and on a round, before any accounting: a silo never accounts a subsampling
    nobody does, nor arithmetic on a wrap margin or modulus it cannot use."""
    table = {**DISTRIBUTED, key: value}
    with pytest.raises(ProtocolError, match=f"dp.{key}.*{says}"):
        parse_dp(DPTerms(table=table, run="r"))
    silo = SiloPrivacy(tmp_path, SitePolicy(max_epsilon=5.0))
    with pytest.raises(ProtocolError, match=f"dp.{key}"):
        silo.run_terms(_join(table, secure_aggregation=True, secagg_threshold=2), dimension=31)
    with pytest.raises(ProtocolError, match=f"dp.{key}"):
        silo.begin_round(_round(1, table), dimension=31)
    assert not (tmp_path / TALLY_FILE).exists()


@pytest.mark.parametrize(("table", "says"), [
    ({**TABLE, "noise_multiplier": 1e308}, "validation failed .*noise_multiplier must be > 0 and ≤"),
    ({**DISTRIBUTED, "noise_multiplier": 1e300}, "validation failed .*noise_multiplier"),
    ({**DISTRIBUTED, "noise_multiplier": 1e-300}, "the run's epsilon projection failed"),
])
def test_accounting_that_fails_on_the_stated_numbers_is_a_protocol_error(
        tmp_path: Path, table: dict, says: str) -> None:
    join = _join(table, secure_aggregation=True, secagg_threshold=2)
    with pytest.raises(ProtocolError, match=f"DP terms: {says}"):
        SiloPrivacy(tmp_path, SitePolicy()).run_terms(join, dimension=31)


def test_every_release_is_counted_a_round_sent_again_included(tmp_path: Path) -> None:
    """A coordinator may re-run a round (after a restart) or replay it: each update that
    leaves is a release, counted in the run's ε and the site's lifetime tally."""
    silo = SiloPrivacy(tmp_path, SitePolicy())
    spent = [silo.commit(silo.begin_round(_round(1))) for _ in range(3)]
    assert spent == pytest.approx([_expected(TABLE, n) for n in (1, 2, 3)], rel=1e-9)
    tally = json.loads((tmp_path / TALLY_FILE).read_text())
    assert tally["total_epsilon"] == pytest.approx(spent[-1])
    assert tally["runs"]["run-1"]["epsilon"] == pytest.approx(spent[-1])


def test_a_release_counted_meanwhile_is_composed_and_checked_again(tmp_path: Path) -> None:
    """Two messages of the run checked at once: both releases count, and the second is
    refused when the first took the room the site's cap left."""
    silo = SiloPrivacy(tmp_path, SitePolicy())
    first, second = silo.begin_round(_round(1)), silo.begin_round(_round(2))
    silo.commit(first)
    assert silo.commit(second) == pytest.approx(_expected(TABLE, 2), rel=1e-9)
    capped = SiloPrivacy(tmp_path / "capped", SitePolicy(max_epsilon=_expected(TABLE, 1) * 1.01))
    first, second = capped.begin_round(_round(1)), capped.begin_round(_round(2))
    capped.commit(first)
    with pytest.raises(PolicyRefusal, match="max_epsilon"):
        capped.commit(second)
    assert PrivacyTally(tmp_path / "capped" / TALLY_FILE).total() == pytest.approx(
        _expected(TABLE, 1))


def test_the_runs_own_max_epsilon_is_enforced_once_the_join_relied_on_it(
        tmp_path: Path) -> None:
    """The join projection is capped at the run's max_epsilon (50 rounds pass a site cap of
    10); so a round that would take the run past it is refused, before any work."""
    promised = {**TABLE, "max_epsilon": 0.01}
    silo = SiloPrivacy(tmp_path, SitePolicy(max_epsilon=10.0))
    assert silo.run_terms(_join(promised, num_rounds=50)).dp_epsilon_total == 0.01
    with pytest.raises(PrivacyBudgetExceeded, match=r"round 1 .* run's own max_epsilon 0\.01"):
        silo.begin_round(_round(1, promised))
    assert not (tmp_path / TALLY_FILE).exists()
    roomy = {**TABLE, "max_epsilon": _expected(TABLE, 1) * 1.01}
    silo.commit(silo.begin_round(_round(1, roomy)))
    with pytest.raises(PrivacyBudgetExceeded, match="round 2"):
        silo.begin_round(_round(2, roomy))


def test_the_cap_a_join_stated_holds_whatever_the_rounds_later_say(tmp_path: Path) -> None:
    """A coordinator cannot state max_epsilon = 0.01 at join and drop it from its rounds:
    the silo holds the run to the lowest cap any of its joins stated."""
    silo = SiloPrivacy(tmp_path, SitePolicy())
    silo.promise(_join({**TABLE, "max_epsilon": 5.0}))
    silo.promise(_join({**TABLE, "max_epsilon": 0.01}))
    silo.promise(_join(TABLE))  # a later join without a cap lifts nothing
    for table in (TABLE, {**TABLE, "max_epsilon": 100.0}):
        with pytest.raises(PrivacyBudgetExceeded, match="run's own max_epsilon 0.01"):
            silo.begin_round(_round(1, table))
    assert not (tmp_path / TALLY_FILE).exists()


@pytest.mark.parametrize(("table", "secure"), [
    (TABLE, {}), ({**DISTRIBUTED}, {"secure_aggregation": True, "secagg_threshold": 2})])
def test_the_join_projection_of_the_most_rounds_a_run_may_state_is_one_event(
        tmp_path: Path, table: dict, secure: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """num-rounds up to 10**6 (xsilo.terms.MAX_ROUNDS): the silo composes them as one
    self-composed event, not 10**6 compositions, so the join answers in about a second."""
    import time

    from strategies.dp import Accountant
    from xsilo.terms import MAX_ROUNDS

    def one_by_one(*_: object) -> None:
        raise AssertionError("the projection composed rounds one by one")

    join = JoinTerms.from_config(_join(table, num_rounds=MAX_ROUNDS, **secure).to_config())
    started = time.perf_counter()
    with monkeypatch.context() as patch:
        patch.setattr(Accountant, "compose_round", one_by_one)
        got = SiloPrivacy(tmp_path, SitePolicy()).run_terms(join, dimension=31).dp_epsilon_total
    assert time.perf_counter() - started < 10.0
    dp = DPConfig.from_mapping(table)
    event = (dp.round_event(dp.ddg_params(num_silos=3, min_survivors=2, dimension=31).calibrate())
             if dp.mechanism == "distributed" else dp.round_event())
    assert got == dp.accountant().epsilon_if(event, rounds=MAX_ROUNDS)


def test_a_round_larger_than_the_sites_max_silos_is_refused_before_its_calibration(
        tmp_path: Path) -> None:
    """A train message may state a roster of up to 2**20 silos for the distributed
    mechanism, whose calibration is sized by it: the site's max_silos refuses it first, as it
    refuses a round with more participants than that."""
    silo = SiloPrivacy(tmp_path, SitePolicy(max_silos=10))
    huge = dataclasses.replace(_round(1, DISTRIBUTED), dp=dataclasses.replace(
        _round(1, DISTRIBUTED).dp, num_silos=2**20, min_survivors=2))
    with pytest.raises(PolicyRefusal, match="round 1's DP calibration has 1048576 silos") as err:
        silo.begin_round(huge, dimension=31, secure=True)
    assert err.value.reason == "max_silos"
    crowded = dataclasses.replace(_round(1), participants=11)
    with pytest.raises(PolicyRefusal, match="round 1 has 11 silos, the site policy allows at "
                                            "most 10") as err:
        silo.begin_round(crowded)
    assert err.value.reason == "max_silos" and not (tmp_path / TALLY_FILE).exists()

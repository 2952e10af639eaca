"""silo_client.silo: every round re-checks the site policy against that round's own terms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from federation.demo_data import demo_schema
from silo_client.config import write_silo_config
from silo_client.silo import Silo
from xsilo import terms as T
from xsilo.errors import PolicyRefusal, ProtocolError
from xsilo.terms import JoinTerms, TrainTerms

JOIN = JoinTerms(run_name="run", strategy="fedavg", num_rounds=3, seed=0, min_silos=2,
                 num_silos=3, secure_aggregation=True, secagg_threshold=2)
ROUND = TrainTerms(server_round=1, num_rounds=3, local_epochs=1, learning_rate=0.1,
                   batch_size=32, seed=0, strategy="fedavg", run_token="t", participants=3)


def _round(changes: dict) -> TrainTerms:
    """The round's terms as the silo parses them, with ``changes`` (None: key absent)."""
    config = {k: v for k, v in {**ROUND.to_config(), **changes}.items() if v is not None}
    return TrainTerms.from_config(config)


def _silo(config: Path, policy: str) -> Silo:
    (config.parent / "policy.toml").write_text(policy)
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))
    return Silo.from_file(config)


def _counting_models(silo: Silo, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = silo.model

    def model(seed: int, fit=None):
        built.append(seed)
        return real(seed, fit)

    monkeypatch.setattr(silo, "model", model)
    return built


@pytest.mark.parametrize(("policy", "round_changes", "secure", "reason", "fragment"), [
    ('allowed_strategies = ["fedavg"]', {T.STRATEGY: "fedadam"}, None, "allowed_strategies",
     "round 1 runs strategy 'fedadam'"),
    ("require_secure_aggregation = true", {}, None, "require_secure_aggregation",
     "round 1 is not under secure aggregation"),
    # the round config claims secure aggregation, but the message carries no mask request
    ("require_secure_aggregation = true", {T.SECAGG_WEIGHTED: True}, False,
     "require_secure_aggregation", "no update sent in the clear"),
])
def test_train_refuses_a_round_that_breaks_the_policy_before_any_work(
        federation: list[Path], monkeypatch: pytest.MonkeyPatch, policy: str,
        round_changes: dict, secure: bool | None, reason: str, fragment: str) -> None:
    silo = _silo(federation[0], policy)
    _, params = silo.join(JOIN)  # the join terms satisfy the policy
    built = _counting_models(silo, monkeypatch)
    with pytest.raises(PolicyRefusal) as err:
        silo.train(params, _round(round_changes), secure=secure)
    assert err.value.reason == reason and fragment in str(err.value), str(err.value)
    assert built == []  # refused before a model was built or trained


def test_a_round_that_names_no_strategy_is_refused_at_the_edge() -> None:
    """Fail closed: without a strategy the terms do not parse (the policy check never sees a
    round it cannot judge)."""
    with pytest.raises(ProtocolError, match=f"{T.STRATEGY} is missing"):
        _round({T.STRATEGY: None})


@pytest.mark.parametrize(("policy", "round_changes", "secure"), [
    ('allowed_strategies = ["FedAvg"]', {}, None),
    ("require_secure_aggregation = true", {T.SECAGG_WEIGHTED: True}, None),  # a masked round
    ("require_secure_aggregation = true", {}, True),  # the mask request is present
    ("", {T.STRATEGY: "anything"}, False),  # the permissive default
])
def test_train_accepts_a_round_within_the_policy(federation: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch, policy: str,
                                                 round_changes: dict, secure: bool | None) -> None:
    silo = _silo(federation[0], policy)
    _, params = silo.join(JOIN)
    built = _counting_models(silo, monkeypatch)
    result = silo.train(params, _round(round_changes), secure=secure)
    assert built == [0] and result.delta.keys() == params.keys()
    assert result.metrics.num_examples > 0


@pytest.mark.parametrize(("policy", "changes", "reason"), [
    ("max_rounds = 50", {"num_rounds": T.MAX_ROUNDS}, "max_rounds"),
    ("", {"num_silos": 1001}, "max_silos"),  # the default max_silos: 1000
    ("max_silos = 3", {"num_silos": 4}, "max_silos"),
])
def test_join_checks_the_rules_that_need_no_epsilon_before_projecting_it(
        federation: list[Path], monkeypatch: pytest.MonkeyPatch, policy: str, changes: dict,
        reason: str) -> None:
    """A run the site refuses on its rounds or its size costs the silo no ε projection and no
    model: the DP table here would fail the projection (a noise multiplier of 1e-300 leaves
    the distributed mechanism no grid), so reaching it would be a ProtocolError instead."""
    silo = _silo(federation[0], policy)
    table = {"mechanism": "distributed", "noise_multiplier": 1e-300, "clip_norm": 1.0}
    join = JoinTerms.from_config({**dataclasses.replace(JOIN, **changes).to_config(),
                                  **T.DPTerms(table=table, run="run-1").to_config()})
    built = _counting_models(silo, monkeypatch)
    with pytest.raises(PolicyRefusal) as err:
        silo.join(join)
    assert err.value.reason == reason, str(err.value)
    assert built == []
    with pytest.raises(ProtocolError, match="epsilon projection failed"):  # within the rules
        silo.join(dataclasses.replace(join, num_rounds=3, num_silos=3))

"""silo_client.silo: every round re-checks the site policy against that round's own terms."""

from __future__ import annotations

from pathlib import Path

import pytest

from silo_client.config import write_silo_config
from silo_client.silo import Silo
from federation.demo_data import demo_schema
from xsilo.errors import PolicyRefusal

JOIN = {"strategy": "fedavg", "num-rounds": 3, "secure-aggregation": True, "seed": 0,
        "num-silos": 3}
ROUND = {"server-round": 1, "num-rounds": 3, "local-epochs": 1, "learning-rate": 0.1,
         "batch-size": 32, "seed": 0, "strategy": "fedavg", "participants": 3}


def _silo(config: Path, policy: str) -> Silo:
    (config.parent / "policy.toml").write_text(policy)
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))
    return Silo.from_file(config)


def _counting_models(silo: Silo, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = silo.model

    def model(seed: int, extra=None):
        built.append(seed)
        return real(seed, extra)

    monkeypatch.setattr(silo, "model", model)
    return built


@pytest.mark.parametrize(("policy", "round_changes", "secure", "reason", "fragment"), [
    ('allowed_strategies = ["fedavg"]', {"strategy": "fedadam"}, None, "allowed_strategies",
     "round 1 runs strategy 'fedadam'"),
    ('allowed_strategies = ["fedavg"]', {"strategy": None}, None, "allowed_strategies",
     "strategy None"),
    ("require_secure_aggregation = true", {}, None, "require_secure_aggregation",
     "round 1 is not under secure aggregation"),
    # the round config claims secure aggregation, but the message carries no mask request
    ("require_secure_aggregation = true", {"secagg-weighted": True}, False,
     "require_secure_aggregation", "no update sent in the clear"),
])
def test_train_refuses_a_round_that_breaks_the_policy_before_any_work(
        federation: list[Path], monkeypatch: pytest.MonkeyPatch, policy: str,
        round_changes: dict, secure: bool | None, reason: str, fragment: str) -> None:
    silo = _silo(federation[0], policy)
    _, params = silo.join(JOIN)  # the join terms satisfy the policy
    built = _counting_models(silo, monkeypatch)
    config = {k: v for k, v in {**ROUND, **round_changes}.items() if v is not None}
    with pytest.raises(PolicyRefusal) as err:
        silo.train(params, config, secure=secure)
    assert err.value.reason == reason and fragment in str(err.value), str(err.value)
    assert built == []  # refused before a model was built or trained


@pytest.mark.parametrize(("policy", "round_changes", "secure"), [
    ('allowed_strategies = ["FedAvg"]', {}, None),
    ("require_secure_aggregation = true", {"secagg-weighted": True}, None),  # a masked round
    ("require_secure_aggregation = true", {}, True),  # the mask request is present
    ("", {"strategy": "anything"}, False),  # the permissive default
])
def test_train_accepts_a_round_within_the_policy(federation: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch, policy: str,
                                                 round_changes: dict, secure: bool | None) -> None:
    silo = _silo(federation[0], policy)
    _, params = silo.join(JOIN)
    built = _counting_models(silo, monkeypatch)
    result = silo.train(params, {**ROUND, **round_changes}, secure=secure)
    assert built == [0] and result.delta.keys() == params.keys()
    assert result.metrics["num-examples"] > 0

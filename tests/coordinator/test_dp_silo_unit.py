"""silo_client.privacy: the silo's own tally from the round's DP terms, its refusal, its
projection at join, and the DP-SGD settings (no Flower, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.privacy import RunPrivacy
from silo_client.policy import PrivacyTally, SitePolicy
from silo_client.privacy import TALLY_FILE, DPSGDSettings, SiloPrivacy, dp_terms
from strategies.dp import DPConfig
from xsilo.errors import ConfigError, PolicyRefusal


def _coordinator(**kw) -> RunPrivacy:
    dp = DPConfig(**{"mechanism": "central", "noise_multiplier": 1.5, "clip_norm": 1.0, **kw})
    return RunPrivacy(dp, num_silos=3)


def _round_config(priv: RunPrivacy, r: int) -> dict:
    return {"server-round": r, "participants": 3, **priv.train_config()}


def test_silo_tally_matches_the_coordinator_and_ignores_redelivery(tmp_path: Path) -> None:
    priv = _coordinator()
    silo = SiloPrivacy(tmp_path / "ws", SitePolicy())
    for r in (1, 2, 3):
        rp = silo.begin_round(_round_config(priv, r))
        eps = silo.commit(rp)
        priv.commit_round()
        assert eps == pytest.approx(priv.accountant.epsilon(), rel=1e-9)
        assert rp.clip_norm == 1.0 and rp.noise_sigma == pytest.approx(1.5)
    again = silo.begin_round(_round_config(priv, 3))  # the same round delivered twice
    assert silo.commit(again) == pytest.approx(eps)
    tally = json.loads((tmp_path / "ws" / TALLY_FILE).read_text())
    assert tally["total_epsilon"] == pytest.approx(eps)


def test_silo_ignores_an_epsilon_the_coordinator_claims(tmp_path: Path) -> None:
    priv = _coordinator()
    cfg = {**_round_config(priv, 1), "epsilon": 0.0, "dp-epsilon": 0.0}
    silo = SiloPrivacy(tmp_path, SitePolicy())
    assert silo.commit(silo.begin_round(cfg)) > 1.0


def test_silo_refuses_the_round_that_would_cross_its_cap(tmp_path: Path) -> None:
    priv = _coordinator(noise_multiplier=2.0)
    cap = 4.0
    silo = SiloPrivacy(tmp_path, SitePolicy(max_epsilon=cap))
    expected = None
    for r in range(1, 50):
        if priv.accountant.epsilon_if(priv.event()) > cap:
            expected = r
            break
        silo.commit(silo.begin_round(_round_config(priv, r)))
        priv.commit_round()
    with pytest.raises(PolicyRefusal) as info:
        silo.begin_round(_round_config(priv, expected))
    assert info.value.reason == "max_epsilon" and f"round {expected}" in str(info.value)
    assert PrivacyTally(tmp_path / TALLY_FILE).total() <= cap


def test_other_runs_at_the_site_count_toward_the_cap(tmp_path: Path) -> None:
    PrivacyTally(tmp_path / TALLY_FILE).record("earlier-run", 10, 3.5)
    silo = SiloPrivacy(tmp_path, SitePolicy(max_epsilon=4.0))
    with pytest.raises(PolicyRefusal, match="max_epsilon"):
        silo.begin_round(_round_config(_coordinator(), 1))


def test_join_projection_is_computed_by_the_silo(tmp_path: Path) -> None:
    priv = _coordinator(max_epsilon=50.0)
    silo = SiloPrivacy(tmp_path, SitePolicy())
    terms = {"num-rounds": 4, **priv.join_terms()}
    got = silo.run_terms(terms, strategy="fedavg", num_rounds=4, secure_aggregation=False)
    assert got.dp_epsilon_total == pytest.approx(priv.projected_epsilon(4), rel=1e-9)
    assert got.dp_delta == 1e-5
    plain = silo.run_terms({"num-rounds": 4}, strategy="fedavg", num_rounds=4, secure_aggregation=False)
    assert plain.dp_epsilon_total is None


def test_malformed_terms_and_dpsgd_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="malformed"):
        dp_terms({"dp": "{not json"})
    with pytest.raises(ConfigError, match="clip_norm"):
        dp_terms({"dp": json.dumps({"mechanism": "central", "noise_multiplier": 1.0})})
    with pytest.raises(ConfigError, match="max_grad_norm"):
        DPSGDSettings.from_mapping({"noise_multiplier": 1.0})
    with pytest.raises(ConfigError, match="max_grad_norm"):
        DPSGDSettings.from_mapping({"noise_multiplier": 1.0, "max_grad_norm": 0})
    assert DPSGDSettings.from_mapping({"noise_multiplier": 1, "max_grad_norm": 2}).delta == 1e-5

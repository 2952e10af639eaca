"""silo_client.privacy: the silo's own tally from the round's DP terms, its refusal, its
projection at join; silo_client.dpsgd: the DP-SGD settings (no Flower, no torch)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.privacy import RunPrivacy
from silo_client.dpsgd import DPSGDSettings
from silo_client.policy import PrivacyTally, SitePolicy
from silo_client.privacy import TALLY_FILE, SiloPrivacy, parse_dp
from strategies.dp import DPConfig
from xsilo import terms as T
from xsilo.errors import ConfigError, PolicyRefusal, ProtocolError
from xsilo.terms import DPTerms, JoinTerms, TrainTerms


def _coordinator(**kw) -> RunPrivacy:
    dp = DPConfig(**{"mechanism": "central", "noise_multiplier": 1.5, "clip_norm": 1.0, **kw})
    return RunPrivacy(dp, num_silos=3)


def _round_config(priv: RunPrivacy, r: int, **extra) -> TrainTerms:
    """A train round's terms as the silo parses them from the wire."""
    terms = TrainTerms(server_round=r, num_rounds=50, local_epochs=1, learning_rate=0.1,
                       batch_size=32, seed=0, strategy="fedavg", run_token="t", participants=3,
                       dp=priv.round_terms())
    return TrainTerms.from_config({**terms.to_config(), **extra})


def test_silo_tally_matches_the_coordinator_and_counts_a_round_sent_again(tmp_path: Path) -> None:
    priv = _coordinator()
    silo = SiloPrivacy(tmp_path / "ws", SitePolicy())
    for r in (1, 2, 3):
        rp = silo.begin_round(_round_config(priv, r))
        eps = silo.commit(rp)
        priv.commit_round()
        assert eps == pytest.approx(priv.accountant.epsilon(), rel=1e-9)
        assert rp.clip_norm == 1.0 and rp.noise_sigma == pytest.approx(1.5)
    # the same round sent twice: a second update leaves, and is a second release
    again = silo.begin_round(_round_config(priv, 3))
    priv.commit_round()
    eps_again = silo.commit(again)
    assert eps_again > eps and eps_again == pytest.approx(priv.accountant.epsilon(), rel=1e-9)
    tally = json.loads((tmp_path / "ws" / TALLY_FILE).read_text())
    assert tally["total_epsilon"] == pytest.approx(eps_again)


def test_silo_ignores_an_epsilon_the_coordinator_claims(tmp_path: Path) -> None:
    priv = _coordinator()
    cfg = _round_config(priv, 1, epsilon=0.0, **{"dp-epsilon": 0.0})
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
    join = JoinTerms(run_name="r", strategy="fedavg", num_rounds=4, seed=0, min_silos=2,
                     num_silos=3, dp=priv.join_terms())
    got = silo.run_terms(JoinTerms.from_config(join.to_config()))
    assert got.dp_epsilon_total == pytest.approx(priv.projected_epsilon(4), rel=1e-9)
    assert got.dp_delta == 1e-5
    plain = silo.run_terms(replace(join, dp=None))
    assert plain.dp_epsilon_total is None


def test_malformed_terms_and_dpsgd_settings_are_refused() -> None:
    with pytest.raises(ProtocolError, match=f"{T.DP_TABLE} = '{{not json'.*JSON object"):
        DPTerms.from_config({T.DP_TABLE: "{not json", T.DP_RUN: "r"})
    table = json.dumps({"mechanism": "central", "noise_multiplier": 1.0})
    with pytest.raises(ProtocolError, match="clip_norm"):  # the coordinator's table: its fault
        parse_dp(DPTerms.from_config({T.DP_TABLE: table, T.DP_RUN: "r"}))
    with pytest.raises(ConfigError, match="max_grad_norm"):
        DPSGDSettings.from_mapping({"noise_multiplier": 1.0})
    with pytest.raises(ConfigError, match="max_grad_norm"):
        DPSGDSettings.from_mapping({"noise_multiplier": 1.0, "max_grad_norm": 0})
    assert DPSGDSettings.from_mapping({"noise_multiplier": 1, "max_grad_norm": 2}).delta == 1e-5

"""ε equals dp_accounting's for the same events; closed forms; the budget stop; checkpoints."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from strategies.dp.accounting import (
    Accountant,
    GaussianRound,
    PrivacyBudget,
    ZCDPRound,
    check_silo_policy,
)
from strategies.dp.config import DPConfig
from xsilo.errors import ConfigError, PolicyRefusal, PrivacyBudgetExceeded

SETTINGS = [
    ("pld", [GaussianRound(1.0)] * 3),
    ("pld", [GaussianRound(2.0)] * 4),
    ("pld", [GaussianRound(1.5)] * 3 + [GaussianRound(3.0)] * 3),
    ("pld", [GaussianRound(1.1, 0.25)] * 4),
    ("rdp", [GaussianRound(1.0)] * 3),
    ("rdp", [GaussianRound(0.8, 0.1)] * 8),
    ("rdp", [ZCDPRound(0.05)] * 10 + [GaussianRound(2.0)] * 4),
]


def reference(method: str, events, delta: float) -> float:
    """dp_accounting, composing the same events one by one."""
    acct = (
        pld_privacy_accountant.PLDAccountant()
        if method == "pld"
        else rdp_privacy_accountant.RdpAccountant()
    )
    for e in events:
        acct.compose(e.to_dp_event())
    return acct.get_epsilon(delta)


@pytest.mark.parametrize("method,events", SETTINGS)
def test_epsilon_equals_dp_accounting(method, events):
    acct = Accountant(1e-5, method)
    for e in events:
        acct.compose_round(e)
    ref = reference(method, events, 1e-5)
    # RDP composition is exact arithmetic; PLD one-by-one vs grouped differs only by
    # the discretization of the privacy loss (1e-4 per composition step, pessimistic)
    tol = 1e-9 if method == "rdp" else 2e-3
    assert acct.epsilon() == pytest.approx(ref, rel=tol)
    ledger_acct = (
        pld_privacy_accountant.PLDAccountant()
        if method == "pld"
        else rdp_privacy_accountant.RdpAccountant()
    )
    ledger_acct.compose(acct.ledger())
    assert acct.epsilon() == ledger_acct.get_epsilon(1e-5)


def test_known_answer_rdp_matches_flower_guide():
    """Flower 1.42's RdpAccountant, z=1, δ=1e-5: 4.73, 7.08, 9.01 (flower-1.42-guide §6)."""
    acct = Accountant(1e-5, "rdp")
    got = []
    for _ in range(3):
        acct.compose_round(GaussianRound(1.0))
        got.append(round(acct.epsilon(), 2))
    assert got == [4.73, 7.08, 9.01]


@pytest.mark.parametrize("z,rounds", [(1.0, 1), (0.7, 1), (2.0, 1), (1.0, 10), (3.0, 40)])
def test_pld_matches_analytic_gaussian(z, rounds):
    """T Gaussian rounds with multiplier z = one Gaussian with z/sqrt(T); ε(δ) by Balle & Wang 2018."""
    acct = Accountant(1e-5, "pld")
    for _ in range(rounds):
        acct.compose_round(GaussianRound(z))
    exact = dp_accounting.get_epsilon_gaussian(z / math.sqrt(rounds), 1e-5)
    assert acct.epsilon() == pytest.approx(exact, rel=1e-3)
    assert acct.epsilon() >= exact - 1e-9  # PLD discretization is pessimistic


def test_zcdp_in_rdp_matches_closed_form_conversion():
    """rho-zCDP: eps(delta) <= rho + 2 sqrt(rho ln(1/delta)) (Bun & Steinke 2016, Prop. 1.3)."""
    acct = Accountant(1e-5, "rdp")
    for _ in range(10):
        acct.compose_round(ZCDPRound(0.02))
    rho = 0.2
    assert acct.epsilon() <= rho + 2 * math.sqrt(rho * math.log(1e5)) + 1e-9
    assert acct.epsilon() > 0.5 * (rho + 2 * math.sqrt(rho * math.log(1e5)))


def test_zcdp_refused_under_pld():
    with pytest.raises(ConfigError, match="rdp"):
        Accountant(1e-5, "pld").compose_round(ZCDPRound(0.1))


@pytest.mark.parametrize("method", ["pld", "rdp"])
def test_budget_stop_fires_on_the_right_round(method):
    event = GaussianRound(3.0)
    probe = Accountant(1e-5, method)
    eps = []
    for _ in range(6):
        probe.compose_round(event)
        eps.append(probe.epsilon())
    cap = (eps[3] + eps[4]) / 2  # rounds 1..4 fit, round 5 would not
    budget = PrivacyBudget(cap, 1e-5)
    acct = Accountant(1e-5, method)
    completed = []
    with pytest.raises(PrivacyBudgetExceeded, match=r"round 5 .* above max_epsilon") as info:
        for rnd in range(1, 7):
            budget.check(acct, event, round_number=rnd)
            acct.compose_round(event)
            completed.append(rnd)
    assert completed == [1, 2, 3, 4]
    assert f"{eps[4]:.4f}" in str(info.value)
    assert acct.epsilon() == pytest.approx(eps[3]) and acct.epsilon() <= cap


def test_silo_policy_refuses_independently():
    acct = Accountant(1e-5, "pld")
    acct.compose_round(GaussianRound(1.0))
    with pytest.raises(PolicyRefusal) as info:
        check_silo_policy(acct, GaussianRound(1.0), max_epsilon=5.0, round_number=2)
    assert info.value.reason == "max_epsilon"
    assert check_silo_policy(acct, GaussianRound(1.0), max_epsilon=7.0, round_number=2) < 7.0


def test_state_dict_roundtrip_is_json_and_exact():
    acct = Accountant(1e-6, "rdp")
    for e in [GaussianRound(1.0), GaussianRound(1.0, 0.5), ZCDPRound(0.01)]:
        acct.compose_round(e)
    state = json.loads(json.dumps(acct.state_dict()))
    again = Accountant.from_state_dict(state)
    assert again.events == acct.events and again.epsilon() == acct.epsilon()
    other = Accountant(1e-5, "pld")
    other.load_state_dict(state)
    assert other.method == "rdp" and other.epsilon() == acct.epsilon()


def test_epsilon_if_does_not_record():
    acct = Accountant(1e-5)
    assert acct.epsilon() == 0.0
    e1 = acct.epsilon_if(GaussianRound(1.0))
    assert acct.rounds == 0 and e1 > 0


def test_config_round_events():
    cfg = DPConfig(mechanism="central", noise_multiplier=1.0, clip_norm=1.0, max_epsilon=3.0)
    assert cfg.round_event() == GaussianRound(1.0)
    assert cfg.accountant().method == "pld" and cfg.budget().max_epsilon == 3.0
    dcfg = DPConfig(mechanism="distributed", noise_multiplier=1.0, clip_norm=1.0)
    cal = dcfg.ddg_params(num_silos=5, min_survivors=3, dimension=1000).calibrate()
    ev = dcfg.round_event(cal)
    assert isinstance(ev, ZCDPRound) and ev.rho >= 0.5  # >= 1/(2 z^2): rounding costs
    assert dcfg.accountant().method == "rdp"


@pytest.mark.parametrize("method,event", [("pld", GaussianRound(2.0)), ("rdp", GaussianRound(1.0)),
                                          ("rdp", ZCDPRound(0.05))])
def test_epsilon_if_rounds_is_the_same_as_composing_them(method, event):
    """A run's projection: n rounds at once equal n rounds composed one by one (the same
    grouped ledger), on top of the history, and nothing is recorded."""
    acct = Accountant(1e-5, method)
    acct.compose_round(event)
    projected = acct.epsilon_if(event, rounds=4)
    assert acct.rounds == 1 and acct.epsilon_if(event, rounds=0) == acct.epsilon()
    for _ in range(4):
        acct.compose_round(event)
    assert projected == acct.epsilon()
    with pytest.raises(ConfigError, match="rounds must be an integer >= 0"):
        acct.epsilon_if(event, rounds=-1)


@pytest.mark.parametrize("method,event", [("pld", GaussianRound(1.0)),
                                          ("pld", GaussianRound(250.0)),  # z_eff = 0.25: PLD
                                          ("rdp", GaussianRound(0.25)), ("rdp", ZCDPRound(0.5))])
def test_a_million_rounds_project_in_about_a_second(method, event):
    """One self-composed event whatever the number of rounds, and no PLD discretization at an
    ε in the hundreds of thousands (it would run for hours): a silo's join projection of a
    run of 10**6 rounds stays bounded."""
    import time

    started = time.perf_counter()
    eps = Accountant(1e-5, method).epsilon_if(event, rounds=10**6)
    assert time.perf_counter() - started < 5.0  # about 1 s here, the PLD case
    assert eps > 0 and math.isfinite(eps)


@pytest.mark.parametrize("z,rounds", [(1.0, 17), (0.26, 1), (1.0, 1000), (3.0, 10**6)])
def test_pld_below_its_noise_floor_is_the_analytic_gaussian(z, rounds):
    """Unsampled Gaussian rounds with z_eff = z/sqrt(T) < 0.25 are accounted as the one
    Gaussian they compose into (Balle & Wang): exactly what the PLD approximates from above,
    so the value does not jump where the PLD stops (z_eff = 0.2425 and 0.26 below)."""
    acct = Accountant(1e-5, "pld")
    eps = acct.epsilon_if(GaussianRound(z), rounds=rounds)
    z_eff = z / math.sqrt(rounds)
    assert eps == pytest.approx(dp_accounting.get_epsilon_gaussian(z_eff, 1e-5), rel=1e-3)
    assert (z_eff < 0.25) == (eps == dp_accounting.get_epsilon_gaussian(z_eff, 1e-5))

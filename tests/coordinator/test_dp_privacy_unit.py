"""coordinator.privacy over plain numpy: clipping bound, calibrated noise, ε = dp_accounting's,
the budget stop's round, checkpointed state, and the refusals made before any silo is contacted."""

from __future__ import annotations

import io
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.privacy import RunPrivacy, check_run_privacy, parse_dp
from strategies.api import Update
from strategies.dp import DPConfig, KeystreamSource, l2_norm, split_noise_multiplier
from strategies.registry import build_strategy
from xsilo.errors import ConfigError, PrivacyBudgetExceeded, StrategyError


def _dp(**kw) -> DPConfig:
    return DPConfig(**{"mechanism": "central", "noise_multiplier": 1.0, "clip_norm": 1.0, **kw})


def _rng(tag: bytes = b"t") -> KeystreamSource:
    return KeystreamSource(tag.ljust(32, b"\0"))


def _updates(n: int, dim: int, scale: float, seed: int = 0) -> list[Update]:
    gen = np.random.default_rng(seed)  # test data only; the noise comes from the byte source
    return [Update(silo=f"s{i}", delta={"w": (gen.normal(size=dim) * scale * (i + 1)).astype(np.float32),
                                        "b": np.float32(gen.normal(size=3) * scale)},
                   weight=float(10 * (i + 1)))
            for i in range(n)]


@pytest.mark.parametrize("clip, scale", [(0.1, 1.0), (1.0, 0.01), (2.5, 0.3)])
def test_every_clipped_update_has_norm_at_most_c(clip: float, scale: float) -> None:
    seen = []
    priv = RunPrivacy(_dp(clip_norm=clip), num_silos=4, rng=_rng(), on_clipped=seen.append)
    priv.aggregate(_updates(4, 500, scale), participants=4)
    assert len(seen) == 4
    assert all(l2_norm(r.update) <= clip for r in seen)
    assert any(r.clipped for r in seen) == any(r.norm > clip for r in seen)


@pytest.mark.parametrize("z, clip, max_weight, adaptive", [
    (1.0, 1.0, 1.0, False), (0.5, 2.0, 1.0, False), (2.0, 0.3, 50.0, False), (1.0, 1.0, 1.0, True)])
def test_noise_added_in_situ_has_std_z_wmax_c(z: float, clip: float, max_weight: float,
                                              adaptive: bool) -> None:
    dim = 200_000
    dp = _dp(noise_multiplier=z, clip_norm=clip, max_weight=max_weight,
             clipping="adaptive" if adaptive else "fixed")
    priv = RunPrivacy(dp, num_silos=3, rng=_rng(b"noise"))
    zero = [Update(silo=f"s{i}", delta={"w": np.zeros(dim)}, weight=5.0) for i in range(3)]
    result = priv.aggregate(zero, participants=3)
    z_sum = split_noise_multiplier(noise_multiplier=z, count_stddev=max(3 / 20, z)) if adaptive else z
    target = z_sum * max_weight * clip
    assert result.noise_stddev == pytest.approx(target)
    noise = result.delta_sum["w"]
    # sample std of 2e5 normals: relative standard error 1/sqrt(2*dim) = 0.16 %; allow 5 sigma
    assert np.std(noise) == pytest.approx(target, rel=5 / math.sqrt(2 * dim))
    assert abs(np.mean(noise)) < 5 * target / math.sqrt(dim)
    assert result.total_weight == 3 * max_weight  # public denominator, not the realised weights


def test_weights_are_capped_before_summing() -> None:
    priv = RunPrivacy(_dp(max_weight=2.0, noise_multiplier=1e-6, accounting="rdp"), num_silos=2,
                      rng=_rng())
    ups = [Update("a", {"w": np.array([0.5, 0.0])}, 100.0), Update("b", {"w": np.array([0.0, 0.5])}, 1.0)]
    out = priv.aggregate(ups, participants=2)
    np.testing.assert_allclose(out.delta_sum["w"], [1.0, 0.5], atol=1e-4)
    assert out.total_weight == 4.0


def _dp_accounting_eps(z: float, rounds: int, delta: float, method: str) -> float:
    acct = (pld_privacy_accountant.PLDAccountant() if method == "pld"
            else rdp_privacy_accountant.RdpAccountant())
    for _ in range(rounds):
        acct.compose(dp_accounting.GaussianDpEvent(z))
    return acct.get_epsilon(delta)


@pytest.mark.parametrize("z, rounds, delta, method", [
    (1.0, 5, 1e-5, "pld"), (2.0, 12, 1e-5, "pld"), (0.8, 3, 1e-6, "rdp"), (1.5, 20, 1e-5, "rdp")])
def test_epsilon_after_each_round_equals_dp_accounting(z: float, rounds: int, delta: float,
                                                       method: str) -> None:
    priv = RunPrivacy(_dp(noise_multiplier=z, delta=delta, accounting=method), num_silos=3, rng=_rng())
    for r in range(1, rounds + 1):
        fields = priv.commit_round()
        if r in (1, rounds):
            assert fields["epsilon"] == pytest.approx(_dp_accounting_eps(z, r, delta, method), rel=1e-6)
    assert fields["delta"] == delta


@pytest.mark.parametrize("z, cap", [(1.0, 4.0), (2.0, 3.0), (0.7, 9.0)])
def test_budget_stop_fires_before_the_round_that_would_exceed(z: float, cap: float) -> None:
    expected = next(r for r in range(1, 500) if _dp_accounting_eps(z, r, 1e-5, "pld") > cap)
    priv = RunPrivacy(_dp(noise_multiplier=z, max_epsilon=cap), num_silos=3, rng=_rng())
    stopped = None
    for r in range(1, 500):
        try:
            priv.check_budget(r)
        except PrivacyBudgetExceeded as exc:
            stopped = r
            assert f"round {r}" in str(exc) and "max_epsilon" in str(exc)
            break
        priv.commit_round()
    assert stopped == expected
    assert priv.accountant.epsilon() <= cap


def test_adaptive_clip_norm_moves_and_state_round_trips_through_npz() -> None:
    priv = RunPrivacy(_dp(clipping="adaptive", clip_norm=5.0, noise_multiplier=0.5), num_silos=5,
                      rng=_rng(b"adaptive"))
    clips = []
    for _ in range(6):
        res = priv.aggregate(_updates(5, 50, 0.01), participants=5)  # norms ~0.1-0.5 << C
        clips.append(priv.commit_round(res)["clip_norm"])
    assert clips == sorted(clips, reverse=True) and clips[-1] < clips[0]  # C shrinks toward the norms
    buf = io.BytesIO()
    np.savez(buf, **priv.state_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as saved:
        state = {k: saved[k] for k in saved.files}
    other = RunPrivacy(priv.dp, num_silos=5, rng=_rng())
    rest = other.load_state_arrays({**state, "moment": np.zeros(2)})
    assert set(rest) == {"moment"}
    assert other.accountant.epsilon() == priv.accountant.epsilon() and other.accountant.rounds == 6
    assert other.clip_norm == priv.clip_norm and other.run_token == priv.run_token


def test_refusals_before_any_silo_is_contacted() -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        parse_dp({"mechanism": "central", "noise_multiplier": 1.0})
    with pytest.raises(StrategyError, match="differential privacy"):
        check_run_privacy(_dp(), build_strategy("fedmedian", {}), secure_aggregation=False)
    fedavg = build_strategy("fedavg", {})
    with pytest.raises(ConfigError, match="secure_aggregation = true"):
        check_run_privacy(_dp(mechanism="distributed"), fedavg, secure_aggregation=False)
    check_run_privacy(_dp(), fedavg, secure_aggregation=False)
    check_run_privacy(None, build_strategy("fedmedian", {}), secure_aggregation=False)
    assert parse_dp(None) is None
    assert parse_dp({"mechanism": "central", "noise_multiplier": 1.0, "clip_norm": 2}).clip_norm == 2


def test_projected_epsilon_is_capped_by_max_epsilon() -> None:
    priv = RunPrivacy(_dp(noise_multiplier=4.0, max_epsilon=3.0), num_silos=3)
    assert priv.projected_epsilon(2) == pytest.approx(_dp_accounting_eps(4.0, 2, 1e-5, "pld"), rel=1e-6)
    assert priv.projected_epsilon(100) == 3.0

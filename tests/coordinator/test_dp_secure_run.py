"""DP under secure aggregation in real (in-process) runs, and the silo glue directly.

Central: silos clip before masking, the coordinator noises the unmasked sum. Distributed:
silos mask their KLS encodings (noise share included); the coordinator only decodes.
"""

from __future__ import annotations

import json
from dataclasses import replace
import math
from pathlib import Path

import numpy as np
import pytest

import silo_client.privacy as silo_privacy
from coordinator.config import RunConfig
from coordinator.messages import Observers
from coordinator.privacy import RunPrivacy, check_run_privacy
from coordinator.run_store import RunStore
from silo_client import secure as glue
from silo_client.config import load_silo_config
from silo_client.policy import PrivacyTally
from silo_client.privacy import TALLY_FILE
from silo_client.silo import Silo
from strategies.dp import Accountant, DPConfig, GaussianRound, ZCDPRound, l2_norm
from strategies.registry import build_strategy
from strategies.secagg import coordinator as co
from strategies.secagg import message_from_record
from strategies.secagg.config import make_encoded_config
from federation.local import run_in_process
from xsilo import terms as T
from xsilo.errors import ConfigError, ProtocolError
from xsilo.protocol import METRICS, SECAGG_ARRAYS
from xsilo.terms import DPTerms, TrainTerms

NAMES = ["hospital-a", "hospital-b", "hospital-c"]


def _dp(mechanism: str, **kw) -> DPConfig:
    return DPConfig(**{"mechanism": mechanism, "noise_multiplier": 2.0, "clip_norm": 0.5, **kw})


def _rows(run_dir: Path) -> list[dict]:
    return [e for e in RunStore(run_dir).events() if e["event"] == "round"][1:]


def _expected_eps(event, rounds: int, *, method: str) -> list[float]:
    acct, out = Accountant(1e-5, method), []
    for _ in range(rounds):
        acct.compose_round(event)
        out.append(acct.epsilon())
    return out


@pytest.fixture
def observed() -> list:
    """Every clip the silos make before masking (pass ``silo_clipped=observed.append``)."""
    return []


@pytest.fixture
def view() -> list:
    """The coordinator's view: every raw reply (pass ``Observers(reply=view.append)``)."""
    return []


def _only_masked_updates(view: list, rounds: int) -> None:
    """Every array the coordinator got in a train reply is a masked vector, nothing else."""
    train = [m for m in view if m.metadata.message_type == "train"]
    assert len(train) == 3 * rounds
    for message in train:
        assert not message.has_error()
        assert list(message.content.array_records) == [SECAGG_ARRAYS]
        assert T.SECAGG_CLIPPED not in message.content.metric_records[METRICS]


def test_central_dp_under_secure_aggregation(tmp_path: Path, federation: list[Path],
                                             observed: list, view: list) -> None:
    config = RunConfig(num_rounds=3, min_silos=3, secure_aggregation=True, secagg_clip=1.0,
                       secagg_bits=20, dp=_dp("central"))
    summary = run_in_process(tmp_path / "run", config, federation, silo_clipped=observed.append,
                             observers=Observers(reply=view.append))
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    rows = _rows(tmp_path / "run")
    expected = _expected_eps(GaussianRound(2.0), 3, method="pld")
    for row, eps in zip(rows, expected):
        assert row["status"] == "ok" and row["contributors"] == NAMES
        assert row["epsilon"] == pytest.approx(eps, rel=1e-9)
        assert row["noise_stddev"] == 1.0 and row["dp_mechanism"] == "central"
    assert summary["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    # every silo clipped before masking, to C minus the quantizer's margin
    assert len(observed) == 9 and any(r.clipped for r in observed)
    assert all(l2_norm(r.update) <= 0.5 for r in observed)
    _only_masked_updates(view, 3)
    for silo in federation:  # each silo's own accountant reached the same ε
        ws = load_silo_config(silo).workspace
        assert PrivacyTally(ws / TALLY_FILE).total() == pytest.approx(expected[-1], rel=1e-9)
        # its ledger records each masked update's ε and clip norm, as for a clear one
        train = [json.loads(line) for line in (ws / "egress.jsonl").read_text().splitlines()
                 if '"train"' in line]
        assert [e["epsilon"] for e in train] == pytest.approx(expected, rel=1e-9)
        assert all(e["masked"] and e["clip_norm"] == 0.5 for e in train)


def test_distributed_dp_under_secure_aggregation(tmp_path: Path, federation: list[Path],
                                                 observed: list, view: list) -> None:
    dp = _dp("distributed", max_epsilon=None)
    config = RunConfig(num_rounds=2, min_silos=3, secure_aggregation=True, dp=dp)
    summary = run_in_process(tmp_path / "run", config, federation, silo_clipped=observed.append,
                             observers=Observers(reply=view.append))
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    setup = next(e for e in RunStore(tmp_path / "run").events()
                 if e["event"] == "secure_aggregation_setup")
    assert setup["pre_encoded"] and setup["threshold"] == 3
    dimension = setup["length"]  # the padded dimension of the model
    params = dp.ddg_params(num_silos=3, min_survivors=3, dimension=_model_size(federation))
    cal = params.calibrate()
    assert dimension == cal.padded_dim and setup["rho"] == pytest.approx(cal.rho)
    expected = _expected_eps(ZCDPRound(cal.rho), 2, method="rdp")
    rows = _rows(tmp_path / "run")
    for row, eps in zip(rows, expected):
        assert row["status"] == "ok" and row["contributors"] == NAMES
        assert row["epsilon"] == pytest.approx(eps, rel=1e-9)
        assert row["noise_stddev"] == pytest.approx(cal.noise_stddev(3))
        assert row["noise_stddev"] == pytest.approx(2.0 * 0.5, rel=1e-3)  # z·C with t survivors
    assert len(observed) == 6 and all(l2_norm(r.update) <= 0.5 for r in observed)
    _only_masked_updates(view, 2)
    for silo in federation:
        ws = load_silo_config(silo).workspace
        assert PrivacyTally(ws / TALLY_FILE).total() == pytest.approx(expected[-1], rel=1e-9)
        train = [json.loads(line) for line in (ws / "egress.jsonl").read_text().splitlines()
                 if '"train"' in line]
        assert all(e["masked"] and list(e["tensors"]) == ["masked"] for e in train)
        assert [e["epsilon"] for e in train] == pytest.approx(expected, rel=1e-9)


def _model_size(federation: list[Path]) -> int:
    return sum(v.size for v in Silo.from_file(federation[0]).model(0).get_parameters().values())


def test_distributed_budget_stops_coordinator_and_silos_agree(
        tmp_path: Path, federation: list[Path]) -> None:
    probe = _dp("distributed").ddg_params(num_silos=3, min_survivors=3,
                                          dimension=_model_size(federation))
    eps = _expected_eps(ZCDPRound(probe.calibrate().rho), 3, method="rdp")
    config = RunConfig(num_rounds=5, min_silos=3, secure_aggregation=True,
                       dp=_dp("distributed", max_epsilon=(eps[1] + eps[2]) / 2))
    summary = run_in_process(tmp_path / "run", config, federation)
    assert summary["status"] == "stopped" and summary["stop_reason"] == "privacy_budget"
    assert "round 3" in summary["stop_message"] and summary["dp_rounds"] == 2
    for silo in federation:
        tally = PrivacyTally(load_silo_config(silo).workspace / TALLY_FILE).total()
        assert tally == pytest.approx(summary["epsilon"], rel=1e-9)


# -- the noise of the decoded sum, through the silo glue and the protocol directly --------------
def _glue_round(dp: DPConfig, *, n: int, t: int, dimension: int, drop: int,
                deltas: list[dict]) -> tuple[dict, RunPrivacy]:
    """One secure round over ``silo_client.secure`` with n silos; ``drop`` never send."""
    priv = RunPrivacy(dp, num_silos=n)
    ddg = priv.bind_secure(num_silos=n, threshold=t, dimension=dimension)
    config = make_encoded_config(run_id="noise", roster=list(range(n)), threshold=t,
                                 length=ddg.calibrate().padded_dim, modulus_bits=dp.modulus_bits)
    state, requests = co.start_run(config)
    stored = {}
    for i, req in requests.items():
        stored[i], advert = glue.setup(None, req.to_record(), silo_index=i)
        state = co.receive_advert(state, message_from_record(advert))
    terms = TrainTerms(server_round=1, num_rounds=1, local_epochs=1, learning_rate=0.1,
                       batch_size=32, seed=0, strategy="fedavg", run_token="t", participants=n,
                       secagg_weighted=True, dp=priv.round_terms())
    template = {"w": np.zeros(dimension, dtype=np.float32)}
    state, masks = co.begin_round(state, round_=1)
    for i, req in masks.items():
        if i >= n - drop:
            continue
        out = glue.mask(stored[i], req.to_record(), delta=deltas[i], template=template,
                        num_examples=10, terms=TrainTerms.from_config(terms.to_config()))
        stored[i] = out.state
        state = co.receive_masked(state, message_from_record(out.reply))
    state, unmasks = co.request_unmask(state)
    for i, req in unmasks.items():
        stored[i], reply = glue.unmask(stored[i], req.to_record())
        state = co.receive_unmask(state, message_from_record(reply))
    _, result = co.finish_round(state)
    decoded = priv.decode_distributed(result.weighted_sum, template=template)
    released = priv.release_secure(decoded, participants=n, contributors=n - drop)
    return released.delta_sum, priv


@pytest.mark.parametrize("drop", [0, 2])
def test_distributed_noise_has_the_calibrated_std_down_to_t_survivors(drop: int) -> None:
    n, t, dimension, z, clip = 5, 3, 4096, 1.5, 1.0
    dp = DPConfig(mechanism="distributed", noise_multiplier=z, clip_norm=clip, max_weight=1.0)
    # numpy.random makes up test *data* only (the updates), never noise or secrets.
    gen = np.random.default_rng(7)
    deltas = [{"w": gen.normal(0, 1, dimension).astype(np.float32)} for _ in range(n)]
    noisy, priv = _glue_round(dp, n=n, t=t, dimension=dimension, drop=drop, deltas=deltas)
    m = n - drop
    exact = sum(d["w"].astype(np.float64) * min(1.0, clip / np.linalg.norm(d["w"]))
                for d in deltas[:m])
    noise = noisy["w"] - exact
    target = z * clip * math.sqrt(m / t)  # any t survivors carry the full z·C
    assert priv.calibration.noise_stddev(m) == pytest.approx(target, rel=1e-4)
    assert abs(float(np.mean(noise))) < 4 * target / math.sqrt(dimension)
    # sample std of 4096 Gaussians: relative standard error ~1.1 %; rounding adds ~γ/2
    assert float(np.std(noise)) == pytest.approx(target, rel=0.05)
    assert float(np.std(noise)) >= 0.95 * z * clip


def test_the_silo_refuses_round_terms_that_disagree_with_its_protocol_state() -> None:
    dp = _dp("distributed")
    priv = RunPrivacy(dp, num_silos=3)
    ddg = priv.bind_secure(num_silos=3, threshold=2, dimension=4)
    secagg = make_encoded_config(run_id="x", roster=[0, 1, 2], threshold=2,
                                 length=ddg.calibrate().padded_dim, modulus_bits=32)
    terms = DPTerms.from_config(priv.round_terms().to_config())
    assert terms is not None
    delta, template = {"w": np.ones(4)}, {"w": np.zeros(4)}
    kwargs = dict(delta=delta, template=template, num_examples=1, weighted=False, secagg=secagg)
    assert "encoded" in silo_privacy.secure_update(dp, terms, **kwargs).step_kwargs
    with pytest.raises(ProtocolError, match="n=3, t=3 but"):
        silo_privacy.secure_update(dp, replace(terms, min_survivors=3), **kwargs)
    with pytest.raises(ProtocolError, match="rotation seed"):
        silo_privacy.secure_update(dp, replace(terms, rotation_seed=None), **kwargs)
    with pytest.raises(ProtocolError, match=f"{T.DP_ROTATION_SEED} = b'00'.*32 bytes"):
        DPTerms.from_config({**terms.to_config(), T.DP_ROTATION_SEED: b"00"})


def test_what_stays_unsupported_is_refused_with_the_fix() -> None:
    fedavg = build_strategy("fedavg", {})
    check_run_privacy(_dp("central"), fedavg, secure_aggregation=True)
    check_run_privacy(_dp("distributed"), fedavg, secure_aggregation=True)
    with pytest.raises(ConfigError, match="adaptive.*secure count is not implemented"):
        check_run_privacy(_dp("central", clipping="adaptive"), fedavg, secure_aggregation=True)
    priv = RunPrivacy(_dp("central", clip_norm=0.01), num_silos=3)
    with pytest.raises(ConfigError, match="raise secagg_bits or lower secagg_clip"):
        priv.bind_secure(num_silos=3, threshold=2, dimension=10_000, quant_step=1e-3)

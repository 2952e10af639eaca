"""Secure aggregation in the real round loop (in-process: real ServerApp logic and ClientApp).

What the coordinator process receives never contains an individual update; the unmasked
sum matches the plain weighted sum within the reported quantization bound; dropouts at each
stage of a round are handled; fewer than t survivors fail the round (reported, model kept)
and the run goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.messages import Observers
from coordinator.config import RunConfig
from coordinator.run_store import RunStore, load_npz
from silo_client.ledger import verify_ledger
from silo_client.silo import Silo
from xsilo.errors import ConfigError, SecureAggregationError
from federation.local import run_in_process
from xsilo import terms as T
from xsilo.protocol import METRICS, SILO, SECAGG_ARRAYS, SECAGG_SETUP, SECAGG_UNMASK, flatten_update
from xsilo.records import PACKED, record_to_arrays
from silo_client.config import write_silo_config
from federation.demo_data import demo_schema
from tests.conftest import make_federation

NAMES = ["hospital-a", "hospital-b", "hospital-c"]


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Test-only silo-side hook: every (silo, round) → (incoming model, plain delta, examples)."""
    seen: dict[tuple[str, int], tuple] = {}
    original = Silo.train

    def train(self, global_params, config, **kw):
        result = original(self, global_params, config, **kw)
        seen[(self.config.name, config.server_round)] = (
            dict(global_params), result.delta, result.metrics.num_examples)
        return result

    monkeypatch.setattr(Silo, "train", train)
    return seen


def _rows(run_dir: Path) -> dict[int, dict]:
    return {e["round"]: e for e in RunStore(run_dir).events() if e["event"] == "round"}


def _fedavg(trained: dict, server_round: int, silos: list[str]) -> dict[str, np.ndarray]:
    """The model a clear FedAvg round would produce from the same deltas."""
    model = trained[(silos[0], server_round)][0]
    total = sum(trained[(s, server_round)][2] for s in silos)
    return {k: model[k] + sum(trained[(s, server_round)][2] * trained[(s, server_round)][1][k]
                              for s in silos) / total for k in model}


def _close_within_row_bound(run_dir: Path, server_round: int, expected: dict) -> float:
    rnd, got, _ = _checkpoint(run_dir, server_round)
    bound = _rows(run_dir)[server_round]["secure_aggregation"]["quantization"]["mean_max_abs_bound"]
    worst = max(float(np.max(np.abs(got[k] - expected[k]))) for k in expected)
    assert worst <= bound, (worst, bound)
    return worst


def _checkpoint(run_dir: Path, server_round: int):
    path = run_dir / "checkpoints" / f"round-{server_round:04d}.npz"
    model = {k: v for k, v in load_npz(path).items() if not k.startswith(("strategy", "__"))}
    return server_round, model, None


def test_secure_run_matches_the_clear_run_within_the_reported_error(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    secure_dir, clear_dir = tmp_path / "secure", tmp_path / "clear"
    base = dict(num_rounds=3, min_silos=3, expected_silos=3, seed=0, name="t")
    summary = run_in_process(secure_dir, RunConfig(secure_aggregation=True, **base), federation)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    rows = _rows(secure_dir)
    for r in (1, 2, 3):
        assert rows[r]["status"] == "ok" and rows[r]["contributors"] == NAMES
        sa = rows[r]["secure_aggregation"]
        assert sa["threshold"] == 3 and sa["total_weight"] == 426 and sa["clipped_values"] == 0
        # both round trips are timed, and together they are most of the round
        trips = sa["seconds"]
        assert set(trips) == {"masked_input", "unmasking"} and min(trips.values()) > 0
        assert sum(trips.values()) <= rows[r]["round_seconds"]
        _close_within_row_bound(secure_dir, r, _fedavg(trained, r, NAMES))
    assert rows[3]["global_accuracy"] > rows[0]["global_accuracy"] + 0.2
    setup = next(e for e in RunStore(secure_dir).events()
                 if e["event"] == "secure_aggregation_setup")
    assert setup["keyed"] == NAMES and setup["not_keyed"] == {}

    run_in_process(clear_dir, RunConfig(**base), federation)
    secure, clear = load_npz(secure_dir / "model.npz"), load_npz(clear_dir / "model.npz")
    for k in clear:
        np.testing.assert_allclose(secure[k], clear[k], atol=5e-3)
    assert abs(rows[3]["global_accuracy"] - _rows(clear_dir)[3]["global_accuracy"]) < 0.02


def test_the_coordinator_never_receives_an_individual_update(
        tmp_path: Path, federation: list[Path], trained: dict,
        monkeypatch: pytest.MonkeyPatch) -> None:
    view: list = []
    config = RunConfig(num_rounds=2, min_silos=3, secure_aggregation=True, name="view")
    assert run_in_process(tmp_path / "run", config, federation,
                          observers=Observers(reply=view.append))["status"] == "completed"

    clip, step = config.secagg_clip, 2 * config.secagg_clip / (2**config.secagg_bits - 1)
    forbidden = []  # every form an individual update could take: plain, weighted, encoded
    for (_, _), (model, delta, n) in trained.items():
        u = flatten_update(delta, model)
        forbidden += [(u, 1e-6), (n * u, 1e-6), (n * (np.clip(u, -clip, clip) + clip) / step, n + 1)]
    received = masked = 0
    for message in view:
        assert not message.has_error()
        for record_name, record in message.content.array_records.items():
            for a in record_to_arrays(record).values():  # packed or not, every tensor
                a = a.astype(np.float64).ravel()
                received += 1
                masked += record_name == SECAGG_ARRAYS
                for target, atol in forbidden:
                    if a.size >= target.size:
                        assert not np.allclose(a[-target.size:], target, rtol=0, atol=atol)
    # one masked input per silo per round (the update and its summed metrics) and one for
    # the final evaluation (its scores only), and the rounds happened
    masked_inputs = [m for m in view if SECAGG_ARRAYS in m.content.array_records]
    assert len(masked_inputs) == 3 * 3 and masked == 2 * len(masked_inputs)
    assert all(sorted(record_to_arrays(m.content.array_records[SECAGG_ARRAYS]))
               == ["aux", "masked"] for m in masked_inputs)
    assert all(list(m.content.array_records[SECAGG_ARRAYS].keys()) == [PACKED]
               for m in masked_inputs)  # two tensors travel as one Flower Array
    types = [m.metadata.message_type for m in view]
    assert types.count(SECAGG_SETUP) == 3 and types.count(SECAGG_UNMASK) == 9
    assert types.count("train") == 6 and types.count("evaluate") == 3 and received > masked


def test_every_outgoing_secure_message_is_in_the_ledger(tmp_path: Path,
                                                        federation: list[Path]) -> None:
    run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3, secure_aggregation=True),
                   federation)
    ledger = federation[0].parent / "workspace" / "egress.jsonl"
    assert verify_ledger(ledger).ok
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    by_type = {}
    for e in entries:
        by_type.setdefault(e["message_type"], []).append(e)
    assert len(by_type[SECAGG_SETUP]) == 1 and len(by_type[SECAGG_UNMASK]) == 3
    assert all(e["masked"] for e in by_type["train"]) and len(by_type["train"]) == 2
    assert [e["masked"] for e in by_type["evaluate"]] == [True]  # the final evaluation
    assert list(by_type["train"][0]["tensors"]) == ["masked"]
    assert "enc_sk" not in ledger.read_text() and "mask_sk" not in ledger.read_text()


def test_fewer_than_threshold_survivors_fail_the_round_keep_the_model_and_the_run_goes_on(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    run_dir = tmp_path / "run"
    trains: dict[int, int] = {}

    def drop(node: int, message_type: str) -> bool:  # hospital-c is silent in round 2 only
        trains[node] = trains.get(node, 0) + (message_type == "train")
        return node == 3 and message_type == "train" and trains[node] == 2

    config = RunConfig(num_rounds=3, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=3, round_timeout=0.5)
    summary = run_in_process(run_dir, config, federation, drop=drop)
    assert summary["status"] == "completed" and summary["rounds_failed"] == [2]
    rows = _rows(run_dir)
    assert rows[2]["status"] == "failed" and "threshold=3" in rows[2]["reason"]
    assert rows[2]["contributors"] == [] and "hospital-c" in rows[2]["rejected"]
    assert rows[1]["status"] == rows[3]["status"] == "ok"
    assert not (run_dir / "checkpoints" / "round-0002.npz").exists()
    _, after_1, _ = _checkpoint(run_dir, 1)
    kept = trained[("hospital-a", 3)][0]  # the model sent in round 3 is round 1's
    assert all(np.array_equal(kept[k], after_1[k]) for k in after_1)
    assert rows[3]["contributors"] == NAMES


def test_a_silo_lost_after_its_masked_input_is_still_summed(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    run_dir = tmp_path / "run"
    drop = lambda node, message_type: node == 3 and message_type == SECAGG_UNMASK  # noqa: E731
    config = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=0.5)
    assert run_in_process(run_dir, config, federation, drop=drop)["rounds_failed"] == []
    row = _rows(run_dir)[1]
    # t + 1 = 3 survivors asked, the first t = 2 answers unmask: no wait for hospital-c.
    assert row["contributors"] == NAMES and "hospital-c" not in row.get("rejected", {})
    assert row["secure_aggregation"]["unmasking"] == {"asked": 3, "answered": 2}
    _close_within_row_bound(run_dir, 1, _fedavg(trained, 1, NAMES))


def test_the_other_survivors_are_asked_when_too_few_of_those_asked_answer(
        tmp_path: Path, federation: list[Path], trained: dict, monkeypatch) -> None:
    import coordinator.secure

    monkeypatch.setattr(coordinator.secure, "UNMASK_SPARES", 0)  # ask exactly t = 2 first
    run_dir = tmp_path / "run"
    asked: list[int] = []

    def drop(node: int, message_type: str) -> bool:  # the first silo asked is lost
        if message_type == SECAGG_UNMASK:
            asked.append(node)
        return message_type == SECAGG_UNMASK and node == asked[0]

    config = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=0.5)
    assert run_in_process(run_dir, config, federation, drop=drop)["rounds_failed"] == []
    # two asked first, the third after: in round 1, and again in the final evaluation
    assert len(asked) == 6 and len(set(asked[:3])) == 3 and asked[3:] == asked[:3]
    row = _rows(run_dir)[1]
    assert row["secure_aggregation"]["unmasking"] == {"asked": 3, "answered": 2}
    assert row["contributors"] == NAMES
    lost = NAMES[asked[0] - 1]
    assert "no unmask response" in row["rejected"][lost]
    _close_within_row_bound(run_dir, 1, _fedavg(trained, 1, NAMES))


def test_a_silo_lost_before_its_masked_input_is_excluded(
        tmp_path: Path, federation: list[Path], trained: dict) -> None:
    run_dir = tmp_path / "run"
    drop = lambda node, message_type: node == 3 and message_type == "train"  # noqa: E731
    config = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=0.5)
    assert run_in_process(run_dir, config, federation, drop=drop)["rounds_failed"] == []
    row = _rows(run_dir)[1]
    assert row["contributors"] == NAMES[:2]
    assert row["secure_aggregation"]["dropped"] == 1
    _close_within_row_bound(run_dir, 1, _fedavg(trained, 1, NAMES[:2]))


def test_a_silo_that_missed_the_setup_is_left_out_and_retried_with_back_off(
        tmp_path: Path, federation: list[Path]) -> None:
    run_dir = tmp_path / "run"
    drop = lambda node, message_type: node == 3 and message_type == SECAGG_SETUP  # noqa: E731
    config = RunConfig(num_rounds=4, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=0.5)
    assert run_in_process(run_dir, config, federation, drop=drop)["status"] == "completed"
    setup = next(e for e in RunStore(run_dir).events() if e["event"] == "secure_aggregation_setup")
    assert setup["not_keyed"] == {
        "hospital-c": "no reply to the key setup within round_timeout (0.5 s)"}
    rows = _rows(run_dir)
    assert all(rows[r]["contributors"] == NAMES[:2] for r in range(1, 5))
    # Setup failed (round 0): tried in round 1, failed again, next in round 1 + 2 = 3,
    # then not before round 3 + 4 = 7.
    tried = [r for r in range(1, 5) if "rekeyed" in rows[r]["secure_aggregation"]]
    assert tried == [1, 3]
    assert rows[1]["secure_aggregation"]["rekeyed"] == {"asked": 1, "keyed": 0}
    assert "re-key: no reply to the re-key request" in rows[3]["rejected"]["hospital-c"]


def test_a_silo_that_restarts_mid_run_is_re_keyed_and_summed_again(
        tmp_path: Path, federation: list[Path], trained: dict,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.app import RecordDict

    from coordinator.local_grid import LocalGrid

    push = LocalGrid.push_messages

    def restart_c_before_round_2(self, messages):  # its SuperNode restarts: node state is gone
        messages = list(messages)
        if any(m.metadata.dst_node_id == 3 and m.metadata.message_type == "train"
               and m.metadata.group_id == "2" for m in messages):
            self._contexts[3].state = RecordDict()
        return push(self, messages)

    monkeypatch.setattr(LocalGrid, "push_messages", restart_c_before_round_2)
    run_dir = tmp_path / "run"
    config = RunConfig(num_rounds=3, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, round_timeout=0.5)
    assert run_in_process(run_dir, config, federation)["rounds_failed"] == []
    rows = _rows(run_dir)
    assert rows[1]["contributors"] == NAMES
    # Round 2: hospital-c refuses to mask without keys; the others' sum is unmasked.
    assert rows[2]["contributors"] == NAMES[:2]
    assert "KeysMissing" in rows[2]["rejected"]["hospital-c"]
    assert "rekeyed" not in rows[2]["secure_aggregation"]
    _close_within_row_bound(run_dir, 2, _fedavg(trained, 2, NAMES[:2]))
    # Round 3: re-keyed first (one more round trip), then summed with the others again.
    assert rows[3]["secure_aggregation"]["rekeyed"] == {"asked": 1, "keyed": 1}
    assert "rekey" in rows[3]["secure_aggregation"]["seconds"]
    assert rows[3]["contributors"] == NAMES
    _close_within_row_bound(run_dir, 3, _fedavg(trained, 3, NAMES))
    # hospital-c's ledger: the refusal and the second key advert left the site too.
    ledger = Silo.from_file(str(federation[2])).ledger
    entries = [json.loads(line) for line in ledger.path.read_text().splitlines()]
    assert verify_ledger(ledger.path).ok
    kinds = [e["message_type"] for e in entries]
    assert "train.refusal" in kinds
    assert [e["server_round"] for e in entries if e["message_type"] == SECAGG_SETUP] == [0, 3]


def test_too_few_keyed_silos_fail_the_run_at_setup(tmp_path: Path, federation: list[Path]) -> None:
    drop = lambda node, message_type: node == 3 and message_type == SECAGG_SETUP  # noqa: E731
    config = RunConfig(num_rounds=1, min_silos=3, secure_aggregation=True, round_timeout=0.5)
    with pytest.raises(SecureAggregationError, match="only 2 silo.*threshold=3"):
        run_in_process(tmp_path / "run", config, federation, drop=drop)
    assert RunStore(tmp_path / "run").summary()["status"] == "failed"


@pytest.mark.parametrize("settings, message", [
    ({"secagg_threshold": 1}, "secagg_threshold must be 0"),
    ({"secagg_threshold": 2, "min_silos": 3}, "below min_silos .3.: .*set secagg_threshold ≥ 3"),
    ({"secagg_threshold": 4, "min_silos": 3}, "set expected_silos ≥ 4"),
    ({"secagg_clip": 0.0}, "secagg_clip.*clip range must be a finite number > 0"),
    ({"secagg_bits": 40}, "bits must be an integer in 1..32"),
    ({"secagg_bits": 32, "secagg_max_weight": 2**40}, "lower max_weight to ≤ 1431655765"),
])
def test_bad_secure_settings_are_refused_up_front(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{"min_silos": 3, "secure_aggregation": True, **settings})


def _share(config: Path, policy: str) -> None:
    (config.parent / "policy.toml").write_text(policy)
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))


@pytest.mark.parametrize("keep_in", [3, 1])
def test_scores_kept_in_by_policy_still_give_the_global_scores_as_secure_sums(
        tmp_path: Path, federation: list[Path], keep_in: int) -> None:
    """``share_metrics = "aggregate"``: no silo's own loss, accuracy or example count
    reaches the coordinator, yet every row has the global scores and the train loss (their
    secure sums) — the same numbers, to float error, as a run where every silo shares."""
    for config in federation[:keep_in]:
        _share(config, 'share_metrics = "aggregate"')
    view: list = []
    config = RunConfig(num_rounds=2, min_silos=3, secure_aggregation=True, seed=0, name="agg")
    assert run_in_process(tmp_path / "agg", config, federation,
                          observers=Observers(reply=view.append))["status"] == "completed"
    shared = make_federation(tmp_path / "shared")
    assert run_in_process(tmp_path / "all", config, shared)["status"] == "completed"

    kept = {c.parent.name for c in federation[:keep_in]}
    nodes = {m.metadata.src_node_id for m in view if SILO in m.content.config_records
             and m.content.config_records[SILO][T.SILO_NAME] in kept}
    personal = {T.EVAL_LOSS, T.EVAL_ACCURACY, T.EVAL_EXAMPLES, T.TRAIN_LOSS, T.NUM_EXAMPLES}
    seen_from_kept = [set(m.content.metric_records[METRICS].keys())
                      for m in view if METRICS in m.content.metric_records
                      and m.metadata.src_node_id in nodes]
    assert len(nodes) == keep_in and len(seen_from_kept) == 3 * keep_in  # 2 rounds + final
    assert all(not keys & personal for keys in seen_from_kept)
    # the kept-in silo's ledger holds exactly what left: no personal metric in the clear, its
    # scores only among the values it put into the secure sums
    entries = [json.loads(line) for line in
               (federation[0].parent / "workspace" / "egress.jsonl").read_text().splitlines()]
    masked = [e for e in entries if e["message_type"] in ("train", "evaluate")]
    assert len(masked) == 3 and all(e["masked"] and not set(e["metrics"]) & personal
                                    for e in masked)
    assert all(e["extra"]["aggregated"][0] > 0 for e in masked)  # its eval examples, summed

    agg, everyone = _rows(tmp_path / "agg"), _rows(tmp_path / "all")
    for r in (0, 1, 2):
        # model 0 is the same in both runs; later models differ by the runs' own (random)
        # quantization rounding, well under 0.1 %
        rel = 1e-6 if r == 0 else 1e-3
        assert agg[r]["global_scores"] == "secure_sum" and not kept & set(agg[r]["silos"])
        for key in ("global_loss", "global_accuracy"):
            assert agg[r][key] == pytest.approx(everyone[r][key], rel=rel), (r, key)
        if r:
            assert agg[r]["train_loss"] == pytest.approx(everyone[r]["train_loss"], rel=1e-3)
        # where every silo shares, the secure sum is the example-weighted mean of their scores
        scores = everyone[r]["silos"]
        n = sum(s["examples"] for s in scores.values())
        assert sorted(scores) == NAMES and everyone[r]["global_examples"] == n
        assert everyone[r]["global_loss"] == pytest.approx(
            sum(s["loss"] * s["examples"] for s in scores.values()) / n, rel=1e-6)
    final = agg[2]["final_evaluation"]["secure_aggregation"]
    assert final["round"] == 3 and final["contributors"] == NAMES

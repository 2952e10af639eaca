"""The round loop with silos whose replies parse but lie: a name another node holds, a NaN
initial model, a weight that overflows the sum, scores that overflow the means, an update
norm that would steer FedExP. Only the liar is refused, no round or file ever holds a
non-finite number. And with strategies whose code is broken (a plugin's bug): the round
fails with one StrategyError line, the model and the strategy's state are kept.

The real RoundLoop over an in-memory transport (each node's replies come from a function),
so a reply can be what no parser would let through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig
from coordinator.loop import RoundLoop
from coordinator.messages import Payload, Reply
from coordinator.preflight import check_run
from coordinator.rows import weighted_mean
from coordinator.run_store import RunStore, load_npz
from strategies.api import PerUpdateStrategy, RoundPlan, Strategy, SumStrategy
from xsilo.errors import ConfigError, DeploymentError, StrategyError
from xsilo.terms import PROXIMAL_MU, SERVER_ROUND, SiloInfo, SiloMetrics

MODEL = {"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)}
Answer = Callable[[str], Reply | None]


def honest(node: int, name: str, *, model: Mapping[str, np.ndarray] = MODEL,
           metrics: SiloMetrics | None = None) -> Answer:
    """A silo that joins as ``name`` with ``model`` and trains to a delta of 0.1."""
    def answer(kind: str) -> Reply:
        if kind == "query":
            return Reply(node, arrays={k: v.copy() for k, v in model.items()},
                         info=SiloInfo(name, {"digest": "d"}))
        scores = metrics or SiloMetrics(num_examples=10, train_loss=0.5, eval_loss=0.4,
                                        eval_accuracy=0.8, eval_examples=5)
        if kind == "train":
            return Reply(node, arrays={k: np.full_like(v, 0.1) for k, v in MODEL.items()},
                         metrics=scores)
        return Reply(node, metrics=SiloMetrics(eval_loss=scores.eval_loss,
                                               eval_accuracy=scores.eval_accuracy,
                                               eval_examples=scores.eval_examples))
    return answer


class Silos:
    """A Transport whose nodes answer at once, in node order."""

    def __init__(self, answers: Mapping[int, Answer]) -> None:
        self.answers = dict(answers)

    def node_ids(self) -> list[int]:
        return sorted(self.answers)

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        return self.node_ids()

    def exchange(self, message_type: str, payloads: Mapping[int, Payload], *, timeout: float,
                 group: str, on_reply=None, until=None, patience=None) -> dict[int, Reply]:
        out: dict[int, Reply] = {}
        for node in sorted(payloads):
            reply = self.answers[node](message_type)
            if reply is not None:
                out[node] = on_reply(node, reply) if on_reply else reply
        return out


def _run(tmp: Path, answers: Mapping[int, Answer], *, enrolled: Mapping[str, int] | None = None,
         built: Strategy | None = None, **settings: object) -> tuple[dict, RunStore]:
    """Run the loop; ``built``: the strategy object itself (default: the configured one)."""
    config = RunConfig(**{"num_rounds": 2, "min_silos": 2, "name": "liars", **settings})
    store = RunStore(tmp / "run")
    store.prepare()
    loop = RoundLoop(config, Silos(answers), store,
                     built or check_run(config, evaluator=False), enrolled=enrolled)
    return loop.run(), store


def _join(store: RunStore) -> dict:
    return next(e for e in store.events() if e["event"] == "join")


def _rows(store: RunStore) -> list[dict]:
    return [e for e in store.events() if e["event"] == "round"][1:]


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian"])
def test_two_nodes_joining_under_one_name_are_both_refused(tmp_path: Path,
                                                            strategy: str) -> None:
    summary, store = _run(tmp_path, {1: honest(1, "a"), 2: honest(2, "b"), 3: honest(3, "c"),
                                     4: honest(4, "a")}, strategy=strategy)
    assert summary["status"] == "completed" and summary["silos"] == ["b", "c"]
    refusal = _join(store)["refused"]["a"]
    assert refusal.startswith("ProtocolError[duplicate-name]") and "nodes 1, 4" in refusal
    assert all(r["contributors"] == ["b", "c"] for r in _rows(store))


def test_a_node_joining_under_another_silos_enrolled_name_is_refused(tmp_path: Path) -> None:
    """hospital "a" is offline; node 3, enrolled as "c", joins as "a": refused, not counted
    as "a" (no duplicate gives it away)."""
    enrolled = {"a": 1, "b": 2, "c": 3, "d": 4}
    summary, store = _run(tmp_path, {2: honest(2, "b"), 3: honest(3, "a"), 4: honest(4, "d")},
                          enrolled=enrolled)
    assert summary["status"] == "completed" and summary["silos"] == ["b", "d"]
    refusal = _join(store)["refused"]["a"]
    assert refusal.startswith("ProtocolError[identity]"), refusal
    assert "node 3 joins as silo 'a', whose enrolled key is node 1's" in refusal
    assert all(r["contributors"] == ["b", "d"] for r in _rows(store))


def test_a_node_joining_under_a_name_nobody_enrolled_is_refused_naming_its_own(
        tmp_path: Path) -> None:
    summary, store = _run(tmp_path, {1: honest(1, "a"), 2: honest(2, "b"), 3: honest(3, "z")},
                          enrolled={"a": 1, "b": 2, "c": 3})
    assert summary["silos"] == ["a", "b"]
    refusal = _join(store)["refused"]["z"]
    assert "node 3 was enrolled as silo 'c' but joins as 'z'" in refusal
    assert "name = 'c'" in refusal


def test_without_an_enrolment_record_names_are_not_checked(tmp_path: Path) -> None:
    """In process (or a SuperLink whose nodes xsilo did not register) there is no record."""
    summary, _ = _run(tmp_path, {1: honest(1, "a"), 2: honest(2, "b"), 3: honest(3, "z")},
                      enrolled={})
    assert summary["silos"] == ["a", "b", "z"]


def test_the_enrolment_record_is_written_whole_and_read_back_as_parsed(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.path.mkdir()
    assert store.enrolled() is None
    store.write_enrolled({"b": 2, "a": 1})
    assert store.enrolled() == {"a": 1, "b": 2}
    store.write_enrolled({})  # none known at this start: no stale record stays
    assert store.enrolled() is None
    for damaged in ('{"a": "1"}', "[1, 2]", "{trunc", '{"a": 1.0}'):
        (store.path / "enrolled.json").write_text(damaged)
        with pytest.raises(ConfigError, match="enrolled.json.*--resume"):
            store.enrolled()


def test_a_duplicate_name_that_leaves_too_few_silos_fails_the_run_naming_it(
        tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="only 1 silo.*nodes 1, 3 all join as silo 'a'"):
        _run(tmp_path, {1: honest(1, "a"), 2: honest(2, "b"), 3: honest(3, "a")})
    assert RunStore(tmp_path / "run").summary()["error"]["silo"] == "a"


@pytest.mark.parametrize("tensor, why", [
    (np.full(4, np.nan, np.float32), "holds NaN or Inf"),
    (np.full(4, np.inf, np.float64), "holds NaN or Inf"),
    (np.array(["x"] * 4), "not numeric"),
])
def test_an_unusable_initial_model_refuses_its_silo_and_another_silo_gives_the_model(
        tmp_path: Path, tensor: np.ndarray, why: str) -> None:
    poisoned = {"w": tensor, "b": np.zeros(1, np.float32)}  # "a" sorts first: its model would win
    summary, store = _run(tmp_path, {1: honest(1, "a", model=poisoned), 2: honest(2, "b"),
                                     3: honest(3, "c")})
    assert summary["status"] == "completed" and summary["silos"] == ["b", "c"]
    assert why in _join(store)["refused"]["a"]
    assert np.allclose(load_npz(store.path / "model.npz")["w"], 0.2)


def _overflowing(node: int, name: str) -> Answer:
    """A weight the parser would refuse (1e308), here past it, on an update of 10s."""
    liar = honest(node, name, metrics=SiloMetrics(num_examples=1e308, train_loss=0.5))

    def answer(kind: str) -> Reply | None:
        reply = liar(kind)
        if reply is not None and kind == "train":
            reply.arrays = {k: np.full_like(v, 10.0) for k, v in MODEL.items()}
        return reply
    return answer


def test_an_update_whose_weight_overflows_the_sum_is_rejected_alone(tmp_path: Path) -> None:
    summary, store = _run(tmp_path, {1: _overflowing(1, "a"), 2: honest(2, "b"),
                                     3: honest(3, "c")})
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    for row in _rows(store):
        assert row["contributors"] == ["b", "c"] and "overflow float64" in row["rejected"]["a"]
    assert np.allclose(load_npz(store.path / "model.npz")["w"], 0.2)


def test_a_non_finite_new_model_fails_the_round_and_is_never_saved(tmp_path: Path) -> None:
    """A strategy whose step gives Inf (a plugin's bug, or sums no bound caught)."""
    config = RunConfig(num_rounds=2, min_silos=2, name="liars")
    strategy = check_run(config, evaluator=False)
    strategy.step = lambda current, *_a, **_k: {  # type: ignore[method-assign]
        k: np.full_like(v, np.inf) for k, v in current.items()}
    store = RunStore(tmp_path / "run")
    store.prepare()
    silos = Silos({1: honest(1, "a"), 2: honest(2, "b"), 3: honest(3, "c")})
    summary = RoundLoop(config, silos, store, strategy).run()
    assert summary["status"] == "completed" and summary["rounds_failed"] == [1, 2]
    for row in _rows(store):
        assert row["status"] == "failed"
        assert "produced an unusable model: tensor 'w' contains NaN" in row["reason"]
    assert not list(store.checkpoints.glob("round-*.npz"))  # only rounds that worked are kept
    final = load_npz(store.path / "model.npz")
    assert all(np.array_equal(final[k], MODEL[k]) for k in MODEL)


def test_scores_that_overflow_leave_no_mean_and_the_summary_is_strict_json(
        tmp_path: Path) -> None:
    absurd = SiloMetrics(num_examples=10, train_loss=0.5, eval_loss=1e308,
                         eval_accuracy=1e308, eval_examples=1e308)
    summary, store = _run(tmp_path, {1: honest(1, "a", metrics=absurd), 2: honest(2, "b"),
                                     3: honest(3, "c")})
    assert summary["status"] == "completed"
    assert summary["final_accuracy"] is None and summary["final_loss"] is None

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a file that must be JSON")

    json.loads((store.path / "summary.json").read_text(), parse_constant=refuse)
    for line in store.metrics_path.read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def test_weighted_mean_is_none_when_it_is_not_finite() -> None:
    assert weighted_mean([(1e308, 1e308), (0.5, 1.0)]) is None
    assert weighted_mean([(1.0, 1e308), (1.0, 1e308)]) is None  # the total weight overflows
    assert weighted_mean([(0.5, 2.0), (1.0, 2.0)]) == 0.75
    assert weighted_mean([]) is None


def _three() -> dict[int, Answer]:
    return {1: honest(1, "a"), 2: honest(2, "b"), 3: honest(3, "c")}


def test_a_silos_own_update_norm_does_not_steer_fedexp_in_the_clear(tmp_path: Path) -> None:
    """In a clear round the coordinator holds every update: it computes ‖Δ‖² itself. Here the
    three updates are equal, so FedExP's η is 1 whatever silo "a" claims (1e30 would make
    it ~1e31)."""
    inflated = SiloMetrics(num_examples=10, train_loss=0.5, eval_loss=0.4, eval_accuracy=0.8,
                           eval_examples=5, update_sq_norm=1e30)
    results = {}
    for label, first in (("inflated", honest(1, "a", metrics=inflated)),
                         ("honest", honest(1, "a"))):
        summary, store = _run(tmp_path / label, {**_three(), 1: first}, strategy="fedexp")
        assert summary["rounds_failed"] == []
        rows = _rows(store)
        assert [r["server_step_size"] for r in rows] == [1.0, 1.0]
        norm = sum(float(np.float32(0.1)) ** 2 for _ in range(5))  # ‖0.1‖² over 5 elements
        assert [r["statistics"]["update_sq_norm"] for r in rows] == [pytest.approx(norm)] * 2
        results[label] = load_npz(store.path / "model.npz")
    assert all(np.array_equal(results["honest"][k], results["inflated"][k]) for k in MODEL)
    assert np.allclose(results["inflated"]["w"], 0.2)


class _Counting(SumStrategy):
    """FedAvg with a step counter in its state; its step fails (after counting) in round 2."""

    name = "counting"

    def __init__(self, error: Exception, params=None) -> None:
        super().__init__(params)
        self.steps, self.error = 0, error

    def step(self, current, delta_sum, total_weight, server_round):
        self.steps += 1
        if server_round == 2:
            raise self.error
        return {k: (v + delta_sum[k] / total_weight).astype(v.dtype) for k, v in current.items()}

    def state_dict(self):
        return {"steps": np.array(self.steps)}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])


class _FailingMedian(PerUpdateStrategy):
    name = "failing-median"

    def aggregate(self, current, updates, server_round):
        if server_round == 2:
            return None
        return {k: (v + np.median([u.delta[k] for u in updates], axis=0)).astype(v.dtype)
                for k, v in current.items()}


def _label(strategy: Strategy) -> str:
    cls = type(strategy)
    return f"strategy '{cls.name}' ({cls.__module__}:{cls.__qualname__})"


@pytest.mark.parametrize("strategy, reason", [
    (_Counting(ZeroDivisionError("division by zero")),
     "StrategyError: {label} raised ZeroDivisionError in step: division by zero"),
    (_Counting(StrategyError("counting: no momentum")), "StrategyError: counting: no momentum"),
    (_FailingMedian(), "StrategyError: {label} produced an unusable model: it is a NoneType"),
])
def test_a_strategy_that_fails_fails_its_round_and_keeps_model_and_state(
        tmp_path: Path, strategy: Strategy, reason: str) -> None:
    summary, store = _run(tmp_path, _three(), built=strategy, num_rounds=3)
    assert summary["status"] == "completed" and summary["rounds_failed"] == [2]
    rows = _rows(store)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["reason"].startswith(reason.format(label=_label(strategy)))
    assert sorted(p.name for p in store.checkpoints.glob("round-*.npz")) == [
        "round-0001.npz", "round-0003.npz"]  # the failed round is never checkpointed
    assert np.allclose(load_npz(store.path / "model.npz")["w"], 0.2)  # rounds 1 and 3 only
    if isinstance(strategy, _Counting):  # round 2's count was rolled back with its state
        assert load_npz(store.checkpoints / "round-0003.npz")["strategy/steps"] == 2


class _Neither(Strategy):
    name = "neither"


class _StrayPlan(SumStrategy):
    name = "stray-plan"

    def configure_round(self, server_round, silos):
        return RoundPlan(silos=(*silos, 99), config={})

    def step(self, current, delta_sum, total_weight, server_round):
        return dict(current)


class _Stateful(_StrayPlan):
    """A state_dict a checkpoint cannot hold: ``state``."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def configure_round(self, server_round, silos):
        return RoundPlan(silos=tuple(silos), config={})

    def state_dict(self):
        return dict(self.state)


class _Configured(_StrayPlan):
    """A plan whose round config is ``config``."""

    def __init__(self, config):
        self.config = config

    def configure_round(self, server_round, silos):
        return RoundPlan(silos=tuple(silos), config=dict(self.config))


@pytest.mark.parametrize("strategy, words", [
    (_Neither(), "is not a PerUpdateStrategy"),
    (_StrayPlan(), r"from configure_round; it must return a RoundPlan whose silos are among"),
    (_Configured({SERVER_ROUND: 7, "x": 1}),
     rf"puts \['{SERVER_ROUND}'\] in its round config, which are xsilo's own term keys"),
    (_Configured({PROXIMAL_MU: -1.0}), r"sends proximal term -1.0; it must be a finite"),
    (_Configured({PROXIMAL_MU: True}), r"sends proximal term True"),
    (_Configured({f"k{i}": i for i in range(65)}), r"puts 65 values in its round config"),
    (_Configured({"note": "x" * 300}), r"text of at most 256 characters"),
    (_Stateful({"m": [1, [2, 3]]}), r"raised ValueError in state_dict"),
    (_Stateful({1: np.zeros(2)}), r"returned 1: .* from state_dict; its state must map text"),
    (_Stateful({"m": None}), r"returned 'm': None from state_dict"),
    (_Stateful({"m": np.array([object()])}), r"from state_dict"),
])
def test_a_strategy_object_the_loop_cannot_use_fails_the_run_typed(
        tmp_path: Path, strategy: Strategy, words: str) -> None:
    with pytest.raises(StrategyError, match=words):
        _run(tmp_path, _three(), built=strategy)
    error = RunStore(tmp_path / "run").summary()["error"]
    assert error["type"] == "StrategyError" and error["phase"] == "round"

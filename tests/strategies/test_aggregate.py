"""validate_update, SumAccumulator and aggregate_updates."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.aggregate import SumAccumulator, aggregate_updates, validate_update
from strategies.api import SumStrategy, Update
from strategies.builtin import FedAvg, FedMedian
from xsilo.errors import StrategyError, UpdateRejected

REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def _delta(fill: float = 1.0) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, fill) for k, v in REF.items()}


@pytest.mark.parametrize("delta, words", [
    ({"w": np.zeros((3, 2), np.float32)}, ["silo 'a'", "'b'", "missing"]),
    ({**_delta(), "extra": np.zeros(1)}, ["'extra'", "not part of the model"]),
    ({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2)}, ["'w'", "shape (2, 3)", "(3, 2)"]),
    ({"w": np.full((3, 2), np.nan, np.float32), "b": np.zeros(2)}, ["'w'", "NaN or Inf"]),
    ({"w": np.zeros((3, 2)), "b": np.array([0.0, -np.inf])}, ["'b'", "NaN or Inf"]),
    ({"w": np.zeros((3, 2)), "b": [0.0, 1.0]}, ["'b'", "not a numpy array"]),
    ({"w": np.zeros((3, 2)), "b": np.array(["x", "y"])}, ["'b'", "non-numeric"]),
])
def test_validate_update_names_silo_tensor_and_problem(delta, words, caplog) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(UpdateRejected) as err:
        validate_update(REF, delta, silo="a")
    for word in words:
        assert word in str(err.value)
    assert "rejected update from silo a" in caplog.text


def test_validate_accepts_good_update() -> None:
    validate_update(REF, _delta(), silo="a")
    validate_update(REF, {"w": np.zeros((3, 2), np.int64), "b": np.zeros(2)}, silo="a")


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_accumulator_rejects_bad_weight(weight: float) -> None:
    acc = SumAccumulator(REF)
    with pytest.raises(UpdateRejected, match="weight"):
        acc.add(Update("x", _delta(), weight))
    assert acc.count == 0


def test_rejected_update_leaves_sums_untouched() -> None:
    acc = SumAccumulator(REF)
    acc.add(Update("a", _delta(1.0), 2.0))
    bad = _delta(5.0)
    bad["b"][-1] = np.nan  # the last tensor is bad: nothing before it may be folded either
    with pytest.raises(UpdateRejected):
        acc.add(Update("b", bad, 3.0))
    with pytest.raises(UpdateRejected, match="same silo"):
        acc.add(Update("a", _delta(1.0), 2.0))
    assert (acc.count, acc.total_weight, acc.silos) == (1, 2.0, ["a"])
    np.testing.assert_array_equal(acc.result()["w"], np.full((3, 2), 2.0))
    np.testing.assert_array_equal(acc.result()["b"], np.full(2, 2.0))


@pytest.mark.parametrize("weight, value", [
    (1e308, 10.0),   # one update's w·Δ overflows by itself
    (9e307, 1.0),    # each is finite, the second would take the sums (and Σw) past float64
    (1e300, -1e10),  # negative values count by their size
])
def test_an_update_that_would_overflow_the_sums_is_rejected_alone(weight: float,
                                                                  value: float) -> None:
    acc = SumAccumulator(REF)
    acc.add(Update("a", _delta(1.0), 9e307 if value == 1.0 else 2.0))
    with pytest.raises(UpdateRejected, match="overflow float64"):
        acc.add(Update("b", _delta(value), weight))
    acc.add(Update("c", _delta(1.0), 1.0))  # the round goes on with the others
    assert acc.silos == ["a", "c"]
    assert all(np.isfinite(v).all() for v in acc.result().values())


def test_result_is_float64_read_only_and_empty_round_refused() -> None:
    acc = SumAccumulator(REF)
    with pytest.raises(StrategyError, match="no update"):
        acc.result()
    acc.add(Update("a", _delta(), 1.0))
    out = acc.result()
    assert all(v.dtype == np.float64 and not v.flags.writeable for v in out.values())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(0.01, 100.0)), min_size=1, max_size=8))
def test_accumulator_equals_direct_weighted_sum(items) -> None:
    acc = SumAccumulator(REF)
    for i, (fill, w) in enumerate(items):
        acc.add(Update(str(i), _delta(fill), w))
    expect = sum(np.float64(np.float32(f)) * w for f, w in items)
    np.testing.assert_allclose(acc.result()["w"], expect, rtol=1e-12, atol=1e-9)
    assert acc.total_weight == pytest.approx(sum(w for _, w in items))


def test_chunked_fold_on_tensor_larger_than_chunk(monkeypatch) -> None:
    import strategies.aggregate as agg
    monkeypatch.setattr(agg, "CHUNK", 7)  # our own module constant, to cross chunk borders
    ref = {"x": np.zeros(50, np.float32)}
    acc = SumAccumulator(ref)
    d = np.arange(50, dtype=np.float32)
    acc.add(Update("a", {"x": d}, 2.0))
    acc.add(Update("b", {"x": d}, 0.5))
    np.testing.assert_allclose(acc.result()["x"], 2.5 * d)


def test_aggregate_updates_both_kinds_and_empty() -> None:
    ups = [Update("a", _delta(1.0), 1.0), Update("b", _delta(4.0), 3.0)]
    avg = aggregate_updates(FedAvg(), REF, ups, 1)
    np.testing.assert_allclose(avg["w"], 3.25)
    assert avg["w"].dtype == np.float32
    med = aggregate_updates(FedMedian(), REF, ups + [Update("c", _delta(2.0), 1.0)], 1)
    np.testing.assert_allclose(med["b"], 2.0)
    with pytest.raises(StrategyError, match="no updates"):
        aggregate_updates(FedAvg(), REF, [], 1)


def test_per_update_strategy_never_sees_bad_update() -> None:
    class Spy(FedMedian):
        called = False

        def aggregate(self, current, updates, server_round):
            Spy.called = True
            return super().aggregate(current, updates, server_round)

    bad = Update("bad", {"w": np.zeros((3, 2), np.float32)}, 1.0)
    with pytest.raises(UpdateRejected, match="'bad'"):
        aggregate_updates(Spy(), REF, [Update("a", _delta(), 1.0), bad], 1)
    assert not Spy.called


def test_nonfinite_result_is_refused() -> None:
    class Exploding(SumStrategy):
        name = "exploding"

        def step(self, current, delta_sum, total_weight, server_round):
            return {k: np.full_like(v, np.inf) for k, v in current.items()}

    with pytest.raises(StrategyError, match="model is kept unchanged"):
        aggregate_updates(Exploding(), REF, [Update("a", _delta(), 1.0)], 1)


def test_integer_tensors_are_rounded() -> None:
    ref = {"count": np.array([10], np.int64)}
    out = aggregate_updates(FedAvg(), ref, [Update("a", {"count": np.array([3])}, 1.0),
                                            Update("b", {"count": np.array([4])}, 1.0)], 1)
    assert out["count"].dtype == np.int64 and out["count"][0] == 14

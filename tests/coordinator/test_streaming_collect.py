"""Streaming collection in the clear round: each reply is validated and folded as it arrives,
and nothing of it is kept (O(model size) at the coordinator); bad updates are rejected per
silo in a real run and never reach the model."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from coordinator.collect import RoundCollector
from coordinator.config import RunConfig
from coordinator.messages import Reply, SiloError
from coordinator.run_store import RunStore, load_npz
from silo_client.silo import Silo
from strategies.builtin import FedAvg, FedMedian
from strategies.dp.central import ClipAccumulator, clip_and_sum
from federation.local import run_in_process
from xsilo.terms import SiloMetrics

NAMES = {1: "a", 2: "b", 3: "c"}


def _current() -> dict[str, np.ndarray]:
    return {"w": np.zeros(1000, np.float32), "b": np.zeros(3, np.float32)}


def _feed(collector: RoundCollector) -> list[weakref.ref]:
    """Three replies, each made, accepted and dropped; weak references to their arrays."""
    refs = []
    for node in (1, 2, 3):
        delta = {"w": np.full(1000, float(node), np.float32), "b": np.full(3, 1.0, np.float32)}
        refs.append(weakref.ref(delta["w"]))
        kept = collector.accept(node, Reply(node, arrays=delta,
                                            metrics=SiloMetrics(num_examples=node)))
        assert kept.arrays == {} and kept.metrics.num_examples == node
        del delta, kept
    gc.collect()
    return refs


def test_sum_strategy_keeps_no_reply_arrays_and_sums_exactly() -> None:
    collector = RoundCollector(FedAvg(), _current(), NAMES)
    refs = _feed(collector)
    assert all(r() is None for r in refs), "a reply's arrays outlived its fold"
    assert collector.updates == [] and collector.contributors == ["a", "b", "c"]
    assert collector.sum is not None and collector.sum.total_weight == 6.0
    np.testing.assert_array_equal(collector.sum.result()["w"], np.full(1000, 1 + 4 + 9.0))


def test_per_update_strategy_keeps_the_updates_it_needs() -> None:
    collector = RoundCollector(FedMedian(), _current(), NAMES)
    refs = _feed(collector)
    assert collector.sum is None and len(collector.updates) == 3
    assert all(r() is not None for r in refs)


def test_central_dp_clips_and_folds_as_replies_arrive() -> None:
    clip = ClipAccumulator(clip_norm=1.0, max_weight=2.0)
    collector = RoundCollector(FedAvg(), _current(), NAMES, clip=clip)
    refs = _feed(collector)
    assert all(r() is None for r in refs) and collector.updates == []
    deltas = [{"w": np.full(1000, float(n), np.float32), "b": np.full(3, 1.0, np.float32)}
              for n in (1, 2, 3)]
    expected = clip_and_sum(deltas, [1.0, 2.0, 3.0], clip_norm=1.0, max_weight=2.0)
    got = clip.result()
    for k in expected.total:
        np.testing.assert_allclose(got.total[k], expected.total[k], rtol=1e-12)
    assert got.norms == expected.norms and got.unclipped == expected.unclipped


@pytest.mark.parametrize("bad, why", [
    ({"w": np.full(1000, np.nan, np.float32), "b": np.zeros(3, np.float32)}, "NaN or Inf"),
    ({"w": np.zeros(999, np.float32), "b": np.zeros(3, np.float32)}, "shape"),
    ({"w": np.zeros(1000, np.float32)}, "missing"),
])
def test_bad_update_is_rejected_and_the_sum_untouched(bad: dict, why: str) -> None:
    collector = RoundCollector(FedAvg(), _current(), NAMES)
    collector.accept(1, Reply(1, arrays={"w": np.ones(1000, np.float32),
                                         "b": np.ones(3, np.float32)},
                              metrics=SiloMetrics(num_examples=2)))
    collector.accept(2, Reply(2, arrays=bad, metrics=SiloMetrics(num_examples=5)))
    collector.accept(3, Reply(3, error=SiloError("PolicyRefusal", "max_rounds", "too many")))
    assert collector.contributors == ["a"]
    assert why in collector.rejected["b"] and "max_rounds" in collector.rejected["c"]
    assert collector.sum is not None and collector.sum.total_weight == 2.0
    np.testing.assert_array_equal(collector.sum.result()["w"], np.full(1000, 2.0))


def test_nan_update_in_a_real_run_is_rejected_per_silo(tmp_path: Path, federation: list[Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    original = Silo.train

    def train(self, global_params, config, **kw):  # test-only: hospital-b's update is poisoned
        result = original(self, global_params, config, **kw)
        if self.config.name == "hospital-b":
            for v in result.delta.values():
                v[...] = np.nan
        return result

    monkeypatch.setattr(Silo, "train", train)
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, RunConfig(num_rounds=2, min_silos=2, name="nan"),
                             federation)
    assert summary["status"] == "completed"
    rows = [e for e in RunStore(run_dir).events() if e["event"] == "round" and e["round"] >= 1]
    assert len(rows) == 2
    for row in rows:
        assert "NaN or Inf" in row["rejected"]["hospital-b"]
        assert row["contributors"] == ["hospital-a", "hospital-c"]
    model = load_npz(run_dir / "model.npz")
    assert all(np.isfinite(v).all() for v in model.values())
    assert summary["final_accuracy"] > 0.8


def test_secure_round_folds_each_masked_input_as_it_arrives(
        tmp_path: Path, federation: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under secure aggregation too, each masked input is folded into the running modular
    sum as soon as it is decoded: when a vector is folded it is the only one alive (holding
    every reply first would have all three decoded at the first fold)."""
    import coordinator.secure as secure
    import coordinator.transport as transport

    decoded: list[weakref.ref] = []
    alive_at_fold: list[int] = []
    to_reply, receive_masked = transport._to_reply, secure.receive_masked

    def watch_decode(node, msg, **kw):  # test-only: every masked vector the coordinator decodes
        reply = to_reply(node, msg, **kw)
        if reply.secagg is not None and "masked" in reply.secagg:
            decoded.append(weakref.ref(reply.secagg["masked"]))
        return reply

    def watch_fold(state, msg):
        gc.collect()
        alive_at_fold.append(sum(r() is not None for r in decoded))
        return receive_masked(state, msg)

    monkeypatch.setattr(transport, "_to_reply", watch_decode)
    monkeypatch.setattr(secure, "receive_masked", watch_fold)
    summary = run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3,
                                                         secure_aggregation=True), federation)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    # 2 rounds and the final evaluation, 3 silos each
    assert len(decoded) == 9 and alive_at_fold == [1] * 9, alive_at_fold

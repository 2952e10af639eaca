"""One silo sends garbage or speaks for another: the run goes on without it, naming it.

The real ServerApp and ClientApp in one process; hospital-a's replies are rewritten on the
way back (a hostile or broken silo), the other two are honest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord

from coordinator.config import RunConfig, write_run_config
from coordinator.local_grid import LocalGrid
from coordinator.run_store import RunStore
from coordinator.server_app import run_coordinator
from silo_client.client_app import app as client_app
from xsilo import terms as T
from xsilo.protocol import METRICS, SECAGG, SILO

Rewrite = Callable[[Message], None]


def _run(tmp: Path, silos: list[Path], config: RunConfig, rewrite: dict[str, Rewrite]) -> dict:
    """Run with hospital-a's (node 1's) replies of the given message types rewritten."""
    def client(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        change = rewrite.get(msg.metadata.message_type)
        if context.node_id == 1 and change is not None and not reply.has_error():
            change(reply)
        return reply

    run_dir = tmp / "run"
    run_dir.mkdir()
    write_run_config(run_dir / "config.toml", config)
    grid = LocalGrid(client, {i + 1: {"silo-config": str(p.resolve())}
                              for i, p in enumerate(silos)})
    return run_coordinator(grid, str(run_dir), poll_interval=0.0)


def _rounds(tmp: Path) -> list[dict]:
    return [e for e in RunStore(tmp / "run").events() if e["event"] == "round"][1:]


def _set(record: str, key: str, value: object) -> Rewrite:
    def change(reply: Message) -> None:
        reply.content[record] = {SECAGG: ConfigRecord, METRICS: MetricRecord,
                                 SILO: ConfigRecord}[record]({**reply.content[record], key: value})
    return change


@pytest.mark.parametrize("rewrite, why", [
    ({"train": _set(SECAGG, "kind", ["secagg/masked_input"])}, "not a secure-aggregation message"),
    ({"train": _set(SECAGG, "silo", 1)}, "names silo 1, but its roster index is 0"),
    ({"train": _set(SECAGG, "round", 2**64)}, "field 'round'"),
    ({"train": _set(METRICS, T.NUM_EXAMPLES, float("nan"))}, "silo metrics"),
    ({"train.unmask": _set(SECAGG, "silo", 2)}, "names silo 2, but its roster index is 0"),
])
def test_a_secure_run_goes_on_without_a_silo_that_sends_garbage(
        tmp_path: Path, federation: list[Path], rewrite: dict[str, Rewrite], why: str) -> None:
    config = RunConfig(num_rounds=2, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_threshold=2, name="hostile")
    summary = _run(tmp_path, federation, config, rewrite)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    for row in _rounds(tmp_path):
        assert why in row["rejected"]["hospital-a"], row["rejected"]
        assert row["status"] == "ok"
        if "train" in rewrite:  # its masked input never reached the sum
            assert row["contributors"] == ["hospital-b", "hospital-c"]


@pytest.mark.parametrize("rewrite, why", [
    ({"train": _set(METRICS, T.NUM_EXAMPLES, float("inf"))}, "silo metrics"),
    ({"train": _set(METRICS, T.TRAIN_LOSS, -1e400)}, "silo metrics"),
    ({"query": _set(SILO, T.SCHEMA_FINGERPRINT, "[not an object]")}, "join reply"),
    ({"query": _set(SILO, T.SCHEMA_FINGERPRINT, '{"digest": ["x"]}')}, "digest"),
    ({"query": _set(SILO, T.SCHEMA_FINGERPRINT, '{"digest": {}}')}, "digest"),
    ({"train": _set(METRICS, T.NUM_EXAMPLES, 1e308)}, "a count ≤ 2**53"),
    ({"train": _set(METRICS, T.EVAL_ACCURACY, 1e308)}, "a fraction in [0, 1]"),
    ({"train": _set(METRICS, T.EVAL_EXAMPLES, 1e308)}, "a count ≤ 2**53"),
])
def test_a_clear_run_goes_on_without_a_silo_that_sends_garbage(
        tmp_path: Path, federation: list[Path], rewrite: dict[str, Rewrite], why: str) -> None:
    summary = _run(tmp_path, federation, RunConfig(num_rounds=2, min_silos=2, name="hostile"),
                   rewrite)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    if "query" in rewrite:  # refused at join: never a member
        assert summary["silos"] == ["hospital-b", "hospital-c"]
        join = next(e for e in RunStore(tmp_path / "run").events() if e["event"] == "join")
        assert why in join["refused"]["hospital-a"]  # named by the one field it got right
        return
    for row in _rounds(tmp_path):
        assert why in row["rejected"]["hospital-a"]
        assert row["contributors"] == ["hospital-b", "hospital-c"]

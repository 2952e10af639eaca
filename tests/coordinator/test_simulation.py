"""xsilo on Flower's Ray simulation engine (`run_simulation`): the real ServerApp and
ClientApp, each silo's ClientApp in a Ray actor, secure aggregation on."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.messages import Observers
from coordinator.config import RunConfig
from coordinator.run_store import RunStore
from federation.local import run_in_simulation
from xsilo.protocol import DELTA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]  # starts Ray: seconds, not ms


def test_secure_run_on_ray_simulation_completes_and_improves(
        tmp_path: Path, federation: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    seen: list = []  # the coordinator's view
    run_dir = tmp_path / "run"
    summary = run_in_simulation(run_dir, RunConfig(num_rounds=2, min_silos=3, expected_silos=3,
                                                   secure_aggregation=True, name="sim"),
                                federation, observers=Observers(reply=seen.append))
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    rows = [e for e in RunStore(run_dir).events() if e["event"] == "round"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["contributors"] == ["hospital-a", "hospital-b", "hospital-c"] for r in rows[1:])
    assert all("secure_aggregation" in r for r in rows[1:])
    assert rows[-1]["global_accuracy"] > rows[0]["global_accuracy"] + 0.2
    # every reply the coordinator got went through Ray; none carried a clear update
    assert seen and not any(DELTA in m.content.array_records for m in seen
                            if not m.has_error())


def test_a_silo_config_per_simulated_supernode_is_required(tmp_path: Path) -> None:
    from flwr.app import Context, RecordDict

    from silo_client.client_app import _BindSimulatedSilo
    from xsilo.errors import ConfigError

    bind = _BindSimulatedSilo([str(tmp_path / "a.toml")])
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
    seen = bind(None, context, lambda m, c: c.node_config["silo-config"])  # type: ignore[arg-type]
    assert seen == str(tmp_path / "a.toml")
    context.node_config = {"partition-id": 1}
    with pytest.raises(ConfigError, match="partition 1 has no silo config"):
        bind(None, context, lambda m, c: m)  # type: ignore[arg-type]

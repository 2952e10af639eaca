"""A silo trusts no number it can check itself: it counts the peers it masks with, and it
refuses a threshold that permits split-view recovery, whatever the coordinator states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message

from coordinator.config import RunConfig, write_run_config
from coordinator.local_grid import LocalGrid
from coordinator.run_store import RunStore
from coordinator.secure import SecureAggregation
from coordinator.server_app import run_coordinator
from federation.local import run_in_process
from silo_client.client_app import app as client_app
from silo_client.config import load_silo_config
from xsilo import terms as T
from xsilo.errors import ConfigError, SecureAggregationError
from xsilo.protocol import CONFIG


def _policy(silo: Path, text: str) -> None:
    (silo.parent / "policy.toml").write_text(text)
    silo.write_text(silo.read_text() + '\n[policy]\nfile = "policy.toml"\n')
    assert load_silo_config(silo).policy_file == (silo.parent / "policy.toml").resolve()


def test_a_silo_counts_the_peers_it_masks_with_not_the_stated_participants(
        tmp_path: Path, federation: list[Path]) -> None:
    """hospital-c never joins; the coordinator tells hospital-a that 3 silos take part, but
    its mask request lists 2: hospital-a (min_silos_per_round = 3) refuses to mask."""
    _policy(federation[0], "min_silos_per_round = 3\n")
    (federation[2].parent / "data" / "train.csv").unlink()  # hospital-c refuses at join

    def client(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == "train" and context.node_id == 1:
            config = dict(msg.content.config_records[CONFIG])
            msg.content[CONFIG] = ConfigRecord({**config, T.PARTICIPANTS: 3})  # a lie
        return client_app(msg, context)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_config(run_dir / "config.toml", RunConfig(
        num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True, name="count"))
    grid = LocalGrid(client, {i + 1: {"silo-config": str(p.resolve())}
                              for i, p in enumerate(federation)})
    summary = run_coordinator(grid, str(run_dir), poll_interval=0.0)
    assert summary["silos"] == ["hospital-a", "hospital-b"]
    row = [e for e in RunStore(run_dir).events() if e["event"] == "round"][1]
    refusal = row["rejected"]["hospital-a"]
    assert refusal.startswith("PolicyRefusal[min_silos_per_round]"), refusal
    assert "would mask with 2 silo(s)" in refusal and "minimum 3" in refusal


def test_the_coordinator_refuses_a_minority_threshold_before_any_silo_is_asked() -> None:
    with pytest.raises(ConfigError, match="secagg_threshold .2. is not a strict majority of "
                                          "the 4 silos"):
        RunConfig(min_silos=2, expected_silos=4, secure_aggregation=True, secagg_threshold=2)
    config = RunConfig(min_silos=2, expected_silos=2, secure_aggregation=True, secagg_threshold=2)
    with pytest.raises(SecureAggregationError, match="secagg_threshold 2 is not a strict "
                                                     "majority of the 4 silos that joined"):
        SecureAggregation(config, transport=None, nodes=[1, 2, 3, 4],  # type: ignore[arg-type]
                          template={"w": np.zeros(3)})


def test_a_site_can_demand_a_larger_threshold(tmp_path: Path, federation: list[Path]) -> None:
    """t = 2 of 3 is a majority, but hospital-a's policy asks for t > 0.7 · n."""
    _policy(federation[0], "secagg_threshold_fraction = 0.7\n")
    summary = run_in_process(tmp_path / "run", RunConfig(
        num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
        secagg_threshold=2, name="fraction"), federation)
    setup = next(e for e in RunStore(tmp_path / "run").events()
                 if e["event"] == "secure_aggregation_setup")
    why = setup["not_keyed"]["hospital-a"]
    assert "t=2 of n=3 silos is not more than 0.7 of them" in why, why
    assert summary["status"] == "completed"  # the others go on (t = 2 of them keyed)


def test_a_secure_run_states_its_share_traffic_and_warns_when_it_is_large(caplog) -> None:
    """Dealing grows as n³ (docs/secure-aggregation.md, 'How far it scales'): the run's
    setup event states what the coordinator will hold, and a large roster is warned of."""
    config = RunConfig(min_silos=2, expected_silos=2, secure_aggregation=True)
    small = SecureAggregation(config, transport=None, nodes=list(range(10)),  # type: ignore[arg-type]
                              template={"w": np.zeros(3)})
    assert small.settings()["share_bytes_held_per_round"] == 10 * (10 * (33 * 10 + 28)
                                                                   + 16 * 10 * 10)
    assert "How far it scales" not in caplog.text
    auto = SecureAggregation(config, transport=None, nodes=list(range(300)),  # type: ignore[arg-type]
                             template={"w": np.zeros(3)})
    assert auto.settings()["round_keys"] is True  # "auto" from 200 silos: two secrets each
    assert auto.settings()["share_bytes_held_per_round"] == 300 * 300 * (2 * (33 + 16) + 28)
    assert "How far it scales" not in caplog.text
    off = RunConfig(min_silos=2, expected_silos=2, secure_aggregation=True,
                    secagg_round_keys="off")
    big = SecureAggregation(off, transport=None, nodes=list(range(300)),  # type: ignore[arg-type]
                            template={"w": np.zeros(3)})
    assert big.settings()["share_bytes_held_per_round"] > 1 << 30
    assert "secure aggregation with 300 silos: the coordinator will hold about 1.3 GB" in caplog.text
    assert 'secagg_round_keys = "on"' in caplog.text

"""Compressed clear rounds in the real loop (in process): each method trains, the bytes that
arrive per silo are the compressed sizes, the ledger holds what left, top-k's residual stays
at the silo, a site policy can refuse a method, and a silo that sends another form than the
run asked for is rejected with the reason."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig
from coordinator.run_store import RunStore
from federation.demo_data import demo_schema
from federation.local import run_in_process
from silo_client import client_app
from silo_client.compress import RESIDUALS, residual_path
from silo_client.config import write_silo_config
from strategies.compression import CHUNK, Compressed
from xsilo import terms as T
from xsilo.errors import ConfigError

NAMES = ["hospital-a", "hospital-b", "hospital-c"]
PARAMS = 31  # the demo's logistic regression: 30 weights and an intercept


def _rows(run_dir: Path) -> dict[int, dict]:
    return {e["round"]: e for e in RunStore(run_dir).events() if e["event"] == "round"}


def _ledger(config: Path) -> list[dict]:
    path = config.parent / "workspace" / "egress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method, fraction, wire", [
    ("q8", 0.01, 32 + 8),                           # a level byte each (whole groups of 8)
    #                                                 and one chunk's range (lo, hi)
    ("q4", 0.01, 16 + 8),                           # two levels per byte
    ("topk", 0.1, 4 * 8),                           # 4 of 31: uint32 index + float32 value
    ("prune", 0.1, 4 * 4),                          # 4 values, no indices
])
def test_each_method_trains_and_only_its_bytes_arrive(tmp_path: Path, federation: list[Path],
                                                      method: str, fraction: float,
                                                      wire: int) -> None:
    config = RunConfig(num_rounds=2, min_silos=3, seed=0, compression=method,
                       compression_fraction=fraction, name=method)
    summary = run_in_process(tmp_path / "run", config, federation)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    rows = _rows(tmp_path / "run")
    for r in (1, 2):
        assert rows[r]["contributors"] == NAMES and rows[r]["rejected"] == {}
        by_silo = rows[r]["bytes_by_silo"]
        assert sorted(by_silo) == NAMES
        # each silo received the float64 model and sent only the compressed update
        assert all(v == {"sent": 8 * PARAMS, "received": wire} for v in by_silo.values()), by_silo
        assert rows[r]["bytes"]["received"] == 3 * wire
    entry = [e for e in _ledger(federation[0]) if e["message_type"] == "train"][-1]
    shown = {name: t["shape"] for name, t in entry["tensors"].items()}
    expected = {"q8": {"levels": [32], "lo": [1], "hi": [1]},
                "q4": {"levels": [16], "lo": [1], "hi": [1]},
                "topk": {"indices": [4], "values": [4]}, "prune": {"values": [4]}}[method]
    assert shown == expected and entry["extra"][T.COMPRESSION] == method


def test_quantized_rounds_learn_like_uncompressed_ones(tmp_path: Path, federation: list[Path]
                                                       ) -> None:
    base = {"num_rounds": 3, "min_silos": 3, "seed": 0}
    plain = run_in_process(tmp_path / "plain", RunConfig(**base), federation)
    q8 = run_in_process(tmp_path / "q8", RunConfig(**base, compression="q8"), federation)
    assert q8["final_accuracy"] >= plain["final_accuracy"] - 0.02
    assert q8["final_loss"] == pytest.approx(plain["final_loss"], rel=0.1)


def test_top_k_keeps_its_residual_at_the_silo_owner_only(tmp_path: Path, federation: list[Path]
                                                         ) -> None:
    config = RunConfig(num_rounds=2, min_silos=3, compression="topk", compression_fraction=0.1)
    assert run_in_process(tmp_path / "run", config, federation)["status"] == "completed"
    folder = federation[0].parent / "workspace" / RESIDUALS
    [kept] = list(folder.iterdir())
    residual = np.load(kept)
    assert residual.shape == (PARAMS,) and residual.dtype == np.float32
    # what was not sent waits for later rounds: all but the 4 values the last round sent
    assert np.count_nonzero(residual) == PARAMS - 4
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # named by a hash of the run's token (the token itself never lands on disk)
    assert kept.parent == residual_path(folder.parent, "any").parent
    assert kept.suffix == ".npy" and len(kept.stem) == 32 and int(kept.stem, 16) >= 0


def test_a_site_policy_can_refuse_a_method(tmp_path: Path, federation: list[Path]) -> None:
    site = federation[0]
    (site.parent / "policy.toml").write_text('allowed_compression = ["none", "q8"]\n')
    write_silo_config(site, name=site.parent.name, train=site.parent / "data/train.csv",
                      test=site.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))
    config = RunConfig(num_rounds=1, min_silos=2, compression="topk")
    assert run_in_process(tmp_path / "run", config, federation)["status"] == "completed"
    join = next(e for e in RunStore(tmp_path / "run").events() if e["event"] == "join")
    assert join["refused"]["hospital-a"].startswith("PolicyRefusal[allowed_compression]")
    allowed = RunConfig(num_rounds=1, min_silos=3, compression="q8")
    assert run_in_process(tmp_path / "ok", allowed, federation)["rounds_failed"] == []


def test_a_silo_sending_another_form_is_rejected_with_the_reason(
        tmp_path: Path, federation: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real = client_app.compress_update

    def rogue(delta, model, terms, *, workspace):  # hospital-c answers top-k to a q8 run
        out = real(delta, model, terms, workspace=workspace)
        if workspace.parent.name == "hospital-c":
            return Compressed("topk", out.length, {"indices": np.array([0], np.uint32),
                                                   "values": np.array([1e3], np.float32)})
        return out

    monkeypatch.setattr(client_app, "compress_update", rogue)
    config = RunConfig(num_rounds=1, min_silos=2, compression="q8")
    assert run_in_process(tmp_path / "run", config, federation)["rounds_failed"] == []
    row = _rows(tmp_path / "run")[1]
    assert row["contributors"] == NAMES[:2]
    assert "sent a topk update; the run asked for q8" in row["rejected"]["hospital-c"]


def test_compression_settings_are_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="one of none, q8, q4, topk, prune"):
        RunConfig(compression="gzip")
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        RunConfig(compression="topk", compression_fraction=1.5)
    with pytest.raises(ConfigError, match="lower secagg_bits"):
        RunConfig(compression="q8", secure_aggregation=True, min_silos=3)
    assert CHUNK >= PARAMS  # the q8 / q4 byte counts above assume one chunk

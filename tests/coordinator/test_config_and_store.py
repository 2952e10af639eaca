"""Run configuration validation, the run store's atomic files, the coordinator home."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.config import RunConfig, load_run_config, write_run_config
from coordinator.home import CoordinatorHome
from coordinator.run_store import RunStore, load_npz
from xsilo.errors import ConfigError


@pytest.mark.parametrize("values, needle", [
    ({"num_rounds": 0}, "num_rounds must be an integer ≥ 1"),
    ({"num_rounds": True}, "num_rounds"),
    ({"min_silos": 3, "expected_silos": 2}, "expected_silos (2) is below min_silos (3)"),
    ({"round_timeout": -1.0}, "round_timeout must be a positive number"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"strategy": ""}, "strategy must be a strategy name"),
    ({"rounds": 3}, "unknown run setting(s) rounds; accepted:"),
])
def test_bad_run_settings_are_named(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    assert needle in str(err.value)


def test_run_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = RunConfig(num_rounds=7, strategy="fedprox", strategy_params={"proximal_mu": 0.1},
                       min_silos=3, round_timeout=30, name="x")
    write_run_config(tmp_path / "config.toml", config)
    assert load_run_config(tmp_path) == config


def test_missing_or_broken_config_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path)
    (tmp_path / "config.toml").write_text("[run\nnum_rounds = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(tmp_path)
    (tmp_path / "config.toml").write_text("num_rounds = 1\n")
    with pytest.raises(ConfigError, match=r"no \[run\] table"):
        load_run_config(tmp_path)


def test_checkpoints_round_trip_model_and_strategy_state(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    model = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)}
    store.save_checkpoint(1, model, {"m": np.zeros(3)})
    store.save_checkpoint(2, {k: v + 1 for k, v in model.items()}, {"m": np.ones(3)})
    rnd, got, state = store.latest_checkpoint()
    assert rnd == 2 and list(got) == ["w", "b"] and got["w"].dtype == np.float32
    assert np.array_equal(got["w"], model["w"] + 1) and np.array_equal(state["m"], np.ones(3))
    assert not list(store.checkpoints.glob(".*tmp"))  # no temp files left behind


def test_a_torn_last_metrics_line_is_ignored(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "round", "round": 0})
    with open(store.metrics_path, "a") as fh:
        fh.write('{"event": "round", "ro')  # a crash mid-write
    assert [e["round"] for e in store.events()] == [0]


def test_events_after_a_torn_line_are_read_and_never_glued_onto_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "round", "round": 0})
    with open(store.metrics_path, "a") as fh:
        fh.write('{"event": "round", "ro')  # the coordinator crashed mid-write
    store.append_event({"event": "resume", "from_round": 0})  # the resumed run goes on
    store.append_event({"event": "round", "round": 1})
    assert [e["event"] for e in store.events()] == ["round", "resume", "round"]
    assert store.skipped_lines == 1


@pytest.mark.parametrize("line", [b"42", b'"text"', b"[1, 2]", b"null", b"{trunc", b"\x00\xff"])
def test_a_metrics_line_that_is_not_an_object_is_skipped(tmp_path: Path, line: bytes) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "start"})
    with open(store.metrics_path, "ab") as fh:
        fh.write(line + b"\n")
    store.append_event({"event": "end"})
    assert [e["event"] for e in store.events()] == ["start", "end"]
    assert store.skipped_lines == 1


def test_summary_and_events_are_strict_json(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.write_summary({"final_accuracy": float("inf"), "seconds": [float("nan"), 1.5]})
    store.append_event({"event": "round", "global_loss": float("-inf")})
    assert store.summary() == {"final_accuracy": None, "seconds": [None, 1.5]}
    assert "Infinity" not in store.metrics_path.read_text()
    assert store.events()[0]["global_loss"] is None


@pytest.mark.parametrize("text, needle", [
    (b"{trunc", "is unreadable"), (b'"completed"', "holds a JSON str"),
    (b"[1, 2]", "holds a JSON list"), (b"\xff\xfe", "is unreadable"),
])
def test_a_damaged_summary_is_a_config_error_naming_the_file(tmp_path: Path, text: bytes,
                                                             needle: str) -> None:
    from coordinator.cli import _run_status

    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "start"})
    (store.path / "summary.json").write_bytes(text)
    with pytest.raises(ConfigError, match=f"summary.json {needle}"):
        store.summary()
    with pytest.raises(ConfigError, match="summary.json"):
        _run_status(store)  # `xsilo coordinator status`: one red line, no traceback


def _hand_edited(store: RunStore, server_round: int, meta: str,
                 round_array: np.ndarray | None = None, w: np.ndarray | None = None) -> None:
    """A checkpoint whose SHA-256 matches (it was edited, then re-hashed)."""
    from coordinator.checkpoints import arrays_digest, npz_bytes

    arrays = {"w": np.zeros(3, np.float32) if w is None else w,
              "__round__": np.asarray(server_round) if round_array is None else round_array,
              "__meta__": np.asarray(meta)}
    arrays["__sha256__"] = np.asarray(arrays_digest(arrays))
    (store.checkpoints / f"round-{server_round:04d}.npz").write_bytes(npz_bytes(arrays))


@pytest.mark.parametrize("meta, round_array, w, why", [
    ("[]", None, None, "__meta__ is not a JSON object"),
    ("[" * 100_000 + "]" * 100_000, None, None, "__meta__ is not a JSON object"),
    ('{"failed_rounds": ["x"]}', None, None, "failed_rounds is not a list of round numbers"),
    ('{"failed_rounds": 3}', None, None, "failed_rounds is not a list of round numbers"),
    ('{"run_token": 7}', None, None, "run_token is not text"),
    ('{"pending": {"server_round": 2, "status": "ok", "seconds": 1, "bogus": 1}}', None, None,
     "pending is not a round row"),
    ('{"pending": {"server_round": 2, "status": "ok", "seconds": "x"}}', None, None,
     "pending.seconds"),
    ('{"pending": {"server_round": 2, "status": "ok", "seconds": 1, "extra": []}}', None, None,
     "pending.extra"),
    ("{}", np.arange(3), None, "__round__ is int64 of shape (3,)"),
    ("{}", np.asarray("two"), None, "not a round number"),
    ("{}", np.asarray(-2), None, "not a round number"),
    ("{}", None, np.full(3, np.nan, np.float32), "model tensor 'w' is not numeric and finite"),
])
def test_a_hand_edited_checkpoint_is_skipped_for_the_one_before(
        tmp_path: Path, meta: str, round_array: np.ndarray | None, w: np.ndarray | None,
        why: str) -> None:
    from coordinator.resume import restore
    from strategies.builtin.fedavg import FedAvg

    store = RunStore(tmp_path / "run")
    store.prepare()
    store.save_checkpoint(1, {"w": np.ones(3, np.float32)}, {}, {"failed_rounds": []})
    _hand_edited(store, 2, meta, round_array, w)
    found = store.load_checkpoint()
    assert found is not None and found.server_round == 1
    assert why in found.skipped["round-0002.npz"]
    assert why in store.verify_checkpoints()["round-0002.npz"]
    assert restore(found, FedAvg(), None).server_round == 1


def test_the_newest_checkpoint_is_the_highest_round_not_the_last_name(tmp_path: Path) -> None:
    """round-10000.npz sorts before round-9999.npz by name: a resume past round 9999 must
    not go back to it (rounds and ε would be counted again)."""
    store = RunStore(tmp_path / "run")
    store.prepare()
    for r in (9999, 10000, 10001):
        store.save_checkpoint(r, {"w": np.full(3, r, np.float32)}, {}, {"failed_rounds": []})
    found = store.load_checkpoint()
    assert found is not None and found.server_round == 10001
    assert found.model["w"][0] == 10001
    assert store.verify_checkpoints() == {}


def _raw_checkpoint(store: RunStore, name: str, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(store.checkpoints / name, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)


def _npy(value: object) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(value))
    return buf.getvalue()


@pytest.mark.parametrize("name, members, why", [
    # np.load hands back raw bytes for a member that is not an .npy array
    ("round-0002.npz", {"w.npy": _npy(np.zeros(3, np.float32)), "__round__.npy": _npy(2),
                        "notes.txt": b"hello"}, "are not arrays"),
    ("round-0002.npz", {"w.npy": _npy(np.zeros(3, np.float32)), "__round__.npy": _npy(2)},
     "carries no SHA-256"),
])
def test_a_checkpoint_that_is_not_the_run_stores_is_skipped_with_its_reason(
        tmp_path: Path, name: str, members: dict[str, bytes], why: str) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.save_checkpoint(1, {"w": np.ones(3, np.float32)}, {}, {"failed_rounds": []})
    _raw_checkpoint(store, name, members)
    found = store.load_checkpoint()
    assert found is not None and found.server_round == 1
    assert why in found.skipped[name] and why in store.verify_checkpoints()[name]


def test_a_checkpoint_renamed_to_another_round_is_skipped(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.save_checkpoint(1, {"w": np.ones(3, np.float32)}, {}, {"failed_rounds": []})
    store.save_checkpoint(2, {"w": np.ones(3, np.float32)}, {}, {"failed_rounds": []})
    (store.checkpoints / "round-0002.npz").rename(store.checkpoints / "round-0007.npz")
    found = store.load_checkpoint()
    assert found is not None and found.server_round == 1
    assert "holds round 2, not the round its name says" in found.skipped["round-0007.npz"]


def test_the_checkpoint_reader_knows_every_field_of_a_round_row() -> None:
    from dataclasses import fields

    from coordinator.rows import PendingRow
    from coordinator.checkpoints import _PENDING_FIELDS

    assert set(_PENDING_FIELDS) == {f.name for f in fields(PendingRow)}


def test_final_model_is_written_atomically(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save_model({"w": np.ones(2)})
    store.save_model({"w": np.zeros(2)})
    assert np.array_equal(load_npz(tmp_path / "model.npz")["w"], np.zeros(2))


def test_coordinator_home_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="coordinator.toml does not exist"):
        CoordinatorHome.load(tmp_path)
    CoordinatorHome.write(tmp_path, host="127.0.0.1", port=9092)
    with pytest.raises(ConfigError, match="ca_cert file .* does not exist"):
        CoordinatorHome.load(tmp_path)
    (tmp_path / "coordinator.toml").write_text(
        '[coordinator]\nhost = "0.0.0.0"\n[gateway]\nport = 8443\n')
    with pytest.raises(ConfigError, match="must listen on loopback"):
        for name in ("ca.crt", "coordinator.crt", "coordinator.key"):
            (tmp_path / "pki").mkdir(exist_ok=True)
            (tmp_path / "pki" / name).write_text("x")
        CoordinatorHome.load(tmp_path)
    (tmp_path / "coordinator.toml").write_text('[coordinator]\nport = 1\nbogus = 2\n')
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        CoordinatorHome.load(tmp_path)


@pytest.mark.parametrize("text, needle", [
    ("run = 5\n", "must be a table ([run])"),
    ('[run]\nname = "r"\nlearning_rate = 1' + "0" * 400 + "\n", "learning_rate is an integer of"),
    ('[run]\nname = "r"\ncompression_fraction = 1' + "0" * 400 + "\n",
     "compression_fraction is an integer of"),
])
def test_a_damaged_config_toml_is_a_config_error(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_run_config(tmp_path)


def test_a_run_directory_with_something_in_the_way_is_a_config_error(tmp_path: Path) -> None:
    """Files replaced by directories (and back), and a line nested past Python's recursion
    limit: each is a ConfigError naming the file (or a skipped line), never an OSError."""
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "start"})
    with open(store.metrics_path, "a") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    assert [e["event"] for e in store.events()] == ["start"] and store.skipped_lines == 1
    (store.path / "serverapp.json").mkdir()
    with pytest.raises(ConfigError, match="serverapp.json"):
        store.claim()
    broken = RunStore(tmp_path / "broken")
    broken.path.mkdir()
    (broken.path / "checkpoints").write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot hold a run: .*checkpoints"):
        broken.prepare()
    (broken.path / "metrics.jsonl").mkdir()
    with pytest.raises(ConfigError, match="cannot read .*metrics.jsonl"):
        broken.events()


def test_the_store_tells_each_attempts_flower_run_and_whether_the_run_ended(
        tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    assert store.flower_runs() == [] and store.ended() is None
    store.prepare()
    for event in ({"event": "start", "flower_run_id": 7}, {"event": "round", "round": 1},
                  {"event": "start", "flower_run_id": "8"}, {"event": "start"}):
        store.append_event(event)
    assert store.flower_runs() == [7, None, None]  # a damaged id names no run
    for status, ended in (("failed", None), ("completed", "completed"), ("stopped", "stopped")):
        store.write_summary({"status": status})
        assert store.ended() == ended, status

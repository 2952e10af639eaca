"""Egress ledger: chain integrity, tamper detection, payload digest, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from silo_client.ledger import (
    GENESIS,
    EgressLedger,
    entry_hash,
    payload_digest,
    summarize,
    verify_ledger,
)
from silo_client.ledger_cli import _PATH, app
from xsilo.errors import ConfigError
from xsilo.terms import (EVAL_EXAMPLES, EVAL_LOSS, NUM_EXAMPLES, SECAGG_WEIGHT, TRAIN_LOSS,
                         SiloMetrics, aggregate_slots)

ARRAYS = {"coef": np.arange(6, dtype=np.float32).reshape(2, 3), "intercept": np.zeros(2)}


def _fill(path: Path, n: int = 4) -> EgressLedger:
    ledger = EgressLedger(path)
    for rnd in range(1, n + 1):
        ledger.append(run_id="run-7", server_round=rnd, message_type="train",
                      tensors={k: (v.shape, str(v.dtype)) for k, v in ARRAYS.items()},
                      payload_sha256=payload_digest(ARRAYS, {NUM_EXAMPLES: 10 * rnd}),
                      masked=rnd % 2 == 0, clip_norm=1.0, noise_sigma=0.8, epsilon=0.5 * rnd,
                      extra={NUM_EXAMPLES: 10 * rnd})
    return ledger


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_entries_are_chained_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "ws" / "egress-ledger.jsonl"
    ledger = _fill(path)
    entries = [json.loads(line) for line in _lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] == entry_hash(a) for a, b in zip(entries, entries[1:]))
    assert entries[1]["tensors"]["coef"] == {"shape": [2, 3], "dtype": "float32"}
    assert entries[1]["masked"] is True and entries[3]["epsilon"] == 2.0
    result = verify_ledger(path)
    assert result.ok and result.entries == 4 and result.head == entries[-1]["hash"]
    assert ledger.head() == (4, entries[-1]["hash"])
    reopened = EgressLedger(path)  # continues the chain after a restart
    reopened.append(run_id="run-8", server_round=1, message_type="evaluate", tensors={},
                    payload_sha256=payload_digest({}, {}), masked=False, clip_norm=None,
                    noise_sigma=None, epsilon=None)
    assert verify_ledger(path).entries == 5


def _tamper(path: Path, how: str) -> None:
    lines = _lines(path)
    if how == "modified":
        entry = json.loads(lines[1])
        entry["epsilon"] = 0.01  # understate the privacy spent
        lines[1] = json.dumps(entry) + "\n"
    elif how == "deleted":
        del lines[1]
    elif how == "reordered":
        lines[1], lines[2] = lines[2], lines[1]
    elif how == "inserted":  # a forged entry with a self-consistent hash
        forged = json.loads(lines[1])
        forged["message_type"] = "evaluate"
        forged["hash"] = entry_hash(forged)
        lines.insert(2, json.dumps(forged) + "\n")
    elif how == "garbage":
        lines[2] = "{not json\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize(("how", "line", "needle"), [
    ("modified", 2, "modified"), ("deleted", 2, "expected seq 2, found seq 3"),
    ("reordered", 2, "expected seq 2"), ("inserted", 3, "expected seq 3, found seq 2"),
    ("garbage", 3, "not valid JSON"),
])
def test_tampering_is_detected(tmp_path: Path, how: str, line: int, needle: str) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path)
    _tamper(path, how)
    result = verify_ledger(path)
    assert not result.ok and result.line == line and needle in result.reason
    with pytest.raises(ConfigError, match=f"fails verification at line {line}"):
        EgressLedger(path)  # a silo never extends a broken chain


def test_renumbered_deletion_is_still_caught_by_prev_hash(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path)
    entries = [json.loads(line) for line in _lines(path)]
    del entries[1]
    for i, e in enumerate(entries, start=1):  # the forger fixes seq and each own hash...
        e["seq"] = i
        e["hash"] = entry_hash(e)
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    result = verify_ledger(path)  # ...but not the chain
    assert not result.ok and result.line == 2 and "prev_hash does not match" in result.reason


def _append(ledger: EgressLedger, rnd: int) -> dict:
    return ledger.append(run_id="run-9", server_round=rnd, message_type="train", tensors={},
                         payload_sha256=payload_digest({}, {"r": rnd}), masked=False,
                         clip_norm=None, noise_sigma=None, epsilon=None)


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import silo_client.ledger as ledger_module

    calls: list[int] = []
    original = ledger_module._check_entry

    def check(entry, lineno, prev_hash):
        calls.append(lineno)
        return original(entry, lineno, prev_hash)

    monkeypatch.setattr(ledger_module, "_check_entry", check)
    return calls


def test_reopening_parses_only_what_was_appended_since_the_recorded_head(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path, 30)
    assert json.loads((tmp_path / "l.jsonl.head").read_text())["seq"] == 30
    calls = _count_checks(monkeypatch)
    first = EgressLedger(path)  # the record matches the file: no entry is parsed
    assert calls == []
    assert first.head() == (30, verify_ledger(path).head)
    calls.clear()
    second = EgressLedger(path)  # another process of the same silo
    _append(second, 31)
    _append(second, 32)
    calls.clear()
    _append(first, 33)  # first catches up on 31 and 32 under the lock, then chains after them
    assert calls == [31, 32]
    calls.clear()
    result = verify_ledger(path)
    assert result.ok and result.entries == 33
    assert calls == list(range(1, 34))  # the CLI check always reads every entry


@pytest.mark.parametrize("how", ["same-length edit", "record deleted", "record garbage",
                                 "record names another head"])
def test_without_a_matching_record_every_entry_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    path, record = tmp_path / "l.jsonl", tmp_path / "l.jsonl.head"
    _fill(path, 5)
    if how == "same-length edit":  # one byte of entry 2's payload digest: same file length
        lines = _lines(path)
        entry = json.loads(lines[1])
        old = entry["payload_sha256"]
        lines[1] = lines[1].replace(old, ("0" if old[0] != "0" else "1") + old[1:])
        path.write_text("".join(lines))
        with pytest.raises(ConfigError, match="fails verification at line 2: entry was modified"):
            EgressLedger(path)  # the record no longer matches: full check, tamper found
        return
    if how == "record deleted":
        record.unlink()
    elif how == "record garbage":
        record.write_text("{not json")
    else:  # the file still hashes right, but the record's head is not the file's last entry
        cp = json.loads(record.read_text())
        record.write_text(json.dumps({**cp, "hash": "f" * 64}))
    calls = _count_checks(monkeypatch)
    ledger = EgressLedger(path)
    assert calls == [1, 2, 3, 4, 5]
    _append(ledger, 6)
    assert verify_ledger(path).entries == 6 and json.loads(record.read_text())["seq"] == 6


def test_a_cut_tail_is_reported_and_the_chain_goes_on_from_what_is_left(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path, 4)
    path.write_text("".join(_lines(path)[:2]))
    with caplog.at_level("WARNING", logger="silo_client.ledger"):
        ledger = EgressLedger(path)
    assert "shorter than at its last recorded append" in caplog.text
    assert _append(ledger, 3)["seq"] == 3 and verify_ledger(path).ok


def test_payload_digest_is_stable_and_sensitive() -> None:
    base = payload_digest(ARRAYS, {"loss": 0.5})
    reordered = payload_digest(dict(reversed(list(ARRAYS.items()))), {"loss": 0.5})
    assert base == reordered and len(base) == 64
    changed = {**ARRAYS, "intercept": np.array([0.0, 1e-12])}
    assert payload_digest(changed, {"loss": 0.5}) != base
    assert payload_digest(ARRAYS, {"loss": 0.51}) != base
    assert payload_digest({**ARRAYS, "coef": ARRAYS["coef"].astype(np.float64)}, {"loss": 0.5}) != base
    big_endian = {**ARRAYS, "coef": ARRAYS["coef"].astype(">f4")}
    assert payload_digest(big_endian, {"loss": 0.5}) == base


def test_summarize_rows(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path, 2)
    rows = summarize(path)
    assert [r["round"] for r in rows] == [1, 2] and rows[0]["values"] == 8
    assert rows[1]["masked"] is True and len(rows[0]["payload"]) == 12


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path)
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(path)])
    assert ok.exit_code == 0 and "4 entries, chain intact" in ok.output
    _tamper(path, "modified")
    bad = runner.invoke(app, ["verify", str(path)])
    assert bad.exit_code == 1 and "TAMPERED" in bad.output and "line 2" in bad.output
    assert runner.invoke(app, ["verify", str(tmp_path / "none.jsonl")]).exit_code == 2


def test_cli_show_prints_a_table(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path, 3)
    result = CliRunner().invoke(app, ["show", str(path), "--run", "run-7"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Egress ledger" in result.output and "chain intact" in result.output
    assert result.output.count("train") >= 3


def test_show_reads_out_the_clear_metrics_and_the_summed_values(tmp_path: Path) -> None:
    """What a message carried in the clear is in its entry as it left (non-finite values by
    name, so the chain stays canonical JSON); what went into a secure sum is shown per metric."""
    path = tmp_path / "l.jsonl"
    ledger = EgressLedger(path)
    summed = aggregate_slots(SiloMetrics(eval_loss=0.25, eval_examples=40.0, train_loss=0.5,
                                         num_examples=120.0))
    ledger.append(run_id="r", server_round=1, message_type="train", tensors={},
                  payload_sha256="0" * 64, masked=True, clip_norm=None, noise_sigma=None,
                  epsilon=None, metrics={SECAGG_WEIGHT: 120.0}, extra={"aggregated": summed})
    ledger.append(run_id="r", server_round=2, message_type="evaluate", tensors={},
                  payload_sha256="0" * 64, masked=False, clip_norm=None, noise_sigma=None,
                  epsilon=None, metrics={EVAL_LOSS: float("nan"), EVAL_EXAMPLES: 40})
    assert verify_ledger(path).ok
    entries = [json.loads(line) for line in _lines(path)]
    assert entries[0]["metrics"] == {SECAGG_WEIGHT: 120.0}
    assert entries[1]["metrics"] == {EVAL_EXAMPLES: 40, EVAL_LOSS: "nan"}
    result = CliRunner().invoke(app, ["show", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"{SECAGG_WEIGHT}=120" in result.output and f"{EVAL_LOSS}=nan" in result.output
    assert f"{EVAL_LOSS}=0.25 (n=40)" in result.output
    assert f"{TRAIN_LOSS}=0.5 (n=120)" in result.output


def test_cli_help_names_the_file_the_silo_writes(tmp_path: Path) -> None:
    from silo_client.config import load_silo_config, write_silo_config
    from silo_client.ledger import LEDGER_FILE
    from silo_client.silo import Silo
    from federation.demo_data import demo_schema

    config = write_silo_config(tmp_path / "silo.toml", name="a", train=Path("train.csv"),
                               schema=demo_schema(), model="sklearn:LogisticRegression")
    written = Silo(load_silo_config(config)).ledger.path
    assert written == tmp_path / "workspace" / "egress.jsonl" and written.name == LEDGER_FILE
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "workspace/egress.jsonl" in result.output
    # The PATH argument's own help (typer 0.20 with click 8.5 does not render it, so read it).
    assert "workspace/egress.jsonl" in _PATH.help and "egress-ledger" not in _PATH.help


def test_public_api_is_pinned() -> None:
    import silo_client.ledger as mod

    assert sorted(mod.__all__) == ["EgressLedger", "GENESIS", "LEDGER_FILE", "VerifyResult",
                                      "entry_hash", "payload_digest", "summarize", "verify_ledger"]


def _reference_payload_digest(arrays, metrics) -> str:
    """The documented definition, with byte copies (what the zero-copy version must equal)."""
    import hashlib
    import json
    import struct

    h = hashlib.sha256(b"xsilo-payload-v1")

    def put(data: bytes) -> None:
        h.update(struct.pack(">Q", len(data)) + data)

    canon = lambda o: json.dumps(o, sort_keys=True, separators=(",", ":"), allow_nan=False,  # noqa: E731
                                 ensure_ascii=False).encode()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        put(name.encode())
        put(arr.dtype.str.encode())
        put(canon(list(arr.shape)))
        put(arr.tobytes(order="C"))
    put(canon(dict(metrics)))
    return h.hexdigest()


def test_payload_digest_hashes_the_arrays_bytes_for_any_layout() -> None:
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {"t": grid.T, "s": grid[:, ::2], "be": np.arange(5, dtype=">i4"),
              "empty": np.zeros((0, 3)), "scalar": np.array(2.5), "flag": np.array([True, False])}
    assert payload_digest(arrays, {"n": 3}) == _reference_payload_digest(arrays, {"n": 3})


def test_record_digest_hashes_vectors_by_their_bytes() -> None:
    from silo_client.secure import record_digest

    vec = np.arange(10, dtype=np.uint32)
    base = record_digest({"kind": "masked", "masked": vec})
    assert record_digest({"kind": "masked", "masked": vec[::-1][::-1].copy()}) == base
    changed = vec.copy()
    changed[7] += 1
    assert record_digest({"kind": "masked", "masked": changed}) != base
    assert record_digest({"kind": "masked", "masked": vec[::2]}) != base


def test_a_non_finite_metric_is_digested_and_recorded_by_its_name(tmp_path: Path) -> None:
    """A diverged model's loss is NaN: the entry and its payload digest hold it as "nan"."""
    nan, inf = payload_digest({}, {"loss": float("nan")}), payload_digest({}, {"loss": float("inf")})
    assert nan != inf
    assert payload_digest(ARRAYS, {"loss": 0.5}) == _reference_payload_digest(ARRAYS, {"loss": 0.5})
    entry = EgressLedger(tmp_path / "egress.jsonl").append(
        run_id="r", server_round=1, message_type="evaluate", tensors={}, payload_sha256=nan,
        masked=False, clip_norm=None, noise_sigma=None, epsilon=None,
        metrics={"loss": float("nan")})
    assert entry["metrics"] == {"loss": "nan"}
    assert verify_ledger(tmp_path / "egress.jsonl").ok

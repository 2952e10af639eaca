"""Update compression (pure): error bounds, unbiasedness, error feedback, the pruning mask,
byte counts, and a hostile peer's compressed update refused with a ProtocolError."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.compression import (CHUNK, Compressed, check_method, compressed_bytes, decode,
                                    encode, prune_mask, top_k)
from strategies.randomness import KeystreamSource
from xsilo.errors import ConfigError, ProtocolError


def _rng(tag: str) -> KeystreamSource:
    return KeystreamSource(tag.encode().ljust(32, b"\0"))


def _vector(n: int, seed: int = 0) -> np.ndarray:
    # numpy.random makes up test data only
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.mark.parametrize("method, bits", [("q8", 8), ("q4", 4)])
@pytest.mark.parametrize("n", [1, 7, CHUNK, CHUNK + 1, 3 * CHUNK - 5])
def test_quantization_stays_within_one_level_of_each_value(method: str, bits: int, n: int) -> None:
    x = _vector(n, n)
    x[: min(n, 3)] = 2.5  # a repeated value, and (n = 1) a constant chunk
    c = encode(x, method, rng=_rng(f"{method}{n}"))
    y = decode(c, length=n, fraction=0.01)
    chunks = -(-n // CHUNK)
    step = np.repeat((c.arrays["hi"] - c.arrays["lo"]) / (2**bits - 1), CHUNK)[:n]
    assert y.dtype == np.float32 and y.shape == (n,) and c.arrays["lo"].size == chunks
    assert np.all(np.abs(y - x) <= step * (1 + 1e-5) + 1e-7)


@pytest.mark.parametrize("method", ["q8", "q4"])
def test_quantization_is_unbiased(method: str) -> None:
    x = _vector(2 * CHUNK, 1)
    trials = 400
    mean = sum(decode(encode(x, method, rng=_rng(f"{method}-{t}")), length=x.size,
                      fraction=0.01).astype(np.float64) for t in range(trials)) / trials
    step = float((x.max() - x.min()) / (2 ** {"q8": 8, "q4": 4}[method] - 1))
    # each decode is within one step; its error has std <= step/2: the mean of 400 within
    # 5 standard errors, everywhere
    assert np.max(np.abs(mean - x)) < 5 * (step / 2) / np.sqrt(trials)
    assert abs(float(np.mean(mean - x))) < 0.05 * step  # and no drift overall


def test_bytes_per_method_on_a_million_values() -> None:
    x = _vector(1_000_000, 2)
    dense = x.nbytes
    ratios = {m: compressed_bytes(encode(x, m, fraction=0.01, model=x, rng=_rng(m))) / dense
              for m in ("q8", "q4", "topk", "prune")}
    assert ratios["q8"] == pytest.approx(0.25 + 8 / (4 * CHUNK), abs=1e-3)
    assert ratios["q4"] == pytest.approx(0.125 + 8 / (4 * CHUNK), abs=1e-3)
    assert ratios["topk"] == pytest.approx(0.02, abs=1e-6)
    assert ratios["prune"] == pytest.approx(0.01, abs=1e-6)


def test_top_k_sends_the_largest_values_and_error_feedback_loses_nothing() -> None:
    n, rounds = 5000, 30
    residual = np.zeros(n, dtype=np.float32)
    sent = np.zeros(n, dtype=np.float64)
    total = np.zeros(n, dtype=np.float64)
    for r in range(rounds):
        update = _vector(n, 100 + r)
        total += update
        corrected = update + residual
        c = encode(corrected, "topk", fraction=0.01)
        dense = decode(c, length=n, fraction=0.01)
        k = c.arrays["indices"].size
        assert k == 50 and np.count_nonzero(dense) <= k
        threshold = np.sort(np.abs(corrected))[-k]
        assert np.all(np.abs(dense[c.arrays["indices"]]) >= threshold)
        residual = corrected - dense
        sent += dense
    # everything not yet sent is in the residual: sent + residual == sum of updates
    assert np.allclose(sent + residual, total, atol=1e-3)


def test_the_pruning_mask_is_the_same_everywhere_and_breaks_ties_by_position() -> None:
    model = np.array([0.5, -2.0, 0.5, 1.0, -0.5, 0.0], dtype=np.float32)
    assert prune_mask(model, 0.5).tolist() == [0, 1, 3]  # |0.5| ties: the lower positions
    assert prune_mask(model.astype(np.float64), 0.5).tolist() == [0, 1, 3]
    update = np.arange(6, dtype=np.float32)
    c = encode(update, "prune", fraction=0.5, model=model)
    assert c.arrays["values"].tolist() == [0.0, 1.0, 3.0]
    assert decode(c, length=6, fraction=0.5, model=model).tolist() == [0, 1, 0, 3, 0, 0]
    assert top_k(np.array([1.0, -3.0, 2.0]), 0.5).tolist() == [1, 2]


def _q8(n: int = 10) -> Compressed:
    return encode(_vector(n), "q8", rng=_rng("h"))


@pytest.mark.parametrize("bad, needle", [
    (Compressed("zip", 10, {}), "unknown compression"),
    (Compressed("q8", 11, dict(_q8().arrays)), "11 values for a model of 10"),
    (Compressed("q8", 10, {**_q8().arrays, "extra": np.zeros(1)}), "expected"),
    (Compressed("q8", 10, {**_q8().arrays, "lo": np.array([1.0], np.float32),
                           "hi": np.array([0.0], np.float32)}), "lo <= hi"),
    (Compressed("q8", 10, {**_q8().arrays, "hi": np.array([np.inf], np.float32)}), "finite"),
    (Compressed("q8", 10, {**_q8().arrays, "levels": np.zeros(3, np.uint8)}), "levels"),
    (Compressed("q8", 10, {**_q8().arrays, "lo": np.zeros(1, np.float64)}), "'lo' is float64"),
    (Compressed("topk", 10, {"indices": np.array([3], np.uint32),
                             "values": np.array([1.0], np.float32)}), None),  # valid
    (Compressed("topk", 10, {"indices": np.array([10], np.uint32),
                             "values": np.array([1.0], np.float32)}), "below the model"),
    (Compressed("topk", 200, {"indices": np.array([5, 5], np.uint32),
                              "values": np.array([1.0, 2.0], np.float32)}), "increasing"),
    (Compressed("topk", 10, {"indices": np.array([1, 2], np.uint32),
                             "values": np.array([1.0, 2.0], np.float32)}), "of 1 values"),
    (Compressed("topk", 10, {"indices": np.array([1], np.uint32),
                             "values": np.array([np.nan], np.float32)}), "finite"),
    (Compressed("prune", 10, {"values": np.zeros(2, np.float32)}), "of 1 values"),
])
def test_a_hostile_compressed_update_is_a_protocol_error(bad: Compressed, needle: str | None
                                                         ) -> None:
    fraction = 0.01
    if needle is None:
        assert decode(bad, length=bad.length, fraction=fraction)[3] == 1.0
        return
    with pytest.raises(ProtocolError, match=needle):
        decode(bad, length=10 if bad.length != 200 else 200, fraction=fraction,
               model=np.ones(10, np.float32))


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="one of none, q8, q4, topk, prune"):
        check_method("gzip", 0.01)
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\]"):
        check_method("topk", 0.0)
    with pytest.raises(ConfigError, match="needs the flattened global model"):
        encode(np.ones(4), "prune", fraction=0.5)

"""Quantization: unbiased stochastic rounding, overflow-safe moduli, validation, error report."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from secagg_helpers import seeded

from strategies.randomness import KeystreamSource
from strategies.secagg.quantize import (
    coin_bits, count_clipped, decode_sum, encode, error_report, make_quant_params,
    required_modulus_bits, validate_params)
from xsilo.errors import ConfigError, SecureAggregationError, UpdateRejected


def test_stochastic_rounding_is_unbiased():
    params = make_quant_params(num_silos=2, clip=1.0, bits=2, max_weight=1)  # step 2/3: coarse
    n = 200_000
    for value in (-0.9, -0.2, 0.3, 0.55):
        enc = encode(np.full(n, value), weight=1, params=params, rng=seeded(f"u{value}"))
        decoded = enc[1:].astype(np.float64) * params.step - params.clip
        # each draw lies on one of two levels Δ apart: std ≤ Δ/2, so 6σ of the mean is tiny
        assert abs(decoded.mean() - value) < 6 * (params.step / 2) / math.sqrt(n)
        assert set(np.unique(decoded).round(9)) <= {round(params.step * k - 1, 9) for k in range(4)}


def test_weighted_sum_roundtrip_and_clipping():
    params = make_quant_params(num_silos=3, clip=2.0, bits=16, max_weight=100)
    xs = [np.array([0.5, -3.0, 2.5, 0.0]), np.array([1.0, 1.0, -1.0, 1.9]),
          np.array([-2.0, 0.1, 0.2, 0.3])]
    ws = [10, 0, 100]
    total = sum(encode(x, weight=w, params=params, rng=seeded(str(w))).astype(np.uint64)
                for x, w in zip(xs, ws))
    est, tw = decode_sum(total, params=params)
    exact = sum(w * np.clip(x, -2, 2) for x, w in zip(xs, ws))
    assert tw == 110
    report = error_report(params, total_weight=tw, estimate=est, exact=exact)
    assert report.max_abs is not None and report.max_abs <= report.max_abs_bound
    assert report.rms is not None and report.rms <= report.max_abs
    assert report.max_abs_bound == pytest.approx(params.step * 110)
    assert report.std_bound == pytest.approx(params.step / 2 * math.sqrt(110 * 100))


def test_modulus_is_the_smallest_power_of_two_above_the_largest_sum():
    # n·W·L = 3·5·(2^4−1) = 225 < 256 = 2^8
    assert required_modulus_bits(num_silos=3, bits=4, max_weight=5) == 8
    assert required_modulus_bits(num_silos=1, bits=8, max_weight=1) == 8  # 255 → 2^8
    assert required_modulus_bits(num_silos=2, bits=8, max_weight=1) == 9  # 510 → 2^9
    p = make_quant_params(num_silos=10, clip=1.0, bits=16, max_weight=1000)  # 6.6e8 < 2^30
    assert p.modulus_bits == 30 and p.dtype == np.uint32
    p = make_quant_params(num_silos=20, clip=1.0, bits=16, max_weight=10_000)  # 1.3e10 < 2^34
    assert p.modulus_bits == 34 and p.dtype == np.uint64


def test_largest_possible_sum_does_not_wrap():
    params = make_quant_params(num_silos=4, clip=1.0, bits=3, max_weight=7)
    top = encode(np.ones(2), weight=7, params=params, rng=seeded("top"))
    total = sum(top.astype(np.uint64) for _ in range(4)) & np.uint64(2**params.modulus_bits - 1)
    est, tw = decode_sum(total, params=params)
    assert tw == 28 and np.allclose(est, 28.0)


def test_overflow_is_refused_with_the_numbers_that_fix_it():
    with pytest.raises(ConfigError) as exc:
        validate_params(num_silos=1000, clip=1.0, bits=32, max_weight=10**9)
    msg = str(exc.value)
    assert "1000·1000000000·4294967295" in msg and "wrap" in msg
    assert "lower max_weight to ≤ 4294967" in msg and "lower bits to ≤ 24" in msg
    # the suggested fixes really fit
    validate_params(num_silos=1000, clip=1.0, bits=32, max_weight=4294967)
    validate_params(num_silos=1000, clip=1.0, bits=24, max_weight=10**9)


@pytest.mark.parametrize("kwargs,match", [
    ({"clip": 0.0}, "clip range must be a finite number > 0"),
    ({"clip": -1.0}, "clip range"),
    ({"clip": float("nan")}, "clip range"),
    ({"bits": 0}, "bits must be an integer in 1..32"),
    ({"max_weight": 0}, "max_weight must be an integer ≥ 1"),
    ({"num_silos": 1}, "num_silos ≥ 2"),
    ({"modulus_bits": 20}, "modulus_bits=20 cannot hold sums up to"),
])
def test_invalid_parameters_are_named(kwargs, match):
    base = dict(num_silos=10, clip=1.0, bits=16, max_weight=100)
    with pytest.raises(ConfigError, match=match):
        validate_params(**{**base, **kwargs})


def test_bad_weights_and_values_are_rejected():
    params = make_quant_params(num_silos=2, clip=1.0, bits=8, max_weight=10)
    for weight in (11, -1, 2.5, True):
        with pytest.raises(UpdateRejected, match="weight"):
            encode(np.zeros(2), weight=weight, params=params)
    with pytest.raises(UpdateRejected, match="NaN"):
        encode(np.array([np.nan]), weight=1, params=params)


def test_decode_detects_masks_that_did_not_cancel():
    params = make_quant_params(num_silos=2, clip=1.0, bits=8, max_weight=10)
    with pytest.raises(SecureAggregationError, match="did not cancel"):
        decode_sum(np.array([21, 0], dtype=np.uint32), params=params)
    with pytest.raises(SecureAggregationError, match="1-D uint vector"):
        decode_sum(np.array([1, 0]), params=params)  # int64: not a modular sum


def test_decoding_reduces_mod_m_and_does_not_depend_on_the_chunk_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import strategies.secagg.quantize as q

    params = make_quant_params(num_silos=3, clip=2.0, bits=10, max_weight=5)  # M = 2^14
    rng = np.random.default_rng(3)  # test data, not a secret
    body = rng.integers(0, 7 * 1023 + 1, 5001, dtype=np.uint64)  # a real sum: ≤ Σw · L
    wrapped = np.concatenate([[7], body]).astype(np.uint32) + np.uint32(1 << 14) * 3
    est, tw = decode_sum(wrapped, params=params)
    assert tw == 7
    np.testing.assert_array_equal(est, body.astype(np.float64) * params.step - 2.0 * 7)
    monkeypatch.setattr(q, "_CHUNK", 64)
    assert np.array_equal(decode_sum(wrapped, params=params)[0], est)


def test_a_sum_with_a_mask_left_in_it_fails_instead_of_decoding() -> None:
    """A wrong seed leaves a uniform mask in the sum: its words exceed Σw·L, the most a
    true sum can hold, and the round fails rather than returning a wrong model."""
    params = make_quant_params(num_silos=3, clip=2.0, bits=10, max_weight=5)  # M = 2^14
    words = np.zeros(1001, dtype=np.uint32)
    words[0], words[1:] = 7, 7 * 1023  # the largest true sum decodes
    assert decode_sum(words, params=params)[1] == 7
    words[500] += 1
    with pytest.raises(SecureAggregationError, match="exceeds total weight × levels = 7161"):
        decode_sum(words, params=params)


@pytest.mark.parametrize("clip", [1e-310, 1e-300, 1e308, 2e305])
def test_a_clip_whose_arithmetic_cannot_be_represented_is_refused(clip: float) -> None:
    with pytest.raises(ConfigError, match=rf"clip = {re.escape(repr(clip))} with bits = 16.*use a clip between"):
        make_quant_params(num_silos=3, clip=clip, bits=16, max_weight=1000)


@pytest.mark.parametrize("bits", [1, 8, 16, 24, 32])
def test_every_accepted_clip_decodes_within_its_error_bound(bits: int) -> None:
    """At both ends of the accepted range the sum stays within the reported bound."""
    with pytest.raises(ConfigError, match="use a clip between") as err:
        make_quant_params(num_silos=3, clip=0.0 + 1e-320, bits=bits, max_weight=1000)
    low, high = (float(v) for v in str(err.value).rsplit("between ", 1)[1].split(" and "))
    for clip in (low * 1.01, 1e-9, 1.0, 1e200, high * 0.99):
        params = make_quant_params(num_silos=3, clip=clip, bits=bits, max_weight=1000)
        gen = np.random.default_rng(bits)  # test data only
        xs, ws = [gen.uniform(-clip, clip, 500) for _ in range(3)], [1000, 7, 300]
        total = sum(encode(x, weight=w, params=params, rng=KeystreamSource(bytes(32)))
                    .astype(np.uint64) for x, w in zip(xs, ws))
        est, tw = decode_sum(total, params=params)
        exact = sum(w * x for w, x in zip(ws, xs))
        bound = error_report(params, total_weight=tw).max_abs_bound
        assert np.isfinite(est).all() and np.max(np.abs(est - exact)) <= bound, clip


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_anywhere_is_rejected(bad: float) -> None:
    params = make_quant_params(num_silos=2, clip=1.0, bits=8, max_weight=10)
    for dtype in (np.float32, np.float64):
        update = np.zeros(100_003, dtype=dtype)
        update[77_777] = bad  # past the first encode chunk
        with pytest.raises(UpdateRejected, match="NaN or Inf"):
            encode(update, weight=1, params=params)


def test_huge_finite_values_whose_sum_overflows_are_clipped_not_rejected() -> None:
    params = make_quant_params(num_silos=2, clip=1.0, bits=8, max_weight=10)
    enc = encode(np.array([1e308, 1e308, -1e308]), weight=3, params=params, rng=seeded("big"))
    assert enc.tolist() == [3, 3 * 255, 3 * 255, 0]  # clipped to +c, +c, −c exactly


def test_the_encoding_does_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import strategies.secagg.quantize as q

    params = make_quant_params(num_silos=4, clip=2.0, bits=12, max_weight=50)
    x = np.linspace(-3, 3, 70_001, dtype=np.float32)
    whole = encode(x, weight=7, params=params, rng=seeded("chunks"))
    monkeypatch.setattr(q, "_CHUNK", 1000)
    assert np.array_equal(encode(x, weight=7, params=params, rng=seeded("chunks")), whole)


class _AllOnes:
    """A ByteSource of 0xFF bytes: every rounding coin u = 2^32 − 1, the largest."""

    def read(self, n: int) -> bytes:
        return b"\xff" * n


def test_the_input_dtype_does_not_change_the_encoding() -> None:
    params = make_quant_params(num_silos=3, clip=1.5, bits=32, max_weight=1)
    x64 = np.linspace(-2, 2, 5001)
    for dtype in (np.float16, np.float32):
        x = x64.astype(dtype)
        assert np.array_equal(encode(x, weight=1, params=params, rng=seeded("dt")),
                              encode(x.astype(np.float64), weight=1, params=params,
                                     rng=seeded("dt")))


@pytest.mark.parametrize("bits", [8, 22, 32])
def test_no_level_exceeds_the_top_even_with_the_largest_coin(bits: int) -> None:
    params = make_quant_params(num_silos=2, clip=1.0, bits=bits, max_weight=1)
    levels = (1 << bits) - 1
    x = np.concatenate([np.linspace(1 - 1e-6, 1, 1000), [1.0, 5.0], np.linspace(-1, -1 + 1e-9, 50)])
    q = encode(x, weight=1, params=params, rng=_AllOnes())[1:]
    assert int(q.max()) == levels and int(q.min()) >= 0


def test_a_large_weight_is_applied_exactly_in_the_integer_dtype() -> None:
    w = 1 << 25  # W·L ≥ 2^53: a float64 product would round
    params = make_quant_params(num_silos=2, clip=1.0, bits=32, max_weight=w)
    assert params.dtype == np.uint64
    out = encode(np.array([1.0, -1.0]), weight=w, params=params, rng=seeded("w"))
    assert [int(v) for v in out] == [w, w * ((1 << 32) - 1), 0]


class _Coins:
    """A ByteSource whose every 32-bit rounding coin is ``u``."""

    def __init__(self, u: int) -> None:
        self.word = u.to_bytes(4, "little")

    def read(self, n: int) -> bytes:
        return self.word * (n // 4)


def test_the_coin_rounds_up_exactly_when_it_reaches_the_fraction() -> None:
    # v = 1000.25: q = 1001 iff the coin u ≥ 2^32 − ⌊0.25·2^32⌋ (P = 1/4); a margin of 2 on
    # either side absorbs the float64 rounding of v (far below one coin step here).
    params = make_quant_params(num_silos=2, clip=1.0, bits=16, max_weight=1)
    x = np.array([1000.25 * params.step - 1.0])
    edge = (1 << 32) - (1 << 30)
    assert encode(x, weight=1, params=params, rng=_Coins(edge + 2))[1] == 1001
    assert encode(x, weight=1, params=params, rng=_Coins(edge - 2))[1] == 1000
    assert encode(x, weight=1, params=params, rng=_Coins(0))[1] == 1000


def test_coins_keep_32_bits_until_the_levels_need_the_room() -> None:
    assert [coin_bits(b) for b in (1, 16, 30, 31, 32)] == [32, 32, 32, 31, 30]
    for bits in (30, 31, 32):  # the largest fixed-point value stays inside int64
        assert ((1 << bits) - 1) << coin_bits(bits) < 1 << 62


def test_count_clipped_counts_both_sides_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import strategies.secagg.quantize as q

    x = np.linspace(-3, 3, 10_001, dtype=np.float32)
    expected = int(np.count_nonzero(np.abs(x) > 2.0))
    assert count_clipped(x, 2.0) == expected > 0
    monkeypatch.setattr(q, "_CHUNK", 999)
    assert count_clipped(x, 2.0) == expected
    assert count_clipped(np.zeros(0), 1.0) == 0

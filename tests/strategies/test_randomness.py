"""strategies.randomness: byte sources, the default, uniform floats and exact samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from strategies.randomness import (
    KeystreamSource,
    SystemSource,
    bernoulli_exp_neg,
    bernoulli_rational,
    default_source,
    keystream_nonce,
    random_signs,
    uniform01_open,
    uniform_below,
)

KEY = bytes(range(32))


def src(i: int = 0) -> KeystreamSource:
    return KeystreamSource(bytes([i]) * 32)


class _Constant:
    """A ByteSource of one repeated byte: the extreme words 0x00…00 and 0xFF…FF."""

    def __init__(self, byte: int) -> None:
        self.byte = byte

    def read(self, n: int) -> bytes:
        return bytes([self.byte]) * n


def test_keystream_source_is_deterministic_and_system_source_is_not():
    assert src(1).read(64) == src(1).read(64)
    assert src(1).read(64) != src(2).read(64)
    assert KeystreamSource(KEY).read(40) == KeystreamSource(KEY).read(40)
    s = SystemSource()
    assert s.read(32) != s.read(32)
    assert len(s.read(100_000)) == 100_000


def test_keystream_source_is_aes256_ctr_from_n_2_read_in_any_pieces():
    # The same stream as strategies.secagg.prg (tests/strategies/secagg/test_prg.py checks
    # that one against AES-ECB of each counter block).
    start = keystream_nonce(b"z") + (2).to_bytes(4, "big")
    expected = Cipher(algorithms.AES(KEY), modes.CTR(start)).encryptor().update(bytes(100))
    s = KeystreamSource(KEY, label=b"z")
    assert s.read(7) + s.read(0) + s.read(93) == expected
    assert KeystreamSource(KEY, label=b"other").read(100) != expected


def test_keystream_source_refuses_a_key_that_is_not_aes256():
    with pytest.raises(ValueError, match="32-byte AES-256 key, got 16"):
        KeystreamSource(bytes(16))


def test_default_source_is_a_freshly_keyed_keystream():
    a, b = default_source(), default_source()
    assert isinstance(a, KeystreamSource)
    assert a.read(32) != b.read(32)


def test_uniform01_open_interval_and_uniform():
    u = uniform01_open(200_000, rng=src())
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    u = uniform01_open(100_000, rng=KeystreamSource(KEY))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01


def test_uniform01_open_never_reaches_either_end():
    # (2k + 1)·2^-53: the smallest word gives 2^-53, the largest 1 − 2^-53 (both exact;
    # 1 − 2^-54 is not a float64 below 1: it is 1.0)
    assert uniform01_open(3, rng=_Constant(0x00)).tolist() == [2.0**-53] * 3
    top = uniform01_open(3, rng=_Constant(0xFF))
    assert top.tolist() == [1 - 2.0**-53] * 3 and (top < 1.0).all()
    assert uniform01_open((2, 3), rng=src()).shape == (2, 3)


def test_random_signs_are_fair_pm_one():
    s = random_signs(100_001, rng=src())
    assert s.shape == (100_001,) and set(np.unique(s)) == {-1.0, 1.0}
    assert abs(s.mean()) < 5 / math.sqrt(s.size)


def test_uniform_below_is_unbiased():
    b = np.full(120_000, 6, dtype=np.int64)
    counts = np.bincount(uniform_below(b, rng=src()), minlength=6)
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("num,den", [(1, 3), (2**70 + 1, 3 * 2**70)])
def test_bernoulli_rational_small_and_big_ints(num, den):
    n = 100_000
    nums = np.array([num] * n, dtype=object)
    dens = np.array([den] * n, dtype=object)
    p = num / den
    mean = bernoulli_rational(nums, dens, rng=src()).mean()
    assert abs(mean - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("num,den", [(0, 1), (1, 4), (1, 1), (5, 2), (7, 1)])
def test_bernoulli_exp_neg(num, den):
    n = 100_000
    p = math.exp(-num / den)
    got = bernoulli_exp_neg(np.full(n, num), np.full(n, den), rng=src()).mean()
    assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12

"""Randomness for secure aggregation and DP: byte sources, uniform numbers, exact samplers.

Every function that draws takes a :class:`ByteSource` (anything with ``read(n) -> bytes``)
as its keyword argument ``rng``; ``numpy.random`` is never used for secrets or noise.

Sources
    :class:`SystemSource` is the operating system's CSPRNG (``os.urandom``), read in blocks.
    :class:`KeystreamSource` is AES-256 in counter mode under a 32-byte key: the keystream
    ``AES_key(N ‖ 2) ‖ AES_key(N ‖ 3) ‖ …`` with ``N = SHA-256("xsilo-secagg/prg/" ‖ label)[:12]``
    (:func:`keystream_nonce`), the construction secure aggregation expands masks with
    (:mod:`strategies.secagg.prg`; the prefix dates from there and is kept so that streams
    stay bit-identical). With a fixed key it is reproducible (tests); with a secret key it
    is a cryptographic generator.

The default
    :func:`default_source` is ``KeystreamSource(os.urandom(32))``: a CTR-DRBG in the sense of
    NIST SP 800-90A (AES-256, keyed once from the OS, no reseeding). Stochastic rounding and
    noise draw 4–8 bytes per model coordinate per round; OpenSSL's AES-CTR yields them several
    times faster than ``os.urandom`` (``benchmarks/secagg_prg.py``), and telling the stream
    from uniform bytes means breaking AES-256. A source is not fork-safe: a forked child that
    keeps drawing from its parent's source repeats the parent's bytes, so draw a fresh
    :func:`default_source` after a fork.

Numbers
    Integer uniforms use rejection sampling (no modulo bias); Bernoulli draws with rational
    probability ``num/den`` are exact for arbitrarily large Python integers (the lazy
    comparison of a uniform bit string with the binary expansion of ``num/den``).
    :func:`uniform01_open` gives 53-bit floats on the *open* interval (0, 1), safe under
    ``log`` (Box–Muller) and for ``U < p`` tests.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "KEY_BYTES",
    "ByteSource",
    "KeystreamSource",
    "SystemSource",
    "bernoulli_exp_neg",
    "bernoulli_rational",
    "default_source",
    "keystream_nonce",
    "random_signs",
    "uniform01_open",
    "uniform_below",
    "uniform_u64",
]

KEY_BYTES = 32
_TWO64 = 1 << 64
_U64_MAX = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


class ByteSource(Protocol):
    """Anything that returns ``n`` uniformly random bytes."""

    def read(self, n: int) -> bytes: ...


class SystemSource:
    """The operating system's CSPRNG (``os.urandom``), read in blocks of ``block`` bytes."""

    def __init__(self, block: int = 1 << 16) -> None:
        self._block = block
        self._buf = b""

    def read(self, n: int) -> bytes:
        if n > self._block:
            return os.urandom(n)
        if len(self._buf) < n:
            self._buf += os.urandom(self._block)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def keystream_nonce(label: bytes) -> bytes:
    """``N = SHA-256("xsilo-secagg/prg/" ‖ label)[:12]``, the 96-bit nonce of ``label``'s
    keystream (counter blocks ``N ‖ 2``, ``N ‖ 3``, …)."""
    return hashlib.sha256(b"xsilo-secagg/prg/" + label).digest()[:12]


class KeystreamSource:
    """AES-256 counter-mode keystream under ``key`` from the counter block ``N ‖ 2``.

    Its first 2^32 − 2 blocks (64 GiB) are exactly ``strategies.secagg.prg``'s mask keystream
    for the same key and label; beyond that the 128-bit counter carries on, so a source never
    runs out. Tests pass a fixed key; ``default_source()`` a secret one.
    """

    def __init__(self, key: bytes, *, label: bytes = b"source") -> None:
        if len(key) != KEY_BYTES:
            # Keys come from code (os.urandom, HKDF, a test constant), never from a peer.
            raise ValueError(f"KeystreamSource needs a {KEY_BYTES}-byte AES-256 key, got "
                             f"{len(key)} bytes")
        start = keystream_nonce(label) + (2).to_bytes(4, "big")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(start)).encryptor()

    def read(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


def default_source() -> ByteSource:
    """The secure default: a :class:`KeystreamSource` under a fresh ``os.urandom(32)`` key."""
    return KeystreamSource(os.urandom(KEY_BYTES))


def uniform_u64(n: int, *, rng: ByteSource) -> np.ndarray:
    """``n`` independent uniform 64-bit unsigned integers (little-endian words of ``rng``)."""
    return np.frombuffer(rng.read(8 * n), dtype="<u8").astype(np.uint64, copy=True)


def uniform01_open(shape: int | tuple[int, ...], *, rng: ByteSource) -> np.ndarray:
    """Uniform floats on the open interval (0, 1): ``(2k + 1) · 2^-53``, ``k`` uniform on
    ``[0, 2^52)`` (the top 52 bits of a 64-bit word): every value exact, from ``2^-53`` to
    ``1 − 2^-53``. Never 0 and never 1 (with 53 bits, ``(k + 1/2) · 2^-53`` rounds its
    largest value to 1)."""
    size = int(np.prod(shape))
    k = uniform_u64(size, rng=rng) >> np.uint64(12)
    return ((np.uint64(2) * k + np.uint64(1)).astype(np.float64) * 2.0**-53).reshape(shape)


def random_signs(n: int, *, rng: ByteSource) -> np.ndarray:
    """``n`` independent Rademacher signs (+1/−1) as float64, one bit each."""
    bits = np.unpackbits(np.frombuffer(rng.read((n + 7) // 8), dtype=np.uint8))[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def uniform_below(bound: np.ndarray, *, rng: ByteSource) -> np.ndarray:
    """Exact uniform integers on ``[0, bound)`` per element (``1 <= bound < 2^63``), as int64.

    Rejection: accept a 64-bit ``u`` when ``u < q·bound`` with ``q = ⌊(2^64 − 1)/bound⌋``, then
    return ``u mod bound`` (uniform because ``[0, q·bound)`` is a whole number of periods).
    """
    bound = np.asarray(bound, dtype=np.uint64)
    limit = (_U64_MAX // bound) * bound
    out = np.empty(bound.shape, dtype=np.uint64)
    todo = np.arange(bound.size)
    flat_b, flat_l = bound.ravel(), limit.ravel()
    flat_out = out.ravel()
    while todo.size:
        u = uniform_u64(todo.size, rng=rng)
        ok = u < flat_l[todo]
        flat_out[todo[ok]] = u[ok] % flat_b[todo[ok]]
        todo = todo[~ok]
    return flat_out.reshape(bound.shape).astype(np.int64)


def _fits_int63(a: np.ndarray) -> bool:
    return a.dtype != object or all(int(v) < (1 << 62) for v in a)


def _bernoulli_big(num: np.ndarray, den: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Exact Bernoulli(num/den) for Python-int object arrays of any size.

    With ``thr = ⌊num · 2^64 / den⌋`` and a fresh 64-bit ``u``: ``u < thr`` means the infinite
    uniform bit string starting with ``u`` is below ``num/den`` (success), ``u > thr`` means
    above (failure); on ``u == thr`` (probability 2^-64) the residual fraction
    ``(num · 2^64 − thr · den)/den`` is compared against further bits.
    """
    out = np.zeros(num.shape, dtype=bool)
    num = num.astype(object)
    den = den.astype(object)
    todo = np.arange(num.size)
    while todo.size:
        thr = (num[todo] * _TWO64) // den[todo]
        u = uniform_u64(todo.size, rng=rng).astype(object)
        out[todo[u < thr]] = True
        tie = u == thr
        num[todo[tie]] = num[todo[tie]] * _TWO64 - thr[tie] * den[todo[tie]]
        todo = todo[tie]
    return out


def bernoulli_rational(num: np.ndarray, den: np.ndarray, *, rng: ByteSource) -> np.ndarray:
    """Exact Bernoulli(num/den) draws, elementwise, for integers ``0 <= num <= den``, ``den >= 1``.

    Small integers (below 2^62) use :func:`uniform_below` (``U < num`` with ``U`` uniform on
    ``[0, den)``); larger ones the lazy bit comparison of ``_bernoulli_big``.
    """
    num = np.asarray(num)
    den = np.asarray(den)
    if num.size == 0:
        return np.zeros(num.shape, dtype=bool)
    if _fits_int63(num.ravel()) and _fits_int63(den.ravel()):
        n64 = num.astype(np.int64)
        return uniform_below(den.astype(np.int64), rng=rng) < n64
    return _bernoulli_big(num, den, rng)


def _bernoulli_exp_neg_unit(num: np.ndarray, den: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Bernoulli(exp(−num/den)) for ``0 <= num/den <= 1`` (CKS 2020, Algorithm 1, first case).

    Draw A_k ~ Bernoulli(γ/k) for k = 1, 2, … until the first A_k = 0; return 1 iff that k is odd.
    """
    out = np.zeros(num.shape, dtype=bool)
    if den.dtype != object and den.size and int(den.max()) > (1 << 40):
        num, den = num.astype(object), den.astype(object)
    todo = np.arange(num.size)
    k = 1
    while todo.size:
        a = bernoulli_rational(num[todo], den[todo] * k, rng=rng)
        stopped = todo[~a]
        out[stopped] = k % 2 == 1
        todo = todo[a]
        k += 1
    return out


def bernoulli_exp_neg(num: np.ndarray, den: np.ndarray, *, rng: ByteSource) -> np.ndarray:
    """Exact Bernoulli(exp(−γ)) for rational ``γ = num/den >= 0``, elementwise.

    Canonne, Kamath & Steinke (2020), "The Discrete Gaussian for Differential Privacy",
    Algorithm 1: for γ > 1, exp(−γ) is the product of ⌊γ⌋ Bernoulli(exp(−1)) draws and one
    Bernoulli(exp(−(γ − ⌊γ⌋))). Arrays may be int64 or Python-int object arrays.
    """
    num = np.asarray(num).ravel()
    den = np.asarray(den).ravel()
    whole = num // den
    frac_num = num - whole * den
    alive = np.ones(num.shape, dtype=bool)
    ones = np.ones(1, dtype=np.int64)
    step = 0
    while True:
        need = np.flatnonzero(alive & (whole > step))
        if need.size == 0:
            break
        ok = _bernoulli_exp_neg_unit(np.repeat(ones, need.size), np.repeat(ones, need.size), rng)
        alive[need[~ok]] = False
        step += 1
    idx = np.flatnonzero(alive)
    alive[idx] = _bernoulli_exp_neg_unit(frac_num[idx], den[idx], rng)
    return alive

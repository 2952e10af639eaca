"""Cryptographically secure randomness for DP noise: byte sources and exact samplers.

Every function that draws takes a :class:`ByteSource` (``read(n) -> bytes``). Production
code uses :class:`SystemSource` (``os.urandom``); tests pass :class:`AesCtrSource` with a
fixed key, which is a deterministic AES-256-CTR keystream (a standard CTR-DRBG construction,
NIST SP 800-90A, without reseeding). ``numpy.random`` is never used for noise.

Exactness: integer uniforms use rejection sampling (no modulo bias), and Bernoulli draws
with rational probability ``num/den`` are exact for arbitrarily large Python integers
(the lazy comparison of a uniform bit string against the binary expansion of ``num/den``).
Floating-point uniforms carry 53 random bits and lie in the open interval (0, 1).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

__all__ = [
    "AesCtrSource",
    "ByteSource",
    "SystemSource",
    "bernoulli_exp_neg",
    "bernoulli_rational",
    "default_source",
    "random_signs",
    "uniform01",
    "uniform_below",
    "uniform_u64",
]

_TWO64 = 1 << 64
_U64_MAX = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


class ByteSource(Protocol):
    """Anything that returns ``n`` uniformly random bytes."""

    def read(self, n: int) -> bytes: ...


class SystemSource:
    """The operating system's CSPRNG (``os.urandom``), read in buffered blocks."""

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


class AesCtrSource:
    """Deterministic AES-256-CTR keystream: seedable and still a cryptographic generator.

    Use a fixed ``key`` in tests; in production ``AesCtrSource(os.urandom(32))`` is a fast
    secure source. Different ``nonce`` values give independent streams from one key.
    """

    def __init__(self, key: bytes, *, nonce: bytes = bytes(16)) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(key) != 32 or len(nonce) != 16:
            raise ValueError("AesCtrSource needs a 32-byte key and a 16-byte nonce")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()

    def read(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


def default_source() -> ByteSource:
    """The secure default: a fresh :class:`SystemSource`."""
    return SystemSource()


def uniform_u64(n: int, rng: ByteSource) -> np.ndarray:
    """``n`` independent uniform 64-bit unsigned integers."""
    return np.frombuffer(rng.read(8 * n), dtype="<u8").astype(np.uint64, copy=True)


def uniform01(shape: int | tuple[int, ...], rng: ByteSource) -> np.ndarray:
    """Uniform floats on the open interval (0, 1): ``(k + 1/2) * 2**-53``, k uniform on [0, 2**53)."""
    size = int(np.prod(shape))
    k = uniform_u64(size, rng) >> np.uint64(11)
    return ((k.astype(np.float64) + 0.5) * 2.0**-53).reshape(shape)


def random_signs(n: int, rng: ByteSource) -> np.ndarray:
    """``n`` independent Rademacher signs (+1/-1) as float64."""
    bits = np.unpackbits(np.frombuffer(rng.read((n + 7) // 8), dtype=np.uint8))[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def uniform_below(bound: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Exact uniform integers on ``[0, bound)`` per element (``1 <= bound < 2**63``).

    Rejection: accept a 64-bit ``u`` when ``u < q*bound`` with ``q = floor((2**64-1)/bound)``,
    then return ``u mod bound`` (uniform because ``[0, q*bound)`` is a whole number of periods).
    """
    bound = np.asarray(bound, dtype=np.uint64)
    limit = (_U64_MAX // bound) * bound
    out = np.empty(bound.shape, dtype=np.uint64)
    todo = np.arange(bound.size)
    flat_b, flat_l = bound.ravel(), limit.ravel()
    flat_out = out.ravel()
    while todo.size:
        u = uniform_u64(todo.size, rng)
        ok = u < flat_l[todo]
        flat_out[todo[ok]] = u[ok] % flat_b[todo[ok]]
        todo = todo[~ok]
    return flat_out.reshape(bound.shape).astype(np.int64)


def _fits_int63(a: np.ndarray) -> bool:
    return a.dtype != object or all(int(v) < (1 << 62) for v in a)


def _bernoulli_big(num: np.ndarray, den: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Exact Bernoulli(num/den) for Python-int object arrays of any size.

    With ``thr = floor(num * 2**64 / den)`` and a fresh 64-bit ``u``: ``u < thr`` means the
    infinite uniform bit string starting with ``u`` is below ``num/den`` (success), ``u > thr``
    means above (failure); on ``u == thr`` (probability 2**-64) the residual fraction
    ``(num * 2**64 - thr*den)/den`` is compared against further bits.
    """
    out = np.zeros(num.shape, dtype=bool)
    num = num.astype(object)
    den = den.astype(object)
    todo = np.arange(num.size)
    while todo.size:
        thr = (num[todo] * _TWO64) // den[todo]
        u = uniform_u64(todo.size, rng).astype(object)
        out[todo[u < thr]] = True
        tie = u == thr
        num[todo[tie]] = num[todo[tie]] * _TWO64 - thr[tie] * den[todo[tie]]
        todo = todo[tie]
    return out


def bernoulli_rational(num: np.ndarray, den: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Exact Bernoulli(num/den) draws, elementwise, for integers ``0 <= num <= den``, ``den >= 1``.

    Small integers (below 2**62) use :func:`uniform_below` (``U < num`` with ``U`` uniform on
    ``[0, den)``); larger ones the lazy bit comparison of :func:`_bernoulli_big`.
    """
    num = np.asarray(num)
    den = np.asarray(den)
    if num.size == 0:
        return np.zeros(num.shape, dtype=bool)
    if _fits_int63(num.ravel()) and _fits_int63(den.ravel()):
        n64 = num.astype(np.int64)
        return uniform_below(den.astype(np.int64), rng) < n64
    return _bernoulli_big(num, den, rng)


def _bernoulli_exp_neg_unit(num: np.ndarray, den: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for ``0 <= num/den <= 1`` (CKS 2020, Algorithm 1, first case).

    Draw A_k ~ Bernoulli(gamma/k) for k = 1, 2, ... until the first A_k = 0; return 1 iff that
    k is odd.
    """
    out = np.zeros(num.shape, dtype=bool)
    if den.dtype != object and den.size and int(den.max()) > (1 << 40):
        num, den = num.astype(object), den.astype(object)
    todo = np.arange(num.size)
    k = 1
    while todo.size:
        a = bernoulli_rational(num[todo], den[todo] * k, rng)
        stopped = todo[~a]
        out[stopped] = k % 2 == 1
        todo = todo[a]
        k += 1
    return out


def bernoulli_exp_neg(num: np.ndarray, den: np.ndarray, rng: ByteSource) -> np.ndarray:
    """Exact Bernoulli(exp(-gamma)) for rational ``gamma = num/den >= 0``, elementwise.

    Canonne, Kamath & Steinke (2020), Algorithm 1: for gamma > 1, exp(-gamma) is the product
    of floor(gamma) Bernoulli(exp(-1)) draws and one Bernoulli(exp(-(gamma - floor(gamma)))).
    Arrays may be int64 or Python-int object arrays.
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

"""Mask expansion: a 32-byte seed stretched into a uint vector by AES-256 in counter mode.

Mask expansion (Bonawitz et al., CCS 2017, §4 "PRG"): ``PRG(seed, label)`` is the AES-256
counter-mode keystream under key ``seed`` from the initial counter block ``N ‖ 2`` (a 32-bit
big-endian counter after the 96-bit nonce ``N = SHA-256("xsilo-secagg/prg/" ‖ label)[:12]``,
:func:`nonce`), read as little-endian unsigned words. That is GCTR, the counter mode inside
AES-GCM (NIST SP 800-38D, §6.5): ``AES_seed(N ‖ 2) ‖ AES_seed(N ‖ 3) ‖ …``, identical to
AES-CTR from ``N ‖ 2`` for the 2^32 − 2 blocks (64 GiB) one label may yield; longer masks are
refused.

It is produced by OpenSSL's AES-GCM encryptor on zeros, tag discarded: on CPUs with VAES and
AVX-512 (or AVX2) OpenSSL's GCM code computes the keystream about twice as fast as its CTR mode
(``benchmarks/secagg_prg.py``). ``tests/strategies/secagg/test_prg.py`` checks the output
against counter blocks encrypted one at a time with AES-ECB.

Reduction modulo ``M = 2^k`` is free: every modulus in this package is a power of two dividing
``2^32`` or ``2^64``, so masks are added with the dtype's natural wrap-around and the result is
reduced once, at the end, with ``& (M - 1)``. Uniform words mod ``2^64`` stay uniform mod ``M``.

Seeds are secrets of the protocol, not random draws; the byte sources that draw them (and the
seedable :class:`~strategies.randomness.KeystreamSource`, the same keystream read as bytes) are
in :mod:`strategies.randomness`. ``numpy.random`` is never used.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from strategies.randomness import KEY_BYTES
from strategies.randomness import keystream_nonce as nonce
from xsilo.errors import ConfigError, ProtocolError

__all__ = [
    "add_mask",
    "dtype_for_bits",
    "expand",
    "nonce",
]

SEED_BYTES = KEY_BYTES
_CHUNK_BYTES = 1 << 20  # keystream block size for add_mask: large enough to amortise calls, cache-sized
_ZEROS = memoryview(bytes(_CHUNK_BYTES))
MAX_STREAM_BYTES = (2**32 - 2) * 16  # GCTR's 32-bit counter, from N ‖ 2 up to N ‖ 2^32 − 1


def dtype_for_bits(modulus_bits: int) -> np.dtype:
    """``uint32`` for moduli up to ``2^32``, ``uint64`` up to ``2^64``."""
    if not 1 <= modulus_bits <= 64:
        raise ConfigError(f"modulus_bits must be an integer in 1..64 (masks are uint32 or uint64 "
                          f"words), got {modulus_bits!r}; let make_quant_params size the modulus")
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def _cipher(seed: bytes, label: bytes, nbytes: int = 0) -> Cipher:
    if len(seed) != SEED_BYTES:
        raise ProtocolError(f"a mask seed must be {SEED_BYTES} bytes (an AES-256 key), got "
                            f"{len(seed)}: the self-mask or pair seed is truncated or malformed; "
                            "no mask is expanded from it and the round must be aborted")
    if nbytes > MAX_STREAM_BYTES:
        raise ConfigError(f"a mask of {nbytes} bytes is longer than one keystream's "
                          f"{MAX_STREAM_BYTES} bytes (2^32 − 2 AES blocks); split the vector "
                          "into several secure-aggregation vectors below that size")
    # GCM's encryptor on zeros is the GCTR keystream from N ‖ 2 (see the module docstring);
    # the tag is never computed (no finalize) and nothing here is authenticated.
    return Cipher(algorithms.AES(seed), modes.GCM(nonce(label)))


def expand(seed: bytes, *, label: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """``PRG(seed, label)`` as ``length`` words reduced modulo ``2^modulus_bits``.

    Returns a fresh ``uint32``/``uint64`` array (see :func:`dtype_for_bits`).
    """
    dtype = dtype_for_bits(modulus_bits)
    nbytes = length * dtype.itemsize
    raw = np.empty(nbytes + 16, dtype=np.uint8)  # update_into wants len(data) + 15 bytes of room
    view, enc = memoryview(raw), _cipher(seed, label, nbytes).encryptor()
    for start in range(0, nbytes, _CHUNK_BYTES):  # 1 MiB at a time: no n-byte zero buffer
        count = min(_CHUNK_BYTES, nbytes - start)
        enc.update_into(_ZEROS[:count], view[start:start + count + 15])
    out = raw[:nbytes].view(dtype)  # little-endian hosts only (checked below)
    if modulus_bits < dtype.itemsize * 8:
        np.bitwise_and(out, dtype.type((1 << modulus_bits) - 1), out=out)
    return out


def add_mask(acc: np.ndarray, seed: bytes, *, label: bytes, sign: int = 1) -> None:
    """``acc += sign · PRG(seed, label)`` in place, modulo ``2^(8·acc.itemsize)``.

    ``acc`` must be a contiguous ``uint32``/``uint64`` vector; the caller reduces modulo its
    ``M = 2^k`` once at the end. The keystream is produced in 1 MiB blocks into one reused
    buffer, so the cost is the keystream plus one add per word.
    """
    # Programming errors (the callers pass their own accumulators and literal signs): plain
    # ValueError, with a traceback, rather than an error a peer or a config could cause.
    if acc.dtype not in (np.uint32, np.uint64) or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError("add_mask needs a contiguous 1-D uint32/uint64 array")
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    enc = _cipher(seed, label, acc.nbytes).encryptor()
    per_chunk = max(1, min(_CHUNK_BYTES // acc.itemsize, acc.size))
    buf = bytearray(per_chunk * acc.itemsize + 15)  # update_into wants len(data) + 15 bytes room
    words = np.frombuffer(buf, dtype=acc.dtype, count=per_chunk)
    op = np.add if sign == 1 else np.subtract
    for start in range(0, acc.size, per_chunk):
        count = min(per_chunk, acc.size - start)
        enc.update_into(_ZEROS[: count * acc.itemsize], buf)
        part = acc[start : start + count]
        op(part, words[:count], out=part)


if np.little_endian is False:  # pragma: no cover - every supported platform is little-endian
    raise ImportError("strategies.secagg.prg assumes a little-endian host")


"""Masked vectors on the wire at the width the sum needs, not the width of a machine word.

A masked word is uniform modulo ``M = 2^k`` (``k`` = the run's ``modulus_bits``: the bits the
largest sum needs, ``⌈log2(n · W · (2^b − 1) + 1)⌉``), but it lives in a ``uint32`` or
``uint64``. :func:`pack_bits` keeps the low ``k`` bits of each word, concatenated
little-endian (bit ``j`` of word ``i`` is bit ``i·k + j`` of the stream), in groups of 8
words = ``k`` bytes (the last group zero-padded); :func:`unpack_bits` is its inverse. A run
with ``k = 21`` sends 21/32 of the bytes. Both place each word of a group into the group's
64-bit lanes (one or two shifts per word, then one byte view), in chunks, so no temporary
grows with the model.
"""

from __future__ import annotations

import numpy as np

from xsilo.errors import ProtocolError

__all__ = ["pack_bits", "packed_size", "unpack_bits"]

_GROUPS = 1 << 15  # groups of 8 words per pass


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` words of ``bits`` bits take packed (whole groups of 8 words)."""
    return -(-count // 8) * bits


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _places(bits: int) -> list[tuple[int, int, bool]]:
    """Where word ``j`` of a group sits in the group's little-endian 64-bit lanes:
    ``(lane, shift, spills into the next lane)``."""
    return [(j * bits // 64, j * bits % 64, j * bits % 64 + bits > 64) for j in range(8)]


def pack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits of each ``uint32``/``uint64`` word, packed (uint8)."""
    w = np.ascontiguousarray(words)
    width = 8 * w.itemsize
    if w.dtype not in (np.uint32, np.uint64) or w.ndim != 1 or not 1 <= bits <= width:
        raise ValueError(f"pack_bits needs a 1-D uint32/uint64 vector and 1..{width} bits")
    groups = -(-w.size // 8)
    lanes = -(-bits // 8)  # 8 words of `bits` bits fill `bits` bytes: this many 64-bit lanes
    out = np.empty((groups, bits), dtype=np.uint8)
    mask, places = _mask(bits), _places(bits)
    for start in range(0, groups, _GROUPS):
        stop = min(groups, start + _GROUPS)
        chunk = w[8 * start:8 * stop]
        if chunk.size < 8 * (stop - start):  # the last group, zero-padded
            chunk = np.concatenate([chunk, np.zeros(8 * (stop - start) - chunk.size, w.dtype)])
        grid = chunk.reshape(-1, 8)
        acc = np.zeros((lanes, len(grid)), dtype=np.uint64)
        for j, (lane, shift, spills) in enumerate(places):
            x = grid[:, j].astype(np.uint64) & mask
            acc[lane] |= x << np.uint64(shift)
            if spills:
                acc[lane + 1] |= x >> np.uint64(64 - shift)
        out[start:stop] = acc.T.astype("<u8", order="C").view(np.uint8).reshape(len(grid), 8 * lanes)[
            :, :bits]
    return out.reshape(-1)


def unpack_bits(packed: np.ndarray, *, bits: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` words of ``dtype``; a stream of the wrong size
    is a ProtocolError (it came from a peer)."""
    dtype = np.dtype(dtype)
    width = 8 * dtype.itemsize
    if not isinstance(packed, np.ndarray):  # np.asarray of a peer's ragged list would raise
        raise ProtocolError(f"a packed vector of {count} {bits}-bit words must be a uint8 "
                            f"array, got {type(packed).__name__}")
    p = packed
    if (p.dtype != np.uint8 or p.ndim != 1 or not 1 <= bits <= width
            or p.size != packed_size(count, bits)):
        raise ProtocolError(f"a packed vector of {count} {bits}-bit words must be "
                            f"{packed_size(count, bits)} bytes, got {p.dtype}[{p.size}]")
    groups = -(-count // 8)
    lanes = -(-bits // 8)
    grid = p.reshape(groups, bits)
    words = np.empty((groups, 8), dtype=dtype)
    mask, places = _mask(bits), _places(bits)
    for start in range(0, groups, _GROUPS):
        stop = min(groups, start + _GROUPS)
        raw = np.zeros((stop - start, 8 * lanes), dtype=np.uint8)
        raw[:, :bits] = grid[start:stop]
        acc = raw.view("<u8").T.astype(np.uint64, order="C")  # lane-major: one contiguous row per lane
        for j, (lane, shift, spills) in enumerate(places):
            x = acc[lane] >> np.uint64(shift)
            if spills:
                x |= acc[lane + 1] << np.uint64(64 - shift)
            words[start:stop, j] = x & mask
    return words.reshape(-1)[:count]

"""Masked vectors on the wire at the width the sum needs, not the width of a machine word.

A masked word is uniform modulo ``M = 2^k`` (``k`` = the run's ``modulus_bits``: the bits the
largest sum needs, ``⌈log2(n · W · (2^b − 1) + 1)⌉``), but it lives in a ``uint32`` or
``uint64``. :func:`pack_bits` keeps the low ``k`` bits of each word, concatenated
little-endian (bit ``j`` of word ``i`` is bit ``i·k + j`` of the stream), in groups of 8
words = ``k`` bytes (the last group zero-padded); :func:`unpack_bits` is its inverse. A run
with ``k = 21`` sends 21/32 of the bytes. Both are a few vector operations per byte of a
group, in chunks, so no temporary grows with the model.
"""

from __future__ import annotations

import numpy as np

from xsilo.errors import ProtocolError

__all__ = ["pack_bits", "packed_size", "unpack_bits"]

_GROUPS = 1 << 15  # groups of 8 words per pass


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` words of ``bits`` bits take packed (whole groups of 8 words)."""
    return -(-count // 8) * bits


def _spans(bits: int) -> list[list[tuple[int, int]]]:
    """For each byte of a group: ``(word, shift)`` pairs whose bits it holds; a positive
    shift takes the word's bits from there, a negative one moves them up."""
    out = []
    for b in range(bits):
        lo, hi = 8 * b, 8 * b + 8
        out.append([(j, lo - j * bits) for j in range(8)
                    if j * bits < hi and (j + 1) * bits > lo])
    return out


def pack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits of each ``uint32``/``uint64`` word, packed (uint8)."""
    w = np.ascontiguousarray(words)
    width = 8 * w.itemsize
    if w.dtype not in (np.uint32, np.uint64) or w.ndim != 1 or not 1 <= bits <= width:
        raise ValueError(f"pack_bits needs a 1-D uint32/uint64 vector and 1..{width} bits")
    groups = -(-w.size // 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:w.size] = w
    padded &= np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(~0 & (2**64 - 1))
    grid = padded.reshape(groups, 8)
    out = np.empty((groups, bits), dtype=np.uint8)
    spans = _spans(bits)
    for start in range(0, groups, _GROUPS):
        g, o = grid[start:start + _GROUPS], out[start:start + _GROUPS]
        for b, parts in enumerate(spans):
            acc = np.zeros(len(g), dtype=np.uint64)
            for j, shift in parts:
                acc |= (g[:, j] >> np.uint64(shift)) if shift >= 0 else (
                    g[:, j] << np.uint64(-shift))
            o[:, b] = acc.astype(np.uint8)  # the low byte
    return out.reshape(-1)


def unpack_bits(packed: np.ndarray, *, bits: int, count: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` words of ``dtype``; a stream of the wrong size
    is a ProtocolError (it came from a peer)."""
    dtype = np.dtype(dtype)
    width = 8 * dtype.itemsize
    p = np.asarray(packed)
    if (p.dtype != np.uint8 or p.ndim != 1 or not 1 <= bits <= width
            or p.size != packed_size(count, bits)):
        raise ProtocolError(f"a packed vector of {count} {bits}-bit words must be "
                            f"{packed_size(count, bits)} bytes, got {p.dtype}[{p.size}]")
    groups = -(-count // 8)
    grid = p.reshape(groups, bits)
    words = np.empty((groups, 8), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    owners: list[list[tuple[int, int]]] = [[] for _ in range(8)]
    for b, parts in enumerate(_spans(bits)):
        for j, shift in parts:
            owners[j].append((b, shift))
    for start in range(0, groups, _GROUPS):
        g, o = grid[start:start + _GROUPS], words[start:start + _GROUPS]
        for j, parts in enumerate(owners):
            acc = np.zeros(len(g), dtype=np.uint64)
            for b, shift in parts:  # byte b holds this word's bits from `shift` on
                byte = g[:, b].astype(np.uint64)
                acc |= (byte << np.uint64(shift)) if shift >= 0 else (
                    byte >> np.uint64(-shift))
            o[:, j] = acc & mask
    return words.reshape(-1)[:count].astype(dtype)

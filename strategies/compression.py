"""Update compression for clear rounds: fewer bytes from each silo, decoded back to a dense
update at the coordinator (pure functions: numpy in, numpy out; no Flower).

Methods (a run chooses one; a silo's policy may refuse it):

* ``q8`` / ``q4`` — **unbiased stochastic quantization** to 8 or 4 bits per value. The
  flattened update is cut into chunks of :data:`CHUNK` values; each chunk is sent as its
  minimum and maximum (float32) and one level per value, ``x ≈ lo + q·(hi − lo)/(2^b − 1)``,
  where ``q`` rounds up with probability equal to the fractional part (16-bit dither from a
  cryptographic keystream), so ``E[decoded] = x`` exactly up to the dither's resolution.
  Bytes: ``b/32`` of float32 plus 8 bytes per chunk (≈ 0.252× at 8 bits, 0.127× at 4).
* ``topk`` — **top-k sparsification with error feedback**: the ``fraction`` of values
  largest in magnitude (of the update plus the silo's carried residual) travel as indices
  (uint32) and float32 values; what was not sent is the next round's residual, kept at the
  silo (Stich et al. 2018; Karimireddy et al. 2019). Bytes: ``2·fraction`` of float32.
* ``prune`` — a **pruning mask** both sides derive from the global model itself: the
  ``fraction`` of weights largest in magnitude (ties broken by position), the classic
  magnitude-pruning seed. Only the update at those positions travels (float32, no indices:
  the coordinator computes the same mask from the model it sent). Bytes: ``fraction``.

:func:`decode` is written for hostile input: every size, index and bound is checked and a
violation is a :class:`~xsilo.errors.ProtocolError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from strategies.randomness import ByteSource, default_source
from strategies.secagg.packing import pack_bits, packed_size, unpack_bits
from xsilo.errors import ConfigError, ProtocolError
from xsilo.terms import COMPRESSION_METHODS

__all__ = ["CHUNK", "METHODS", "Compressed", "check_method", "compressed_bytes", "decode",
           "encode", "prune_mask", "top_k"]

METHODS = COMPRESSION_METHODS
CHUNK = 4096  # values per quantization chunk (its own min and max)
_BITS = {"q8": 8, "q4": 4}


def check_method(method: str, fraction: float) -> None:
    """ConfigError unless ``method`` is one of :data:`METHODS` and ``fraction`` (top-k and
    prune) is in (0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"compression = {method!r}: must be one of {', '.join(METHODS)}")
    if method in ("topk", "prune") and not (0.0 < fraction <= 1.0):
        raise ConfigError(f"compression_fraction = {fraction}: must be in (0, 1] (e.g. 0.01 "
                          f"keeps 1 % of the values for {method})")


@dataclass(frozen=True)
class Compressed:
    """One compressed update as it travels: the method, the dense length, and its arrays
    (``levels`` + ``lo`` + ``hi`` for q8/q4; ``indices`` + ``values`` for topk; ``values``
    for prune)."""

    method: str
    length: int
    arrays: Mapping[str, np.ndarray]


def compressed_bytes(c: Compressed) -> int:
    return int(sum(np.asarray(a).nbytes for a in c.arrays.values()))


def _kept(length: int, fraction: float) -> int:
    return max(1, min(length, math.ceil(fraction * length)))


def top_k(vector: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted indices of the ``⌈fraction·n⌉`` values largest in magnitude."""
    k = _kept(vector.size, fraction)
    if k == vector.size:
        return np.arange(vector.size, dtype=np.uint32)
    idx = np.argpartition(np.abs(vector), vector.size - k)[vector.size - k:]
    return np.sort(idx).astype(np.uint32)


def prune_mask(model: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted indices of the ``⌈fraction·n⌉`` weights of ``model`` largest in magnitude, ties
    to the lower position — the same on every machine (a stable sort, no partition)."""
    k = _kept(model.size, fraction)
    order = np.argsort(-np.abs(model.astype(np.float64)), kind="stable")
    return np.sort(order[:k]).astype(np.uint32)


def _dither(n: int, rng: ByteSource) -> np.ndarray:
    """``n`` uniforms on (0, 1) at 16-bit resolution (for stochastic rounding)."""
    k = np.frombuffer(rng.read(2 * n), dtype="<u2").astype(np.float32)
    return (k + np.float32(0.5)) * np.float32(1.0 / 65536)


def _quantize(vector: np.ndarray, bits: int, rng: ByteSource) -> dict[str, np.ndarray]:
    n = vector.size
    chunks = -(-n // CHUNK)
    padded = np.zeros(chunks * CHUNK, dtype=np.float32)
    padded[:n] = vector
    blocks = padded.reshape(chunks, CHUNK)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    if n % CHUNK:  # the padding of the last chunk must not widen its range
        tail = vector[(chunks - 1) * CHUNK:]
        lo[-1], hi[-1] = tail.min(), tail.max()
    levels = float(2**bits - 1)
    span = (hi - lo).astype(np.float32)
    scale = np.where(span > 0, np.float32(levels) / np.where(span > 0, span, 1), 0).astype(
        np.float32)
    scaled = (blocks - lo[:, None]) * scale[:, None]
    q = np.floor(scaled + _dither(blocks.size, rng).reshape(blocks.shape))
    q = np.clip(q, 0, levels).astype(np.uint32).reshape(-1)[:n]
    return {"levels": pack_bits(q, bits), "lo": lo.astype(np.float32),
            "hi": hi.astype(np.float32)}


def encode(vector: np.ndarray, method: str, *, fraction: float = 0.01,
           model: np.ndarray | None = None, rng: ByteSource | None = None) -> Compressed:
    """Compress the flattened update ``vector`` (float32 or float64). ``model`` (the
    flattened global model) is needed for ``prune``; ``rng`` for q8/q4 (default: a fresh
    cryptographic keystream). For ``topk`` pass update + residual; the residual left is
    ``vector − decode(...)``."""
    v = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    check_method(method, fraction)
    if method in _BITS:
        return Compressed(method, v.size, _quantize(v, _BITS[method], rng or default_source()))
    if method == "topk":
        idx = top_k(v, fraction)
        return Compressed(method, v.size, {"indices": idx, "values": v[idx]})
    if method == "prune":
        if model is None or np.asarray(model).size != v.size:
            raise ConfigError("prune needs the flattened global model the update belongs to")
        return Compressed(method, v.size, {"values": v[prune_mask(np.asarray(model), fraction)]})
    raise ConfigError("compression 'none' has nothing to encode")


def _array(arrays: Mapping[str, np.ndarray], name: str, dtype: str, size: int | None,
           method: str) -> np.ndarray:
    if name not in arrays:
        raise ProtocolError(f"{method} update without its {name!r} array")
    a = np.asarray(arrays[name])
    if a.dtype != np.dtype(dtype) or a.ndim != 1 or (size is not None and a.size != size):
        raise ProtocolError(f"{method} update: {name!r} is {a.dtype} {a.shape}, expected "
                            f"{dtype} of {'any' if size is None else size} values")
    return a


def decode(c: Compressed, *, length: int, fraction: float,
           model: np.ndarray | None = None) -> np.ndarray:
    """The dense float32 update of length ``length`` (the model's) from a peer's
    :class:`Compressed`, with the run's ``fraction``; ProtocolError for anything that does
    not fit the run (method, sizes, dtypes, indices, ranges)."""
    method = c.method
    expected = set({"q8": ("levels", "lo", "hi"), "q4": ("levels", "lo", "hi"),
                    "topk": ("indices", "values"), "prune": ("values",)}.get(method, ()))
    if not expected:
        raise ProtocolError(f"unknown compression {method!r}")
    if c.length != length:
        raise ProtocolError(f"{method} update of {c.length} values for a model of {length}")
    if set(c.arrays) != expected:
        raise ProtocolError(f"{method} update carries {sorted(c.arrays)}, expected "
                            f"{sorted(expected)}")
    if method in _BITS:
        bits, chunks = _BITS[method], -(-length // CHUNK)
        lo = _array(c.arrays, "lo", "float32", chunks, method)
        hi = _array(c.arrays, "hi", "float32", chunks, method)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
            raise ProtocolError(f"{method} update: chunk ranges must be finite with lo <= hi")
        packed = _array(c.arrays, "levels", "uint8", packed_size(length, bits), method)
        q = unpack_bits(packed, bits=bits, count=length, dtype=np.uint32)
        out = np.empty(chunks * CHUNK, dtype=np.float32)
        out[:length] = q
        out[length:] = 0
        blocks = out.reshape(chunks, CHUNK)
        blocks *= ((hi - lo) / np.float32(2**bits - 1))[:, None]
        blocks += lo[:, None]
        return out[:length]
    k = _kept(length, fraction)
    values = _array(c.arrays, "values", "float32", k, method)
    if not np.isfinite(values).all():
        raise ProtocolError(f"{method} update: values must be finite")
    if method == "topk":
        idx = _array(c.arrays, "indices", "uint32", k, method)
        if k and (int(idx[-1]) >= length or (k > 1 and not (np.diff(idx.astype(np.int64)) > 0)
                                                         .all())):
            raise ProtocolError("topk update: indices must be increasing and below the "
                                f"model's {length} values")
    else:
        if model is None or np.asarray(model).size != length:
            raise ConfigError("decoding a pruned update needs the flattened global model")
        idx = prune_mask(np.asarray(model), fraction)
    out = np.zeros(length, dtype=np.float32)
    out[idx] = values
    return out

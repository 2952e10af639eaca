"""Named numpy arrays ↔ Flower ``ArrayRecord`` (shared by the coordinator and silo edges).

Flower 1.42 moves every ``Array`` of a message as objects of their own (the array and at
least one chunk), each a separate request to and from the SuperLink, and a request costs
the SuperLink about as much as megabytes of payload (``benchmarks/RESULTS.md``, *A
deployed round's CPU, process by process*: the same 1M parameters as 60 tensors, one
``Array`` each, made a deployed round 12 times as long as packed). So several arrays
travel **packed**:
one ``Array`` under the key :data:`PACKED`, its bytes

    u32 little-endian H | H bytes of JSON: {"arrays": [[name, dtype, shape, offset], …]}
    | each array's bytes at its offset (a multiple of :data:`ALIGN`, ascending, no overlap)

and a single array travels as Flower's own ``Array``. :func:`record_to_arrays` reads both
as hostile: any size, offset, dtype, shape or name in a packed header, and any ``.npy``
header or metadata of a single ``Array``, that does not fit is a
:class:`~xsilo.errors.ProtocolError` naming it. The coordinator decodes them as
read-only views of the record's bytes (no copy); a silo gets writable arrays of its own.
``XSILO_PACK_ARRAYS=0`` in a sender's environment sends one Flower ``Array`` per array, as
Flower does (a benchmark's comparison; every receiver reads both).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tokenize
import warnings
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.lib import format as npy_format

from xsilo.errors import ProtocolError

__all__ = ["ALIGN", "PACK_ENV", "PACKED", "arrays_to_record", "pack", "record_to_arrays",
           "unpack"]

PACKED = "xsilo.packed/1"
"""The ``ArrayRecord`` key (and the ``Array``'s ``stype``) of packed arrays."""
PACK_ENV = "XSILO_PACK_ARRAYS"  # "0": one Flower Array per array, as Flower sends
ALIGN = 64  # bytes: every array starts at a multiple of this in the packed buffer
_DTYPE_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what xsilo sends
_HEADER_LIMIT = 64 * 1024 * 1024  # a header longer than this is not one xsilo wrote
_MAX_ELEMENTS = 2**40  # any array's, zeros counted as 1 (numpy's limit: near 2**60)
_MAX_ARRAYS = 2**16  # arrays in one record (a large model has a few thousand tensors)
_SHAPE_RULE = f"at most 32 dimensions of at most {_MAX_ELEMENTS} elements, zeros counted as 1"
_NUMPY_STYPE = "numpy.ndarray"  # Flower's Array of one numpy array: .npy bytes


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _c_order(a: np.ndarray) -> np.ndarray:
    """``a`` in C order, its shape kept (``np.ascontiguousarray`` makes a scalar 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def pack(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays → one buffer (module docstring); one copy of each array's bytes."""
    contiguous = {name: _c_order(a) for name, a in arrays.items()}
    relative, offset = [], 0  # each array's offset from the first one's
    for a in contiguous.values():
        relative.append(offset)
        offset = _padded(offset + a.nbytes)
    start = 0  # where the first array begins: after the header, which names the offsets
    while True:
        header = json.dumps({"arrays": [
            [name, a.dtype.str, list(a.shape), start + rel]
            for (name, a), rel in zip(contiguous.items(), relative)]},
            separators=(",", ":")).encode()
        if _padded(4 + len(header)) <= start:
            break
        start = _padded(4 + len(header))  # grows, so the header's digits settle
    entries = [start + rel for rel in relative]
    parts: list[bytes | memoryview] = [struct.pack("<I", len(header)), header]
    at = 4 + len(header)
    for where, a in zip(entries, contiguous.values()):
        parts.append(b"\0" * (where - at))
        parts.append(memoryview(a.reshape(-1).view(np.uint8)))
        at = where + a.nbytes
    return b"".join(parts)


def unpack(buffer: bytes) -> dict[str, np.ndarray]:
    """One packed buffer → named read-only arrays (views of ``buffer``); ProtocolError for
    anything that is not a buffer :func:`pack` could have written."""
    if len(buffer) < 4:
        raise ProtocolError(f"packed arrays: {len(buffer)} bytes, too short for a header")
    (size,) = struct.unpack_from("<I", buffer)
    if size > min(len(buffer) - 4, _HEADER_LIMIT):
        raise ProtocolError(f"packed arrays: a {size}-byte header in {len(buffer)} bytes")
    try:
        entries = json.loads(bytes(buffer[4:4 + size]).decode("utf-8"))["arrays"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise ProtocolError(f"packed arrays: header is not the expected JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ProtocolError("packed arrays: the header's arrays is not a list")
    if len(entries) > _MAX_ARRAYS:
        raise ProtocolError(f"packed arrays: {len(entries)} arrays, at most {_MAX_ARRAYS}")
    out: dict[str, np.ndarray] = {}
    end = 4 + size
    for entry in entries:
        out_name, array, end = _entry(entry, buffer, end)
        if out_name in out:
            raise ProtocolError(f"packed arrays: {out_name!r} appears twice")
        out[out_name] = array
    return out


def _entry(entry: object, buffer: bytes, end: int) -> tuple[str, np.ndarray, int]:
    """One header entry checked against the buffer and the previous array's ``end``."""
    if not (isinstance(entry, list) and len(entry) == 4):
        raise ProtocolError(f"packed arrays: entry {entry!r:.80} is not [name, dtype, "
                            "shape, offset]")
    name, dtype_str, shape, offset = entry
    if not isinstance(name, str):
        raise ProtocolError(f"packed arrays: name {name!r:.40} is not a string")
    try:
        dtype = np.dtype(dtype_str) if isinstance(dtype_str, str) else None
    except (TypeError, ValueError, SyntaxError):  # numpy parses comma strings as code-like
        dtype = None
    if dtype is None or dtype.kind not in _DTYPE_KINDS or dtype.itemsize > 8:
        raise ProtocolError(f"packed arrays: {name!r} has dtype {dtype_str!r:.40}, not a "
                            "bool, integer or float type")
    if not (isinstance(shape, list) and _sane(shape)):
        raise ProtocolError(f"packed arrays: {name!r} has shape {shape!r:.80} ({_SHAPE_RULE})")
    if type(offset) is not int or offset < end or offset % ALIGN:
        raise ProtocolError(f"packed arrays: {name!r} at offset {offset!r:.40}, expected an "
                            f"aligned offset from {end} on")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if offset + nbytes > len(buffer):
        raise ProtocolError(f"packed arrays: {name!r} ({nbytes} bytes at {offset}) runs past "
                            f"the buffer's {len(buffer)} bytes")
    if count:
        array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)
    else:  # numpy refuses an empty view at the buffer's very end
        array = np.empty(shape, dtype=dtype)
        array.flags.writeable = False
    return name, array, offset + nbytes


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays → ``ArrayRecord``: one Flower ``Array`` for one array, the
    arrays packed into one (:data:`PACKED`) for more (order preserved)."""
    if len(arrays) <= 1 or os.environ.get(PACK_ENV, "1") == "0":
        return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})
    data = pack(arrays)
    return ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(data),), stype=PACKED,
                                      data=data)})


def record_to_arrays(record: ArrayRecord, *, views: bool = False) -> dict[str, np.ndarray]:
    """``ArrayRecord`` → named numpy arrays (order preserved), packed or not: writable arrays
    of their own, as Flower's ``Array.numpy()`` gives (a silo's model code may change them
    in place), or with ``views`` read-only views of the record's bytes (the coordinator
    holds each reply once). Never Flower's ``Array.numpy()``: its ``np.load`` reserves
    whatever size a ``.npy`` header claims before reading a byte."""
    if len(record.keys()) > _MAX_ARRAYS:
        raise ProtocolError(f"a record of {len(record.keys())} arrays, at most {_MAX_ARRAYS}")
    if PACKED in record.keys():
        if len(record.keys()) != 1:
            raise ProtocolError(f"packed arrays beside others: {sorted(record.keys())}")
        array = record[PACKED]
        if array.stype != PACKED or not isinstance(array.data, bytes):
            raise ProtocolError(f"packed arrays with stype {array.stype!r:.40}")
        arrays = unpack(array.data)
        return arrays if views else {name: a.copy() for name, a in arrays.items()}
    return {name: _single(name, record[name], view=views) for name in record.keys()}


def _single(name: str, array: Array, *, view: bool = False) -> np.ndarray:
    """One Flower ``Array`` (``.npy`` bytes) → a writable array of its own (with ``view``:
    a read-only view of the bytes); ProtocolError for anything but a bool, integer or float
    array whose ``.npy`` header agrees with the ``Array``'s dtype and shape and whose bytes
    are exactly its data. The header is read here, not by ``np.load``: that allocates
    whatever size a header claims. A header numpy can read only with a warning (Python 2
    syntax) is refused too."""
    if array.stype != _NUMPY_STYPE or not isinstance(array.data, bytes):
        raise ProtocolError(f"array {name!r} has stype {array.stype!r:.40}, expected "
                            f"{_NUMPY_STYPE!r} (or a packed record)")
    stream = io.BytesIO(array.data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            version = npy_format.read_magic(stream)
            read = {(1, 0): npy_format.read_array_header_1_0,
                    (2, 0): npy_format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
            shape, fortran, dtype = read(stream)
    except (ValueError, TypeError, SyntaxError, RecursionError, OverflowError,
            tokenize.TokenError, Warning) as exc:  # numpy tokenizes a header it cannot parse
        raise ProtocolError(f"array {name!r}: its bytes are not a .npy array ({exc})") from None
    if dtype.kind not in _DTYPE_KINDS or dtype.itemsize > 8:
        raise ProtocolError(f"array {name!r} has dtype {str(dtype)!r:.40}, not a bool, integer "
                            "or float type")
    if not _sane(list(shape)):
        raise ProtocolError(f"array {name!r} has shape {tuple(shape)!r:.80} ({_SHAPE_RULE})")
    if str(dtype) != array.dtype or list(shape) != list(array.shape):
        raise ProtocolError(f"array {name!r}: its data is {str(dtype)!r:.40} {tuple(shape)!r:.80}"
                            f" but the Array says {array.dtype!r:.40} {tuple(array.shape)!r:.80}")
    count, start = math.prod(shape), stream.tell()
    if start + count * dtype.itemsize != len(array.data):
        raise ProtocolError(f"array {name!r}: {tuple(shape)!r:.80} of {str(dtype)!r} needs "
                            f"{count * dtype.itemsize} bytes after its {start}-byte header, the "
                            f"data has {len(array.data) - start}")
    if not count:  # numpy refuses an empty view at the buffer's very end
        empty = np.empty(shape, dtype=dtype)
        empty.flags.writeable = not view
        return empty
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=start)
    shaped = flat.reshape(shape, order="F" if fortran else "C")
    return shaped if view else shaped.copy(order="K")


def _sane(shape: list[Any]) -> bool:
    """Whether ``shape`` is one numpy can hold: at most 32 non-negative int dimensions of at
    most :data:`_MAX_ELEMENTS` elements, its zero dimensions counted as 1 (an empty array's
    other dimensions no byte count bounds; and a product of many digits is no array size:
    its text would exceed Python's limit on converting integers)."""
    return len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape) and (
        math.prod(d for d in shape if d) <= _MAX_ELEMENTS)

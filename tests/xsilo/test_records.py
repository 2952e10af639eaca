"""xsilo.records: named arrays ↔ ArrayRecord, several arrays packed into one Flower Array,
and a packed buffer from a peer parsed as hostile input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xsilo.errors import ProtocolError
from xsilo.records import ALIGN, PACK_ENV, PACKED, arrays_to_record, pack, record_to_arrays, unpack

ODD = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2),
       "empty": np.zeros((0, 3), np.uint8), "scalar": np.array(3, dtype=np.int64),
       "transposed": np.arange(12, dtype=np.int32).reshape(3, 4).T,
       "big-endian": np.arange(3, dtype=">f4"), "mask": np.array([True, False]),
       "last-empty": np.zeros(0, np.float16)}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)  # names and their order
    for name, a in want.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a)


def test_several_arrays_travel_as_one_flower_array_and_come_back_as_they_were() -> None:
    record = arrays_to_record(ODD)
    assert list(record.keys()) == [PACKED]
    assert record[PACKED].stype == PACKED and record[PACKED].dtype == "uint8"
    out = record_to_arrays(record)
    _same(out, ODD)
    out["w"] += 1  # a silo's own arrays: its model code may change them in place
    wire = np.frombuffer(record[PACKED].data, np.uint8)
    assert not np.shares_memory(out["w"], wire)
    seen = record_to_arrays(record, views=True)  # the coordinator's: the wire bytes, once
    _same(seen, ODD)
    assert not seen["w"].flags.writeable
    assert all(np.shares_memory(seen[n], wire) for n in ("w", "b"))


def test_one_array_travels_as_flowers_own_array() -> None:
    record = arrays_to_record({"w": np.arange(4, dtype=np.float32)})
    assert list(record.keys()) == ["w"] and record["w"].stype == "numpy.ndarray"
    _same(record_to_arrays(record), {"w": np.arange(4, dtype=np.float32)})
    assert record_to_arrays(arrays_to_record({})) == {}


def test_packing_can_be_turned_off_for_a_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PACK_ENV, "0")
    record = arrays_to_record(ODD)
    assert list(record.keys()) == list(ODD)  # one Flower Array each
    _same(record_to_arrays(record), {**ODD, "scalar": ODD["scalar"].reshape(1)})  # Flower's


def test_every_array_starts_aligned() -> None:
    buffer = pack(ODD)
    (size,) = struct.unpack_from("<I", buffer)
    entries = json.loads(buffer[4:4 + size])["arrays"]
    assert [e[0] for e in entries] == list(ODD)
    assert all(e[3] % ALIGN == 0 and e[3] >= 4 + size for e in entries)


@settings(max_examples=60, deadline=None)
@given(st.lists(hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.uint32, np.uint8,
                                                  np.int64, np.bool_]),
                           shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                  max_side=5)),
                min_size=2, max_size=6))
def test_any_arrays_round_trip(arrays: list[np.ndarray]) -> None:
    named = {f"t{i}": a for i, a in enumerate(arrays)}
    _same(unpack(pack(named)), named)


def _buffer(entries: object, body: bytes = b"\0" * 256, raw_header: bytes | None = None) -> bytes:
    header = raw_header if raw_header is not None else json.dumps({"arrays": entries}).encode()
    start = -(-(4 + len(header)) // ALIGN) * ALIGN
    return (struct.pack("<I", len(header)) + header).ljust(start, b"\0") + body


def _at(header_entries: list) -> int:
    """The first aligned offset after a header holding ``header_entries``."""
    return -(-(4 + len(json.dumps({"arrays": header_entries}).encode())) // ALIGN) * ALIGN


@pytest.mark.parametrize(("buffer", "says"), [
    (b"\1\0", "too short"),
    (struct.pack("<I", 10**6) + b"{}", "header in"),
    (_buffer(None, raw_header=b"\xff\xfe not json"), "not the expected JSON"),
    (_buffer(None, raw_header=b'{"other": []}'), "not the expected JSON"),
    (_buffer(None, raw_header=b'{"arrays": {"w": 1}}'), "is not a list"),
    (_buffer(None, raw_header=b"[" * 100_000 + b"]" * 100_000), "not the expected JSON"),
    (_buffer([["w", "i4,(2", [2], 128]]), "not a bool, integer or float"),
    (_buffer([["w", "(2,)f4", [2], 128]]), "not a bool, integer or float"),
    (_buffer([["w", "<f4", [2]]]), r"is not \[name, dtype, shape, offset\]"),
    (_buffer([[7, "<f4", [2], 64]]), "is not a string"),
    (_buffer([["w", "|O", [2], 128]]), "not a bool, integer or float"),
    (_buffer([["w", "<c16", [2], 128]]), "not a bool, integer or float"),
    (_buffer([["w", "<U3", [2], 128]]), "not a bool, integer or float"),
    (_buffer([["w", "no-such-type", [2], 128]]), "not a bool, integer or float"),
    (_buffer([["w", "<f4", [-1], 128]]), "has shape"),
    (_buffer([["w", "<f4", [True], 128]]), "has shape"),
    (_buffer([["w", "<f4", "2", 128]]), "has shape"),
    (_buffer([["w", "<f4", [2], 65]]), "expected an aligned offset"),
    (_buffer([["w", "<f4", [2], 0]]), "expected an aligned offset"),  # inside the header
    (_buffer([["w", "<f4", [2], 2.0 * 64]]), "expected an aligned offset"),
    (_buffer([["w", "<f4", [10**12], 128]]), "runs past"),
    (_buffer([["w", "<f4", [2**40, 2**40], 128]]), "has shape"),
    (_buffer([["w", "<f4", [10**2000] * 3, 128]]), "has shape"),  # no 6000-digit size text
    (_buffer([[f"w{i}", "<f4", [0], 128] for i in range(2**16 + 1)]), "at most 65536"),
])
def test_a_malformed_packed_buffer_is_a_protocol_error(buffer: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        unpack(buffer)


def test_arrays_may_not_overlap_or_repeat_a_name() -> None:
    at = _at([["w", "<f4", [32], 10**6], ["v", "<f4", [32], 10**6]])
    overlapping = _buffer([["w", "<f4", [32], at], ["v", "<f4", [32], at + 64]])
    with pytest.raises(ProtocolError, match="expected an aligned offset"):
        unpack(overlapping)
    twice = _buffer([["w", "<f4", [16], at], ["w", "<f4", [16], at + 64]])
    with pytest.raises(ProtocolError, match="appears twice"):
        unpack(twice)
    fine = unpack(_buffer([["w", "<f4", [16], at], ["v", "<f4", [16], at + 64]]))
    assert list(fine) == ["w", "v"]


def test_a_packed_record_that_is_not_only_that_is_refused() -> None:
    data = pack({"a": np.ones(2), "b": np.zeros(2)})
    packed = Array(dtype="uint8", shape=(len(data),), stype=PACKED, data=data)
    with pytest.raises(ProtocolError, match="beside others"):
        record_to_arrays(ArrayRecord({PACKED: packed, "w": Array(np.ones(2))}))
    other = Array(dtype="uint8", shape=(len(data),), stype="numpy.ndarray", data=data)
    with pytest.raises(ProtocolError, match="stype"):
        record_to_arrays(ArrayRecord({PACKED: other}))


@pytest.mark.parametrize("shape", [[0, 10**30], [0, 2**62, 2**62], [2**40, 0, 2**20]])
def test_an_empty_array_of_absurd_dimensions_is_a_protocol_error(shape: list[int]) -> None:
    with pytest.raises(ProtocolError, match="has shape"):
        unpack(_buffer([["w", "<f8", shape, 128]]))
    assert unpack(_buffer([["w", "<f8", [0, 2**20], 128]]))["w"].shape == (0, 2**20)


def _npy(header: dict, body: bytes) -> bytes:
    """``.npy`` bytes with any header (``np.save`` writes only true ones)."""
    import io

    from numpy.lib import format as npy_format

    out = io.BytesIO()
    npy_format.write_array_header_1_0(out, header)
    return out.getvalue() + body


def _npy_text(header: str, body: bytes = b"") -> bytes:
    """``.npy`` bytes whose header is ``header`` as written (padded as numpy pads it)."""
    text = header.encode("latin1")
    pad = -(10 + len(text)) % 64
    text = text[:-1] + b" " * pad + b"\n" if text.endswith(b"\n") else text + b" " * pad
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def _one(data: bytes, dtype: str = "float64", shape: tuple = (2,),
         stype: str = "numpy.ndarray") -> ArrayRecord:
    return ArrayRecord({"w": Array(dtype=dtype, shape=shape, stype=stype, data=data)})


HEADER = {"descr": "<f8", "fortran_order": False, "shape": (2,)}


@pytest.mark.parametrize(("record", "says"), [
    (_one(b"\x93NUMPY garbage"), "not a .npy array"),
    (_one(b"not npy at all"), "not a .npy array"),
    (_one(_npy({**HEADER, "shape": "(2,"}, b"\0" * 16)), "not a .npy array"),
    (_one(b"\0" * 16, stype="torch.raw"), "stype 'torch.raw'"),
    (_one(_npy({**HEADER, "descr": "|O"}, b"\0" * 16)), "not a .npy array|not a bool"),
    (_one(_npy({**HEADER, "descr": "<c16"}, b"\0" * 32)), "not a bool, integer or float"),
    (_one(_npy(HEADER, b"\0" * 16), dtype="float32"), "the Array says 'float32'"),
    (_one(_npy(HEADER, b"\0" * 16), shape=(1, 2)), r"the Array says 'float64' \(1, 2\)"),
    (_one(_npy(HEADER, b"\0" * 8)), "needs 16 bytes"),
    (_one(_npy(HEADER, b"\0" * 24)), "needs 16 bytes"),
    (_one(_npy({**HEADER, "shape": (10**12,)}, b"\0" * 16), shape=(10**12,)), "needs 8000000"),
    (_one(_npy({**HEADER, "shape": (0, 10**30)}, b""), shape=(0, 10**30)), "has shape"),
    (_one(_npy({**HEADER, "shape": (10**2000,) * 3}, b""), shape=(10**2000,) * 3), "has shape"),
    # headers numpy can only tokenize (TokenError) or read with a warning (Python 2 syntax)
    (_one(_npy_text("{\n")), "not a .npy array"),
    (_one(_npy_text("{'descr': '<f8'} \\\n")), "not a .npy array"),
    (_one(_npy_text("'" * 3 + "abc\n")), "not a .npy array"),
    (_one(_npy_text("{'descr': '<f8', 'fortran_order': False, 'shape': (2L,), }\n",
                    b"\0" * 16)), "not a .npy array"),
    (ArrayRecord({f"w{i}": Array(np.zeros(1)) for i in range(2**16 + 1)}), "at most 65536"),
])
def test_a_malformed_single_array_is_a_protocol_error(record: ArrayRecord, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        record_to_arrays(record)


def test_a_single_array_is_read_as_numpy_wrote_it() -> None:
    for a in (np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(np.ones((3, 2))),
              np.zeros((0, 4), np.uint8), np.array([True, False])):
        got = record_to_arrays(ArrayRecord({"w": Array(a)}))["w"]
        assert got.dtype == a.dtype and got.shape == a.shape and got.flags.writeable
        np.testing.assert_array_equal(got, a)

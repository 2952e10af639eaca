"""Masked vectors travel packed to the modulus width: exact round trips, sizes, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from secagg_helpers import prop_settings, random_inputs, small_federation

from strategies.secagg import coordinator as co
from strategies.secagg import message_from_record, silo_step
from strategies.secagg.packing import pack_bits, packed_size, unpack_bits
from xsilo.errors import ProtocolError


@prop_settings(200)
@given(bits=st.integers(1, 64), count=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_then_unpack_is_exact(bits: int, count: int, seed: int) -> None:
    dtype = np.uint32 if bits <= 32 else np.uint64
    gen = np.random.default_rng(seed)  # test data only
    words = (gen.integers(0, 2**63, count, dtype=np.uint64, endpoint=True)
             & np.uint64((1 << bits) - 1)).astype(dtype)
    packed = pack_bits(words, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(count, bits)
    assert packed.size <= (count + 7) // 8 * bits
    np.testing.assert_array_equal(unpack_bits(packed, bits=bits, count=count, dtype=dtype), words)


@prop_settings(100)
@given(bits=st.integers(1, 64), count=st.integers(1, 100), seed=st.integers(0, 2**32 - 1))
def test_the_wire_format_is_the_little_endian_bit_stream(bits: int, count: int,
                                                         seed: int) -> None:
    """Bit j of word i is bit i·k + j of the stream (a peer's release packs it so): checked
    against the stream built bit by bit, high bits of each word ignored."""
    dtype = np.uint32 if bits <= 32 else np.uint64
    gen = np.random.default_rng(seed)  # test data only
    words = gen.integers(0, 2**63, count, dtype=np.uint64, endpoint=True).astype(dtype)
    as_bits = np.unpackbits(words.astype("<u8").view(np.uint8).reshape(count, 8), axis=1,
                            bitorder="little")[:, :bits].reshape(-1)
    stream = np.zeros(packed_size(count, bits) * 8, dtype=np.uint8)
    stream[:as_bits.size] = as_bits
    np.testing.assert_array_equal(pack_bits(words, bits),
                                  np.packbits(stream, bitorder="little"))


def test_a_packed_vector_of_the_wrong_size_is_a_protocol_error() -> None:
    packed = pack_bits(np.arange(10, dtype=np.uint32), 5)
    with pytest.raises(ProtocolError, match="10 5-bit words must be 10 bytes"):
        unpack_bits(packed[:-1], bits=5, count=10, dtype=np.uint32)
    with pytest.raises(ProtocolError, match="must be"):
        unpack_bits(packed.astype(np.uint16), bits=5, count=10, dtype=np.uint32)


def test_a_masked_input_travels_at_the_modulus_width() -> None:
    fed = small_federation(length=1000)  # clip 1, 16 bits, W 50, n 5: k = 24 bits
    updates, weights = random_inputs(fed, 1)
    state, requests = co.begin_round(fed.coordinator, round_=1)
    _, masked = silo_step(fed.silos[10], requests[10], update=updates[10], weight=weights[10])
    record = masked.to_record()
    k = fed.config.quant.modulus_bits
    assert k == 24 and record["masked"].nbytes == packed_size(1001, k) < masked.masked.nbytes * 0.76
    back = message_from_record(record)
    np.testing.assert_array_equal(back.masked, masked.masked)
    assert co.receive_masked(state, back).acc is not None
    for bad in ({"count": 2**40}, {"bits": 0}, {"count": 1000}):
        with pytest.raises(ProtocolError):
            message_from_record({**record, **bad})

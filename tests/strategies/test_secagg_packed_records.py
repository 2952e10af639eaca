"""A masked input's packed vector from a peer: whatever stands in for it is a ProtocolError."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.secagg.messages import MaskedInput, message_from_record
from strategies.secagg.packing import pack_bits, unpack_bits
from xsilo.errors import ProtocolError

BASE = {"kind": MaskedInput.KIND, "run_id": "r", "round": 1, "silo": 1, "recipients": [],
        "bundles": [], "commitments": [], "bits": 8}


@pytest.mark.parametrize("masked", [
    [[1], [1, 2]],  # ragged: numpy cannot even make an array of it
    [1.5] * 8, [1] * 8, None, b"\x00" * 8, "x" * 8, {"a": 1},
    np.zeros(8, dtype=np.int64), np.zeros((2, 4), dtype=np.uint8),
])
def test_anything_but_the_packed_bytes_is_a_protocol_error(masked: object) -> None:
    with pytest.raises(ProtocolError, match="packed vector of 8 8-bit words"):
        message_from_record({**BASE, "count": 8, "masked": masked})


def test_the_packed_bytes_parse() -> None:
    words = np.arange(8, dtype=np.uint32)
    message = message_from_record({**BASE, "count": 8, "masked": pack_bits(words, 8)})
    assert isinstance(message, MaskedInput)
    np.testing.assert_array_equal(message.masked, words)


def test_unpack_takes_only_an_array() -> None:
    with pytest.raises(ProtocolError, match="must be a uint8 array, got list"):
        unpack_bits([[1], [1, 2]], bits=8, count=2, dtype=np.uint32)  # type: ignore[arg-type]

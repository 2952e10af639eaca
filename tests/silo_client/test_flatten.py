"""xsilo.protocol.flatten_update: the model's tensor order, and the vector's dtype."""

from __future__ import annotations

import numpy as np
import pytest

from xsilo.errors import ModelError, ProtocolError
from xsilo.protocol import flatten_update, unflatten_update

TEMPLATE = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def test_tensors_follow_the_template_order_and_default_to_float64() -> None:
    arrays = {"b": np.array([7, 8, 9], np.float32), "w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    flat = flatten_update(arrays, TEMPLATE)
    assert flat.dtype == np.float64 and flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    back = unflatten_update(flat, TEMPLATE)
    assert all(np.array_equal(back[k], arrays[k]) for k in TEMPLATE)


@pytest.mark.parametrize(("dtypes", "expected"), [
    ((np.float32, np.float32), np.float32),  # a float32 model stays float32: half the bytes
    ((np.float16, np.float32), np.float32),
    ((np.float32, np.float64), np.float64),
    ((np.int8, np.int64), np.float64),  # integers never become a narrow float
])
def test_dtype_none_keeps_the_tensors_common_float_type(dtypes, expected) -> None:
    arrays = {"w": np.ones((2, 3), dtypes[0]), "b": np.full(3, 2, dtypes[1])}
    flat = flatten_update(arrays, TEMPLATE, dtype=None)
    assert flat.dtype == expected and flat.tolist() == [1.0] * 6 + [2.0] * 3


def test_a_missing_or_misshapen_tensor_is_named() -> None:
    with pytest.raises(ModelError, match="do not match"):
        flatten_update({"w": np.zeros((2, 3))}, TEMPLATE)
    with pytest.raises(ModelError, match="'b' has shape"):
        flatten_update({"w": np.zeros((2, 3)), "b": np.zeros(4)}, TEMPLATE, dtype=None)


def test_a_summed_vector_of_another_length_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="has 8 values but the model has 9"):
        unflatten_update(np.zeros(8), TEMPLATE)

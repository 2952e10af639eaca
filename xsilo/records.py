"""Named numpy arrays ↔ Flower ``ArrayRecord`` (shared by the coordinator and silo edges)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["arrays_to_record", "record_to_arrays"]


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays → ``ArrayRecord`` (order preserved)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``ArrayRecord`` → named numpy arrays (order preserved)."""
    return {name: record[name].numpy() for name in record.keys()}

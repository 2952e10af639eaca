"""The wire contract between the coordinator and its silos: record keys and message kinds.

Both sides import these names so a renamed key cannot silently break one side.

Secure aggregation adds two message types (``train.secagg_setup`` once per run,
``train.unmask`` in every round) and one fixed **flattening order** for masked updates:
the tensors in the order of the global model's ``ArrayRecord`` as the coordinator sent it
(which is the model's parameter order), each raveled in C order, as float64. Both sides
derive the order from that same message, so it cannot drift between them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from xsilo.errors import ModelError, ProtocolError

__all__ = [
    "ARRAYS",
    "COMPRESSED",
    "COMPRESSED_HEADER",
    "CONFIG",
    "DELTA",
    "ERROR_CODES",
    "METRICS",
    "SECAGG",
    "SECAGG_ARRAYS",
    "SECAGG_SETUP",
    "SECAGG_UNMASK",
    "SILO",
    "flatten_update",
    "model_length",
    "unflatten_update",
]

ARRAYS = "arrays"  # ArrayRecord: the global model sent to silos / initial model from a silo
DELTA = "delta"  # ArrayRecord: a silo's update (local model − global model)
CONFIG = "config"  # ConfigRecord: per-message instructions from the coordinator
METRICS = "metrics"  # MetricRecord: numbers a silo reports
SILO = "silo"  # ConfigRecord: silo identity, schema fingerprint, model spec (query reply)
COMPRESSED = "compressed"  # ArrayRecord: a compressed update in place of DELTA
COMPRESSED_HEADER = "compressed-header"  # ConfigRecord: its CompressedHeader
SECAGG = "secagg"  # ConfigRecord: one strategies.secagg protocol message (its scalar fields)
SECAGG_ARRAYS = "secagg-arrays"  # ArrayRecord: its vector fields (the masked input)

SECAGG_SETUP = "train.secagg_setup"  # key setup, once per run (KeyRequest → KeyAdvert)
SECAGG_UNMASK = "train.unmask"  # round trip 2 of a secure round (UnmaskRequest → UnmaskResponse)

# Flower Error codes used for typed silo-side refusals (reason is JSON: type, reason, message).
ERROR_CODES = {
    "XsiloError": 9000,
    "PolicyRefusal": 9001,
    "DataValidationError": 9002,
    "ModelError": 9003,
    "ConfigError": 9004,
    "ProtocolError": 9005,
    "SecureAggregationError": 9006,
    "PrivacyBudgetExceeded": 9007,
    "KeysMissing": 9008,
}


def model_length(template: Mapping[str, np.ndarray]) -> int:
    """Number of values in a flattened model."""
    return int(sum(np.asarray(a).size for a in template.values()))


def flatten_update(arrays: Mapping[str, np.ndarray], template: Mapping[str, np.ndarray], *,
                   dtype: np.dtype | type | None = np.float64) -> np.ndarray:
    """One vector: ``arrays`` in ``template``'s tensor order, each in C order.

    ``dtype`` is the vector's (float64 by default); ``None`` keeps the tensors' common type
    (a float32 model stays float32: half the bytes, when the consumer converts anyway;
    integer tensors still give float64). ModelError names a tensor that does not match.
    """
    missing = [k for k in template if k not in arrays]
    if missing or len(arrays) != len(template):
        raise ModelError(f"update tensors {sorted(arrays)} do not match the model's "
                         f"{list(template)}; every silo must build the model the coordinator "
                         "sends (same spec and schema)")
    if dtype is None:
        kinds = [np.asarray(arrays[k]).dtype for k in template]
        common = np.result_type(*kinds) if kinds else np.dtype(np.float64)
        dtype = common if common.kind == "f" else np.dtype(np.float64)
    out = np.empty(model_length(template), dtype=dtype)
    pos = 0
    for name, ref in template.items():
        value = np.asarray(arrays[name])
        if value.shape != np.shape(ref):
            raise ModelError(f"tensor {name!r} has shape {value.shape}, the model's is "
                             f"{np.shape(ref)}; every silo must build the same model")
        out[pos:pos + value.size] = value.ravel()
        pos += value.size
    return out


def unflatten_update(vector: np.ndarray, template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten_update`: float64 tensors named and shaped as ``template``
    (ProtocolError when the vector's length is not the model's)."""
    if vector.size != model_length(template):
        raise ProtocolError(f"the summed vector has {vector.size} values but the model has "
                            f"{model_length(template)}; the secure-aggregation run was set up "
                            "for another model (re-key the silos)")
    out, pos = {}, 0
    for name, ref in template.items():
        size = int(np.asarray(ref).size)
        out[name] = np.asarray(vector[pos:pos + size], dtype=np.float64).reshape(np.shape(ref))
        pos += size
    return out

"""The wire contract between the coordinator and its silos: record keys and message kinds.

Both sides import these names so a renamed key cannot silently break one side.
"""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "CONFIG",
    "DELTA",
    "ERROR_CODES",
    "METRICS",
    "SILO",
]

ARRAYS = "arrays"  # ArrayRecord: the global model sent to silos / initial model from a silo
DELTA = "delta"  # ArrayRecord: a silo's update (local model − global model)
CONFIG = "config"  # ConfigRecord: per-message instructions from the coordinator
METRICS = "metrics"  # MetricRecord: numbers a silo reports
SILO = "silo"  # ConfigRecord: silo identity, schema fingerprint, model spec (query reply)

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
}

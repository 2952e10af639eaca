"""One exception hierarchy for every xsilo package.

::

    XsiloError
    ├── ConfigError                 a config file or run setting is invalid
    ├── DataValidationError         local data does not match its declared schema
    ├── ModelError                  a model cannot be built, federated or loaded with given parameters
    ├── PolicyRefusal               the silo's site policy forbids this run or round
    ├── EnrollmentError             PKI, certificate, enrollment request or bundle problem
    ├── DeploymentError             a process, port, binary or connection problem
    ├── StrategyError               a strategy is unknown, misconfigured or incompatible
    │   └── UpdateRejected          one silo's update is unusable (non-finite, wrong shape)
    ├── ProtocolError               a peer sent a malformed, tampered or out-of-order message
    │   ├── SecureAggregationError  the secure-aggregation round cannot complete safely
    │   └── KeysMissing             a silo lost its secure-aggregation keys (it gets re-keyed)
    └── PrivacyBudgetExceeded       the next round would exceed the privacy budget

Every message names the offending parameter or file, the value received, the rule it
broke and the fix. The CLI prints them as one red line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataValidationError",
    "DeploymentError",
    "EnrollmentError",
    "KeysMissing",
    "ModelError",
    "PolicyRefusal",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "SecureAggregationError",
    "StrategyError",
    "UpdateRejected",
    "XsiloError",
]


class XsiloError(Exception):
    """Base class of every error xsilo raises on purpose.

    ``silo`` names the silo(s) an error is about, when one is to blame (a run's failure
    record, ``summary.json`` ``error.silo``, says so); None otherwise.
    """

    silo: str | None = None


class ConfigError(XsiloError):
    """A configuration file or run setting is invalid."""


class DataValidationError(XsiloError):
    """Local data does not match the declared schema (file, column and row are named).

    ``public``: what the coordinator may read (the error reply): the same without the
    offending cell's content or the file's full path; the message itself stays local.
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


class ModelError(XsiloError):
    """A model cannot be built, federated, or loaded with the given parameters."""


class PolicyRefusal(XsiloError):
    """The silo's site policy forbids the run or round.

    ``reason`` is a short machine-readable code (e.g. ``"max_epsilon"``) that travels to
    the coordinator in the error reply; the message is the human explanation.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EnrollmentError(XsiloError):
    """A PKI, certificate, enrollment request or bundle problem."""


class DeploymentError(XsiloError):
    """A process, port, binary or connection problem while running a federation."""


class StrategyError(XsiloError):
    """A strategy is unknown, misconfigured, or incompatible with the run."""


class UpdateRejected(StrategyError):
    """One silo's update cannot be aggregated (non-finite values, wrong shape, bad weight)."""


class ProtocolError(XsiloError):
    """A peer sent a malformed, tampered, replayed or out-of-order protocol message."""


class SecureAggregationError(ProtocolError):
    """A secure-aggregation round cannot complete without breaking its guarantees."""


class KeysMissing(ProtocolError):
    """A silo holds no secure-aggregation keys for the run, or not the ones the coordinator
    has for it (it restarted, lost its state or missed the key setup). The silo refuses the
    request; the coordinator re-keys it before its next round (``coordinator.secure``)."""


class PrivacyBudgetExceeded(XsiloError):
    """The next round would exceed the configured privacy budget."""

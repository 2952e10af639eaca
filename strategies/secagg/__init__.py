"""Masked secure aggregation with dropout recovery (Bonawitz et al., CCS 2017 style), Flower-free.

The protocol is two pure state machines — :func:`silo_step` for a silo and the
``coordinator`` functions for the coordinator — over the plain-data messages of
:mod:`strategies.secagg.messages`. The math lives in small modules: :mod:`~.prg` (AES-CTR mask
expansion), :mod:`~.crypto` (X25519, HKDF, AES-GCM), :mod:`~.shamir` (t-of-n sharing),
:mod:`~.quantize` (clipping, stochastic rounding, modulus). See docs/secure-aggregation.md.
"""

from strategies.secagg.coordinator import (
    CoordinatorStage,
    CoordinatorState,
    RoundResult,
    abort_round,
    begin_round,
    finish_round,
    receive_advert,
    receive_masked,
    receive_unmask,
    request_more_unmask,
    request_rekey,
    request_unmask,
    start_run,
)
from strategies.secagg.config import SecAggConfig, make_config
from strategies.secagg.messages import (
    KeyAdvert,
    KeyRequest,
    MaskedInput,
    MaskRequest,
    Message,
    UnmaskRequest,
    UnmaskResponse,
    message_from_record,
)
from strategies.secagg.quantize import ErrorReport, QuantParams, make_quant_params, validate_params
from strategies.secagg.silo import (
    SiloIdentity,
    SiloLimits,
    SiloStage,
    SiloState,
    new_silo,
    silo_state_from_record,
    silo_state_to_record,
    silo_step,
)

__all__ = [
    "CoordinatorStage",
    "CoordinatorState",
    "ErrorReport",
    "KeyAdvert",
    "KeyRequest",
    "MaskRequest",
    "MaskedInput",
    "Message",
    "QuantParams",
    "RoundResult",
    "SecAggConfig",
    "SiloIdentity",
    "SiloLimits",
    "SiloStage",
    "SiloState",
    "UnmaskRequest",
    "UnmaskResponse",
    "abort_round",
    "begin_round",
    "finish_round",
    "make_config",
    "make_quant_params",
    "message_from_record",
    "new_silo",
    "receive_advert",
    "receive_masked",
    "receive_unmask",
    "request_more_unmask",
    "request_rekey",
    "request_unmask",
    "silo_state_from_record",
    "silo_state_to_record",
    "silo_step",
    "start_run",
    "validate_params",
]

"""The package's public API is pinned (import freedom: tests/strategies/test_import_freedom.py)."""

from __future__ import annotations

import strategies.secagg as secagg

EXPECTED = [
    "CoordinatorStage", "CoordinatorState", "ErrorReport", "KeyAdvert", "KeyRequest",
    "MaskRequest", "MaskedInput", "Message", "QuantParams", "RoundResult", "SecAggConfig", "SiloIdentity", "SiloLimits",
    "SiloStage", "SiloState", "UnmaskRequest", "UnmaskResponse", "abort_round", "begin_round",
    "finish_round", "make_config", "make_quant_params", "message_from_record", "new_silo",
    "receive_advert", "receive_masked", "receive_unmask", "request_more_unmask", "request_rekey", "request_unmask",
    "silo_state_from_record", "silo_state_to_record", "silo_step", "start_run", "validate_params",
]


def test_all_is_pinned():
    assert sorted(secagg.__all__) == sorted(EXPECTED)
    assert all(hasattr(secagg, name) for name in EXPECTED)

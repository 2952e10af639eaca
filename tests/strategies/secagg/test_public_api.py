"""The package's public API is pinned, and importing it loads neither Flower nor torch."""

from __future__ import annotations

import subprocess
import sys

import strategies.secagg as secagg

EXPECTED = [
    "CoordinatorStage", "CoordinatorState", "ErrorReport", "KeyAdvert", "KeyRequest",
    "MaskRequest", "MaskedInput", "Message", "QuantParams", "RoundResult", "SecAggConfig",
    "SiloStage", "SiloState", "UnmaskRequest", "UnmaskResponse", "abort_round", "begin_round",
    "finish_round", "make_config", "make_quant_params", "message_from_record", "new_silo",
    "receive_advert", "receive_masked", "receive_unmask", "request_more_unmask", "request_rekey", "request_unmask",
    "silo_state_from_record", "silo_state_to_record", "silo_step", "start_run", "validate_params",
]


def test_all_is_pinned():
    assert sorted(secagg.__all__) == sorted(EXPECTED)
    assert all(hasattr(secagg, name) for name in EXPECTED)


def test_clean_import_loads_neither_flower_nor_torch():
    code = ("import sys, strategies.secagg, strategies.secagg.simulate; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'torch', 'ray')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

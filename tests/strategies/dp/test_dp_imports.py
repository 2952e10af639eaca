"""The math modules stay Flower-free and torch-free; the public API is pinned."""

from __future__ import annotations

import subprocess
import sys

import strategies.dp


def test_import_loads_neither_flwr_nor_torch():
    code = (
        "import sys, strategies.dp, strategies.dp.accounting, strategies.dp.distributed;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'torch', 'opacus'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_numpy_random_in_noise_paths():
    import inspect

    from strategies.dp import adaptive, central, distributed, noise, randomness

    for mod in (noise, randomness, distributed, adaptive, central):
        assert "np.random" not in inspect.getsource(mod), mod.__name__


def test_public_api_pinned():
    assert sorted(strategies.dp.__all__) == [
        "Accountant", "AdaptiveClipState", "AesCtrSource", "ByteSource", "ClipAccumulator", "ClipResult",
        "ClippedSum", "DDGCalibration", "DDGParams", "DPConfig", "GaussianRound",
        "PrivacyBudget", "SystemSource", "ZCDPRound", "add_central_noise", "check_silo_policy",
        "clip_and_sum", "clip_update", "decode_sum", "default_source", "discrete_gaussian",
        "encode_update", "gaussian_noise", "l2_norm", "split_noise_multiplier",
        "weighted_sum_sensitivity",
    ]

"""No numpy.random in the noise paths; the public API is pinned (import freedom:
tests/strategies/test_import_freedom.py)."""

from __future__ import annotations

import strategies.dp


def test_no_numpy_random_in_noise_paths():
    import inspect

    from strategies import randomness
    from strategies.dp import adaptive, central, distributed, noise

    for mod in (noise, randomness, distributed, adaptive, central):
        assert "np.random" not in inspect.getsource(mod), mod.__name__


def test_public_api_pinned():
    assert sorted(strategies.dp.__all__) == [
        "Accountant", "AdaptiveClipState", "ByteSource", "ClipAccumulator", "ClipResult",
        "ClippedSum", "DDGCalibration", "DDGParams", "DPConfig", "GaussianRound",
        "KeystreamSource", "PrivacyBudget", "SystemSource", "ZCDPRound", "add_central_noise",
        "check_silo_policy", "clip_and_sum", "clip_update", "decode_sum", "default_source", "discrete_gaussian",
        "encode_update", "gaussian_noise", "l2_norm", "split_noise_multiplier",
        "weighted_sum_sensitivity",
    ]

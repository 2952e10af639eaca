"""Differential privacy for xsilo: mechanisms, clipping and accounting.

Silo-level DP protects each institution's whole update (central: the coordinator adds
Gaussian noise; distributed: each silo adds discrete Gaussian shares under secure
aggregation); record-level DP-SGD (``strategies.dp.dpsgd``, torch + Opacus, imported on
demand) protects each record inside a silo. ε is computed by Google's ``dp_accounting``.
Randomness (byte sources, exact samplers) is :mod:`strategies.randomness`, shared with secure
aggregation; its source names are re-exported here. Nothing here imports Flower or torch. See
docs/privacy.md.
"""

from strategies.dp.accounting import (
    Accountant,
    GaussianRound,
    PrivacyBudget,
    ZCDPRound,
    check_silo_policy,
)
from strategies.dp.adaptive import AdaptiveClipState, split_noise_multiplier
from strategies.dp.central import ClipAccumulator, ClippedSum, add_central_noise, clip_and_sum
from strategies.dp.clipping import ClipResult, clip_update, l2_norm, weighted_sum_sensitivity
from strategies.dp.config import DPConfig
from strategies.dp.distributed import DDGCalibration, DDGParams, decode_sum, encode_update
from strategies.dp.noise import discrete_gaussian, gaussian_noise
from strategies.randomness import ByteSource, KeystreamSource, SystemSource, default_source

__all__ = [
    "Accountant",
    "AdaptiveClipState",
    "ByteSource",
    "ClipAccumulator",
    "ClipResult",
    "ClippedSum",
    "DDGCalibration",
    "DDGParams",
    "DPConfig",
    "GaussianRound",
    "KeystreamSource",
    "PrivacyBudget",
    "SystemSource",
    "ZCDPRound",
    "add_central_noise",
    "check_silo_policy",
    "clip_and_sum",
    "clip_update",
    "decode_sum",
    "default_source",
    "discrete_gaussian",
    "encode_update",
    "gaussian_noise",
    "l2_norm",
    "split_noise_multiplier",
    "weighted_sum_sensitivity",
]

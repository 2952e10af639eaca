"""The auxiliary sum: a few non-negative statistics masked and summed beside the update.

Some numbers a silo should not send in the clear are only needed as a sum over silos: its
evaluation loss times its example count, its example count, the squared norm of its update.
A run declares ``aux_length`` slots; each silo encodes its statistics ``a ∈ [0, 2^32)`` in
fixed point with unbiased stochastic rounding,

    ã = ⌊a · 2^16⌋ + Bernoulli(frac(a · 2^16))        (uint64, below 2^48)

and masks them exactly like the update, with the same per-round seeds under their own PRG
labels (``"self-aux"``, ``"pair-aux"``): no further key agreement or shares, and the pair
masks cancel the same way. The coordinator unmasks ``Σ ã`` (mod 2^64: no wrap for up to
2^16 silos) and reads ``Σ a ≈ Σ ã · 2^-16`` (error below ``n · 2^-16`` per slot). A value
outside ``[0, 2^32)`` is clipped; NaN or infinity is refused.
"""

from __future__ import annotations

import numpy as np

from strategies.randomness import ByteSource, uniform01_open
from xsilo.errors import SecureAggregationError, UpdateRejected

__all__ = ["AUX_FRAC_BITS", "AUX_MAX", "MAX_AUX_LENGTH", "MAX_AUX_SILOS", "decode_aux",
           "encode_aux"]

AUX_FRAC_BITS = 16
AUX_VALUE_BITS = 48
AUX_MAX = float(1 << (AUX_VALUE_BITS - AUX_FRAC_BITS))  # values are clipped below this
MAX_AUX_LENGTH = 4096
MAX_AUX_SILOS = 1 << (64 - AUX_VALUE_BITS)  # sums of this many stay below 2^64

PAIR_AUX_LABEL = b"pair-aux"
SELF_AUX_LABEL = b"self-aux"


def encode_aux(values: np.ndarray, *, length: int, rng: ByteSource) -> np.ndarray:
    """``length`` statistics as fixed-point uint64 words (see the module docstring)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size != length:
        raise UpdateRejected(f"the run sums {length} auxiliary statistics, the silo gave "
                             f"{a.size}")
    if not np.isfinite(a).all():
        raise UpdateRejected("an auxiliary statistic is NaN or infinite; it cannot be summed")
    scaled = np.clip(a, 0.0, AUX_MAX - 2.0**-AUX_FRAC_BITS) * float(1 << AUX_FRAC_BITS)
    floor = np.floor(scaled)
    up = uniform01_open(a.size, rng=rng) < (scaled - floor)
    return (floor.astype(np.uint64) + up.astype(np.uint64)).astype(np.uint64)


def decode_aux(total: np.ndarray, *, count: int) -> np.ndarray:
    """The float sums from the unmasked ``Σ ã``; words above ``count · 2^48`` mean a mask
    was left in (SecureAggregationError)."""
    t = np.asarray(total, dtype=np.uint64)
    if t.size and int(t.max()) >= count * (1 << AUX_VALUE_BITS):
        raise SecureAggregationError(
            f"an unmasked auxiliary sum exceeds {count} silos × 2^{AUX_VALUE_BITS}: the masks "
            "did not cancel (a wrong share or seed); the round fails, the model is kept")
    return t.astype(np.float64) / float(1 << AUX_FRAC_BITS)

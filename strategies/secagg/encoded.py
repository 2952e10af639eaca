"""Masking a vector the silo already encoded (pre-encoded mode), e.g. a distributed-DP share.

The float path (:mod:`~.quantize`) clips, quantizes and weights a float update itself. A
mechanism that encodes its own integers — the distributed discrete Gaussian
(:func:`strategies.dp.distributed.encode_update`: rotated, scaled, rounded, noised, reduced
mod ``2^b``) — needs only the masks. In pre-encoded mode the silo masks::

    [1, e_1, …, e_L]  (mod 2^b)        e = the silo's encoded vector, 0 ≤ e_k < 2^b

and the coordinator unmasks ``[m, Σ e_1, …, Σ e_L] (mod 2^b)``: the modular sum the
mechanism decodes, and the count ``m`` of summed inputs (a constant weight word of 1 per
silo, so a public count checks that every mask cancelled). There is no weight: a mechanism
that needs one folds it into its encoding and divides by a public constant.

The run's :class:`~.messages.SecAggConfig` says which mode it is in (``encoded``); it travels
in the KeyRequest like every other setting, so both sides agree for the whole run.
"""

from __future__ import annotations

import numpy as np

from strategies.secagg.config import SecAggConfig
from xsilo.errors import SecureAggregationError, UpdateRejected

__all__ = ["encoded_input", "encoded_sum"]

def encoded_input(encoded: np.ndarray | None, *, config: SecAggConfig) -> np.ndarray:
    """``[1, e_1, …, e_L]`` in the run's dtype, ready for the masks.

    Raises
    ------
    UpdateRejected
        ``encoded`` is missing, not a 1-D integer vector of ``config.length`` words, or has a
        word outside ``0..2^b − 1`` (it was not reduced with this run's modulus).
    """
    if encoded is None:
        raise UpdateRejected("this run masks pre-encoded vectors: pass encoded=<the encoder's "
                             "integer vector> (update/weight are for the float path)")
    e = np.asarray(encoded)
    bits = config.quant.modulus_bits
    if e.ndim != 1 or e.size != config.length or e.dtype.kind not in "ui":
        raise UpdateRejected(f"pre-encoded vector must be 1-D integers of length "
                             f"{config.length}, got {e.dtype}{list(e.shape)}")
    if e.size and (int(e.min()) < 0 or int(e.max()) >= 1 << bits):
        raise UpdateRejected(f"pre-encoded vector has words outside 0..2^{bits}−1; reduce it "
                             f"modulo 2^{bits} (the run's modulus) before masking")
    out = np.empty(e.size + 1, dtype=config.quant.dtype)
    out[0] = 1
    out[1:] = e.astype(np.uint64)
    return out


def encoded_sum(total: np.ndarray, *, config: SecAggConfig,
                expected_count: int) -> tuple[np.ndarray, int]:
    """``(Σ e mod 2^b as uint64, m)`` from the unmasked sum; ``m`` must be ``expected_count``."""
    t = np.asarray(total).astype(np.uint64) & np.uint64((1 << config.quant.modulus_bits) - 1)
    count = int(t[0])
    if count != expected_count:
        raise SecureAggregationError(
            f"unmasked count word is {count}, expected {expected_count} summed inputs: the "
            "masks did not cancel; the round fails")
    return t[1:], count

"""L2 clipping of named-array updates, and the sensitivity of (weighted) sums of them.

A model update is ``dict[str, np.ndarray]``; its L2 norm is taken over all arrays together:
``||u|| = sqrt(sum_k sum_i u_k[i]^2)``. Clipping (Abadi et al. 2016, eq. in Alg. 1) is
``u * min(1, C / ||u||)``. The float guarantee is strict: the returned update's norm, as
computed by :func:`l2_norm` in float64 from the stored (possibly float32) values, is
``<= C``: the scale factor is aimed at ``C * (1 - 2**-40)``, narrower dtypes are rounded
toward zero after scaling, and the factor is stepped down if rounding still lands above C.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from xsilo.errors import ConfigError, UpdateRejected

__all__ = ["ClipResult", "clip_update", "l2_norm", "weighted_sum_sensitivity"]

Update = Mapping[str, np.ndarray]
_AIM = 1.0 - 2.0**-40


@dataclass(frozen=True)
class ClipResult:
    """A clipped update, the norm it had before clipping, and whether it was scaled down."""

    update: dict[str, np.ndarray]
    norm: float
    clipped: bool


def l2_norm(update: Update) -> float:
    """L2 norm over all arrays of the update, accumulated in float64."""
    total = 0.0
    for arr in update.values():
        flat = np.asarray(arr, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def _scaled(update: Update, factor: float) -> dict[str, np.ndarray]:
    """Scale in float64; narrower dtypes are rounded toward zero so no element grows."""
    out = {}
    for name, arr in update.items():
        arr = np.asarray(arr)
        exact = arr.astype(np.float64) * factor
        cast = exact.astype(arr.dtype)
        if arr.dtype != np.float64:
            grew = np.abs(cast.astype(np.float64)) > np.abs(exact)
            cast[grew] = np.nextafter(cast[grew], np.zeros((), dtype=arr.dtype))
        out[name] = cast
    return out


def clip_update(update: Update, *, clip_norm: float) -> ClipResult:
    """Scale ``update`` so its L2 norm is at most ``clip_norm``.

    Raises
    ------
    ConfigError
        ``clip_norm`` is not a finite positive number.
    UpdateRejected
        The update holds NaN/inf, or a non-floating array.
    """
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(
            f"clip_norm must be a finite number > 0, got {clip_norm!r}; set dp.clip_norm, e.g. 1.0"
        )
    for name, arr in update.items():
        arr = np.asarray(arr)
        if not np.issubdtype(arr.dtype, np.floating):
            raise UpdateRejected(f"update array {name!r} has dtype {arr.dtype}; clipping needs floats")
        if not np.all(np.isfinite(arr)):
            raise UpdateRejected(f"update array {name!r} holds NaN or inf; the silo must resend")
    norm = l2_norm(update)
    if norm <= clip_norm:
        return ClipResult({k: np.array(v, copy=True) for k, v in update.items()}, norm, False)
    factor = clip_norm * _AIM / norm
    for _ in range(10_000):
        out = _scaled(update, factor)
        if l2_norm(out) <= clip_norm:
            return ClipResult(out, norm, True)
        factor = math.nextafter(factor, 0.0) if _ < 64 else factor * _AIM
    raise UpdateRejected(f"could not clip update of norm {norm} to {clip_norm}")  # unreachable


def weighted_sum_sensitivity(
    *, clip_norm: float, max_weight: float = 1.0, neighboring: str = "add_remove"
) -> float:
    """L2 sensitivity of ``sum_i w_i * clip(u_i)`` with weights capped at ``w_i <= max_weight``.

    Add/remove one silo changes the sum by one term: ``max_weight * C``. Replace one silo
    (both its weight and its update may change): ``||w u - w' u'|| <= 2 * max_weight * C``.
    Weights must be capped *before* they are used (``min(w, max_weight)``) and the division
    by the total weight must use a public constant, not the data-dependent sum of weights.
    """
    if not clip_norm > 0 or not max_weight > 0:
        raise ConfigError(
            f"clip_norm and max_weight must be > 0, got {clip_norm!r}, {max_weight!r}"
        )
    if neighboring == "add_remove":
        return max_weight * clip_norm
    if neighboring == "replace_one":
        return 2.0 * max_weight * clip_norm
    raise ConfigError(
        f"neighboring must be 'add_remove' or 'replace_one', got {neighboring!r}"
    )

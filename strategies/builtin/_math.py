"""Shared aggregation math of the built-in strategies (plain numpy, Flower-free).

Notation: x is the global model, Δ_i a silo's delta, w_i its weight, and
Δ̄ = Σ w_i Δ_i / Σ w_i the weighted mean delta (the FedAvg pseudo-gradient with a minus sign).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from strategies.aggregate import CHUNK
from strategies.api import NDArrays, Update
from xsilo.errors import StrategyError

__all__ = ["apply_delta", "scaled", "stack", "weighted_mean", "coordinate_median",
           "trimmed_mean", "krum_scores", "pack_state", "unpack_state", "require_weight"]


def require_weight(total_weight: float, owner: str) -> None:
    """Refuse a step on an empty round."""
    if not total_weight > 0:
        raise StrategyError(f"strategy '{owner}' got total weight {total_weight!r}; "
                            "a round needs at least one accepted update")


def apply_delta(current: NDArrays, delta: Mapping[str, np.ndarray],
                scale: float = 1.0) -> NDArrays:
    """Return ``x + scale·delta`` in the dtypes of ``current``, computed in float64 chunks.

    Integer tensors (e.g. batch-norm counters) are rounded to the nearest integer.
    """
    out: NDArrays = {}
    for key, cur in current.items():
        new = np.empty(cur.shape, dtype=cur.dtype)
        src, add, dst = cur.reshape(-1), np.asarray(delta[key]).reshape(-1), new.reshape(-1)
        for i in range(0, src.size, CHUNK):
            tmp = src[i:i + CHUNK].astype(np.float64)
            tmp += scale * add[i:i + CHUNK]
            dst[i:i + CHUNK] = tmp if np.issubdtype(cur.dtype, np.floating) else np.rint(tmp)
        out[key] = new
    return out


def scaled(delta: Mapping[str, np.ndarray], factor: float) -> NDArrays:
    """``factor·delta`` as new float64 arrays (e.g. Δ̄ = S / W)."""
    return {k: np.asarray(v, dtype=np.float64) * factor for k, v in delta.items()}


def stack(updates: Sequence[Update], key: str) -> np.ndarray:
    """Stack one tensor of every update along a new first axis, in float64."""
    return np.stack([np.asarray(u.delta[key], dtype=np.float64) for u in updates])


def weighted_mean(updates: Sequence[Update], keys: Sequence[str]) -> NDArrays:
    """Δ̄ = Σ w_i Δ_i / Σ w_i over ``updates``."""
    total = sum(u.weight for u in updates)
    weights = np.array([u.weight / total for u in updates])
    return {k: np.tensordot(weights, stack(updates, k), axes=1) for k in keys}


def coordinate_median(updates: Sequence[Update], keys: Sequence[str]) -> NDArrays:
    """Coordinate-wise median (Yin et al., ICML 2018), unweighted."""
    return {k: np.median(stack(updates, k), axis=0) for k in keys}


def trimmed_mean(updates: Sequence[Update], keys: Sequence[str], beta: float) -> NDArrays:
    """Coordinate-wise β-trimmed mean (Yin et al., ICML 2018): drop ⌊βn⌋ lowest and highest."""
    n = len(updates)
    cut = int(beta * n)
    return {k: np.sort(stack(updates, k), axis=0)[cut:n - cut].mean(axis=0) for k in keys}


def krum_scores(updates: Sequence[Update], keys: Sequence[str], num_malicious: int) -> np.ndarray:
    """Krum score of each update (Blanchard et al., NeurIPS 2017).

    score(i) = Σ of the squared L2 distances from Δ_i to its n − f − 2 nearest other
    deltas (at least 1), with distances from the Gram matrix ‖a‖² + ‖b‖² − 2⟨a, b⟩.
    """
    n = len(updates)
    gram = np.zeros((n, n))
    for k in keys:
        flat = stack(updates, k).reshape(n, -1)
        gram += flat @ flat.T
    norms = np.diag(gram)
    dist = np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)
    closest = max(1, n - num_malicious - 2)
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[:closest].sum()
    return scores


def pack_state(prefix: str, arrays: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Flatten named arrays into checkpoint keys ``prefix/name``."""
    return {f"{prefix}/{k}": np.asarray(v) for k, v in (arrays or {}).items()}


def unpack_state(prefix: str, state: Mapping[str, np.ndarray]) -> NDArrays | None:
    """Inverse of :func:`pack_state`; None when the checkpoint has no such prefix."""
    found = {k[len(prefix) + 1:]: np.array(v, dtype=np.float64)
             for k, v in state.items() if k.startswith(prefix + "/")}
    return found or None

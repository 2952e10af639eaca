"""Central DP at the coordinator: clip each update, sum with capped weights, add Gaussian noise.

Mechanism (Gaussian mechanism on the sum, silo-level add/remove-one neighbouring):

    S~ = sum_i min(w_i, w_max) * clip_C(Delta_i) + N(0, (z * w_max * C)^2 I)

The sensitivity of the sum is ``w_max * C`` (:func:`weighted_sum_sensitivity`), so one round
is a Gaussian event with noise multiplier z. Divide by a *public* constant (e.g.
``num_silos * w_max`` or the expected total weight), never by the realised sum of weights,
which is itself data-dependent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.dp.clipping import ClipResult, clip_update
from strategies.dp.noise import gaussian_noise, snap_to_grid
from strategies.randomness import ByteSource
from xsilo.errors import ConfigError

__all__ = ["ClipAccumulator", "ClippedSum", "add_central_noise", "clip_and_sum"]

_SNAP = 2.0**-20  # grid = stddev * 2^-20: far above float spacing, far below the noise


@dataclass(frozen=True)
class ClippedSum:
    """Sum of capped-weight clipped updates, with the per-silo "not clipped" bits."""

    total: dict[str, np.ndarray]
    unclipped: tuple[bool, ...]
    norms: tuple[float, ...]


class ClipAccumulator:
    """Streaming ``sum_i min(w_i, w_max) * clip_C(Delta_i)``: fold each update as it arrives.

    Memory is one float64 model plus one clipped update in flight, however many silos reply
    (the coordinator's streaming aggregation under central DP). ``on_clipped``, when given,
    sees every :class:`ClipResult` (audit hooks and tests).
    """

    def __init__(self, *, clip_norm: float, max_weight: float,
                 on_clipped: Callable[[ClipResult], None] | None = None) -> None:
        self.clip_norm = clip_norm
        self.max_weight = max_weight
        self.on_clipped = on_clipped
        self._total: dict[str, np.ndarray] | None = None
        self._bits: list[bool] = []
        self._norms: list[float] = []

    @property
    def count(self) -> int:
        return len(self._norms)

    def add(self, delta: Mapping[str, np.ndarray], weight: float) -> None:
        """Clip ``delta`` to L2 norm C and fold it in with weight ``min(weight, w_max)``."""
        if not weight >= 0:
            raise ConfigError(f"aggregation weight must be >= 0, got {weight!r}")
        res = clip_update(delta, clip_norm=self.clip_norm)
        if self.on_clipped is not None:
            self.on_clipped(res)
        if self._total is None:
            self._total = {k: np.zeros(np.shape(v)) for k, v in delta.items()}
        cap = min(float(weight), self.max_weight)
        for k, acc in self._total.items():
            acc += cap * res.update[k].astype(np.float64)
        self._bits.append(not res.clipped)
        self._norms.append(res.norm)

    def result(self) -> ClippedSum:
        if self._total is None:
            raise ConfigError("no update was clipped and summed this round")
        return ClippedSum(self._total, tuple(self._bits), tuple(self._norms))


def clip_and_sum(
    deltas: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    *,
    clip_norm: float,
    max_weight: float,
    on_clipped: Callable[[ClipResult], None] | None = None,
) -> ClippedSum:
    """``sum_i min(w_i, w_max) * clip_C(Delta_i)`` in float64, plus b_i = 1[||Delta_i|| <= C].

    ``on_clipped``, when given, sees every :class:`ClipResult` (audit hooks and tests).
    """
    if len(deltas) != len(weights) or not deltas:
        raise ConfigError(f"need one weight per update, got {len(deltas)} updates, {len(weights)} weights")
    acc = ClipAccumulator(clip_norm=clip_norm, max_weight=max_weight, on_clipped=on_clipped)
    for delta, w in zip(deltas, weights):
        acc.add(delta, w)
    return acc.result()


def add_central_noise(
    total: Mapping[str, np.ndarray], *, stddev: float, rng: ByteSource, snap: bool = True
) -> dict[str, np.ndarray]:
    """Add ``N(0, stddev^2)`` to every coordinate; optionally snap to a ``stddev * 2^-20`` grid.

    Snapping is the floating-point mitigation described in :mod:`strategies.dp.noise`.
    """
    if not stddev > 0:
        raise ConfigError(f"central noise stddev must be > 0, got {stddev!r}")
    out = {}
    for k, v in total.items():
        noisy = np.asarray(v, dtype=np.float64) + gaussian_noise(np.shape(v), stddev, rng=rng)
        out[k] = snap_to_grid(noisy, grid=stddev * _SNAP) if snap else noisy
    return out

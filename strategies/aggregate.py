"""Validation and streaming aggregation of silo updates (pure numpy, Flower-free).

The coordinator validates each reply as it arrives and folds it into a running float64
sum, so its memory stays O(model size) however many silos reply:

    S = Σ_i w_i · Δ_i,   W = Σ_i w_i          (w_i > 0, Δ_i finite, shapes as the model)

A sum-decomposable strategy turns ``(S, W)`` into the next model; a per-update strategy
gets the validated list of updates instead. Work on large tensors is done in chunks of
``CHUNK`` elements so temporaries stay constant-size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np

from strategies.api import (NDArrays, PerUpdateStrategy, Strategy, SumStrategy, Update,
                            call_strategy, kind_of, strategy_label)
from xsilo.errors import StrategyError, UpdateRejected

__all__ = ["validate_update", "SumAccumulator", "aggregate_updates", "check_result", "CHUNK",
           "COMPUTED_STATISTICS", "squared_norm", "update_statistics"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Elements processed at a time when folding or checking a tensor (8 MiB of float64)."""

COMPUTED_STATISTICS: tuple[str, ...] = ("update_sq_norm",)
"""The silo statistics (``xsilo.terms.SILO_STATISTICS``) that whoever holds an update can
compute from it; the others (``local_steps``) only a silo knows."""


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _all_finite(a: np.ndarray) -> bool:
    if not np.issubdtype(a.dtype, np.floating):
        return True
    flat = _flat(a)
    return all(np.isfinite(flat[i:i + CHUNK]).all() for i in range(0, flat.size, CHUNK))


def _problem(shapes: Mapping[str, tuple[int, ...]], delta: Mapping[str, object]) -> str | None:
    """Describe the first thing wrong with ``delta``, or None when it is usable."""
    missing = [k for k in shapes if k not in delta]
    if missing:
        return f"tensor '{missing[0]}' is missing ({len(missing)} missing in all)"
    extra = [k for k in delta if k not in shapes]
    if extra:
        return f"tensor '{extra[0]}' is not part of the model ({len(extra)} extra in all)"
    for key, shape in shapes.items():
        value = delta[key]
        if not isinstance(value, np.ndarray):
            return f"tensor '{key}' is a {type(value).__name__}, not a numpy array"
        if value.dtype.kind not in "iuf":
            return f"tensor '{key}' has non-numeric dtype {value.dtype}"
        if value.shape != shape:
            return f"tensor '{key}' has shape {value.shape}, expected {shape}"
        if not _all_finite(value):
            return f"tensor '{key}' contains NaN or Inf"
    return None


def _reject(silo: str, problem: str) -> UpdateRejected:
    log.warning("rejected update from silo %s: %s", silo, problem)
    return UpdateRejected(f"update from silo '{silo}' rejected: {problem}; "
                          "the silo is skipped this round and the model is not touched")


def _check_weight(silo: str, weight: float) -> None:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise _reject(silo, f"weight {weight!r} must be a finite number > 0 "
                            "(the sample count, or 1.0 when unweighted)")


def validate_update(reference: NDArrays, delta: NDArrays, *, silo: str) -> None:
    """Raise UpdateRejected (and log why) unless ``delta`` matches ``reference`` and is finite.

    Checks: same tensor names (none missing, none extra), same shapes, numeric dtype,
    no NaN/Inf. The message names the silo, the tensor and the problem.
    """
    problem = _problem({k: v.shape for k, v in reference.items()}, delta)
    if problem:
        raise _reject(silo, problem)


class SumAccumulator:
    """Running weighted sum of deltas in float64, O(model size) memory.

    ``add`` validates an update and folds ``w·Δ`` into the sums in place, in chunks, keeping
    no reference to the update, and ``‖Δ‖²`` into the weighted mean behind
    :meth:`statistics`. A rejected update leaves the sums untouched; so does one whose
    ``w·max|Δ|`` would take the sums past float64 (it alone is rejected: the round goes on
    without it).
    """

    def __init__(self, reference: NDArrays) -> None:
        self._shapes = {k: tuple(v.shape) for k, v in reference.items()}
        self._sums: NDArrays | None = None
        self._bound = 0.0  # Σ w·max|Δ| so far: no element of the sums is larger
        self._sq_mean = 0.0  # Σ w·‖Δ‖² / Σ w, kept as a running mean: no w·‖Δ‖² overflows
        self.count = 0
        self.total_weight = 0.0
        self.silos: list[str] = []

    def add(self, update: Update) -> None:
        """Validate ``update`` and fold it in; UpdateRejected when it is unusable."""
        problem = _problem(self._shapes, update.delta)
        if problem:
            raise _reject(update.silo, problem)
        _check_weight(update.silo, update.weight)
        if update.silo in self.silos:
            raise _reject(update.silo, "a second update from the same silo in one round")
        w = float(update.weight)
        reach = w * max((_largest(update.delta[k]) for k in self._shapes), default=0.0)
        if not (math.isfinite(self._bound + reach) and math.isfinite(self.total_weight + w)):
            raise _reject(update.silo, f"its weight {w:g} times its largest value "
                          f"({reach:g} in all) would make the round's weighted sum overflow "
                          "float64; a count or an update this far out of range is not usable")
        if self._sums is None:
            self._sums = {k: np.zeros(s, dtype=np.float64) for k, s in self._shapes.items()}
        scratch = np.empty(min(CHUNK, max((v.size for v in self._sums.values()), default=0)))
        for key, acc in self._sums.items():
            _fold(_flat(acc), _flat(update.delta[key]), w, scratch)
        self.count += 1
        self.total_weight += w
        self._bound += reach
        self._sq_mean = _running_mean(self._sq_mean, squared_norm(update.delta),
                                      w / self.total_weight)
        self.silos.append(update.silo)

    def statistics(self, names: Sequence[str]) -> dict[str, float | None]:
        """The silo statistics ``names`` computed from the updates folded in, as
        :func:`update_statistics` computes them from a list (None: not computable here)."""
        return _statistics(names, self._sq_mean if self.count else None)

    def result(self) -> NDArrays:
        """The weighted sum (float64, read-only views); StrategyError when nothing was added."""
        if self._sums is None:
            raise StrategyError("no update was accumulated this round; there is nothing to "
                                "aggregate (every silo failed or was rejected)")
        out = {}
        for key, value in self._sums.items():
            view = value.view()
            view.flags.writeable = False
            out[key] = view
        return out


def _largest(a: np.ndarray) -> float:
    """max |a| as a float, with no temporary array (two reductions)."""
    return max(float(a.max()), -float(a.min())) if a.size else 0.0


def _fold(acc: np.ndarray, delta: np.ndarray, w: float, scratch: np.ndarray) -> None:
    for i in range(0, acc.size, CHUNK):
        part = acc[i:i + CHUNK]
        tmp = scratch[:part.size]
        np.multiply(delta[i:i + CHUNK], w, out=tmp, dtype=np.float64)
        part += tmp


def _result_problem(current: NDArrays, new: object) -> str | None:
    """What makes ``new`` unusable as the next model after ``current`` (None: nothing)."""
    if not isinstance(new, Mapping):
        return (f"it is a {type(new).__name__}, not a mapping of tensor names to numpy "
                "arrays")
    problem = _problem({k: v.shape for k, v in current.items()}, new)
    if problem is not None:
        return problem
    if list(new) != list(current):
        return f"tensors in the order {list(new)[:5]}, expected {list(current)[:5]}"
    for key, ref in current.items():
        if new[key].dtype != ref.dtype:
            return f"tensor '{key}' has dtype {new[key].dtype}, expected {ref.dtype}"
    return None


def check_result(strategy: Strategy, current: NDArrays, new: object) -> None:
    """Raise StrategyError unless ``new`` is a mapping with the tensor names, order, shapes
    and dtypes of ``current``, every value a finite numeric numpy array."""
    problem = _result_problem(current, new)
    if problem is not None:
        raise StrategyError(f"{strategy_label(strategy)} produced an unusable model: "
                            f"{problem}; the model is kept unchanged")


def squared_norm(delta: Mapping[str, np.ndarray]) -> float:
    """``‖Δ‖²`` over every tensor of an update (float64, in chunks), what a silo reports as
    ``update_sq_norm``."""
    total = 0.0
    with np.errstate(over="ignore"):  # an update too large to square is inf, said as such
        for value in delta.values():
            flat = _flat(np.asarray(value))
            for i in range(0, flat.size, CHUNK):
                part = flat[i:i + CHUNK].astype(np.float64)
                total += float(np.dot(part, part))
    return total


def _running_mean(mean: float, value: float, share: float) -> float:
    """``mean + share·(value − mean)``: a weighted mean with one more value of weight share
    ``w / Σw`` (values ≥ 0, so nothing overflows that is not itself infinite)."""
    return math.inf if math.isinf(mean) or math.isinf(value) else mean + share * (value - mean)


def _statistics(names: Sequence[str], mean_sq_norm: float | None) -> dict[str, float | None]:
    return {name: mean_sq_norm if name == "update_sq_norm" else None for name in names}


def update_statistics(updates: Sequence[Update], names: Sequence[str]
                      ) -> dict[str, float | None]:
    """The statistics a silo would report, as the round loop passes them to a strategy:
    weight-weighted means over ``updates`` of what can be computed from an update here
    (:data:`COMPUTED_STATISTICS`); None for what only a silo knows (``local_steps``)."""
    mean, total = 0.0, 0.0
    for u in updates:
        total += u.weight
        mean = _running_mean(mean, squared_norm(u.delta), u.weight / total)
    return _statistics(names, mean if total > 0 else None)


def aggregate_updates(strategy: Strategy, current: NDArrays, updates: Sequence[Update],
                      server_round: int) -> NDArrays:
    """Aggregate validated-or-not updates with either kind of strategy.

    Sum strategies go through :class:`SumAccumulator` then ``step``; per-update ones get the
    list after every update is validated. Any invalid update raises UpdateRejected before
    the strategy is called, so neither the model nor the strategy state changes. An
    exception in the strategy's own code becomes a StrategyError naming it and the method
    (:func:`strategies.api.call_strategy`), and the result is checked
    (:func:`check_result`) before it is returned.
    """
    if not updates:
        raise StrategyError("no updates to aggregate this round")
    kind_of(type(strategy))  # StrategyError unless exactly one of the two kinds
    new = (_sum_step(strategy, current, updates, server_round)
           if isinstance(strategy, SumStrategy)
           else _per_update_step(cast(PerUpdateStrategy, strategy), current, updates,
                                 server_round))
    check_result(strategy, current, new)
    return cast(NDArrays, new)


def _sum_step(strategy: SumStrategy, current: NDArrays, updates: Sequence[Update],
              server_round: int) -> object:
    acc = SumAccumulator(current)
    for update in updates:
        acc.add(update)
    if not strategy.statistics:
        return call_strategy(strategy, "step", lambda: strategy.step(
            current, acc.result(), acc.total_weight, server_round))
    stats = acc.statistics(strategy.statistics)
    return call_strategy(strategy, "step_with_statistics", lambda: strategy.step_with_statistics(
        current, acc.result(), acc.total_weight, server_round, stats))


def _per_update_step(strategy: PerUpdateStrategy, current: NDArrays, updates: Sequence[Update],
                     server_round: int) -> object:
    seen: set[str] = set()
    for update in updates:
        validate_update(current, update.delta, silo=update.silo)
        _check_weight(update.silo, update.weight)
        if update.silo in seen:
            raise _reject(update.silo, "a second update from the same silo in one round")
        seen.add(update.silo)
    return call_strategy(strategy, "aggregate", lambda: strategy.aggregate(
        current, list(updates), server_round))

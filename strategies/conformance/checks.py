"""The contract checks every strategy must pass, as plain functions.

Each check takes a strategy class (and optionally a ``Params`` instance, default: the
defaults), builds fresh instances, drives
them through a few rounds of small random updates and raises ``AssertionError`` on a
violation, or :class:`NotApplicable` when the property does not apply to that strategy.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence

import numpy as np

from strategies.aggregate import SumAccumulator, aggregate_updates, update_statistics
from strategies.api import NDArrays, RoundPlan, Strategy, SumStrategy, Update, kind_of
from strategies.registry import declaration_problem
from xsilo.errors import UpdateRejected

__all__ = ["NotApplicable", "CHECKS", "model", "updates"]

RTOL, ATOL = 1e-5, 1e-6


class NotApplicable(Exception):
    """The check does not apply to this strategy (the reason is the message)."""


def model() -> NDArrays:
    """A small reference model: a float32 matrix, a float32 bias and a float64 vector."""
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32),
            "s": rng.normal(size=5)}


def updates(seed: int, n: int = 7, *, ref: NDArrays | None = None) -> list[Update]:
    """``n`` random updates with distinct weights; silos are named ``silo-<seed>-<i>``."""
    rng = np.random.default_rng(seed)
    ref = ref if ref is not None else model()
    return [Update(silo=f"silo-{seed}-{i}",
                   delta={k: (0.1 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in ref.items()},
                   weight=float(rng.integers(1, 50)))
            for i in range(n)]


def _close(a: NDArrays, b: NDArrays, what: str) -> None:
    assert list(a) == list(b), f"{what}: tensor names differ: {list(a)} vs {list(b)}"
    for k in a:
        assert a[k].dtype == b[k].dtype, f"{what}: dtype of '{k}' differs"
        np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=ATOL, err_msg=f"{what}: '{k}'")


def _rounds(strategy: Strategy, start: NDArrays, seeds: Sequence[int]) -> NDArrays:
    current = start
    for rnd, seed in enumerate(seeds, start=1):
        current = aggregate_updates(strategy, current, updates(seed), rnd)
    return current


def check_declaration(cls: type[Strategy], params: object = None) -> None:
    """name is a lowercase identifier; kind, statistics and Params pass the registry's
    checks (``declaration_problem``); every parameter has a default; Params is frozen."""
    assert re.fullmatch(r"[a-z][a-z0-9_-]*", getattr(cls, "name", "") or ""), \
        f"name {getattr(cls, 'name', None)!r} must be lowercase letters, digits, '-' or '_'"
    problem = declaration_problem(cls)
    assert problem is None, problem
    defaults = cls.Params()  # every parameter needs a default
    assert cls.from_config({}).params == defaults, "from_config({}) must give the default params"
    assert defaults.__dataclass_params__.frozen, "Params must be a frozen dataclass"


def check_configure_round(cls: type[Strategy], params: object = None) -> None:
    """configure_round returns a RoundPlan over a subset of the offered silos, scalar config."""
    plan = cls(params).configure_round(1, [3, 1, 2])
    assert isinstance(plan, RoundPlan), "configure_round must return a RoundPlan"
    assert set(plan.silos) <= {1, 2, 3} and plan.silos, "silos must be a non-empty subset"
    assert all(isinstance(v, (int, float, str, bool)) for v in plan.config.values())


def check_shapes_and_purity(cls: type[Strategy], params: object = None) -> None:
    """The result keeps names, shapes and dtypes; inputs (model and deltas) are not modified."""
    start, ups = model(), updates(1)
    before = ({k: v.copy() for k, v in start.items()},
              [{k: v.copy() for k, v in u.delta.items()} for u in ups])
    new = aggregate_updates(cls(params), start, ups, 1)
    assert [(k, v.shape, v.dtype) for k, v in new.items()] == \
        [(k, v.shape, v.dtype) for k, v in start.items()], "result must match the model layout"
    _close(start, before[0], "current model was modified")
    for u, d in zip(ups, before[1]):
        _close(u.delta, d, "an update was modified")


def check_state_roundtrip(cls: type[Strategy], params: object = None) -> None:
    """state_dict → np.savez → np.load → load_state_dict gives the same future behaviour."""
    first = cls(params)
    mid = _rounds(first, model(), [1, 2])
    state = first.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values()), "state values must be arrays"
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as loaded:
        restored = {k: loaded[k] for k in loaded.files}
    second = cls(params)
    second.load_state_dict(restored)
    a = aggregate_updates(first, mid, updates(3), 3)
    b = aggregate_updates(second, mid, updates(3), 3)
    _close(a, b, "after restoring a checkpoint")


def check_order_invariance(cls: type[Strategy], params: object = None) -> None:
    """Shuffling the replies does not change the result."""
    ups = updates(4)
    a = aggregate_updates(cls(params), model(), ups, 1)
    b = aggregate_updates(cls(params), model(), ups[::-1], 1)
    c = aggregate_updates(cls(params), model(), ups[3:] + ups[:3], 1)
    _close(a, b, "reversed reply order")
    _close(a, c, "rotated reply order")


def _distance(a: NDArrays, b: NDArrays) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def _reweighted(ups: Sequence[Update], weights: Sequence[float]) -> list[Update]:
    return [Update(u.silo, u.delta, float(w)) for u, w in zip(ups, weights, strict=True)]


def check_weights_normalised(cls: type[Strategy], params: object = None) -> None:
    """Multiplying every weight by the same factor (1000, then 1/64) changes nothing.

    Weights are relative: a sum strategy must divide ``delta_sum`` by ``total_weight``
    (Σ w·Δ / Σ w is unchanged when every w is scaled), a weighted per-update rule must
    normalise its weights. A strategy that ignores ``total_weight`` fails here. Applies to
    every strategy: unweighted ones pass because they do not use weights at all.
    """
    ups = updates(5)
    base = aggregate_updates(cls(params), model(), ups, 1)
    for factor in (1000.0, 1.0 / 64.0):
        scaled = _reweighted(ups, [factor * u.weight for u in ups])
        _close(base, aggregate_updates(cls(params), model(), scaled, 1),
               f"every weight multiplied by {factor:g}")


def check_weights_honoured(cls: type[Strategy], params: object = None) -> None:
    """Sum kinds: one update weighted 10⁶ against six of weight 1 pulls the result to that
    update's own result. Unweighted per-update kinds: re-drawn weights change nothing.
    Weighted per-update kinds: not applicable.

    Sum kinds see only ``(Σ w·Δ, Σ w)``, whatever their ``weighted`` flag (the coordinator
    sends weight 1.0 to unweighted ones), so they are held to the weighted mean: the
    model after the heavy round must be at most 1% as far from the model after the heavy
    update alone as the equal-weight round is. A strategy that ignores ``delta_sum`` (or
    weighs it wrongly) fails. A robust per-update rule may discard a heavy update by
    design, so no pull is required of it; ``weights_normalised`` covers its weighting.
    """
    strategy, start, ups = cls(params), model(), updates(5)
    if kind_of(type(strategy)) == "sum":
        unit = _reweighted(ups, [1.0] * len(ups))
        heavy = _reweighted(ups, [1e6] + [1.0] * (len(ups) - 1))
        alone = aggregate_updates(cls(params), start, unit[:1], 1)
        d_equal = _distance(aggregate_updates(cls(params), start, unit, 1), alone)
        d_heavy = _distance(aggregate_updates(cls(params), start, heavy, 1), alone)
        assert d_equal > 0, ("seven equal-weight updates give the same model as one of them "
                             "alone: the step does not follow delta_sum / total_weight")
        assert d_heavy <= 0.01 * d_equal, (
            f"with weight 1e6 on '{ups[0].silo}' (six others at 1) the model is {d_heavy:.3g} "
            f"from that update's own result, with equal weights {d_equal:.3g}; the heavy update "
            "must dominate (the step must follow delta_sum / total_weight)")
    elif not strategy.weighted:
        redrawn = _reweighted(ups, [1000.0, 0.5, 1.0, 37.0, 2.0, 1e-3, 9.0])
        _close(aggregate_updates(cls(params), start, ups, 1),
               aggregate_updates(cls(params), start, redrawn, 1),
               "weighted=False, yet re-drawn weights changed the result")
    else:
        raise NotApplicable(f"{cls.name} is a weighted per-update strategy: a robust rule may "
                            "discard a heavily weighted update by design (weights_normalised "
                            "covers its weighting)")


def check_nonfinite_rejected(cls: type[Strategy], params: object = None) -> None:
    """A NaN/Inf update raises UpdateRejected; model, state and later rounds are untouched.

    A framework guarantee, not a plugin property: ``aggregate_updates`` validates every
    update before the strategy is called, so a plugin cannot fail this check and never
    sees a non-finite value. It stays in the kit so that a run of the kit also proves the
    guarantee for the strategy's kind (it fails if the validation were ever bypassed).
    """
    for bad_value in (np.nan, np.inf):
        strategy, start = cls(params), model()
        _rounds(strategy, start, [6])
        state = {k: v.copy() for k, v in strategy.state_dict().items()}
        ups = updates(7)
        bad = dict(ups[2].delta)
        bad["w"] = bad["w"].copy()
        bad["w"][1, 1] = bad_value
        poisoned = ups[:2] + [Update(ups[2].silo, bad, ups[2].weight)] + ups[3:]
        try:
            aggregate_updates(strategy, start, poisoned, 2)
        except UpdateRejected as exc:
            assert ups[2].silo in str(exc), "the rejection must name the silo"
        else:
            raise AssertionError(f"an update containing {bad_value} was accepted")
        assert np.isfinite(start["w"]).all(), "the model was touched"
        after = strategy.state_dict()
        assert sorted(after) == sorted(state), "strategy state changed on a rejected round"
        for k in state:
            np.testing.assert_array_equal(after[k], state[k], err_msg="state changed")
        reference = cls(params)
        _rounds(reference, model(), [6])
        _close(aggregate_updates(strategy, start, ups, 2),
               aggregate_updates(reference, model(), ups, 2), "after a rejected update")


def check_sum_decomposable(cls: type[Strategy], params: object = None) -> None:
    """Sum kinds: step on a sum formed elsewhere (partial sums added, as secure aggregation
    would) equals aggregating the individual updates."""
    if kind_of(cls) != "sum":
        raise NotApplicable(f"{cls.name} is a per-update strategy")
    ups, start = updates(8), model()
    parts = []
    for group in (ups[:3], ups[3:]):
        acc = SumAccumulator(start)
        for u in group:
            acc.add(u)
        parts.append((acc.result(), acc.total_weight))
    delta_sum = {k: parts[0][0][k] + parts[1][0][k] for k in start}
    strategy = cls(params)
    assert isinstance(strategy, SumStrategy)
    total = parts[0][1] + parts[1][1]
    from_sum = (strategy.step_with_statistics(start, delta_sum, total, 1,
                                              update_statistics(ups, strategy.statistics))
                if strategy.statistics else strategy.step(start, delta_sum, total, 1))
    _close(from_sum, aggregate_updates(cls(params), start, ups, 1), "sum vs individual updates")


CHECKS: dict[str, Callable[..., None]] = {
    "declaration": check_declaration,
    "configure_round": check_configure_round,
    "shapes_and_purity": check_shapes_and_purity,
    "state_roundtrip": check_state_roundtrip,
    "order_invariance": check_order_invariance,
    "weights_normalised": check_weights_normalised,
    "weights_honoured": check_weights_honoured,
    "nonfinite_rejected": check_nonfinite_rejected,
    "sum_decomposable": check_sum_decomposable,
}
"""Every contract check by name, in the order they run."""

"""A round's row in ``metrics.jsonl``: what the loop notes while a round runs, and the JSON
object it becomes once the round's model has been evaluated (no Flower types here).

Row *r* describes model *r* (after *r* rounds; 0 is the initial model): the silos'
evaluations of it (which arrive with round *r + 1*'s replies, or with the final
evaluation), and what round *r* itself did — contributors, rejections (a silo that did not
answer, or was not connected, is there too, with the reason), train loss, round time, the
silos' own fit times, the bytes it carried, ε, the coordinator's validation.

Global scores average over the silos that scored the model, and that set changes when a
silo drops out (a silo with a hard test split leaving makes the mean "rise"). So every row
says over which silos its global scores are: ``scored_by`` (under secure aggregation the
contributors to the masked sums) and ``unscored``, the run's silos that are not in them
(empty: the whole population). The console and the report mark a row with a partial
population.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.messages import Reply
from xsilo.terms import SiloMetrics

__all__ = ["NOT_CONNECTED", "PendingRow", "clip_report", "losses", "note_dpsgd", "note_fit",
           "round_event", "tallies", "weighted_mean"]

NOT_CONNECTED = ("not connected to the coordinator when the round started (its SuperNode is "
                 "down, restarting or cut off); it is asked again in the next round")


@dataclass
class PendingRow:
    """A round whose model has not been evaluated yet."""

    server_round: int
    status: str
    seconds: float
    train_loss: float | None = None
    contributors: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tallies: dict[str, float] = field(default_factory=dict)  # silos' own ε for the run


def tallies(replies: Iterable[Reply], names: Mapping[int, str]) -> dict[str, float]:
    """Each answering silo's own ε tally for the run, as its reply states it."""
    return {names[r.node_id]: float(r.metrics.dp_epsilon_tally) for r in replies
            if r.error is None and r.node_id in names and r.metrics.dp_epsilon_tally is not None}


def weighted_mean(values: list[tuple[float, float]]) -> float | None:
    """``Σ v·w / Σ w``; None when there is no weight or the result is not finite (absurd
    values that overflow: a row holds no mean rather than Infinity)."""
    total = sum(w for _, w in values)
    if not total > 0:
        return None
    mean = sum(v * w for v, w in values) / total
    return mean if math.isfinite(mean) else None


def clip_report(metrics: Mapping[str, SiloMetrics]) -> dict[str, Any]:
    """What the silos said about clipping and weight capping before quantization."""
    return {"clipped_values": int(sum(m.secagg_clipped or 0 for m in metrics.values())),
            "capped_weights": sorted(n for n, m in metrics.items() if m.secagg_capped)}


def note_dpsgd(row: PendingRow, silo: str, metrics: SiloMetrics) -> None:
    """A DP-SGD silo's own record-level ε (its accountant, its δ) goes into the row."""
    if metrics.dpsgd_epsilon is not None:
        row.extra.setdefault("dpsgd_epsilon", {})[silo] = metrics.dpsgd_epsilon
        row.extra.setdefault("dpsgd_delta", {})[silo] = metrics.dpsgd_delta or 0.0


def note_fit(row: PendingRow, metrics: Mapping[str, SiloMetrics]) -> None:
    """Each contributor's own time for the round (evaluate + train), as it reported it."""
    fits = {name: m.fit_seconds for name, m in metrics.items() if m.fit_seconds is not None}
    if fits:
        row.extra["fit_seconds"] = {name: round(v, 4) for name, v in sorted(fits.items())}


def losses(metrics: Iterable[SiloMetrics]) -> list[tuple[float, float]]:
    """(train loss, example count) of the silos that reported one."""
    return [(m.train_loss, m.num_examples or 0.0) for m in metrics if m.train_loss is not None]


def _silo_scores(m: SiloMetrics) -> dict[str, Any]:
    """One silo's evaluation: loss, accuracy, examples, and a regressor's MAE and MSE."""
    n = m.eval_examples if m.eval_examples is not None else 1.0
    scores: dict[str, Any] = {"loss": m.eval_loss, "accuracy": m.eval_accuracy,
                              "examples": int(n)}
    for key, value in (("mae", m.eval_mae), ("mse", m.eval_mse)):
        if value is not None:
            scores[key] = value
    return scores


def _summed_scores(summed: SiloMetrics) -> dict[str, Any]:
    """Global scores from a secure round's sums (already example-weighted means)."""
    out: dict[str, Any] = {"global_loss": summed.eval_loss,
                           "global_accuracy": summed.eval_accuracy}
    out.update({f"global_{key}": value for key, value in (("mae", summed.eval_mae),
                                                          ("mse", summed.eval_mse))
                if value is not None})
    out["global_examples"] = int(summed.eval_examples or 0)
    out["global_scores"] = "secure_sum"
    return out


def round_event(row: PendingRow, evaluations: Mapping[str, SiloMetrics], *,
                summed: SiloMetrics | None = None, summed_by: Iterable[str] = (),
                population: Iterable[str] | None = None) -> dict[str, Any]:
    """The ``round`` event of ``row`` given each silo's evaluation of its model; global
    scores are example-weighted means (``global_mae``/``global_mse`` for regressors).

    ``summed``: a secure round's masked sums of the silos' scores, over the contributors
    ``summed_by``. They cover every contributor (also those whose policy keeps its own
    scores in; one whose policy shares none adds zeros), so when they hold an evaluation
    they are the global scores (``global_scores: "secure_sum"``); ``silos`` still lists the
    scores that silos chose to share one by one. ``population``: the run's silos (the
    row's ``unscored`` are those its global scores leave out).
    """
    per_silo: dict[str, dict[str, Any]] = {}
    scored: dict[str, list[tuple[float, float]]] = {"loss": [], "accuracy": [], "mae": [],
                                                    "mse": []}
    for name, m in sorted(evaluations.items()):
        if m.eval_loss is None:
            continue
        scores = per_silo[name] = _silo_scores(m)
        for key, pairs in scored.items():
            if scores.get(key) is not None:
                pairs.append((scores[key], scores["examples"]))
    regression = {f"global_{k}": weighted_mean(scored[k]) for k in ("mae", "mse") if scored[k]}
    scores: dict[str, Any] = {"global_loss": weighted_mean(scored["loss"]),
                              "global_accuracy": weighted_mean(scored["accuracy"]), **regression}
    scored_by = sorted(n for n, s in per_silo.items() if s.get("loss") is not None)
    if summed is not None and summed.eval_loss is not None:
        scores = _summed_scores(summed)
        scored_by = sorted(summed_by)
    coverage: dict[str, Any] = {"scored_by": scored_by}
    if population is not None:
        coverage["unscored"] = sorted(set(population) - set(scored_by))
    return {
        "event": "round", "round": row.server_round, "status": row.status, **scores,
        **coverage, "silos": per_silo, "train_loss": row.train_loss,
        "round_seconds": round(row.seconds, 3), "contributors": sorted(row.contributors),
        "rejected": row.rejected, **({"reason": row.reason} if row.reason else {}),
        **row.extra}

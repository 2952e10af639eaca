"""A round's row in ``metrics.jsonl``: what the loop notes while a round runs, and the JSON
object it becomes once the round's model has been evaluated (no Flower types here).

Row *r* describes model *r* (after *r* rounds; 0 is the initial model): the silos'
evaluations of it (which arrive with round *r + 1*'s replies, or with the final
evaluation), and what round *r* itself did — contributors, rejections, train loss, round
time, the silos' own fit times, the bytes it carried, ε, the coordinator's validation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xsilo.terms import SiloMetrics

__all__ = ["PendingRow", "clip_report", "losses", "note_dpsgd", "note_fit", "round_event",
           "weighted_mean"]


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


def weighted_mean(values: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else None


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
                summed: SiloMetrics | None = None) -> dict[str, Any]:
    """The ``round`` event of ``row`` given each silo's evaluation of its model; global
    scores are example-weighted means (``global_mae``/``global_mse`` for regressors).

    ``summed``: a secure round's masked sums of the silos' scores. They cover every
    contributor (also those whose policy keeps its own scores in), so when they hold an
    evaluation they are the global scores (``global_scores: "secure_sum"``); ``silos``
    still lists the scores that silos chose to share one by one.
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
    if summed is not None and summed.eval_loss is not None:
        scores = _summed_scores(summed)
    return {
        "event": "round", "round": row.server_round, "status": row.status, **scores,
        "silos": per_silo, "train_loss": row.train_loss,
        "round_seconds": round(row.seconds, 3), "contributors": sorted(row.contributors),
        "rejected": row.rejected, **({"reason": row.reason} if row.reason else {}),
        **row.extra}

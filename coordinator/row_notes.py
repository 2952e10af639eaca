"""How a round went, noted in its row (no Flower types here).

:mod:`coordinator.rows` holds the row itself; these are the loop's notes in it once a
round's round trips are over: a clear round's collector (:func:`note_clear_round`) or a
secure round's outcome (:func:`note_secure_round`) give the contributors, the rejections
with their reasons, the silos' privacy tallies, DP-SGD and fit times and the train loss;
the metered transport gives the array bytes the round carried, in all and per silo
(:func:`traffic_since`, :func:`note_traffic`; :func:`add_traffic` adds the final
evaluation's to the last row). A secure run's final evaluation is noted in
the last row (:func:`final_secure_report`), and a row is written out with the silos'
evaluations of its model (:func:`evaluated_row`).

Silos are named by ``names`` (node → silo name: the run's admitted silos).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coordinator.collect import RoundCollector
from coordinator.messages import Reply
from coordinator.metering import MeteredTransport
from coordinator.rows import (PendingRow, clip_report, losses, note_dpsgd, note_fit,
                              round_event, tallies, weighted_mean)
from coordinator.secure import SecureRound
from xsilo.terms import SiloMetrics

__all__ = ["add_traffic", "evaluated_row", "final_secure_report", "note_clear_round",
           "note_secure_round", "note_traffic", "traffic_since"]


def note_clear_round(row: PendingRow, collector: RoundCollector, replies: Mapping[int, Reply],
                     silos: Sequence[int], names: Mapping[int, str], *, missing: str) -> None:
    """A clear round in its row; a silo asked that did not answer is rejected with
    ``missing`` (why it was not waited for)."""
    row.rejected, row.contributors = collector.rejected, list(collector.contributors)
    for node in silos:
        if node not in replies:
            row.rejected[names[node]] = missing
    row.tallies = tallies(replies.values(), names)
    for name, metrics in collector.metrics.items():
        note_dpsgd(row, name, metrics)
    note_fit(row, collector.metrics)
    row.train_loss = weighted_mean(losses(collector.metrics.values()))


def note_secure_round(row: PendingRow, outcome: SecureRound, replies: Mapping[int, Reply],
                      names: Mapping[int, str], summed: SiloMetrics | None) -> None:
    """A secure round in its row; ``summed``: the contributors' metrics summed under the
    masks (None when the round failed), whose train loss is the round's when it has one."""
    row.rejected = {names[n]: p for n, p in outcome.problems.items()}
    row.tallies = tallies(replies.values(), names)
    row.contributors = [names[n] for n in outcome.contributors]
    row.extra["secure_aggregation"] = {**outcome.report, **clip_report(
        {names[n]: replies[n].metrics for n in outcome.contributors})}
    for n in outcome.contributors:
        note_dpsgd(row, names[n], replies[n].metrics)
    note_fit(row, {names[n]: replies[n].metrics for n in outcome.contributors if n in replies})
    row.train_loss = (summed.train_loss if summed is not None and summed.train_loss is not None
                      else weighted_mean(losses(replies[n].metrics
                                                for n in outcome.contributors)))


def traffic_since(transport: MeteredTransport, mark: tuple[int, int]) -> dict[str, int]:
    """Array bytes sent and received since ``mark`` (``(sent, received)`` then)."""
    return {"sent": transport.sent - mark[0], "received": transport.received - mark[1]}


def note_traffic(row: PendingRow, transport: MeteredTransport, mark: tuple[int, int],
                 per_silo: Mapping[int, Mapping[str, int]], names: Mapping[int, str]) -> None:
    """The round's array bytes since ``mark``, in all and for each silo since ``per_silo``."""
    row.extra["bytes"] = traffic_since(transport, mark)
    row.extra["bytes_by_silo"] = {
        names[n]: counts for n, counts in sorted(transport.per_node_since(per_silo).items())
        if n in names}


def add_traffic(row: PendingRow, transport: MeteredTransport, mark: tuple[int, int]) -> None:
    """Add the array bytes since ``mark`` to the row's (the final evaluation's, to the last
    row's)."""
    counted = row.extra.setdefault("bytes", {"sent": 0, "received": 0})
    for key, value in traffic_since(transport, mark).items():
        counted[key] = counted.get(key, 0) + value


def final_secure_report(outcome: SecureRound, names: Mapping[int, str],
                        server_round: int) -> dict[str, Any]:
    """A secure final evaluation's ``secure_aggregation`` report (its own round number)."""
    return {
        "round": server_round,
        "contributors": sorted(names[n] for n in outcome.contributors),
        **({"failure": outcome.failure} if outcome.failure else {}),
        **({"rejected": {names[n]: p for n, p in outcome.problems.items()}}
           if outcome.problems else {})}


def evaluated_row(row: PendingRow, replies: Mapping[int, Reply], names: Mapping[int, str], *,
                  summed: SiloMetrics | None = None, summed_by: Any = ()) -> dict[str, Any]:
    """The ``round`` event of ``row`` from the evaluations in ``replies`` (and the silos'
    securely summed scores over ``summed_by``, when the round carried them); the event says
    which of the run's silos its global scores cover."""
    return round_event(row, {names[node]: reply.metrics for node, reply in replies.items()
                             if reply.error is None and node in names},
                       summed=summed, summed_by=[names[n] for n in summed_by if n in names],
                       population=list(names.values()))

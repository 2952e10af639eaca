"""The coordinator's round loop, over plain payloads (no Flower types here).

One run: wait for silos → *join* (each silo validates its data and site policy and
answers with its schema fingerprint and initial model) → ``num_rounds`` rounds of one
round trip each (silos evaluate the incoming global model and train in the same reply)
→ a final evaluation of the last model. Every round's global metrics are therefore known
one round later; the loop emits the row for round *r* as soon as model *r* was evaluated.

A failed round (too few usable updates) keeps the previous model and is reported, never
hidden; an exception fails the run and is recorded in ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from coordinator.config import RunConfig
from coordinator.messages import Payload, Reply
from coordinator.run_store import RunStore
from strategies.aggregate import SumAccumulator, validate_update
from strategies.api import PerUpdateStrategy, Strategy, SumStrategy, Update
from xsilo.errors import ConfigError, DeploymentError, ModelError, UpdateRejected

__all__ = ["RoundLoop", "Transport"]

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the loop needs from the network (``coordinator.transport.GridTransport``)."""

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]: ...

    def node_ids(self) -> list[int]: ...

    def exchange(self, message_type: str, payloads: Mapping[int, Payload], *, timeout: float,
                 group: str) -> dict[int, Reply]: ...


@dataclass
class _Member:
    node_id: int
    name: str
    fingerprint: dict[str, Any]


@dataclass
class _PendingRow:
    """A round whose model has not been evaluated yet."""

    server_round: int
    status: str
    seconds: float
    train_loss: float | None = None
    contributors: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


def _weighted_mean(values: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else None


class RoundLoop:
    """Drive one federated run; see the module docstring."""

    def __init__(self, config: RunConfig, transport: Transport, store: RunStore,
                 strategy: Strategy) -> None:
        self.config = config
        self.transport = transport
        self.store = store
        self.strategy = strategy
        self.members: dict[int, _Member] = {}
        self.failed_rounds: list[int] = []

    # ------------------------------------------------------------------ join
    def join(self) -> dict[str, np.ndarray]:
        """Admit silos; return the initial global model."""
        cfg = self.config
        nodes = self.transport.wait_for_nodes(cfg.wait_for, cfg.join_timeout)
        terms = {"run-name": cfg.name, "strategy": cfg.strategy, "num-rounds": cfg.num_rounds,
                 "secure-aggregation": cfg.secure_aggregation, "seed": cfg.seed,
                 "min-silos": cfg.min_silos, "num-silos": len(nodes)}
        replies = self.transport.exchange(
            "query", {n: Payload(terms) for n in nodes}, timeout=cfg.round_timeout,
            group="join")
        refused = {}
        initial: dict[str, dict[str, np.ndarray]] = {}
        for node, reply in sorted(replies.items()):
            name = str(reply.info.get("name", f"node-{node}"))
            if reply.error is not None:
                refused[name] = str(reply.error)
                log.warning("silo %s refused the run: %s", name, reply.error)
                continue
            fp = json.loads(str(reply.info.get("fingerprint", "{}")))
            self.members[node] = _Member(node, name, fp)
            initial[name] = reply.arrays
        silent = sorted(set(nodes) - set(replies))
        self.store.append_event({
            "event": "join",
            "silos": {m.name: m.fingerprint for m in self.members.values()},
            "refused": refused, "silent_nodes": silent})
        if len(self.members) < cfg.min_silos:
            detail = "; ".join(f"{k}: {v}" for k, v in refused.items()) or "no refusals"
            raise DeploymentError(
                f"only {len(self.members)} silo(s) joined but min_silos is {cfg.min_silos} "
                f"({detail}; {len(silent)} silent)")
        self._check_agreement(initial)
        first = sorted(initial)[0]
        return initial[first]

    def _check_agreement(self, initial: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        digests = {m.name: m.fingerprint.get("digest") for m in self.members.values()}
        if len(set(digests.values())) > 1:
            groups: dict[Any, list[str]] = {}
            for name, d in digests.items():
                groups.setdefault(d, []).append(name)
            raise ConfigError(
                "silos disagree on the data schema (columns, dtypes or label set): "
                + " vs ".join(",".join(sorted(g)) for g in groups.values())
                + "; align their [data.schema] tables before starting the run")
        names = sorted(initial)
        ref_name, ref = names[0], initial[names[0]]
        for name in names[1:]:
            other = initial[name]
            for tensor in list(ref) + [t for t in other if t not in ref]:
                a, b = ref.get(tensor), other.get(tensor)
                if a is None or b is None or a.shape != b.shape:
                    raise ModelError(
                        f"model architectures differ: tensor {tensor!r} is "
                        f"{None if a is None else a.shape} at {ref_name} but "
                        f"{None if b is None else b.shape} at {name}; every silo must build "
                        "the same model")

    # ----------------------------------------------------------------- rounds
    def run(self) -> dict[str, Any]:
        """Run to completion and return the summary (also written to ``summary.json``)."""
        started = time.monotonic()
        try:
            current = self.join()
            pending = _PendingRow(0, "initial", time.monotonic() - started)
            for server_round in range(1, self.config.num_rounds + 1):
                current, pending = self._round(server_round, current, pending)
            self._final_evaluation(current, pending)
            self.store.save_model(current)
        except Exception as exc:
            self._finish("failed", started, error=f"{type(exc).__name__}: {exc}")
            raise
        return self._finish("completed", started)

    def _train_config(self, server_round: int, extra: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return {"server-round": server_round, "num-rounds": cfg.num_rounds,
                "local-epochs": cfg.local_epochs, "learning-rate": cfg.learning_rate,
                "batch-size": cfg.batch_size, "seed": cfg.seed,
                "strategy": cfg.strategy, **extra}

    def _round(self, server_round: int, current: dict[str, np.ndarray],
               pending: _PendingRow) -> tuple[dict[str, np.ndarray], _PendingRow]:
        t0 = time.monotonic()
        # Silos the SuperLink no longer knows (unregistered, e.g. revoked) are not waited for.
        connected = set(self.transport.node_ids())
        plan = self.strategy.configure_round(
            server_round, sorted(n for n in self.members if n in connected))
        config = self._train_config(server_round, {**plan.config, "participants": len(plan.silos)})
        replies = self.transport.exchange(
            "train", {n: Payload(config, current) for n in plan.silos},
            timeout=self.config.round_timeout, group=str(server_round))
        self._emit_row(pending, replies)
        row = _PendingRow(server_round, "ok", 0.0)
        updates = self._collect(replies, current, row)
        if len(updates) < self.config.min_silos:
            row.status = "failed"
            self.failed_rounds.append(server_round)
            log.error("round %d failed: %d usable update(s), min_silos is %d; model kept",
                      server_round, len(updates), self.config.min_silos)
        else:
            current = self._aggregate(current, updates, server_round)
            self.store.save_checkpoint(server_round, current, self.strategy.state_dict())
        row.seconds = time.monotonic() - t0
        return current, row

    def _collect(self, replies: Mapping[int, Reply], current: Mapping[str, np.ndarray],
                 row: _PendingRow) -> list[Update]:
        updates, losses = [], []
        for node, reply in sorted(replies.items()):
            name = self.members[node].name
            if reply.error is not None:
                row.rejected[name] = str(reply.error)
                continue
            n = float(reply.metrics.get("num-examples", 0))
            weight = n if self.strategy.weighted else 1.0
            try:
                validate_update(current, reply.arrays, silo=name)
                if weight <= 0:
                    raise UpdateRejected(f"silo {name} reported weight {weight}; must be > 0")
            except UpdateRejected as exc:
                log.warning("update from %s rejected: %s", name, exc)
                row.rejected[name] = str(exc)
                continue
            updates.append(Update(silo=name, delta=reply.arrays, weight=weight))
            row.contributors.append(name)
            if "train_loss" in reply.metrics:
                losses.append((float(reply.metrics["train_loss"]), n))
        row.train_loss = _weighted_mean(losses)
        return updates

    def _aggregate(self, current: dict[str, np.ndarray], updates: list[Update],
                   server_round: int) -> dict[str, np.ndarray]:
        if isinstance(self.strategy, SumStrategy):
            acc = SumAccumulator(current)
            for update in updates:
                acc.add(update)
            return self.strategy.step(current, acc.result(), acc.total_weight, server_round)
        assert isinstance(self.strategy, PerUpdateStrategy)
        return self.strategy.aggregate(current, updates, server_round)

    def _final_evaluation(self, current: dict[str, np.ndarray], pending: _PendingRow) -> None:
        config = {"server-round": self.config.num_rounds, "final": True}
        replies = self.transport.exchange(
            "evaluate", {n: Payload(config, current) for n in sorted(self.members)},
            timeout=self.config.round_timeout, group="final")
        self._emit_row(pending, replies)

    def _emit_row(self, row: _PendingRow, replies: Mapping[int, Reply]) -> None:
        """Write the row of ``row.server_round`` using the evaluations in ``replies``."""
        per_silo, losses, accs = {}, [], []
        for node, reply in sorted(replies.items()):
            if reply.error is not None or node not in self.members:
                continue
            m = reply.metrics
            if "eval_loss" not in m:
                continue
            n = float(m.get("eval-examples", 1))
            per_silo[self.members[node].name] = {
                "loss": float(m["eval_loss"]), "accuracy": m.get("eval_accuracy"),
                "examples": int(n)}
            losses.append((float(m["eval_loss"]), n))
            if "eval_accuracy" in m:
                accs.append((float(m["eval_accuracy"]), n))
        self.store.append_event({
            "event": "round", "round": row.server_round, "status": row.status,
            "global_loss": _weighted_mean(losses), "global_accuracy": _weighted_mean(accs),
            "silos": per_silo, "train_loss": row.train_loss,
            "round_seconds": round(row.seconds, 3), "contributors": sorted(row.contributors),
            "rejected": row.rejected})

    def _finish(self, status: str, started: float, *, error: str | None = None) -> dict[str, Any]:
        rows = [e for e in self.store.events() if e.get("event") == "round"]
        last = rows[-1] if rows else {}
        summary = {
            "status": status, "error": error, "rounds_requested": self.config.num_rounds,
            "rounds_failed": self.failed_rounds, "silos": sorted(m.name for m in self.members.values()),
            "final_loss": last.get("global_loss"), "final_accuracy": last.get("global_accuracy"),
            "seconds": round(time.monotonic() - started, 3), "strategy": self.config.strategy}
        self.store.append_event({"event": "end", **summary})
        self.store.write_summary(summary)
        return summary

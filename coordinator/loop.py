"""The coordinator's round loop, over plain payloads (no Flower types here).

One run: wait for silos → *join* (each silo validates its data and site policy and
answers with its schema fingerprint and initial model) → ``num_rounds`` rounds of one
round trip each (silos evaluate the incoming global model and train in the same reply)
→ a final evaluation of the last model. Every round's global metrics are therefore known
one round later; the loop emits the row for round *r* as soon as model *r* was evaluated.

A failed round (too few usable updates) keeps the previous model and is reported, never
hidden; an exception fails the run and is recorded in ``summary.json``.

With ``secure_aggregation`` the rounds run through :mod:`coordinator.secure` (a key setup
after join, then two round trips per round); the strategy then sees only ``Σ w·delta`` and
``Σ w``. Both paths end in :meth:`RoundLoop._step_from_sum`, the one place a sum becomes
the next model.

With ``dp`` (:mod:`coordinator.privacy`) every round is checked against the privacy budget
*before* it is sent (a round that would exceed ``max_epsilon`` is not run: the run stops
cleanly with status ``stopped``), the coordinator clips and noises the sum, and every row,
checkpoint and the summary carry ε at δ.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import numpy as np

from coordinator.collect import RoundCollector
from coordinator.config import RunConfig
from coordinator.messages import Observers, Payload, Reply, Transport
from coordinator.privacy import RunPrivacy
from coordinator.run_store import RunStore
from coordinator.secure import SecureAggregation, run_threshold
from strategies.api import PerUpdateStrategy, RoundPlan, Strategy, SumStrategy
from xsilo.errors import (ConfigError, DeploymentError, ModelError, PrivacyBudgetExceeded,
                          StrategyError)
from xsilo.terms import PROXIMAL_MU, TERM_KEYS, EvaluateTerms, JoinTerms, SiloMetrics, TrainTerms

__all__ = ["RoundLoop"]

log = logging.getLogger(__name__)


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
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _weighted_mean(values: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else None


def _clip_report(metrics: Mapping[str, SiloMetrics]) -> dict[str, Any]:
    """What the silos said about clipping and weight capping before quantization."""
    return {"clipped_values": int(sum(m.secagg_clipped or 0 for m in metrics.values())),
            "capped_weights": sorted(n for n, m in metrics.items() if m.secagg_capped)}


def _note_dpsgd(row: _PendingRow, silo: str, metrics: SiloMetrics) -> None:
    """A DP-SGD silo's own record-level ε (its accountant, its δ) goes into the row."""
    if metrics.dpsgd_epsilon is not None:
        row.extra.setdefault("dpsgd_epsilon", {})[silo] = metrics.dpsgd_epsilon
        row.extra.setdefault("dpsgd_delta", {})[silo] = metrics.dpsgd_delta or 0.0


def _losses(metrics: Iterable[SiloMetrics]) -> list[tuple[float, float]]:
    """(train loss, example count) of the silos that reported one."""
    return [(m.train_loss, m.num_examples or 0.0) for m in metrics if m.train_loss is not None]


class RoundLoop:
    """Drive one federated run; see the module docstring."""

    def __init__(self, config: RunConfig, transport: Transport, store: RunStore,
                 strategy: Strategy, *, observers: Observers | None = None) -> None:
        self.config = config
        self.transport = transport
        self.store = store
        self.strategy = strategy
        self.observers = observers or Observers()
        self.members: dict[int, _Member] = {}
        self.failed_rounds: list[int] = []
        self.secure: SecureAggregation | None = None
        self.privacy = (RunPrivacy(config.dp, num_silos=config.wait_for,
                                   on_clipped=self.observers.clipped)
                        if config.dp is not None else None)
        self.run_token = self.privacy.run_token if self.privacy else secrets.token_hex(8)
        self.stop: tuple[str, str] | None = None  # (reason, message) of a clean early stop

    # ------------------------------------------------------------------ join
    def join(self) -> dict[str, np.ndarray]:
        """Admit silos; return the initial global model."""
        cfg = self.config
        nodes = self.transport.wait_for_nodes(cfg.wait_for, cfg.join_timeout)
        terms = JoinTerms(
            run_name=cfg.name, strategy=cfg.strategy, num_rounds=cfg.num_rounds, seed=cfg.seed,
            min_silos=cfg.min_silos, num_silos=len(nodes),
            secure_aggregation=cfg.secure_aggregation,
            secagg_threshold=run_threshold(cfg, len(nodes)) if cfg.secure_aggregation else None,
            dp=self.privacy.join_terms() if self.privacy is not None else None)
        replies = self.transport.exchange(
            "query", {n: Payload(terms) for n in nodes}, timeout=cfg.round_timeout,
            group="join")
        refused = {}
        initial: dict[str, dict[str, np.ndarray]] = {}
        for node, reply in sorted(replies.items()):
            name = reply.name or f"node-{node}"
            if reply.error is not None or reply.info is None:
                refused[name] = str(reply.error or "the join reply carries no silo identity")
                log.warning("silo %s refused the run: %s", name, refused[name])
                continue
            self.members[node] = _Member(node, name, dict(reply.info.fingerprint))
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
                if a.dtype != b.dtype:  # else the model silently takes one silo's precision
                    raise ModelError(
                        f"model dtypes differ: tensor {tensor!r} is {a.shape} {a.dtype} at "
                        f"{ref_name} but {b.shape} {b.dtype} at {name}; every silo must build "
                        "the same model with the same parameter dtypes")

    # ----------------------------------------------------------------- rounds
    def run(self) -> dict[str, Any]:
        """Run to completion and return the summary (also written to ``summary.json``)."""
        started = time.monotonic()
        try:
            current = self.join()
            if self.config.secure_aggregation:
                self._setup_secure(current)
            pending = _PendingRow(0, "initial", time.monotonic() - started)
            for server_round in range(1, self.config.num_rounds + 1):
                if self._budget_stops(server_round):
                    break
                current, pending = self._round(server_round, current, pending)
            self._final_evaluation(current, pending)
            self.store.save_model(current)
        except Exception as exc:
            self._finish("failed", started, error=f"{type(exc).__name__}: {exc}")
            raise
        return self._finish("stopped" if self.stop else "completed", started)

    def _budget_stops(self, server_round: int) -> bool:
        """True (and the stop recorded) when this round would exceed ``max_epsilon``."""
        if self.privacy is None:
            return False
        try:
            self.privacy.check_budget(server_round)
        except PrivacyBudgetExceeded as exc:
            self.stop = ("privacy_budget", str(exc))
            log.warning("privacy budget: %s", exc)
            self.store.append_event({"event": "stop", "round": server_round,
                                     "reason": "privacy_budget", "message": str(exc)})
            return True
        return False

    def _train_terms(self, server_round: int, plan: RoundPlan) -> TrainTerms:
        cfg = self.config
        extra = {k: v for k, v in plan.config.items() if k != PROXIMAL_MU}
        clash = sorted(set(extra) & TERM_KEYS)
        if clash:
            raise StrategyError(
                f"strategy '{cfg.strategy}' puts {clash} in its round config, which are xsilo's "
                "own term keys; the strategy must name its values differently")
        mu = plan.config.get(PROXIMAL_MU, 0.0)
        if not isinstance(mu, int | float) or isinstance(mu, bool) or not 0 <= mu < float("inf"):
            raise StrategyError(f"strategy '{cfg.strategy}' sends proximal term {mu!r}; it must "
                                "be a finite number ≥ 0")
        return TrainTerms(
            server_round=server_round, num_rounds=cfg.num_rounds, local_epochs=cfg.local_epochs,
            learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed,
            strategy=cfg.strategy, run_token=self.run_token, participants=len(plan.silos),
            proximal_mu=float(mu),
            dp=self.privacy.round_terms() if self.privacy is not None else None,
            strategy_config=extra)

    def _setup_secure(self, current: dict[str, np.ndarray]) -> None:
        """Key setup (one round trip); fewer than ``t`` keyed silos fail the run."""
        self.secure = SecureAggregation(self.config, self.transport, sorted(self.members), current,
                                        privacy=self.privacy)
        problems = self.secure.setup()
        self.store.append_event({
            "event": "secure_aggregation_setup", **self.secure.settings(),
            "keyed": sorted(m.name for n, m in self.members.items() if n not in problems),
            "not_keyed": {self.members[n].name: why for n, why in problems.items()}})

    def _round(self, server_round: int, current: dict[str, np.ndarray],
               pending: _PendingRow) -> tuple[dict[str, np.ndarray], _PendingRow]:
        t0 = time.monotonic()
        # Silos the SuperLink no longer knows (unregistered, e.g. revoked) are not waited for.
        connected = set(self.transport.node_ids())
        plan = self.strategy.configure_round(
            server_round, sorted(n for n in self.members if n in connected))
        terms = self._train_terms(server_round, plan)
        row = _PendingRow(server_round, "ok", 0.0)
        if self.secure is not None:
            current = self._secure_round(current, pending, row, plan.silos, terms)
        else:
            current = self._clear_round(current, pending, row, plan.silos, terms)
        if self.privacy is not None and "epsilon" not in row.extra:
            row.extra.update(self.privacy.row_fields())  # nothing released: ε unchanged
        if row.status == "ok":
            state = dict(self.strategy.state_dict())
            if self.privacy is not None:
                state.update(self.privacy.state_arrays())
            self.store.save_checkpoint(server_round, current, state)
        row.seconds = time.monotonic() - t0
        return current, row

    def _fail(self, row: _PendingRow, reason: str) -> None:
        row.status, row.reason = "failed", reason
        self.failed_rounds.append(row.server_round)
        log.error("round %d failed: %s; model kept", row.server_round, reason)

    def _secure_round(self, current: dict[str, np.ndarray], pending: _PendingRow,
                      row: _PendingRow, silos: tuple[int, ...],
                      terms: TrainTerms) -> dict[str, np.ndarray]:
        """Two round trips through ``coordinator.secure``; the strategy gets only the sum."""
        assert self.secure is not None
        terms = replace(terms, secagg_weighted=self.strategy.weighted)
        outcome = self.secure.round(row.server_round, terms, current, silos)
        # No masking round trip happened (too few keyed silos): still evaluate the model.
        replies = (outcome.replies if outcome.trained
                   else self._evaluate(current, silos, row.server_round, f"{row.server_round}-eval"))
        self._emit_row(pending, replies)
        row.rejected = {self.members[n].name: p for n, p in outcome.problems.items()}
        row.contributors = [self.members[n].name for n in outcome.contributors]
        row.extra["secure_aggregation"] = {**outcome.report, **_clip_report(
            {self.members[n].name: replies[n].metrics for n in outcome.contributors})}
        for n in outcome.contributors:
            _note_dpsgd(row, self.members[n].name, replies[n].metrics)
        row.train_loss = _weighted_mean(_losses(replies[n].metrics for n in outcome.contributors))
        if outcome.failure is None and outcome.total_weight <= 0:
            outcome.failure = "the unmasked total weight is 0 (every silo sent weight 0)"
        if outcome.failure is not None:
            self._fail(row, outcome.failure)
            return current
        assert outcome.weighted_sum is not None
        delta_sum, total = outcome.weighted_sum, outcome.total_weight
        if self.privacy is not None:  # DP: noise (central), public denominator, accounting
            released = self.privacy.release_secure(delta_sum, participants=len(silos),
                                                   contributors=len(outcome.contributors))
            row.extra.update(self.privacy.commit_round(released))
            delta_sum, total = released.delta_sum, released.total_weight
        return self._step_from_sum(current, delta_sum, total, row.server_round)

    def _clear_round(self, current: dict[str, np.ndarray], pending: _PendingRow,
                     row: _PendingRow, silos: tuple[int, ...],
                     terms: TrainTerms) -> dict[str, np.ndarray]:
        """One round trip; each update is folded into the round's sum as it arrives."""
        collector = RoundCollector(
            self.strategy, current, {n: m.name for n, m in self.members.items()},
            clip=self.privacy.accumulator() if self.privacy is not None else None,
            on_update=self.observers.update)
        replies = self.transport.exchange(
            "train", {n: Payload(terms, current) for n in silos},
            timeout=self.config.round_timeout, group=str(row.server_round),
            on_reply=collector.accept)
        self._emit_row(pending, replies)
        row.rejected, row.contributors = collector.rejected, list(collector.contributors)
        for name, metrics in collector.metrics.items():
            _note_dpsgd(row, name, metrics)
        row.train_loss = _weighted_mean(_losses(collector.metrics.values()))
        if collector.count < self.config.min_silos:
            self._fail(row, f"{collector.count} usable update(s), min_silos is "
                            f"{self.config.min_silos}")
            return current
        if collector.clip is not None:
            assert self.privacy is not None  # central DP: noise and the public denominator
            result = self.privacy.release(collector.clip.result(), participants=len(silos))
            row.extra.update(self.privacy.commit_round(result))
            return self._step_from_sum(current, result.delta_sum, result.total_weight,
                                       row.server_round)
        if collector.sum is not None:
            return self._step_from_sum(current, collector.sum.result(),
                                       collector.sum.total_weight, row.server_round)
        assert isinstance(self.strategy, PerUpdateStrategy)
        return self.strategy.aggregate(current, collector.updates, row.server_round)

    def _step_from_sum(self, current: dict[str, np.ndarray], delta_sum: Mapping[str, np.ndarray],
                       total_weight: float, server_round: int) -> dict[str, np.ndarray]:
        """The one place a weighted sum of deltas (clear or unmasked) becomes the next model."""
        assert isinstance(self.strategy, SumStrategy)
        return self.strategy.step(current, dict(delta_sum), total_weight, server_round)

    def _evaluate(self, current: dict[str, np.ndarray], nodes: Any, server_round: int,
                  group: str, *, final: bool = False) -> dict[int, Reply]:
        terms = EvaluateTerms(server_round, final=final)
        return self.transport.exchange(
            "evaluate", {n: Payload(terms, current) for n in sorted(nodes)},
            timeout=self.config.round_timeout, group=group)

    def _final_evaluation(self, current: dict[str, np.ndarray], pending: _PendingRow) -> None:
        self._emit_row(pending, self._evaluate(current, self.members, self.config.num_rounds,
                                               "final", final=True))

    def _emit_row(self, row: _PendingRow, replies: Mapping[int, Reply]) -> None:
        """Write the row of ``row.server_round`` using the evaluations in ``replies``."""
        per_silo, losses, accs = {}, [], []
        for node, reply in sorted(replies.items()):
            if reply.error is not None or node not in self.members:
                continue
            m = reply.metrics
            if m.eval_loss is None:
                continue
            n = m.eval_examples if m.eval_examples is not None else 1.0
            per_silo[self.members[node].name] = {
                "loss": m.eval_loss, "accuracy": m.eval_accuracy, "examples": int(n)}
            losses.append((m.eval_loss, n))
            if m.eval_accuracy is not None:
                accs.append((m.eval_accuracy, n))
        self.store.append_event({
            "event": "round", "round": row.server_round, "status": row.status,
            "global_loss": _weighted_mean(losses), "global_accuracy": _weighted_mean(accs),
            "silos": per_silo, "train_loss": row.train_loss,
            "round_seconds": round(row.seconds, 3), "contributors": sorted(row.contributors),
            "rejected": row.rejected, **({"reason": row.reason} if row.reason else {}),
            **row.extra})

    def _finish(self, status: str, started: float, *, error: str | None = None) -> dict[str, Any]:
        rows = [e for e in self.store.events() if e.get("event") == "round"]
        last = rows[-1] if rows else {}
        summary = {
            "status": status, "error": error, "rounds_requested": self.config.num_rounds,
            "rounds_failed": self.failed_rounds, "silos": sorted(m.name for m in self.members.values()),
            "final_loss": last.get("global_loss"), "final_accuracy": last.get("global_accuracy"),
            "seconds": round(time.monotonic() - started, 3), "strategy": self.config.strategy}
        if self.privacy is not None:
            summary.update(self.privacy.summary_fields())
        if self.stop is not None:
            summary.update({"stop_reason": self.stop[0], "stop_message": self.stop[1]})
        self.store.append_event({"event": "end", **summary})
        self.store.write_summary(summary)
        return summary

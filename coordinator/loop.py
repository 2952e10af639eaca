"""The coordinator's round loop, over plain payloads (no Flower types here).

One run: wait for silos → *join* (:mod:`coordinator.joining`: each silo validates its data
and site policy and answers with its schema fingerprint and initial model) → ``num_rounds``
rounds of one round trip each (silos evaluate the incoming global model and train in the
same reply) → a final evaluation of the last model. Every round's global metrics are
therefore known one round later; the loop emits the row for round *r* as soon as model *r*
was evaluated.

A failed round (too few usable updates, a new model that is not finite, or the strategy's
step raising: one ``StrategyError`` line naming the strategy and the method) keeps the
previous model and the strategy's state and is reported, never hidden; any other exception
fails the run and is recorded in ``summary.json``. At join, a silo whose initial model is
not numeric and finite is refused, and so are all nodes that claim one silo name, and a
node that joins under another name than the one the coordinator home enrolled it with
(``enrolled.json``): :mod:`coordinator.admission`.

With ``secure_aggregation`` the rounds run through :mod:`coordinator.secure` (a key setup
after join, then two round trips per round); the strategy then sees only ``Σ w·delta`` and
``Σ w``. Both paths end in :meth:`coordinator.stepping.Stepper.step_from_sum`, the one place a
sum becomes the next model.

With ``dp`` (:mod:`coordinator.privacy`) every round is checked against the privacy budget
*before* it is sent (a round that would exceed ``max_epsilon`` is not run: the run stops
cleanly with status ``stopped``, :mod:`coordinator.run_ends`), the coordinator clips and
noises the sum, and every row, checkpoint and the summary carry ε at δ.

Around the rounds: a validation set held by the coordinator scores every model
(``[run.evaluation]``, :mod:`coordinator.evaluation`), each row notes how its round went
(:mod:`coordinator.row_notes`: contributors, rejections, the array bytes the transport
carried, :mod:`coordinator.metering`, and the silos' own fit times), the rows go to the
run's exports as they are written (:mod:`coordinator.exports`), and the summary and the
run's HTML report are written when it ends, however it ends (:mod:`coordinator.run_ends`,
:mod:`coordinator.report`); a resumed run starts from its last verified checkpoint there
too.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from coordinator.admission import Member
from coordinator.collect import RoundCollector
from coordinator.config import RunConfig
from coordinator.evaluation import Evaluator, load_evaluator, validation_fields
from coordinator.exports import RunExports
from coordinator.joining import join_silos
from coordinator.messages import Observers, Patience, Payload, Reply, Transport
from coordinator.metering import MeteredTransport
from coordinator.outcome import failure
from coordinator.privacy import RunPrivacy
from coordinator.resume import Resumed, check_same_model, checkpoint_meta
from coordinator.row_notes import (add_traffic, evaluated_row, final_secure_report,
                                   note_clear_round, note_secure_round, note_traffic,
                                   traffic_since)
from coordinator.rows import NOT_CONNECTED, PendingRow
from coordinator.run_ends import (budget_stop, close_run, open_exports, record_exports,
                                  record_resume, record_stop, restore_run, run_summary)
from coordinator.run_store import RunStore
from coordinator.secure import SecureAggregation
from coordinator.stepping import Stepper
from strategies.api import RoundPlan, Strategy
from xsilo.failpoints import reach
from xsilo.terms import EvaluateTerms, SiloMetrics, TrainTerms

__all__ = ["RoundLoop"]

log = logging.getLogger(__name__)


class RoundLoop:
    """Drive one federated run; see the module docstring."""

    def __init__(self, config: RunConfig, transport: Transport, store: RunStore,
                 strategy: Strategy, *, observers: Observers | None = None,
                 evaluator: Evaluator | None = None, exports: RunExports | None = None,
                 resume: bool = False, enrolled: Mapping[str, int] | None = None) -> None:
        """``evaluator`` and ``exports`` default to what ``config`` names (built when the run
        starts); pass them to inject others (tests, embedding). ``resume``: continue from the
        run directory's last verified checkpoint (:mod:`coordinator.resume`). ``enrolled``:
        each enrolled silo's node id (the run directory's ``enrolled.json``): a node that
        joins under another name than its own is refused."""
        self.config = config
        self.transport = MeteredTransport(transport)
        self.store = store
        self.evaluator = evaluator
        self.exports = exports
        self.strategy = strategy
        self.stepper = Stepper(strategy, self._fail)
        self.observers = observers or Observers()
        self.members: dict[int, Member] = {}
        self.enrolled = dict(enrolled or {})
        self.failed_rounds: list[int] = []
        self.secure: SecureAggregation | None = None
        self.privacy = (RunPrivacy(config.dp, num_silos=config.wait_for,
                                   on_clipped=self.observers.clipped)
                        if config.dp is not None else None)
        self.run_token = self.privacy.run_token if self.privacy else secrets.token_hex(8)
        self.stop: tuple[str, str] | None = None  # (reason, message) of a clean early stop
        self.resume = resume
        self.phase: tuple[str, int | None] = ("start", None)  # where a failure happened

    # ------------------------------------------------------------------ join
    def join(self) -> dict[str, np.ndarray]:
        """Admit silos; return the initial global model (:mod:`coordinator.joining`)."""
        self.phase = ("join", 0)
        joined = join_silos(self.config, self.transport, self.enrolled, privacy=self.privacy,
                            run_token=self.run_token)
        self.members = joined.members
        self.store.append_event(joined.event(self.run_token))
        return joined.initial_model(self.config.min_silos)

    # ----------------------------------------------------------------- rounds
    def run(self) -> dict[str, Any]:
        """Run to completion and return the summary (also written to ``summary.json``)."""
        started = time.monotonic()
        try:
            resumed = self._restore()
            self._open_observers(resumed)
            joining = time.monotonic()  # round 0's time: join (and key setup) only
            current = self.join()
            if resumed is not None:  # the silos' model code must still build this model
                check_same_model(resumed.model, current)
                current = resumed.model
            if self.config.secure_aggregation:
                self.phase = ("key setup", 0)
                self._setup_secure(current)  # a resumed run is keyed afresh
            if resumed is not None:
                pending, first = resumed.pending, resumed.server_round + 1
            else:
                pending, first = PendingRow(0, "initial", time.monotonic() - joining), 1
                self._validate(pending, current)
                pending.extra["bytes"] = traffic_since(self.transport, (0, 0))
            for server_round in range(first, self.config.num_rounds + 1):
                self.phase = ("round", server_round)
                self.stop = budget_stop(self.privacy, server_round)
                if self.stop is not None:  # held before it is written: the summary says it
                    record_stop(self.store, server_round, self.stop, log=log)
                    break
                current, pending = self._round(server_round, current, pending)
            self.phase = ("final evaluation", None)
            self._final_evaluation(current, pending)
            self.store.save_model(current)
        except Exception as exc:
            phase, server_round = self.phase
            log.exception("the run failed (%s%s)", phase,
                          f" {server_round}" if phase == "round" else "")
            self._finish("failed", started,
                         error=failure(exc, phase=phase, server_round=server_round))
            raise
        return self._finish("stopped" if self.stop else "completed", started)

    def _restore(self) -> Resumed | None:
        """On resume: the last verified checkpoint back into the strategy, the accountant
        and the loop (None: none, the run starts over at round 1 with the same run token)."""
        if not self.resume:
            return None
        resumed, token, discarded = restore_run(self.store, self.strategy, self.privacy)
        if token is not None:
            self.run_token = token
        if resumed is not None:
            self.failed_rounds = list(resumed.failed_rounds)
        record_resume(self.store, resumed, discarded)
        log.info("resuming after round %d", resumed.server_round if resumed else 0)
        return resumed

    def _open_observers(self, resumed: Resumed | None) -> None:
        """The coordinator's evaluator and the run's exports (a ConfigError here fails the
        run before any silo is contacted); a resumed run's exports continue the earlier
        attempts' from the first round it writes again."""
        if self.evaluator is None and self.config.evaluation is not None:
            self.evaluator = load_evaluator(self.config.evaluation, seed=self.config.seed)
        if self.exports is None:
            self.exports = open_exports(
                self.config, self.store,
                rewrite_from=(resumed.server_round if resumed else 0) if self.resume else None)
            record_exports(self.store, self.exports, log=log)
        self.exports.round_started(0)

    def _validate(self, row: PendingRow, model: Mapping[str, np.ndarray]) -> None:
        """Score ``model`` (the model of ``row``) on the coordinator's validation set."""
        if self.evaluator is not None:
            row.extra["validation"] = validation_fields(self.evaluator(model))

    def _train_terms(self, server_round: int, plan: RoundPlan) -> TrainTerms:
        cfg = self.config
        extra, mu = self.stepper.round_config(plan)
        return TrainTerms(
            server_round=server_round, num_rounds=cfg.num_rounds, local_epochs=cfg.local_epochs,
            learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed,
            strategy=cfg.strategy, run_token=self.run_token, participants=len(plan.silos),
            proximal_mu=mu,
            dp=self.privacy.round_terms() if self.privacy is not None else None,
            strategy_config=extra, compression=cfg.compression,
            compression_fraction=cfg.compression_fraction,
            statistics=self.stepper.asked_of_silos(secure=self.secure is not None))

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
               pending: PendingRow) -> tuple[dict[str, np.ndarray], PendingRow]:
        reach(f"round:{server_round}")  # a test's stop between rounds (xsilo.failpoints)
        t0 = time.monotonic()
        mark = (self.transport.sent, self.transport.received)
        per_silo = self.transport.per_node()
        if self.exports is not None:
            self.exports.round_started(server_round)
        # Silos the SuperLink no longer knows (unregistered, e.g. revoked) are not waited for.
        connected = set(self.transport.node_ids())
        plan = self.stepper.plan(server_round, sorted(n for n in self.members if n in connected))
        terms = self._train_terms(server_round, plan)
        row = PendingRow(server_round, "ok", 0.0)
        row.extra["asked"] = sorted(self.members[n].name for n in plan.silos)
        self._awaiting(server_round, plan.silos, time.time() + self.config.round_timeout)
        if self.secure is not None:
            current = self._secure_round(current, pending, row, plan.silos, terms)
        else:
            current = self._clear_round(current, pending, row, plan.silos, terms)
        for node in sorted(set(self.members) - connected):
            row.rejected.setdefault(self.members[node].name, NOT_CONNECTED)
        if self.privacy is not None and "epsilon" not in row.extra:
            row.extra.update(self.privacy.row_fields())  # nothing released: ε unchanged
        if self.privacy is not None:  # the silos' own tallies keep the run's ε honest
            row.extra.update(self.privacy.adopt(row.tallies))
        self._validate(row, current)
        note_traffic(row, self.transport, mark, per_silo, self._names())
        row.seconds = time.monotonic() - t0
        if row.status == "ok":
            state = self.stepper.state()
            if self.privacy is not None:
                state.update(self.privacy.state_arrays())
            self.store.save_checkpoint(server_round, current, state, checkpoint_meta(
                row, failed_rounds=self.failed_rounds, run_token=self.run_token))
        return current, row

    def _names(self) -> dict[int, str]:
        return {n: m.name for n, m in self.members.items()}

    def _awaiting(self, server_round: int, nodes: Any, until: float) -> None:
        """Tell the live table which silos a round is waiting for, and until when."""
        self.store.append_event({
            "event": "awaiting", "round": server_round, "until": round(until, 3),
            "silos": sorted(self.members[n].name if n in self.members else f"node-{n}"
                            for n in nodes)})

    def _patience(self, server_round: int, quorum: Any) -> Patience:
        """Stop waiting :attr:`RunConfig.grace` s after ``quorum`` holds (and say so)."""
        return Patience(quorum, self.config.grace,
                        on_quorum=lambda nodes, until: self._awaiting(server_round, nodes, until))

    def _fail(self, row: PendingRow, reason: str) -> None:
        row.status, row.reason = "failed", reason
        self.failed_rounds.append(row.server_round)
        log.error("round %d failed: %s; model kept", row.server_round, reason)

    def _secure_round(self, current: dict[str, np.ndarray], pending: PendingRow,
                      row: PendingRow, silos: tuple[int, ...],
                      terms: TrainTerms) -> dict[str, np.ndarray]:
        """Two round trips through ``coordinator.secure``; the strategy gets only the sum."""
        assert self.secure is not None
        terms = replace(terms, secagg_weighted=self.strategy.weighted)
        outcome = self.secure.round(
            row.server_round, terms, current, silos,
            on_quorum=lambda nodes, until: self._awaiting(row.server_round, nodes, until))
        # No masking round trip happened (too few keyed silos): still evaluate the model.
        replies = (outcome.replies if outcome.trained
                   else self._evaluate(current, silos, row.server_round, f"{row.server_round}-eval"))
        # The contributors' metrics, summed under the masks: the global scores of the model
        # they evaluated and the round's train loss, even when no silo shares its own.
        summed = outcome.aggregate if outcome.failure is None else None
        self._emit_row(pending, replies, summed, outcome.contributors)
        note_secure_round(row, outcome, replies, self._names(), summed)
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
        return self.stepper.step_from_sum(current, delta_sum, total, row, statistics={
            name: getattr(summed, name) if summed is not None else None
            for name in self.stepper.statistics})

    def _clear_round(self, current: dict[str, np.ndarray], pending: PendingRow,
                     row: PendingRow, silos: tuple[int, ...],
                     terms: TrainTerms) -> dict[str, np.ndarray]:
        """One round trip; each update is folded into the round's sum as it arrives."""
        collector = RoundCollector(
            self.strategy, current, {n: m.name for n, m in self.members.items()},
            clip=self.privacy.accumulator() if self.privacy is not None else None,
            on_update=self.observers.update,
            compression=(None if self.config.compression == "none"
                         else (self.config.compression, self.config.compression_fraction)))
        patience = self._patience(row.server_round,
                                  lambda _: collector.count >= self.config.min_silos)
        replies = self.transport.exchange(
            "train", {n: Payload(terms, current) for n in silos},
            timeout=self.config.round_timeout, group=str(row.server_round),
            on_reply=collector.accept, patience=patience)
        self._emit_row(pending, replies)
        note_clear_round(row, collector, replies, silos, self._names(),
                         missing=patience.missing_reason(what="update",
                                                         timeout=self.config.round_timeout))
        if collector.count < self.config.min_silos:
            self._fail(row, f"{collector.count} usable update(s), min_silos is "
                            f"{self.config.min_silos}")
            return current
        if collector.clip is not None:
            assert self.privacy is not None  # central DP: noise and the public denominator
            result = self.privacy.release(collector.clip.result(), participants=len(silos))
            row.extra.update(self.privacy.commit_round(result))
            return self.stepper.step_from_sum(current, result.delta_sum, result.total_weight,
                                              row)
        if collector.sum is not None:
            folded = collector.sum
            return self.stepper.step_from_sum(
                current, folded.result(), folded.total_weight, row,
                statistics=self.stepper.clear_statistics(collector, folded))
        return self.stepper.aggregate(current, collector.updates, row)

    def _evaluate(self, current: dict[str, np.ndarray], nodes: Any, server_round: int,
                  group: str, *, final: bool = False) -> dict[int, Reply]:
        terms = EvaluateTerms(server_round, final=final)
        nodes = sorted(nodes)
        enough = min(self.config.min_silos, len(nodes))
        return self.transport.exchange(
            "evaluate", {n: Payload(terms, current) for n in nodes},
            timeout=self.config.round_timeout, group=group,
            patience=self._patience(server_round, lambda r: len(r) >= enough))

    def _final_evaluation(self, current: dict[str, np.ndarray], pending: PendingRow) -> None:
        mark = (self.transport.sent, self.transport.received)
        summed: SiloMetrics | None = None
        summed_by: list[int] = []
        if self.secure is not None:  # scores leave only as sums, like a round's
            replies, summed, summed_by = self._secure_final_evaluation(current, pending)
        else:
            connected = set(self.transport.node_ids())
            replies = self._evaluate(current, [n for n in self.members if n in connected],
                                     self.config.num_rounds, "final", final=True)
        add_traffic(pending, self.transport, mark)  # the final evaluation's traffic
        self._emit_row(pending, replies, summed, summed_by)

    def _secure_final_evaluation(self, current: dict[str, np.ndarray], pending: PendingRow
                                 ) -> tuple[dict[int, Reply], SiloMetrics | None, list[int]]:
        """The final evaluation of a secure run: a masked round without an update (its own
        round number, after the last). Too few keyed silos: a clear one (each silo's policy
        still decides what of its scores leaves)."""
        assert self.secure is not None
        connected = set(self.transport.node_ids())
        silos = tuple(sorted(n for n in self.members if n in connected))
        server_round = pending.server_round + 1
        outcome = self.secure.evaluate(server_round, EvaluateTerms(server_round, final=True),
                                       current, silos)
        pending.extra["final_evaluation"] = {
            "secure_aggregation": final_secure_report(outcome, self._names(), server_round)}
        if not outcome.trained:
            return self._evaluate(current, silos, server_round, "final", final=True), None, []
        if outcome.failure is not None:
            return outcome.replies, None, []
        return outcome.replies, outcome.aggregate, list(outcome.contributors)

    def _emit_row(self, row: PendingRow, replies: Mapping[int, Reply],
                  summed: SiloMetrics | None = None, summed_by: Any = ()) -> None:
        """Write the row of ``row.server_round`` using the evaluations in ``replies``
        (:func:`coordinator.row_notes.evaluated_row`) to the run's events and exports."""
        event = evaluated_row(row, replies, self._names(), summed=summed, summed_by=summed_by)
        self.store.append_event(event)
        if self.exports is not None:
            self.exports.row(event)

    def _finish(self, status: str, started: float, *,
                error: dict[str, Any] | None = None) -> dict[str, Any]:
        summary = run_summary(
            status, self.config, self.store.events(), started=started,
            failed_rounds=self.failed_rounds, silos=sorted(m.name for m in self.members.values()),
            privacy=self.privacy, stop=self.stop, error=error)
        close_run(self.store, self.exports, summary, log=log)
        return summary

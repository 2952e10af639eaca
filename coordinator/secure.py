"""Secure aggregation in the round loop: the coordinator's driver (Flower-free).

It runs the protocol of :mod:`strategies.secagg` over the loop's :class:`Transport`:

* **setup**, once per run after join, and **re-keying** of a silo without keys at the
  start of a round it is in: :mod:`coordinator.secure_keys` (a round trip each, the
  setup a second one for silos the SuperLink answered for; fewer than ``t`` keyed silos
  at the setup fail the run: every round would fail);
* **round keys** (``secagg_round_keys``,
  :func:`~coordinator.secure_settings.use_round_keys`): a round first deals
  (``train.secagg_setup`` carrying a DealRequest: every active silo shares a fresh round
  key and its self-mask seed; the silos whose dealing arrived are the round's active set),
  then goes on as below; three round trips, with dealing O(n·t) instead of O(n²·t) per silo;
* **every round**, two round trips: (1) ``train`` carries the global model, the train
  config and the silo's MaskRequest; the reply carries the silo's metrics in the clear
  (evaluation of the incoming model, train loss, example count) and its masked vector;
  (2) ``train.unmask`` to the first ``t + UNMASK_SPARES`` survivors (in the order their
  masked inputs arrived); the first ``t`` answers unmask the sum. Only if fewer than ``t``
  of those answer are the other survivors asked.

The loop gets a :class:`SecureRound`: the round-trip-1 replies (metrics only: masked
vectors are folded into the protocol's running sum and dropped) and either
``Σ w·delta`` as named float64 arrays in the model's order plus ``Σ w``, or the reason the
round failed (the protocol state is then aborted; the caller keeps the model).

The run's threshold, round-keys choice and protocol configuration are
:mod:`coordinator.secure_settings`. With DP (``privacy``, :mod:`coordinator.privacy`) the
run is bound to the roster and threshold at construction; the distributed mechanism masks
the silos' pre-encoded vectors (:mod:`strategies.secagg.encoded`, length = the DDG's padded
dimension, modulus 2^b) and the sum is decoded with the round's public rotation seed.

Flower node ids are mapped to roster indices ``0..n−1`` (sorted node ids) because the
protocol's silo ids travel as signed 64-bit integers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.config import RunConfig
from coordinator.messages import Patience, Payload, Reply, Transport
from coordinator.privacy import RunPrivacy
from coordinator.secure_keys import SiloKeys, refusal_reason
from coordinator.secure_settings import SHARE_WARNING_BYTES, describe, protocol_config
from strategies.secagg import (CoordinatorState, MaskedInput, RoundResult, UnmaskResponse,
                               abort_round, begin_round, finish_round, receive_masked,
                               receive_unmask, request_more_unmask, request_unmask)
from strategies.secagg.coordinator import (CoordinatorStage, begin_masking, receive_dealt,
                                           redeal)
from strategies.secagg.messages import Dealt, DealRequest
from strategies.secagg.masking import share_bytes
from xsilo.errors import ProtocolError, SecureAggregationError
from xsilo.failpoints import reach
from xsilo.protocol import SECAGG_SETUP, SECAGG_UNMASK, unflatten_update
from xsilo.terms import (EvaluateTerms, KeySetupTerms, SiloMetrics, TrainTerms, UnmaskTerms,
                         from_aggregate)

__all__ = ["UNMASK_SPARES", "SecureAggregation", "SecureRound"]

log = logging.getLogger(__name__)

UNMASK_SPARES = 1
"""Survivors asked to unmask beyond the ``t`` needed: so many can be lost during unmasking
without any wait, and the rest of the survivors are spared a message per round."""


@dataclass
class SecureRound:
    """What one secure round gives the loop."""

    replies: dict[int, Reply]
    trained: bool = True  # False when no round trip happened (too few keyed, available silos)
    weighted_sum: dict[str, np.ndarray] | None = None
    total_weight: float = 0.0
    contributors: list[int] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)
    failure: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    # Wall time of each round trip ("masked_input", "unmasking"), for the round's report.
    seconds: dict[str, float] = field(default_factory=dict)
    # Unmask requests sent and valid responses used ("asked", "answered").
    unmasking: dict[str, int] = field(default_factory=dict)
    # Silos re-keyed before the round ("asked", "keyed"); empty when none was due.
    rekeyed: dict[str, int] = field(default_factory=dict)
    # Round keys: dealing trips repeated among the silos whose dealing arrived.
    redealt: int = 0
    # The contributors' metrics, summed under the masks: example-weighted means.
    aggregate: SiloMetrics | None = None


class SecureAggregation:
    """The coordinator's side of secure aggregation for one run (see the module docstring)."""

    def __init__(self, config: RunConfig, transport: Transport, nodes: Sequence[int],
                 template: Mapping[str, np.ndarray], privacy: RunPrivacy | None = None) -> None:
        self.run_config = config
        self.transport = transport
        self.nodes = sorted(nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        n = len(self.nodes)
        self.privacy = privacy
        self.config = protocol_config(config, n, template, privacy)
        self.keys = SiloKeys(config, transport, self.index, self.config.threshold)
        self.state: CoordinatorState | None = None
        self.share_bytes_held = share_bytes(n, round_keys=self.config.round_keys)[1]
        if self.share_bytes_held > SHARE_WARNING_BYTES:
            log.warning(
                "secure aggregation with %d silos: the coordinator will hold about %.1f GB of "
                "share bundles each round, and each silo deal %d² shares (the cost grows as "
                "n³; docs/secure-aggregation.md, 'How far it scales'); secagg_round_keys = "
                "\"on\" (or \"auto\") deals two secrets per silo instead", n,
                self.share_bytes_held / 1e9, n)

    @property
    def threshold(self) -> int:
        return self.config.threshold

    def settings(self) -> dict[str, Any]:
        """The run's secure-aggregation parameters (for the run's event log)."""
        return describe(self.config, self.state, self.privacy, silos=len(self.nodes),
                        share_bytes_held=self.share_bytes_held)

    def setup(self) -> dict[int, str]:
        """One round trip: key adverts from every silo; returns ``{node: why not keyed}``
        (:meth:`coordinator.secure_keys.SiloKeys.setup`; fewer than ``t`` keyed silos fail
        the run)."""
        self.state, problems = self.keys.setup(self.config)
        return problems

    def _rekey(self, server_round: int, silos: Sequence[int], out: SecureRound) -> None:
        """Fresh keys for this round's silos that have none and are due (one round trip,
        only in a round where some silo needs it)."""
        due = self.keys.due(server_round, silos)
        if not due:
            return
        assert self.state is not None  # setup() ran
        self.state, problems, seconds = self.keys.rekey(self.state, server_round, due)
        out.seconds["rekey"] = round(seconds, 3)
        out.rekeyed = {"asked": len(due), "keyed": len(due) - len(problems)}
        for node in due:
            if node in problems:
                out.problems[node] = f"re-key: {problems[node]}"

    def evaluate(self, server_round: int, terms: EvaluateTerms,
                 current: Mapping[str, np.ndarray], silos: Sequence[int]) -> SecureRound:
        """A secure evaluation (the run's final one): silos score ``current`` and mask only
        their metrics' sums (no update, weight 0); ``SecureRound.aggregate`` holds them."""
        return self.round(server_round, terms, current, silos, message_type="evaluate")

    def round(self, server_round: int, terms: TrainTerms | EvaluateTerms,
              current: Mapping[str, np.ndarray], silos: Sequence[int], *,
              message_type: str = "train",
              on_quorum: Callable[[list[int], float], None] | None = None) -> SecureRound:
        """Two round trips (three when a silo is re-keyed first); never raises for a
        protocol failure (see ``SecureRound.failure``). Besides the weighted sum, the silos'
        metrics arrive summed (``SecureRound.aggregate``: example-weighted means). Once
        ``t`` masked inputs are in, the stragglers get ``straggler_grace`` more seconds
        (``on_quorum`` is told who is still awaited)."""
        out = SecureRound(replies={})
        self._rekey(server_round, silos, out)
        assert self.state is not None  # setup() ran
        try:
            state, requests = begin_round(self.state, round_=server_round,
                                          available=[self.index[n] for n in silos])
        except SecureAggregationError as exc:
            out.trained, out.failure = False, str(exc)
            out.report = self._round_report(out, None)
            return out
        node_of = {i: node for node, i in self.index.items()}
        if state.stage is CoordinatorStage.DEALING:  # round keys: round trip 0
            try:
                state, requests = self._deal(state, server_round, requests, out, node_of)
            except ProtocolError as exc:  # too few dealt: the round fails, the model stays
                self.state = abort_round(state)
                out.trained, out.failure = False, str(exc)
                out.report = self._round_report(out, None)
                return out
        arrived: list[int] = []  # silos whose masked input was accepted, in arrival order

        def fold(node: int, reply: Reply) -> Reply:
            # Each masked input joins the running modular sum the moment it is pulled, so the
            # coordinator holds one masked vector at a time, not one per silo.
            nonlocal state
            try:
                state = receive_masked(state, self.keys.message(node, reply, MaskedInput,
                                                                  server_round))
                arrived.append(self.index[node])
            except ProtocolError as exc:
                out.problems[node] = refusal_reason(reply, exc)
            reply.secagg = None  # the masked vector is in the running sum; keep nothing else
            return reply

        started = time.monotonic()
        patience = Patience(lambda _: len(arrived) >= self.threshold, self.run_config.grace,
                            on_quorum=on_quorum)
        out.replies = self.transport.exchange(
            message_type, {node_of[i]: Payload(terms, current, secagg=req.to_record())
                      for i, req in requests.items()},
            timeout=self.run_config.round_timeout, group=str(server_round), on_reply=fold,
            patience=patience)
        out.seconds["masked_input"] = round(time.monotonic() - started, 3)
        replies = out.replies
        for i in requests:
            if node_of[i] not in replies:
                out.problems[node_of[i]] = patience.missing_reason(
                    what="masked input", timeout=self.run_config.round_timeout)
        try:
            state = self._unmask(state, server_round, out, node_of, arrived)
            state, result = finish_round(state)
        except ProtocolError as exc:  # SecureAggregationError included: fail the round only
            self.state = abort_round(state)
            out.failure = str(exc)
            out.report = self._round_report(out, None)
            return out
        self.state = state
        out.weighted_sum = (
            self.privacy.decode_distributed(result.weighted_sum, template=current)
            if self.config.encoded and self.privacy is not None
            else unflatten_update(result.weighted_sum, current))
        out.total_weight = float(result.total_weight)
        out.aggregate = from_aggregate(result.aux_sum)
        out.contributors = [node_of[i] for i in result.contributors]
        out.report = self._round_report(out, result)
        return out

    def _deal(self, state: CoordinatorState, server_round: int,
              requests: Mapping[int, DealRequest], out: SecureRound,
              node_of: Mapping[int, int]) -> tuple[CoordinatorState, dict[int, Any]]:
        """Round-keys mode, round trip 0: every active silo deals its round key and self-mask
        seed, and the MaskRequests go to the silos dealt to. A silo masks only with the
        whole set it dealt to, so while some dealing does not arrive the silos whose dealing
        did deal again among themselves (a trip more each time; fewer than ``t``: the round
        fails)."""
        started = time.monotonic()
        state = self._deal_once(state, server_round, requests, out, node_of)
        while set(state.dealt) != set(state.dealt_active):
            state, requests = redeal(state)  # SecureAggregationError: too few dealt
            out.redealt += 1
            state = self._deal_once(state, server_round, requests, out, node_of)
        out.seconds["dealing"] = round(time.monotonic() - started, 3)
        reach("dealt")  # a test's stop between the trips (xsilo.failpoints); inert otherwise
        return begin_masking(state)

    def _deal_once(self, state: CoordinatorState, server_round: int,
                   requests: Mapping[int, DealRequest], out: SecureRound,
                   node_of: Mapping[int, int]) -> CoordinatorState:
        """One dealing trip; the state with every Dealt that arrived."""

        def take(node: int, reply: Reply) -> Reply:
            nonlocal state
            try:
                state = receive_dealt(state, self.keys.message(node, reply, Dealt,
                                                                 server_round))
            except ProtocolError as exc:
                out.problems[node] = f"dealing: {refusal_reason(reply, exc)}"
            reply.secagg = None
            return reply

        patience = Patience(lambda _: len(state.dealt) >= self.threshold, self.run_config.grace)
        replies = self.transport.exchange(
            SECAGG_SETUP, {node_of[i]: Payload(KeySetupTerms(silo=i, server_round=server_round),
                                               secagg=req.to_record())
                           for i, req in requests.items()},
            timeout=self.run_config.round_timeout, group=f"{server_round}-deal", on_reply=take,
            patience=patience)
        for i in requests:
            if node_of[i] not in replies:
                out.problems[node_of[i]] = "dealing: " + patience.missing_reason(
                    what="dealing", timeout=self.run_config.round_timeout)
        return state

    def _unmask(self, state: CoordinatorState, server_round: int, out: SecureRound,
                node_of: Mapping[int, int], arrived: Sequence[int]) -> CoordinatorState:
        """Round trip 2: ask ``t + UNMASK_SPARES`` survivors, stop at ``t`` answers; ask the
        other survivors only when too few answered."""
        t = self.threshold
        state, requests = request_unmask(state, ask=list(arrived)[:t + UNMASK_SPARES])
        started = time.monotonic()

        def take(node: int, reply: Reply) -> Reply:
            nonlocal state
            try:
                state = receive_unmask(state, self.keys.message(node, reply, UnmaskResponse,
                                                                  server_round))
            except ProtocolError as exc:
                out.problems[node] = f"unmasking: {refusal_reason(reply, exc)}"
            reply.secagg = None
            return reply

        asked = 0
        while requests:
            asked += len(requests)
            replies = self.transport.exchange(
                SECAGG_UNMASK, {node_of[i]: Payload(UnmaskTerms(server_round),
                                                    secagg=req.to_record())
                                for i, req in requests.items()},
                timeout=self.run_config.round_timeout, group=f"{server_round}-unmask",
                on_reply=take, until=lambda _: len(state.responses) >= t)
            if len(state.responses) >= t:
                break
            for i in requests:
                if node_of[i] not in replies:
                    out.problems[node_of[i]] = ("unmasking: no unmask response before the "
                                                "round timeout")
            state, requests = request_more_unmask(state)
        out.seconds["unmasking"] = round(time.monotonic() - started, 3)
        out.unmasking = {"asked": asked, "answered": len(state.responses)}
        return state

    def _round_report(self, out: SecureRound, result: RoundResult | None) -> dict[str, Any]:
        """The round's ``secure_aggregation`` report: protocol figures and round-trip costs."""
        report: dict[str, Any] = {"threshold": self.threshold}
        report.update({k: v for k, v in (("seconds", out.seconds), ("unmasking", out.unmasking),
                                         ("rekeyed", out.rekeyed), ("redealt", out.redealt))
                       if v})
        if result is None:
            return report
        e = result.error
        report.update({
            "total_weight": result.total_weight,
            "dropped": len(result.dropped),
            # bounds on Σ w·delta per coordinate; divide by Σ w for the averaged update
            "quantization": {"step": e.step, "sum_max_abs_bound": e.max_abs_bound,
                             "sum_std_bound": e.std_bound,
                             "mean_max_abs_bound": e.max_abs_bound / max(result.total_weight, 1)},
        })
        return report

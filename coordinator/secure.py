"""Secure aggregation in the round loop: the coordinator's driver (Flower-free).

It runs the protocol of :mod:`strategies.secagg` over the loop's :class:`Transport`:

* **setup**, once per run after join (one round trip, ``train.secagg_setup``): every
  joined silo gets a KeyRequest and its roster index (fewer than ``t`` keyed silos fail
  the run: every round would fail);
* **re-keying**: a silo without keys is not active in a round. One that answers a
  request with :class:`~xsilo.errors.KeysMissing` (it restarted and lost its state) is
  re-keyed at the start of the next round it is in (one more round trip, that round
  only: a KeyRequest with a higher epoch); one that missed the setup or a re-key is tried
  again after 1, 2, 4, … rounds (at most ``REKEY_BACKOFF_CAP``), so a dead silo costs a
  wait only now and then;
* **round keys** (``secagg_round_keys``, :func:`use_round_keys`): a round first deals
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

With DP (``privacy``, :mod:`coordinator.privacy`) the run is bound to the roster and
threshold at construction; the distributed mechanism masks the silos' pre-encoded vectors
(:mod:`strategies.secagg.encoded`, length = the DDG's padded dimension, modulus 2^b) and
the sum is decoded with the round's public rotation seed.

Flower node ids are mapped to roster indices ``0..n−1`` (sorted node ids) because the
protocol's silo ids travel as signed 64-bit integers.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from coordinator.config import RunConfig
from coordinator.messages import Patience, Payload, Reply, Transport, await_online
from coordinator.privacy import RunPrivacy
from strategies.secagg import (
    CoordinatorState, KeyAdvert, KeyRequest, MaskedInput, Message, RoundResult, UnmaskResponse,
    abort_round, begin_round, finish_round, make_config, message_from_record, receive_advert,
    receive_masked, receive_unmask, request_more_unmask, request_rekey, request_unmask,
    start_run)
from strategies.secagg.coordinator import (CoordinatorStage, begin_masking, receive_dealt,
                                           redeal)
from strategies.secagg.messages import Dealt, DealRequest
from strategies.secagg.config import make_encoded_config
from strategies.secagg.masking import share_bytes
from xsilo.errors import KeysMissing, ProtocolError, SecureAggregationError
from xsilo.failpoints import reach
from xsilo.protocol import SECAGG_SETUP, SECAGG_UNMASK, model_length, unflatten_update
from xsilo.terms import (AGGREGATED_METRICS, EvaluateTerms, KeySetupTerms, SiloMetrics,
                         TrainTerms, UnmaskTerms, from_aggregate)

__all__ = ["REKEY_BACKOFF_CAP", "ROUND_KEYS_FROM", "UNMASK_SPARES", "SecureAggregation",
           "SecureRound", "default_threshold", "run_threshold", "use_round_keys"]

log = logging.getLogger(__name__)

AUX_LENGTH = 2 * len(AGGREGATED_METRICS)
"""Auxiliary slots of every secure run: each silo's metrics, summed (xsilo.terms)."""

REKEY_BACKOFF_CAP = 16
"""A silo left without keys is re-keyed at the start of a round: the round after it reports
that it lost them, else 1, 2, 4, … (at most this many) rounds after the last failed try."""

SHARE_WARNING_BYTES = 1 << 30
"""Above this many bytes of share bundles held per round (about 275 silos) the coordinator
warns at the start of a secure run: the protocol's dealing grows as n³."""

UNMASK_SPARES = 1
"""Survivors asked to unmask beyond the ``t`` needed: so many can be lost during unmasking
without any wait, and the rest of the survivors are spared a message per round."""


ROUND_KEYS_FROM = 200
"""``secagg_round_keys = "auto"`` deals round keys from this many silos on. At 200 silos a
silo's pair-seed dealing (O(n²·t)) takes about 0.7 s on the benchmark machine, and 0.57 GB of
shares cross the coordinator a round. The dealing trip round keys add measured 1.8 s on real
processes (docs/secure-aggregation.md, *Round keys*)."""


def use_round_keys(setting: str, num_silos: int) -> bool:
    """Whether a secure run with ``num_silos`` silos deals round keys: ``"on"``, ``"off"``,
    or ``"auto"`` (from :data:`ROUND_KEYS_FROM` silos)."""
    return setting == "on" or (setting == "auto" and num_silos >= ROUND_KEYS_FROM)


def default_threshold(num_silos: int, min_silos: int) -> int:
    """``max(2, min_silos, ⌈2n/3⌉)``: tolerates a third of the silos dropping out in a round,
    and a sum over at least two thirds of them reveals little about any one."""
    return max(2, min_silos, math.ceil(2 * num_silos / 3))


def run_threshold(config: RunConfig, num_silos: int) -> int:
    """The threshold a secure run uses with ``num_silos`` silos: ``secagg_threshold`` when
    set, else :func:`default_threshold` (the one place it is derived; silos are told it)."""
    return config.secagg_threshold or default_threshold(num_silos, config.min_silos)


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


M = TypeVar("M", bound=Message)


def _reason(reply: Reply, exc: ProtocolError) -> str:
    """Why a silo's reply was not used: its own refusal as it sent it, or the coordinator's
    (class and message, e.g. ``ProtocolError: … names silo 1 …``)."""
    return str(reply.error) if reply.error is not None else f"{type(exc).__name__}: {exc}"


def _parse(reply: Reply, expected: type[M]) -> M:
    if reply.secagg is None:
        raise ProtocolError(f"silo node {reply.node_id} replied without a secure-aggregation "
                            f"record (expected {expected.KIND!r})")
    message = message_from_record(reply.secagg)
    if not isinstance(message, expected):
        raise ProtocolError(f"silo node {reply.node_id} sent {type(message).__name__}, "
                            f"expected {expected.__name__}")
    return message


class SecureAggregation:
    """The coordinator's side of secure aggregation for one run (see the module docstring)."""

    def __init__(self, config: RunConfig, transport: Transport, nodes: Sequence[int],
                 template: Mapping[str, np.ndarray], privacy: RunPrivacy | None = None) -> None:
        self.run_config = config
        self.transport = transport
        self.nodes = sorted(nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        n = len(self.nodes)
        threshold = run_threshold(config, n)
        if threshold > n:
            raise SecureAggregationError(
                f"secagg_threshold {threshold} is above the {n} silo(s) that joined; lower "
                f"secagg_threshold to ≤ {n} or wait for more silos (expected_silos)")
        if 2 * threshold <= n:  # every silo refuses it: it permits split-view recovery
            raise SecureAggregationError(
                f"secagg_threshold {threshold} is not a strict majority of the {n} silos that "
                f"joined; silos refuse it (a coordinator showing different survivor sets to "
                f"different silos could unmask one update); set secagg_threshold ≥ {n // 2 + 1} "
                "or leave it 0 (automatic)")
        run_id, length = f"{config.name}-{secrets.token_hex(8)}", model_length(template)
        self.privacy = privacy
        ddg = (privacy.bind_secure(num_silos=n, threshold=threshold, dimension=length)
               if privacy is not None and privacy.dp.mechanism == "distributed" else None)
        round_keys = use_round_keys(config.secagg_round_keys, n)
        if ddg is not None:  # silos mask their own KLS encodings (noise included), mod 2^b
            self.config = make_encoded_config(
                run_id=run_id, roster=list(range(n)), threshold=threshold,
                length=ddg.calibrate().padded_dim, modulus_bits=ddg.modulus_bits,
                aux_length=AUX_LENGTH, round_keys=round_keys)
        else:
            self.config = make_config(
                run_id=run_id, roster=list(range(n)), threshold=threshold, length=length,
                clip=config.secagg_clip, bits=config.secagg_bits,
                max_weight=config.secagg_max_weight, aux_length=AUX_LENGTH,
                round_keys=round_keys)
            if privacy is not None:  # central: silos clip before masking
                privacy.bind_secure(num_silos=n, threshold=threshold, dimension=length,
                                    quant_step=self.config.quant.step)
        self.state: CoordinatorState | None = None
        self.share_bytes_held = share_bytes(n, round_keys=round_keys)[1]
        if self.share_bytes_held > SHARE_WARNING_BYTES:
            log.warning(
                "secure aggregation with %d silos: the coordinator will hold about %.1f GB of "
                "share bundles each round, and each silo deal %d² shares (the cost grows as "
                "n³; docs/secure-aggregation.md, 'How far it scales'); secagg_round_keys = "
                "\"on\" (or \"auto\") deals two secrets per silo instead", n,
                self.share_bytes_held / 1e9, n)
        # Joined silos without keys (missed the setup, restarted): node → the first round
        # to re-key it in, and how many attempts in a row failed (for the back-off).
        self._rekey_at: dict[int, int] = {}
        self._key_failures: dict[int, int] = {}

    @property
    def threshold(self) -> int:
        return self.config.threshold

    def settings(self) -> dict[str, Any]:
        """The run's secure-aggregation parameters (for the run's event log)."""
        q = self.config.quant
        signed = sum(1 for advert in (self.state.directory.values() if self.state else ())
                     if advert.certificate)
        out: dict[str, Any] = {
            "threshold": self.threshold, "silos": len(self.nodes), "signed_adverts": signed,
            "round_keys": self.config.round_keys,
            "share_bytes_held_per_round": self.share_bytes_held,
            "length": self.config.length, "clip": q.clip, "bits": q.bits,
            "max_weight": q.max_weight, "modulus_bits": q.modulus_bits, "step": q.step}
        if self.privacy is not None and self.privacy.calibration is not None:
            cal = self.privacy.calibration
            out.update({"pre_encoded": "distributed discrete Gaussian", "clip": None,
                        "bits": None, "max_weight": None, "step": None,
                        "granularity": cal.granularity, "rho": cal.rho,
                        "local_variance": float(cal.local_variance),
                        "wrap_probability_union": cal.wrap_probability_union})
        return out

    def setup(self) -> dict[int, str]:
        """One round trip: key adverts from every silo; returns ``{node: why not keyed}``.

        Fewer than ``t`` keyed silos fail the run, so the setup first waits (within
        ``join_timeout``) for silos the SuperLink reports offline, and asks again, with
        fresh keys, those it answered "unavailable" for while the keyed ones are too few
        (a SuperNode reconnecting to a restarted SuperLink is offline until its next
        heartbeat, though it answered the join)."""
        deadline = time.monotonic() + self.run_config.join_timeout
        state, requests = start_run(self.config)
        self._await_online(self.nodes, deadline, enough=self.threshold)
        state, problems, lapsed = self._key_exchange(state, requests, group="secagg-setup",
                                                     what="the key setup")
        if lapsed and len(state.directory) < self.threshold:
            back = sorted(self._await_online(lapsed, deadline,
                                             enough=self.threshold - len(state.directory)))
            if back:
                log.warning("asking silo nodes %s for keys again: the SuperLink reported them "
                            "offline during the key setup and they are back", back)
                state, requests = request_rekey(state, [self.index[n] for n in back])
                state, again, _ = self._key_exchange(
                    state, requests, group="secagg-setup-again",
                    what="the key setup (asked again)")
                problems = {n: why for n, why in problems.items() if n not in back} | again
        if len(state.directory) < self.threshold:
            raise SecureAggregationError(
                f"only {len(state.directory)} silo(s) completed the key setup, fewer than "
                f"secagg_threshold={self.threshold}: every round would fail; problems: "
                + "; ".join(f"node {n}: {p}" for n, p in sorted(problems.items())))
        self.state = state
        for node in problems:
            self._keys_failed(node, 0)
        return problems

    def _await_online(self, nodes: Sequence[int], deadline: float, *, enough: int) -> set[int]:
        """``nodes`` the SuperLink lists as online, waiting for the others until ``deadline``
        (once ``enough`` are online, the straggler grace at most)."""
        return await_online(self.transport, nodes, enough=min(enough, len(nodes)),
                            grace=self.run_config.grace, deadline=deadline)

    def _key_exchange(self, state: CoordinatorState, requests: Mapping[int, KeyRequest], *,
                      group: str, what: str, server_round: int = 0
                      ) -> tuple[CoordinatorState, dict[int, str], list[int]]:
        """Send KeyRequests (``{roster index: request}``); store the adverts that are valid.
        Returns the new state, ``{node: why it has no keys}`` for the others and the nodes
        among them Flower answered "Node Unavailable" for."""
        node_of = {i: node for node, i in self.index.items()}
        payloads = {node_of[i]: Payload(KeySetupTerms(silo=i, server_round=server_round),
                                        secagg=req.to_record())
                    for i, req in requests.items()}
        enough = min(self.threshold, len(payloads))
        patience = Patience(lambda r: len(r) >= enough, self.run_config.grace)
        replies = self.transport.exchange(SECAGG_SETUP, payloads,
                                          timeout=self.run_config.round_timeout, group=group,
                                          patience=patience)
        missing = patience.missing_reason(what=f"reply to {what}",
                                          timeout=self.run_config.round_timeout)
        problems = {node: missing for node in payloads if node not in replies}
        lapsed = sorted(n for n, r in replies.items() if r.error is not None and r.error.unavailable)
        for node, reply in sorted(replies.items()):
            try:
                if reply.error is not None:
                    raise ProtocolError(str(reply.error))
                state = receive_advert(state, self._from_node(node, reply, KeyAdvert))
            except ProtocolError as exc:
                problems[node] = _reason(reply, exc)
                log.warning("silo node %s has no secure-aggregation keys: %s", node, exc)
        return state, problems, lapsed

    def _from_node(self, node: int, reply: Reply, expected: type[M]) -> M:
        """The reply's protocol message, bound to the authenticated node that sent it: the
        silo it names must be that node's roster index (no silo speaks for another)."""
        message = _parse(reply, expected)
        named = getattr(message, "silo")
        if named != self.index[node]:
            raise ProtocolError(f"silo node {node} sent a {expected.__name__} that names silo "
                                f"{named}, but its roster index is {self.index[node]}; refused")
        return message

    def _keys_failed(self, node: int, server_round: int) -> None:
        """``node`` is left without keys: try again after 1, 2, 4, … rounds."""
        failures = self._key_failures.get(node, 0) + 1
        self._key_failures[node] = failures
        self._rekey_at[node] = server_round + min(2 ** (failures - 1), REKEY_BACKOFF_CAP)

    def _rekey(self, server_round: int, silos: Sequence[int], out: SecureRound) -> None:
        """Fresh keys for this round's silos that have none and are due (one round trip,
        only in a round where some silo needs it)."""
        due = [n for n in silos if self._rekey_at.get(n, math.inf) <= server_round]
        if not due:
            return
        assert self.state is not None  # setup() ran
        state, requests = request_rekey(self.state, [self.index[n] for n in due])
        started = time.monotonic()
        state, problems, _ = self._key_exchange(state, requests, group=f"{server_round}-rekey",
                                             what="the re-key request", server_round=server_round)
        self.state = state
        out.seconds["rekey"] = round(time.monotonic() - started, 3)
        out.rekeyed = {"asked": len(due), "keyed": len(due) - len(problems)}
        for node in due:
            if node in problems:
                out.problems[node] = f"re-key: {problems[node]}"
                self._keys_failed(node, server_round)
            else:
                self._key_failures.pop(node, None)
                self._rekey_at.pop(node, None)

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
                state = receive_masked(state, self._reply_message(node, reply, MaskedInput,
                                                                  server_round))
                arrived.append(self.index[node])
            except ProtocolError as exc:
                out.problems[node] = _reason(reply, exc)
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
                state = receive_dealt(state, self._reply_message(node, reply, Dealt,
                                                                 server_round))
            except ProtocolError as exc:
                out.problems[node] = f"dealing: {_reason(reply, exc)}"
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
                state = receive_unmask(state, self._reply_message(node, reply, UnmaskResponse,
                                                                  server_round))
            except ProtocolError as exc:
                out.problems[node] = f"unmasking: {_reason(reply, exc)}"
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

    def _reply_message(self, node: int, reply: Reply, expected: type[M], server_round: int) -> M:
        """A round's reply as its protocol message; a silo's own refusal is raised as a
        ProtocolError with its reason (and a silo that lost its keys is re-keyed)."""
        if reply.error is not None:
            self._note_error(node, reply, server_round)
            raise ProtocolError(str(reply.error))
        return self._from_node(node, reply, expected)

    def _note_error(self, node: int, reply: Reply, server_round: int) -> None:
        """A silo that answered :class:`KeysMissing` restarted: re-key it next round."""
        if reply.error is not None and reply.error.type == KeysMissing.__name__:
            self._key_failures.pop(node, None)
            self._rekey_at[node] = server_round + 1

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

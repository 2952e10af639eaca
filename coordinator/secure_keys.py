"""Which silos of a secure run hold keys, and getting keys to those that do not (Flower-free).

The key management of :mod:`coordinator.secure`, over the loop's :class:`Transport`:

* **setup**, once per run after join (one round trip, ``train.secagg_setup``): every
  joined silo gets a KeyRequest and its roster index. Fewer than ``t`` keyed silos fail the
  run (every round would fail), so the setup first waits (within ``join_timeout``) for
  silos the SuperLink reports offline, and asks again those it answered "unavailable" for
  while the keyed ones are too few and asking them can make up ``t`` (waiting at least
  :data:`REASK_WAIT` for them);
* **re-keying**: a silo without keys is not active in a round. One that answers a
  request with :class:`~xsilo.errors.KeysMissing` (it restarted and lost its state) is
  re-keyed at the start of the next round it is in (one more round trip, that round
  only: a KeyRequest with a higher epoch); one that missed the setup or a re-key is tried
  again after 1, 2, 4, … rounds (at most :data:`REKEY_BACKOFF_CAP`), so a dead silo costs
  a wait only now and then;
* **replies bound to their sender**: a silo's protocol message must name the roster
  index of the authenticated node that sent it (no silo speaks for another).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

from coordinator.config import RunConfig
from coordinator.messages import Patience, Payload, Reply, Transport, await_online
from strategies.secagg import (CoordinatorState, KeyAdvert, KeyRequest, Message,
                               message_from_record, receive_advert, request_rekey, start_run)
from strategies.secagg.config import SecAggConfig
from xsilo.errors import KeysMissing, ProtocolError, SecureAggregationError
from xsilo.protocol import SECAGG_SETUP
from xsilo.terms import KeySetupTerms

__all__ = ["REKEY_BACKOFF_CAP", "SiloKeys", "refusal_reason"]

# Logged as the driver's own lines: coordinator.log names them coordinator.secure.
log = logging.getLogger("coordinator.secure")

REASK_WAIT = 25.0
"""Seconds the key setup waits at least for a silo Flower answered "Node Unavailable" for
to report again (Flower retries a failed heartbeat at most 20 s apart; never past
``join_timeout`` from then)."""

REKEY_BACKOFF_CAP = 16
"""A silo left without keys is re-keyed at the start of a round: the round after it reports
that it lost them, else 1, 2, 4, … (at most this many) rounds after the last failed try."""

M = TypeVar("M", bound=Message)


def refusal_reason(reply: Reply, exc: ProtocolError) -> str:
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


class SiloKeys:
    """The run's silos and their keys (see the module docstring). ``index``: each joined
    node's roster index; ``threshold``: the run's ``t``."""

    def __init__(self, run_config: RunConfig, transport: Transport, index: Mapping[int, int],
                 threshold: int) -> None:
        self.run_config = run_config
        self.transport = transport
        self.index = index
        self.threshold = threshold
        # Joined silos without keys (missed the setup, restarted): node → the first round
        # to re-key it in, and how many attempts in a row failed (for the back-off).
        self._rekey_at: dict[int, int] = {}
        self._key_failures: dict[int, int] = {}

    def setup(self, config: SecAggConfig) -> tuple[CoordinatorState, dict[int, str]]:
        """One round trip: key adverts from every silo; returns the protocol state and
        ``{node: why not keyed}``.

        Fewer than ``t`` keyed silos fail the run, so the setup first waits (within
        ``join_timeout``) for silos the SuperLink reports offline, and asks again, with
        fresh keys, those it answered "unavailable" for while the keyed ones are too few and
        they can make up ``t`` (waiting for them at least :data:`REASK_WAIT`, never more
        than ``join_timeout`` from then): a SuperNode reconnecting to a restarted SuperLink
        is offline until its next heartbeat, though it answered the join."""
        deadline = time.monotonic() + self.run_config.join_timeout
        state, requests = start_run(config)
        self._await_online(list(self.index), deadline, enough=self.threshold)
        state, problems, lapsed = self._key_exchange(state, requests, group="secagg-setup",
                                                     what="the key setup")
        short = self.threshold - len(state.directory)
        if lapsed and 0 < short <= len(lapsed):  # asking them again can make up the t
            # a lapsed heartbeat comes back within Flower's retry (at most 20 s apart)
            again_by = max(deadline, time.monotonic() + min(REASK_WAIT,
                                                            self.run_config.join_timeout))
            back = sorted(self._await_online(lapsed, again_by, enough=short))
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
        for node in problems:
            self._keys_failed(node, 0)
        return state, problems

    def _await_online(self, nodes: Sequence[int], deadline: float, *, enough: int) -> set[int]:
        """``nodes`` the SuperLink lists as online, waiting for the others until ``deadline``
        (once ``enough`` are online, the straggler grace at most)."""
        def waiting(offline: list[int]) -> None:
            log.warning("the SuperLink reports silo nodes %s offline (no heartbeat lately); "
                        "the key setup waits for them up to %.0f s", offline,
                        max(0.0, deadline - time.monotonic()))

        return await_online(self.transport, nodes, enough=min(enough, len(nodes)),
                            grace=self.run_config.grace, deadline=deadline, on_wait=waiting)

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
        # only adverts count towards the t that ends the wait: an error reply (a refusal,
        # Flower's instant "Node Unavailable") must not start the grace for live silos
        patience = Patience(lambda r: sum(x.error is None for x in r.values()) >= enough,
                            self.run_config.grace)
        replies = self.transport.exchange(SECAGG_SETUP, payloads,
                                          timeout=self.run_config.round_timeout, group=group,
                                          patience=patience)
        missing = patience.missing_reason(what=f"reply to {what}",
                                          timeout=self.run_config.round_timeout)
        problems = {node: missing for node in payloads if node not in replies}
        lapsed = sorted(n for n, r in replies.items()
                        if r.error is not None and r.error.unavailable)
        for node, reply in sorted(replies.items()):
            try:
                if reply.error is not None:
                    raise ProtocolError(str(reply.error))
                state = receive_advert(state, self.from_node(node, reply, KeyAdvert))
            except ProtocolError as exc:
                problems[node] = refusal_reason(reply, exc)
                log.warning("silo node %s has no secure-aggregation keys: %s", node, exc)
        return state, problems, lapsed

    def _keys_failed(self, node: int, server_round: int) -> None:
        """``node`` is left without keys: try again after 1, 2, 4, … rounds."""
        failures = self._key_failures.get(node, 0) + 1
        self._key_failures[node] = failures
        self._rekey_at[node] = server_round + min(2 ** (failures - 1), REKEY_BACKOFF_CAP)

    def due(self, server_round: int, silos: Sequence[int]) -> list[int]:
        """This round's silos that have no keys and are due a re-key."""
        return [n for n in silos if self._rekey_at.get(n, math.inf) <= server_round]

    def rekey(self, state: CoordinatorState, server_round: int, due: Sequence[int]
              ) -> tuple[CoordinatorState, dict[int, str], float]:
        """Fresh keys for the ``due`` silos (one round trip); the new state, ``{node: why it
        is still without keys}`` and the round trip's wall time in seconds."""
        state, requests = request_rekey(state, [self.index[n] for n in due])
        started = time.monotonic()
        state, problems, _ = self._key_exchange(state, requests, group=f"{server_round}-rekey",
                                             what="the re-key request", server_round=server_round)
        seconds = time.monotonic() - started
        for node in due:
            if node in problems:
                self._keys_failed(node, server_round)
            else:
                self._key_failures.pop(node, None)
                self._rekey_at.pop(node, None)
        return state, problems, seconds

    def from_node(self, node: int, reply: Reply, expected: type[M]) -> M:
        """The reply's protocol message, bound to the authenticated node that sent it: the
        silo it names must be that node's roster index (no silo speaks for another)."""
        message = _parse(reply, expected)
        named = getattr(message, "silo")
        if named != self.index[node]:
            raise ProtocolError(f"silo node {node} sent a {expected.__name__} that names silo "
                                f"{named}, but its roster index is {self.index[node]}; refused")
        return message

    def message(self, node: int, reply: Reply, expected: type[M], server_round: int) -> M:
        """A round's reply as its protocol message; a silo's own refusal is raised as a
        ProtocolError with its reason (and a silo that lost its keys is re-keyed)."""
        if reply.error is not None:
            self._note_error(node, reply, server_round)
            raise ProtocolError(str(reply.error))
        return self.from_node(node, reply, expected)

    def _note_error(self, node: int, reply: Reply, server_round: int) -> None:
        """A silo that answered :class:`KeysMissing` restarted: re-key it next round."""
        if reply.error is not None and reply.error.type == KeysMissing.__name__:
            self._key_failures.pop(node, None)
            self._rekey_at[node] = server_round + 1

"""An in-memory federation that drives the silo and coordinator state machines end to end.

For tests, benchmarks and the docs: every message goes through ``to_record()`` and
:func:`message_from_record`, as it would through a Flower ``RecordDict``, and every record
the coordinator receives is kept in :attr:`LocalFederation.coordinator_view` (the same thing
the coordinator-side debug hook records in a real run). Dropouts are given per stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from strategies.randomness import ByteSource, KeystreamSource, SystemSource
from strategies.secagg import coordinator as co
from strategies.secagg.config import SecAggConfig
from strategies.secagg.messages import Message, message_from_record
from strategies.secagg.silo import SiloState, new_silo, silo_step

__all__ = ["LocalFederation"]


def _wire(message: Message) -> Message:
    return message_from_record(message.to_record())


class LocalFederation:
    """``n`` silos and one coordinator in one process.

    Parameters
    ----------
    config
        The run's validated :class:`SecAggConfig`.
    seed
        ``None`` (default) draws every secret from ``os.urandom``; bytes make the whole run
        deterministic (each silo gets its own AES-CTR keystream derived from the seed).
    """

    def __init__(self, config: SecAggConfig, *, seed: bytes | None = None) -> None:
        self.config = config
        self._seed = seed
        self.coordinator: co.CoordinatorState | None = None
        self.silos: dict[int, SiloState] = {s: new_silo(s) for s in config.roster}
        self.coordinator_view: list[dict[str, Any]] = []

    def _rng(self, silo: int, what: str) -> ByteSource:
        if self._seed is None:
            return SystemSource()
        return KeystreamSource(hashlib.sha256(self._seed + f"/{silo}/{what}".encode()).digest())

    def _to_coordinator(self, message: Message) -> Message:
        record = message.to_record()
        self.coordinator_view.append(record)
        return message_from_record(record)

    def setup(self, *, drop: Iterable[int] = ()) -> None:
        """Key setup (one round trip); silos in ``drop`` never answer."""
        state, requests = co.start_run(self.config)
        self._key_exchange(state, requests, drop=set(drop), tag="keys")

    def rekey(self, silos: Iterable[int]) -> None:
        """``silos`` lost their state: they restart from scratch and advertise fresh keys."""
        assert self.coordinator is not None
        state, requests = co.request_rekey(self.coordinator, silos)
        for s in requests:
            self.silos[s] = new_silo(s)
        self._key_exchange(state, requests, drop=set(), tag=f"rekey{state.epochs[min(requests)]}")

    def _key_exchange(self, state: co.CoordinatorState, requests: Mapping[int, Message], *,
                      drop: set[int], tag: str) -> None:
        for s, request in requests.items():
            if s in drop:
                continue
            self.silos[s], advert = silo_step(self.silos[s], _wire(request),
                                              rng=self._rng(s, tag))
            state = co.receive_advert(state, self._to_coordinator(advert))  # type: ignore[arg-type]
        self.coordinator = state

    def run_round(self, round_: int, updates: Mapping[int, np.ndarray],
                  weights: Mapping[int, int], *, drop_before_input: Iterable[int] = (),
                  drop_before_unmask: Iterable[int] = (), late_input: Iterable[int] = (),
                  aux: Mapping[int, np.ndarray] | None = None,
                  drop_before_deal: Iterable[int] = ()) -> co.RoundResult:
        """One round, two round trips (three in round-keys mode, whose dealing silos in
        ``drop_before_deal`` never answer). Silos in ``drop_before_input`` never send a masked
        input; silos in ``drop_before_unmask`` send it but never answer the unmask request;
        silos in ``late_input`` send it too late: it reaches the coordinator process (and its
        view) after the survivors were fixed, so they count as dropped. ``aux`` gives each
        silo's auxiliary statistics in a run with ``aux_length`` slots.

        On a :class:`~xsilo.errors.SecureAggregationError` the open round is aborted (the
        coordinator stays usable for the next round) and the error is re-raised.
        """
        from xsilo.errors import SecureAggregationError

        assert self.coordinator is not None
        state, requests = co.begin_round(self.coordinator, round_=round_)
        late: list[Message] = []
        try:
            attempt = 0
            while state.stage is co.CoordinatorStage.DEALING:  # round-keys mode: trip 0
                for s, request in requests.items():
                    if s in set(drop_before_deal):
                        continue
                    self.silos[s], dealt = silo_step(self.silos[s], _wire(request),
                                                     rng=self._rng(s, f"d{round_}.{attempt}"))
                    state = co.receive_dealt(state, self._to_coordinator(dealt))  # type: ignore[arg-type]
                attempt += 1
                if set(state.dealt) == set(state.dealt_active):
                    state, requests = co.begin_masking(state)
                else:  # a silo's dealing did not arrive: the others deal again
                    state, requests = co.redeal(state)
            for s, request in requests.items():
                if s in set(drop_before_input):
                    continue
                self.silos[s], masked = silo_step(self.silos[s], _wire(request), update=updates[s],
                                                  weight=weights[s], rng=self._rng(s, f"r{round_}"),
                                                  aux=None if aux is None else aux[s])
                if s in set(late_input):
                    late.append(masked)
                    continue
                state = co.receive_masked(state, self._to_coordinator(masked))  # type: ignore[arg-type]
            state, unmask_requests = co.request_unmask(state)
            for masked in late:
                self._to_coordinator(masked)  # arrives, is recorded, but the round has moved on
            for s, request in unmask_requests.items():
                if s in set(drop_before_unmask):
                    continue
                self.silos[s], reply = silo_step(self.silos[s], _wire(request))
                state = co.receive_unmask(state, self._to_coordinator(reply))  # type: ignore[arg-type]
            self.coordinator, result = co.finish_round(state)
        except SecureAggregationError:
            self.coordinator = co.abort_round(state) if state.stage in (
                co.CoordinatorStage.DEALING, co.CoordinatorStage.MASKING,
                co.CoordinatorStage.UNMASKING) else state
            raise
        return result

"""The silo's side of secure aggregation in a run, over plain data (no Flower types).

Three steps, each ``(stored state, request record, …) → (new stored state, reply record)``
around :func:`strategies.secagg.silo_step`; ``silo_client.client_app`` keeps the state in
Flower's ``context.state`` and moves the records in and out of ``RecordDict``s:

* :func:`setup` — ``train.secagg_setup``: KeyRequest → KeyAdvert (fresh X25519 keys);
* :func:`deal` — ``train.secagg_setup`` in a round-keys run: DealRequest → Dealt (a fresh
  round key; sealed shares of it and of the round's self-mask seed);
* :func:`mask` — inside ``train``: the local update (``delta``, flattened in the global
  model's tensor order, see :func:`xsilo.protocol.flatten_update`) is clipped, quantized,
  weighted and masked → MaskedInput; the plain update never leaves this function;
* :func:`unmask` — ``train.unmask``: UnmaskRequest → UnmaskResponse (shares).

The state record holds the silo's private keys: it must stay in the silo's local store,
never in logs, the ledger or a run directory. A step that fails leaves the stored state as
it was. With DP, :func:`mask` clips (central) or encodes with the silo's noise share
(distributed, a pre-encoded run) before masking; see :mod:`silo_client.privacy`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.secagg import (
    KeyRequest, MaskRequest, Message, SiloIdentity, SiloLimits, SiloStage, UnmaskRequest,
    message_from_record, new_silo, silo_state_from_record, silo_state_to_record, silo_step)
from strategies.secagg.messages import DealRequest
from strategies.secagg.quantize import count_clipped
from silo_client.ledger import raw_bytes
from silo_client.privacy import parse_dp, secure_update
from xsilo.errors import KeysMissing, ProtocolError
from xsilo.protocol import flatten_update
from xsilo.terms import SiloMetrics, TrainTerms

__all__ = ["MaskOutcome", "check_mask_request", "deal", "is_deal", "mask", "mask_evaluation",
           "record_digest", "setup", "unmask", "weight_for"]


def _expect(record: Mapping[str, Any] | None, expected: type[Message], step: str) -> Message:
    if record is None:
        raise ProtocolError(f"{step}: the message carries no secure-aggregation record "
                            f"(expected {expected.KIND!r})")
    message = message_from_record(dict(record))
    if not isinstance(message, expected):
        raise ProtocolError(f"{step}: expected a {expected.KIND!r} message, got "
                            f"{message.KIND!r} (wrong message type for this step)")
    return message


def _state(stored: Mapping[str, Any] | None, step: str) -> Any:
    if not stored:
        raise KeysMissing(f"{step}: this silo has no secure-aggregation keys for this run "
                          "(it missed the key setup or restarted and lost its state); the "
                          "coordinator re-keys it before its next round")
    return silo_state_from_record(dict(stored))


def setup(stored: Mapping[str, Any] | None, request: Mapping[str, Any] | None, *,
          silo_index: int, limits: SiloLimits = SiloLimits(),
          identity: SiloIdentity | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """KeyRequest → (state, KeyAdvert record); a repeated request is a re-key, a request
    for another secure-aggregation run (a resumed run) starts over with fresh keys.
    ``silo_index`` is this silo's roster index (:class:`xsilo.terms.KeySetupTerms`);
    ``limits`` the site's own floor (its policy's :meth:`~SitePolicy.secagg_limits`);
    ``identity`` (:func:`silo_client.identity.site_identity`) signs the advert."""
    message = _expect(request, KeyRequest, "key setup")
    state = silo_state_from_record(dict(stored)) if stored else new_silo(int(silo_index))
    if state.config is not None and state.config.run_id != message.run_id:
        # A new secure-aggregation run (a new run, or this run resumed after a coordinator
        # crash): the old keys are dropped and fresh ones made; nothing carries over.
        state = new_silo(int(silo_index))
    if state.silo != int(silo_index):
        raise ProtocolError(f"key setup names this silo {silo_index}, but its keys are for "
                            f"silo {state.silo} of the run")
    state, reply = silo_step(state, message, limits=limits, identity=identity)
    return silo_state_to_record(state), reply.to_record()


def is_deal(request: Mapping[str, Any] | None) -> bool:
    """Whether a ``train.secagg_setup`` record is a round's dealing (not a key request)."""
    kind = request.get("kind") if isinstance(request, Mapping) else None
    return isinstance(kind, str) and kind == DealRequest.KIND


def deal(stored: Mapping[str, Any] | None, request: Mapping[str, Any] | None, *,
         limits: SiloLimits = SiloLimits(),
         identity: SiloIdentity | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """DealRequest → (state, Dealt record): the round's fresh key and self-mask seed,
    Shamir-shared among the round's silos (each checked first, as for masking)."""
    message = _expect(request, DealRequest, "dealing")
    state, reply = silo_step(_state(stored, "dealing"), message, limits=limits,
                             identity=identity)
    return silo_state_to_record(state), reply.to_record()


def weight_for(num_examples: float, *, weighted: bool, max_weight: int) -> tuple[int, bool]:
    """The integer weight a silo masks: its example count capped at ``max_weight`` (or 1)."""
    if not weighted:
        return 1, False
    w = int(num_examples)
    return min(w, max_weight), w > max_weight


@dataclass(frozen=True)
class MaskOutcome:
    """A masked reply: new state, the MaskedInput record and what to report in the clear."""

    state: dict[str, Any]
    reply: dict[str, Any]
    metrics: SiloMetrics


def check_mask_request(stored: Mapping[str, Any] | None, request: Mapping[str, Any] | None,
                       *, terms: TrainTerms) -> MaskRequest:
    """A train message's mask request, checked before any training and before any ε is
    counted: a MaskRequest, for this silo's secure-aggregation run (its keys present), in a
    stage that accepts it, for the round of the train ``terms`` and one not masked yet.
    ProtocolError (KeysMissing without keys) otherwise; :func:`mask` checks the rest."""
    message = _expect(request, MaskRequest, "masked input")
    if terms.secagg_weighted is None:
        raise ProtocolError("masked input: the round's terms carry a mask request but do not "
                            "say how updates are weighted (secure rounds state it)")
    state = _state(stored, "masked input")
    if state.config is None or message.run_id != state.config.run_id:
        raise ProtocolError(f"masked input: the mask request is for secure-aggregation run "
                            f"{message.run_id!r}, this silo's keys are not; refusing")
    if message.round != terms.server_round:
        raise ProtocolError(f"masked input: the mask request is for round {message.round}, the "
                            f"train message for round {terms.server_round}; refusing (the "
                            "round masked must be the round accounted)")
    if state.config.round_keys:
        ready = state.stage is SiloStage.DEALT and message.round == state.last_round
    else:
        ready = state.stage in (SiloStage.READY, SiloStage.MASKED) and (
            message.round > state.last_round)
    if not ready:
        raise ProtocolError(f"masked input: silo {state.silo} in stage {state.stage.value!r} "
                            f"(last round {state.last_round}) cannot mask round {message.round} "
                            "(out of order, replayed, or its dealing missing); refusing")
    return message


def mask(stored: Mapping[str, Any] | None, request: Mapping[str, Any] | None, *,
         delta: Mapping[str, np.ndarray], template: Mapping[str, np.ndarray],
         num_examples: float, terms: TrainTerms,
         on_clipped: Callable[[Any], None] | None = None,
         limits: SiloLimits = SiloLimits(), identity: SiloIdentity | None = None,
         aux: Sequence[float] | None = None) -> MaskOutcome:
    """MaskRequest + local update → MaskedInput (only the masked vector and sealed shares).

    With DP in the round's ``terms`` the update is first clipped (central) or encoded with
    this silo's noise share (distributed) by :func:`silo_client.privacy.secure_update`;
    nothing about the clipping is reported in the clear. With an ``identity`` every peer in
    the round's key directory must be an admitted member (its certificate and signature).
    ``aux``: the statistics summed beside the update (the silo's metrics as sums,
    :meth:`~silo_client.policy.SitePolicy.aggregated`).
    """
    message = check_mask_request(stored, request, terms=terms)
    vector = None if aux is None else np.asarray(aux, dtype=np.float64)
    weighted = bool(terms.secagg_weighted)
    state = _state(stored, "masked input")
    assert state.config is not None
    dp = parse_dp(terms.dp)
    if dp is not None and terms.dp is not None:
        prepared = secure_update(dp, terms.dp, delta=delta, template=template,
                                 num_examples=num_examples, weighted=weighted,
                                 secagg=state.config, on_clipped=on_clipped)
        state, reply = silo_step(state, message, limits=limits, identity=identity, aux=vector,
                                 **prepared.step_kwargs)
        return MaskOutcome(silo_state_to_record(state), reply.to_record(),
                           SiloMetrics(secagg_dp_clip_norm=prepared.clip_norm))
    quant = state.config.quant
    update = flatten_update(delta, template, dtype=None)  # encode reads it a chunk at a time
    weight, capped = weight_for(num_examples, weighted=weighted, max_weight=quant.max_weight)
    clipped = count_clipped(update, quant.clip)
    state, reply = silo_step(state, message, update=update, weight=weight, limits=limits,
                             identity=identity, aux=vector)
    return MaskOutcome(silo_state_to_record(state), reply.to_record(),
                       SiloMetrics(secagg_weight=float(weight), secagg_capped=float(capped),
                                   secagg_clipped=float(clipped)))


def mask_evaluation(stored: Mapping[str, Any] | None, request: Mapping[str, Any] | None, *,
                    aux: Sequence[float], limits: SiloLimits = SiloLimits(),
                    identity: SiloIdentity | None = None) -> MaskOutcome:
    """A secure evaluation round: no update (weight 0, or an all-zero encoding), only the
    evaluation metrics as auxiliary sums — the coordinator learns their sum, nothing per
    silo. Nothing is trained and nothing is accounted (no update leaves)."""
    message = _expect(request, MaskRequest, "masked evaluation")
    state = _state(stored, "masked evaluation")
    assert state.config is not None
    config, vector = state.config, np.asarray(aux, dtype=np.float64)
    if config.encoded:
        state, reply = silo_step(state, message, limits=limits, identity=identity, aux=vector,
                                 encoded=np.zeros(config.length, dtype=np.uint64))
    else:
        state, reply = silo_step(state, message, update=np.zeros(config.length), weight=0,
                                 limits=limits, identity=identity, aux=vector)
    return MaskOutcome(silo_state_to_record(state), reply.to_record(), SiloMetrics())


def unmask(stored: Mapping[str, Any] | None, request: Mapping[str, Any] | None, *,
           limits: SiloLimits = SiloLimits()) -> tuple[dict[str, Any], dict[str, Any]]:
    """UnmaskRequest → (state, UnmaskResponse record); the silo enforces every privacy rule."""
    message = _expect(request, UnmaskRequest, "unmasking")
    state, reply = silo_step(_state(stored, "unmasking"), message, limits=limits)
    return silo_state_to_record(state), reply.to_record()


def record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 of a protocol record (bytes as hex, vectors by their bytes), for the ledger."""
    h = hashlib.sha256(b"xsilo-secagg-record-v1")
    for key in sorted(record):
        value = record[key]
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            h.update(key.encode() + b"\0" + arr.nbytes.to_bytes(8, "big"))
            h.update(raw_bytes(arr))  # the vector's own buffer: no copy of a model-sized record
            continue
        data = json.dumps(value, default=lambda b: b.hex(), sort_keys=True).encode()
        h.update(key.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()

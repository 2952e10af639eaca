"""The silo as a Flower ClientApp (the Flower edge; the logic is in ``silo_client.silo``).

Every SuperNode is started with ``--node-config 'silo-config="/abs/path/silo.toml"'``.
Any :class:`~xsilo.errors.XsiloError` becomes a typed error reply whose reason is JSON
(``type``, ``reason``, ``message``), so the coordinator can show *why* a silo refused;
the silo process itself never crashes on bad input.

In Flower's Ray simulation a virtual SuperNode has only ``partition-id`` in its node config;
:func:`simulation_app` binds partition *i* to the *i*-th ``silo.toml`` and runs the same
handlers.

Secure aggregation (``silo_client.secure``): ``train.secagg_setup`` once per run, the
MaskRequest inside ``train``, ``train.unmask`` after it. The protocol state (private keys)
lives in Flower's node-local ``context.state`` only, sealed under a key in the silo's
workspace (``silo_client.sealed``). A silo that joined a secure run, or
whose site policy requires secure aggregation, never sends an update in the clear; what it
agreed to at join is kept in its workspace (``silo_client.joins``) and outlives a restart.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from deploy.launch.poll import note_federation
from silo_client import joins, secure
from silo_client.compress import Compressed, compress_update
from silo_client.sealed import KEY_FILE, SealBroken, seal, state_key, unseal
from silo_client.identity import site_identity
from silo_client.silo import Silo
from xsilo.errors import ConfigError, PolicyRefusal, ProtocolError, XsiloError
from xsilo.protocol import (ARRAYS, COMPRESSED, COMPRESSED_HEADER, CONFIG, DELTA, ERROR_CODES,
                            METRICS, SECAGG, SECAGG_ARRAYS, SILO)
from xsilo.records import arrays_to_record, record_to_arrays
from xsilo.terms import (CompressedHeader, EvaluateTerms, JoinTerms, KeySetupTerms, TrainTerms,
                         UnmaskTerms, server_round_of)

__all__ = ["app", "build_app", "simulation_app"]

log = logging.getLogger(__name__)

_SECAGG_STATE = "xsilo.secagg"  # context.state: protocol state, holds private keys
_SEALED = "sealed"  # the record above holds one blob sealed under the workspace key

Handler = Callable[[Message, Context], Message]


def _run_id(msg: Message) -> str:
    return str(msg.metadata.run_id)


def _config(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[CONFIG]) if CONFIG in msg.content.config_records else {}


def _error_reply(msg: Message, exc: Exception, silo: str | None = None) -> Message:
    kind = type(exc).__name__
    reason = exc.reason if isinstance(exc, PolicyRefusal) else kind
    code = next((ERROR_CODES[c.__name__] for c in type(exc).__mro__ if c.__name__ in ERROR_CODES),
                ERROR_CODES["XsiloError"])
    public = getattr(exc, "public", None)  # DataValidationError: without local data
    body = {"type": kind, "reason": reason,
            "message": public if isinstance(public, str) else str(exc)}
    if silo:
        body["silo"] = silo
    return Message(Error(code=code, reason=json.dumps(body)), reply_to=msg)


def _secagg_record(msg: Message) -> dict[str, Any] | None:
    """The message's secure-aggregation record: its scalars and its vectors, one key each
    (a vector may not stand in for a scalar such as ``kind``)."""
    content = msg.content
    if SECAGG not in content.config_records:
        return None
    record = dict(content.config_records[SECAGG])
    if SECAGG_ARRAYS in content.array_records:
        vectors = record_to_arrays(content.array_records[SECAGG_ARRAYS])
        clash = sorted(set(vectors) & set(record))
        if clash:
            raise ProtocolError(f"the {SECAGG_ARRAYS!r} record repeats keys of the {SECAGG!r} "
                                f"record: {clash}; each field travels once, as a scalar or a "
                                "vector")
        record.update(vectors)
    return record


def _secagg_content(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {SECAGG: ConfigRecord(
        {k: v for k, v in record.items() if not isinstance(v, np.ndarray)})}
    vectors = {k: v for k, v in record.items() if isinstance(v, np.ndarray)}
    if vectors:
        out[SECAGG_ARRAYS] = arrays_to_record(vectors)
    return out


def _model(msg: Message) -> dict[str, np.ndarray]:
    """The global model a message carries; a non-finite value in it is a ProtocolError (a
    diverged or hostile model: nothing trained or scored on it could leave as a number)."""
    if ARRAYS not in msg.content.array_records:
        raise ConfigError(f"the {msg.metadata.message_type} message carries no model "
                          f"({ARRAYS!r} record); the coordinator and this silo must run the "
                          "same xsilo release")
    params = record_to_arrays(msg.content.array_records[ARRAYS])
    for name, tensor in params.items():
        if tensor.dtype.kind == "f" and not np.isfinite(tensor).all():
            raise ProtocolError(f"the {msg.metadata.message_type} message's global model has "
                                f"non-finite values (NaN or inf) in tensor {name!r}; this silo "
                                "trains and scores only a finite model (the run diverged, or "
                                "the coordinator sent a broken one)")
    return params


def _opened(context: Context, silo: Silo, name: str) -> dict[str, Any] | None:
    """The record ``name`` this silo sealed into ``context.state`` (``silo_client.sealed``);
    None when there is none, or when it does not authenticate (then loudly: someone else
    answered a task of this silo, or the workspace key changed; the silo starts over)."""
    records = context.state.config_records
    if name not in records:
        return None
    try:
        return unseal(records[name].get(_SEALED), state_key(silo.config.workspace), label=name)
    except SealBroken as exc:
        log.error("silo %s: %s. Another process may have answered a task of this silo on its "
                  "SuperNode's local Runtime API, or %s changed; starting over without it "
                  "(fresh keys at the next key request)", silo.config.name, exc,
                  silo.config.workspace / KEY_FILE)
        del context.state[name]
        return None


def _seal(context: Context, silo: Silo, name: str, record: dict[str, Any]) -> None:
    blob = seal(record, state_key(silo.config.workspace), label=name)
    context.state[name] = ConfigRecord({_SEALED: blob})


def _stored(context: Context, silo: Silo) -> dict[str, Any] | None:
    return _opened(context, silo, _SECAGG_STATE)


class _Handlers:
    """The silo's message handlers, over plain :class:`Silo` calls; ``on_clipped`` (tests,
    audits) sees every DP clip before masking."""

    def __init__(self, on_clipped: Callable[[Any], None] | None = None) -> None:
        self.on_clipped = on_clipped

    def silo(self, context: Context) -> Silo:
        path = context.node_config.get("silo-config")
        if not path:
            raise ConfigError("this SuperNode has no node config 'silo-config'; start it with "
                              "`xsilo silo start --config silo.toml`")
        return Silo.from_file(str(path), on_clipped=self.on_clipped)

    def silo_name(self, context: Context) -> str | None:
        """This silo's configured name, when its config is readable (for error replies)."""
        try:
            return self.silo(context).config.name
        except Exception:  # the error being reported may be the unreadable config itself
            return None

    def guarded(self, handler: Handler) -> Handler:
        def run(msg: Message, context: Context) -> Message:
            try:
                return handler(msg, context)
            except Exception as exc:  # never crash the silo; report the failure type upstream
                if isinstance(exc, XsiloError):
                    log.warning("refusing %s: %s", msg.metadata.message_type, exc)
                else:
                    log.error("silo failed on %s:\n%s", msg.metadata.message_type,
                              traceback.format_exc())
                reply = _error_reply(msg, exc, self.silo_name(context))
                self.record_refusal(msg, context, reply)
                return reply

        run.__name__ = handler.__name__
        return run

    def record_refusal(self, msg: Message, context: Context, reply: Message) -> None:
        """Refusals leave the site too: record them when the silo's config is readable."""
        try:
            self.silo(context).record_egress(
                run_id=_run_id(msg), server_round=server_round_of(_config(msg)),
                message_type=f"{msg.metadata.message_type}.refusal", arrays={}, metrics={},
                extra={"reason": reply.error.reason})
        except Exception:  # the refusal itself must still go out
            log.debug("could not record refusal in the ledger", exc_info=True)

    def join(self, msg: Message, context: Context) -> Message:
        """Validate data and run terms; answer with identity, fingerprint and initial model."""
        terms = JoinTerms.from_config(_config(msg))
        note_federation(terms.num_silos)  # paces this silo's SuperNode (deploy.launch.poll)
        silo = self.silo(context)
        info, params = silo.join(terms)
        joins.remember_join(silo.config.workspace, _run_id(msg), run_token=terms.run_token,
                            secure_aggregation=terms.secure_aggregation,
                            dp_table=None if terms.dp is None else dict(terms.dp.table),
                            dp_run=None if terms.dp is None else terms.dp.run)
        reply = info.to_config()
        silo.record_egress(run_id=_run_id(msg), server_round=0, message_type="query",
                           arrays=params, metrics={}, extra=reply)
        return Message(RecordDict({SILO: ConfigRecord(reply), ARRAYS: arrays_to_record(params)}),
                       reply_to=msg)

    def train(self, msg: Message, context: Context) -> Message:
        """Evaluate the incoming global model, train locally, reply with the update."""
        terms = TrainTerms.from_config(_config(msg))
        note_federation(terms.participants)
        params = _model(msg)
        silo = self.silo(context)
        request = _secagg_record(msg)
        stored = None
        if request is not None:  # a mask request that cannot be answered costs nothing
            stored = _stored(context, silo)
            secure.check_mask_request(stored, request, terms=terms)
        # The site policy (require_secure_aggregation among its rules) and the run's own
        # terms are checked in Silo.train before any work: a clear round is refused there.
        result = silo.train(params, terms, secure=request is not None,
                            joined=joins.joined(silo.config.workspace, _run_id(msg)))
        policy = silo.policy
        if request is None:  # what leaves follows the site's share_metrics (count bucketed)
            compressed = (None if terms.compression == "none"  # allowed: Silo.train checked it
                          else compress_update(result.delta, params, terms,
                                               workspace=silo.config.workspace))
            result = silo.release(result)  # ε counted as the update is about to leave
            metrics = policy.shared_metrics(result.metrics, secure=False).to_record()
            if compressed is not None:
                return self._compressed_reply(msg, silo, terms, result, compressed, metrics)
            silo.record_egress(run_id=_run_id(msg), server_round=terms.server_round,
                               message_type="train", arrays=result.delta, metrics=metrics,
                               privacy=result.privacy)
            return Message(RecordDict({DELTA: arrays_to_record(result.delta),
                                       METRICS: MetricRecord(metrics)}), reply_to=msg)
        aggregated = policy.aggregated(result.metrics)
        outcome = secure.mask(stored, request, delta=result.delta,
                              template=params,
                              num_examples=policy.reported_examples(
                                  result.metrics.num_examples or 0.0),
                              terms=terms, on_clipped=self.on_clipped,
                              limits=policy.secagg_limits(),
                              identity=site_identity(silo.config, policy), aux=aggregated)
        result = silo.release(result)  # masked: ε counted as the masked update leaves
        _seal(context, silo, _SECAGG_STATE, outcome.state)
        metrics = policy.shared_metrics(result.metrics.merged(outcome.metrics),
                                        secure=True).to_record()
        return self._masked_reply(msg, silo, terms.server_round, outcome, metrics, aggregated,
                                  privacy=result.privacy)

    def _compressed_reply(self, msg: Message, silo: Silo, terms: TrainTerms, result: Any,
                          compressed: Compressed, metrics: dict[str, float]) -> Message:
        """A clear update compressed as the run asks; the ledger records the compressed
        arrays, exactly what leaves."""
        header = CompressedHeader(compressed.method, compressed.length).to_config()
        silo.record_egress(run_id=_run_id(msg), server_round=terms.server_round,
                           message_type="train", arrays=compressed.arrays, metrics=metrics,
                           privacy=result.privacy, extra=header)
        return Message(RecordDict({COMPRESSED: arrays_to_record(dict(compressed.arrays)),
                                   COMPRESSED_HEADER: ConfigRecord(header),
                                   METRICS: MetricRecord(metrics)}), reply_to=msg)

    def _masked_reply(self, msg: Message, silo: Silo, server_round: int,
                      outcome: secure.MaskOutcome, metrics: dict[str, float],
                      aggregated: list[float], *,
                      privacy: dict[str, float | None] | None = None) -> Message:
        """Record what leaves (the clear metrics; the masked vector by its digest; the
        statistics it sums, in this ledger only; under DP its clip norm, σ and this run's
        ε, as for a clear update) and reply."""
        silo.record_egress(run_id=_run_id(msg), server_round=server_round,
                           message_type=msg.metadata.message_type,
                           arrays={"masked": outcome.reply["masked"]},
                           metrics=metrics, masked=True, privacy=privacy,
                           extra={"secagg": outcome.reply["kind"], "aggregated": aggregated,
                                  # the masked vector is in payload_sha256: hash it once
                                  "record_sha256": secure.record_digest(
                                      {k: v for k, v in outcome.reply.items() if k != "masked"})})
        return Message(RecordDict({METRICS: MetricRecord(metrics),
                                   **_secagg_content(outcome.reply)}), reply_to=msg)

    def secagg_setup(self, msg: Message, context: Context) -> Message:
        """Secure-aggregation key setup (once per run, again after a restart): fresh keys,
        public halves to the coordinator. In a round-keys run the same message type carries
        each round's dealing: a fresh round key and sealed shares."""
        terms = KeySetupTerms.from_config(_config(msg))
        silo = self.silo(context)
        request = _secagg_record(msg)
        extra: dict[str, Any] = {}
        if secure.is_deal(request):
            state, reply = secure.deal(_stored(context, silo), request,
                                       limits=silo.policy.secagg_limits(),
                                       identity=site_identity(silo.config, silo.policy))
            extra["dealt_to"] = len(reply["recipients"])
        else:
            state, reply = secure.setup(_stored(context, silo), request, silo_index=terms.silo,
                                        limits=silo.policy.secagg_limits(),
                                        identity=site_identity(silo.config, silo.policy))
        _seal(context, silo, _SECAGG_STATE, state)
        joins.remember_secure(silo.config.workspace, _run_id(msg))  # a secure run, whatever
        silo.record_egress(run_id=_run_id(msg), server_round=terms.server_round,  # 0: setup
                           message_type=msg.metadata.message_type, arrays={}, metrics={},
                           extra={"secagg": reply["kind"], **extra,
                                  "record_sha256": secure.record_digest(reply)})
        return Message(RecordDict(_secagg_content(reply)), reply_to=msg)

    def unmask(self, msg: Message, context: Context) -> Message:
        """Round trip 2 of a secure round: reveal the shares the protocol allows, nothing else."""
        terms = UnmaskTerms.from_config(_config(msg))
        silo = self.silo(context)
        state, reply = secure.unmask(_stored(context, silo), _secagg_record(msg),
                                     limits=silo.policy.secagg_limits())
        _seal(context, silo, _SECAGG_STATE, state)
        silo.record_egress(run_id=_run_id(msg), server_round=terms.server_round,
                           message_type=msg.metadata.message_type, arrays={}, metrics={},
                           extra={"secagg": reply["kind"], "self_shares": len(reply["self_shares"]),
                                  "pair_shares": len(reply["pair_shares"]),
                                  "key_shares": len(reply["key_shares"]),
                                  "record_sha256": secure.record_digest(reply)})
        return Message(RecordDict(_secagg_content(reply)), reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Score a global model on the local test split; with a mask request (a secure run's
        final evaluation) the scores leave only as secure sums."""
        terms = EvaluateTerms.from_config(_config(msg))
        params = _model(msg)
        silo = self.silo(context)
        scores = silo.evaluate(params, terms)
        request = _secagg_record(msg)
        policy = silo.policy
        if request is None:
            metrics = policy.shared_metrics(scores, secure=False, training=False).to_record()
            silo.record_egress(run_id=_run_id(msg), server_round=terms.server_round,
                               message_type="evaluate", arrays={}, metrics=metrics)
            return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
        aggregated = policy.aggregated(scores)
        outcome = secure.mask_evaluation(_stored(context, silo), request, aux=aggregated,
                                         limits=policy.secagg_limits(),
                                         identity=site_identity(silo.config, policy))
        _seal(context, silo, _SECAGG_STATE, outcome.state)
        metrics = policy.shared_metrics(scores, secure=True, training=False).to_record()
        return self._masked_reply(msg, silo, terms.server_round, outcome, metrics, aggregated)


def build_app(*, mods: Sequence[Any] = (),
              on_clipped: Callable[[Any], None] | None = None) -> ClientApp:
    """The silo's ClientApp: ``query`` (join), ``train``, ``train.secagg_setup``,
    ``train.unmask`` and ``evaluate``. ``mods`` are Flower mods for every message;
    ``on_clipped`` an audit hook on DP clipping (in-process runs and tests)."""
    handlers = _Handlers(on_clipped)
    client = ClientApp(mods=list(mods))
    client.query()(handlers.guarded(handlers.join))
    client.train()(handlers.guarded(handlers.train))
    client.train("secagg_setup")(handlers.guarded(handlers.secagg_setup))
    client.train("unmask")(handlers.guarded(handlers.unmask))
    client.evaluate()(handlers.guarded(handlers.evaluate))
    return client


app = build_app()
"""The ClientApp every SuperNode runs (``silo_client.client_app:app``)."""


class _BindSimulatedSilo:
    """Mod for Ray simulation: give virtual SuperNode ``partition-id`` = i the i-th silo config.

    A class (not a closure) so Ray can ship it to its actors.
    """

    def __init__(self, silo_configs: Sequence[str]) -> None:
        self.silo_configs = [str(p) for p in silo_configs]

    def __call__(self, msg: Message, context: Context,
                 call_next: Callable[[Message, Context], Message]) -> Message:
        if not context.node_config.get("silo-config"):
            part = int(context.node_config.get("partition-id", -1))
            if not 0 <= part < len(self.silo_configs):
                raise ConfigError(f"simulated SuperNode partition {part} has no silo config; "
                                  f"{len(self.silo_configs)} were given (one per SuperNode)")
            context.node_config["silo-config"] = self.silo_configs[part]
        return call_next(msg, context)


def simulation_app(silo_configs: Sequence[str], *,
                   on_clipped: Callable[[Any], None] | None = None) -> ClientApp:
    """The silo ClientApp for Flower's Ray simulation: the same handlers as :data:`app`,
    with virtual SuperNode *i* reading ``silo_configs[i]``."""
    return build_app(mods=[_BindSimulatedSilo(silo_configs)], on_clipped=on_clipped)

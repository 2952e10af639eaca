"""The silo as a Flower ClientApp (the Flower edge; the logic is in ``silo_client.silo``).

Every SuperNode is started with ``--node-config 'silo-config="/abs/path/silo.toml"'``.
Any :class:`~xsilo.errors.XsiloError` becomes a typed error reply whose reason is JSON
(``type``, ``reason``, ``message``), so the coordinator can show *why* a silo refused;
the silo process itself never crashes on bad input.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any, Callable

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from silo_client.silo import Silo
from xsilo.errors import ConfigError, PolicyRefusal, XsiloError
from xsilo.records import arrays_to_record, record_to_arrays
from xsilo.protocol import ARRAYS, CONFIG, DELTA, ERROR_CODES, METRICS, SILO

__all__ = ["app"]

log = logging.getLogger(__name__)
app = ClientApp()


def _silo(context: Context) -> Silo:
    path = context.node_config.get("silo-config")
    if not path:
        raise ConfigError("this SuperNode has no node config 'silo-config'; start it with "
                          "`xsilo silo start --config silo.toml`")
    return Silo.from_file(str(path))


def _run_id(msg: Message) -> str:
    return str(msg.metadata.run_id)


def _round(msg: Message) -> int:
    return int(_config(msg).get("server-round", 0))


def _error_reply(msg: Message, exc: Exception) -> Message:
    kind = type(exc).__name__
    reason = exc.reason if isinstance(exc, PolicyRefusal) else kind
    code = next((ERROR_CODES[c.__name__] for c in type(exc).__mro__ if c.__name__ in ERROR_CODES),
                ERROR_CODES["XsiloError"])
    payload = json.dumps({"type": kind, "reason": reason, "message": str(exc)})
    return Message(Error(code=code, reason=payload), reply_to=msg)


def _guarded(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:  # never crash the silo; report the failure type upstream
            if isinstance(exc, XsiloError):
                log.warning("refusing %s: %s", msg.metadata.message_type, exc)
            else:
                log.error("silo failed on %s:\n%s", msg.metadata.message_type,
                          traceback.format_exc())
            reply = _error_reply(msg, exc)
            _record_refusal(msg, context, reply)
            return reply

    run.__name__ = handler.__name__
    return run


def _record_refusal(msg: Message, context: Context, reply: Message) -> None:
    """Refusals leave the site too: record them when the silo's config is readable."""
    try:
        silo = _silo(context)
        silo.record_egress(run_id=_run_id(msg), server_round=_round(msg),
                           message_type=f"{msg.metadata.message_type}.refusal", arrays={},
                           metrics={}, extra={"reason": reply.error.reason})
    except Exception:  # the refusal itself must still go out
        log.debug("could not record refusal in the ledger", exc_info=True)


def _config(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[CONFIG]) if CONFIG in msg.content.config_records else {}


@app.query()
@_guarded
def join(msg: Message, context: Context) -> Message:
    """Validate data and run terms; answer with identity, fingerprint and initial model."""
    silo = _silo(context)
    info, params = silo.join(_config(msg))
    silo.record_egress(run_id=_run_id(msg), server_round=0, message_type="query",
                       arrays=params, metrics={}, extra=info)
    return Message(RecordDict({SILO: ConfigRecord(info), ARRAYS: arrays_to_record(params)}),
                   reply_to=msg)


@app.train()
@_guarded
def train(msg: Message, context: Context) -> Message:
    """Evaluate the incoming global model, train locally, reply with the update."""
    params = record_to_arrays(msg.content.array_records[ARRAYS])
    silo = _silo(context)
    result = silo.train(params, _config(msg))
    silo.record_egress(run_id=_run_id(msg), server_round=_round(msg), message_type="train",
                       arrays=result.delta, metrics=result.metrics)
    return Message(RecordDict({DELTA: arrays_to_record(result.delta),
                               METRICS: MetricRecord(result.metrics)}), reply_to=msg)


@app.evaluate()
@_guarded
def evaluate(msg: Message, context: Context) -> Message:
    """Score a global model on the local test split."""
    params = record_to_arrays(msg.content.array_records[ARRAYS])
    silo = _silo(context)
    metrics = silo.evaluate(params, _config(msg))
    silo.record_egress(run_id=_run_id(msg), server_round=_round(msg), message_type="evaluate",
                       arrays={}, metrics=metrics)
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)

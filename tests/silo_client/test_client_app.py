"""silo_client.client_app: what the coordinator sends is parsed before any work, and the
site's ε is counted for every update that leaves and for nothing else."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from silo_client import secure as glue
from silo_client.client_app import _Handlers
from silo_client.config import load_silo_config
from silo_client.privacy import TALLY_FILE
from strategies.secagg import make_config
from strategies.secagg.messages import KeyRequest, MaskRequest
from xsilo import terms as T
from xsilo.errors import ConfigError, ProtocolError
from xsilo.protocol import ARRAYS, CONFIG, DELTA, METRICS, SECAGG, SECAGG_ARRAYS
from xsilo.records import arrays_to_record, record_to_arrays
from xsilo.terms import DPTerms, JoinTerms, KeySetupTerms, TrainTerms

TABLE = {"mechanism": "central", "noise_multiplier": 2.0, "clip_norm": 1.0}
JOIN = JoinTerms(run_name="run", strategy="fedavg", num_rounds=3, seed=0, min_silos=2,
                 num_silos=3)
ROUND = TrainTerms(server_round=1, num_rounds=3, local_epochs=1, learning_rate=0.1,
                   batch_size=32, seed=0, strategy="fedavg", run_token="t", participants=3)
DP_ROUND = dataclasses.replace(ROUND, dp=DPTerms(table=TABLE, run="run-1", clip_norm=1.0,
                                                 noise_stddev=2.0))
SECAGG_RUN = make_config(run_id="sa-1", roster=[0, 1, 2], threshold=2, length=31, clip=1.0,
                         bits=8, max_weight=10)


@pytest.fixture(autouse=True)
def _task_identity(task_identity: None) -> None:
    """Every test here builds messages outside a Flower runtime (tests/conftest.py)."""


def _message(message_type: str, content: dict) -> Message:
    return Message(content=RecordDict(content), dst_node_id=1, message_type=message_type)


def _context(silo: Path) -> Context:
    return Context(run_id=7, node_id=1, node_config={"silo-config": str(silo)},
                   state=RecordDict(), run_config={})


def _join(handlers: _Handlers, context: Context, terms: JoinTerms = JOIN) -> dict:
    reply = handlers.join(_message("query", {CONFIG: ConfigRecord(terms.to_config())}), context)
    return record_to_arrays(reply.content.array_records[ARRAYS])


def _train(handlers: _Handlers, context: Context, params: dict, terms: TrainTerms = ROUND,
           **extra: object) -> Message:
    return handlers.train(_message("train", {CONFIG: ConfigRecord(terms.to_config()),
                                             ARRAYS: arrays_to_record(params), **extra}),
                          context)


def _workspace(silo: Path) -> Path:
    return load_silo_config(silo).workspace


def _keyed(handlers: _Handlers, context: Context) -> None:
    request = KeyRequest.for_config(SECAGG_RUN, epoch=1).to_record()
    handlers.secagg_setup(_message("train.secagg_setup", {
        CONFIG: ConfigRecord(KeySetupTerms(silo=0).to_config()),
        SECAGG: ConfigRecord(request)}), context)


def test_a_vector_cannot_stand_in_for_a_secagg_scalar(federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    request = KeyRequest.for_config(SECAGG_RUN, epoch=1).to_record()
    for key, vector in (("kind", np.array([1, 2], np.uint32)), ("threshold", np.array([2]))):
        msg = _message("train.secagg_setup", {
            CONFIG: ConfigRecord(KeySetupTerms(silo=0).to_config()),
            SECAGG: ConfigRecord(request), SECAGG_ARRAYS: arrays_to_record({key: vector})})
        with pytest.raises(ProtocolError, match=f"repeats keys of the 'secagg' record: .'{key}'"):
            handlers.secagg_setup(msg, context)
    assert not glue.is_deal({"kind": np.array([1, 2])})
    assert glue.is_deal({"kind": "secagg/deal_request"}) and not glue.is_deal(None)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_global_model_is_refused_at_the_edge(federation: list[Path],
                                                          bad: float) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context)
    broken = {**params, "coef": np.full_like(params["coef"], bad)}
    with pytest.raises(ProtocolError, match="non-finite values .* in tensor 'coef'"):
        _train(handlers, context, broken)
    evaluate = _message("evaluate", {CONFIG: ConfigRecord({T.SERVER_ROUND: 1}),
                                     ARRAYS: arrays_to_record(broken)})
    reply = handlers.guarded(handlers.evaluate)(evaluate, context)
    assert json.loads(reply.error.reason)["type"] == "ProtocolError"


def test_a_round_sent_again_is_counted_again_and_reported(federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1")))
    reported = [_train(handlers, context, params, DP_ROUND).content.metric_records[METRICS][
        T.DP_EPSILON_TALLY] for _ in range(3)]
    assert reported[0] < reported[1] < reported[2]
    tally = json.loads((_workspace(federation[0]) / TALLY_FILE).read_text())
    assert tally["total_epsilon"] == pytest.approx(reported[-1])


def test_a_silo_that_joined_under_dp_refuses_a_round_without_it(federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1")))
    with pytest.raises(ProtocolError, match="joined the run under differential privacy"):
        _train(handlers, context, params, ROUND)


def _mask_request(server_round: int, run_id: str = "sa-1") -> ConfigRecord:
    return ConfigRecord(MaskRequest(run_id=run_id, round=server_round, active=(0, 1, 2),
                                    dir_silos=(), dir_epochs=(), dir_enc_pks=(),
                                    dir_mask_pks=()).to_record())


@pytest.mark.parametrize(("request_record", "says"), [
    (ConfigRecord({"kind": "bogus"}), "not a secure-aggregation message"),
    (_mask_request(2), "mask request is for round 2, the train message for round 1"),
    (_mask_request(1, run_id="another"), "secure-aggregation run 'another'"),
])
def test_a_mask_request_is_checked_before_training_or_any_epsilon(
        federation: list[Path], request_record: ConfigRecord, says: str) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    join = dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1"), secure_aggregation=True,
                               secagg_threshold=2)
    params = _join(handlers, context, join)
    _keyed(handlers, context)
    secure_round = dataclasses.replace(DP_ROUND, secagg_weighted=True)
    for _ in range(3):
        with pytest.raises(ProtocolError, match=says):
            _train(handlers, context, params, secure_round, **{SECAGG: request_record})
    assert not (_workspace(federation[0]) / TALLY_FILE).exists()  # nothing left, nothing spent


def test_the_secure_path_needs_keys_before_it_trains(federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1")))
    with pytest.raises(ProtocolError, match="no secure-aggregation keys"):
        _train(handlers, context, params, dataclasses.replace(DP_ROUND, secagg_weighted=True),
               **{SECAGG: _mask_request(1)})
    assert not (_workspace(federation[0]) / TALLY_FILE).exists()


def test_an_array_record_is_refused_as_hostile_input(federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    _join(handlers, context)
    garbage = ArrayRecord({"coef": Array(dtype="<f8", shape=(1, 30), stype="numpy.ndarray",
                                         data=b"\x93NUMPY garbage")})
    msg = _message("train", {CONFIG: ConfigRecord(ROUND.to_config()), ARRAYS: garbage})
    reply = handlers.guarded(handlers.train)(msg, context)
    assert json.loads(reply.error.reason)["type"] == "ProtocolError"


@pytest.mark.parametrize(("join", "round_terms", "says"), [
    (dataclasses.replace(JOIN, secure_aggregation=True, secagg_threshold=2, run_token="t"),
     ROUND, "joined the run with secure aggregation"),
    (dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1"), run_token="t"), ROUND,
     "joined the run under differential privacy"),
])
def test_what_a_silo_joined_under_outlives_a_restart(
        federation: list[Path], join: JoinTerms, round_terms: TrainTerms, says: str) -> None:
    """A SuperNode restart empties the run's context; the join is kept in the workspace, so
    the next round still has to carry a mask request, or the join's DP terms."""
    handlers = _Handlers()
    params = _join(handlers, _context(federation[0]), join)
    record = _workspace(federation[0]) / "joined" / "7.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    restarted = _context(federation[0])  # the same Flower run, an empty context
    with pytest.raises(ProtocolError, match=says):
        _train(handlers, restarted, params, round_terms)
    assert not (_workspace(federation[0]) / TALLY_FILE).exists()  # nothing left, nothing spent


@pytest.mark.parametrize(("table", "says"), [
    ({**TABLE, "noise_multiplier": 0.5}, r"noise_multiplier: 2.0 → 0.5"),
    ({**TABLE, "clip_norm": 4.0}, r"clip_norm: 1.0 → 4.0"),
    ({**TABLE, "max_epsilon": 50.0}, r"max_epsilon: None → 50.0"),
])
def test_a_round_under_other_dp_terms_than_the_join_is_refused(
        federation: list[Path], table: dict, says: str) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1")))
    weaker = dataclasses.replace(DP_ROUND, dp=dataclasses.replace(DP_ROUND.dp, table=table))
    with pytest.raises(ProtocolError, match=f"DP table differs .*{says}"):
        _train(handlers, context, params, weaker)
    assert not (_workspace(federation[0]) / TALLY_FILE).exists()
    _train(handlers, context, params, DP_ROUND)  # the join's own table is answered
    assert (_workspace(federation[0]) / TALLY_FILE).exists()


def test_a_round_under_another_run_token_is_refused_and_a_new_run_starts_afresh(
        federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, secure_aggregation=True,
                                                          secagg_threshold=2, run_token="t"))
    with pytest.raises(ProtocolError, match="names run token 'u'.* as run 't'"):
        _train(handlers, context, params, dataclasses.replace(ROUND, run_token="u"))
    # the in-process engine numbers every run 1: a join under another token is another run
    _join(handlers, context, dataclasses.replace(JOIN, run_token="u"))
    assert record_to_arrays(_train(handlers, context, params, dataclasses.replace(
        ROUND, run_token="u")).content.array_records[DELTA])


def test_a_damaged_join_record_is_a_config_error_naming_it(federation: list[Path]) -> None:
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, run_token="t"))
    record = _workspace(federation[0]) / "joined" / "7.json"
    for damaged in ("{", '{"run_token": 3, "secure_aggregation": false, "dp_table": null}'):
        record.write_text(damaged)
        with pytest.raises(ConfigError, match=f"join record {record} is unreadable"):
            _train(handlers, context, params)


def test_a_round_of_a_run_the_silo_never_joined_is_refused(federation: list[Path]) -> None:
    """Refused at join (here: never asked) means no round: a train message alone is not a
    join, whatever its terms say (they were never checked against the site policy)."""
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, _context(federation[1]))  # another silo's join, not this one's
    with pytest.raises(ProtocolError, match="round 1 is of a run this silo has not joined"):
        _train(handlers, context, params, DP_ROUND)
    assert not (_workspace(federation[0]) / TALLY_FILE).exists()


def test_a_distributed_dp_table_is_refused_unless_the_run_is_secure(
        federation: list[Path]) -> None:
    """Distributed DP's noise is each silo's share, added under the masks: in a clear run
    the update would leave with no noise at all."""
    handlers, context = _Handlers(), _context(federation[0])
    table = {"mechanism": "distributed", "noise_multiplier": 1.0, "clip_norm": 1.0}
    clear = dataclasses.replace(JOIN, dp=DPTerms(table, "run-1"), secagg_threshold=2)
    with pytest.raises(ProtocolError, match="distributed mechanism.*the run is not secure"):
        _join(handlers, context, clear)
    from silo_client.silo import Silo

    silo = Silo.from_file(federation[0])
    clear_round = dataclasses.replace(ROUND, dp=DPTerms(table, "run-1", num_silos=3,
                                                        min_survivors=2))
    with pytest.raises(ProtocolError, match="would leave in the clear, without noise"):
        silo.privacy.begin_round(clear_round, dimension=31, secure=False)


def test_a_round_that_renames_the_runs_privacy_history_is_refused(
        federation: list[Path]) -> None:
    """The run's ε is kept under the name its join stated: a round under another name would
    start a fresh history, past the run's own max_epsilon."""
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context, dataclasses.replace(JOIN, dp=DPTerms(TABLE, "run-1")))
    renamed = dataclasses.replace(DP_ROUND, dp=dataclasses.replace(DP_ROUND.dp, run="run-1-r2"))
    with pytest.raises(ProtocolError, match="accounting under 'run-1-r2'.* under 'run-1'"):
        _train(handlers, context, params, renamed)
    _train(handlers, context, params, DP_ROUND)


def test_an_error_reply_names_the_column_and_row_but_not_the_cell_or_the_path(
        federation: list[Path]) -> None:
    from silo_client.client_app import _error_reply
    from silo_client.data import load_dataset

    config = load_silo_config(federation[0])
    lines = config.train.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    column = next(c for c in config.schema.features if c.dtype == "float").name
    row[header.index(column)] = "PATIENT Jane Doe"
    config.train.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(Exception) as caught:
        load_dataset(config.train, config.schema)
    assert "PATIENT Jane Doe" in str(caught.value)  # the silo's own log says what and where
    reply = _error_reply(_message("query", {}), caught.value, "hospital-a")
    body = json.loads(reply.error.reason)
    assert body["type"] == "DataValidationError"
    assert f"column {column!r}, row 1 (line 2)" in body["message"]
    assert "PATIENT" not in body["message"] and str(config.train.parent) not in body["message"]


@pytest.mark.parametrize("token", ["/../../../../../../xsilo-pwned", "a\0b", "t" * 500])
def test_the_dpsgd_history_is_named_by_the_run_tokens_hash_inside_the_workspace(
        tmp_path: Path, token: str) -> None:
    """The run token is the coordinator's text: it names no path of the silo's."""
    from silo_client.dpsgd import state_path

    path = state_path(tmp_path, token)
    assert path.parent == tmp_path / "privacy" and path.name.startswith("dpsgd-")
    assert len(path.name) == len("dpsgd-.json") + 32 and token not in str(path)


def test_a_global_model_in_other_dtypes_than_the_silos_model_is_refused(
        federation: list[Path]) -> None:
    """The update is computed and sent in the incoming dtypes: an unsigned tensor would wrap
    a negative update into garbage, recorded as sent."""
    handlers, context = _Handlers(), _context(federation[0])
    params = _join(handlers, context)
    name = next(iter(params))
    with pytest.raises(ProtocolError, match=f"not this silo's model: .*tensor {name!r}.* uint8"):
        _train(handlers, context, {**params, name: params[name].astype(np.uint8)})
    with pytest.raises(ProtocolError, match="not this silo's model: .*'extra'"):
        _train(handlers, context, {**params, "extra": np.zeros(2, np.float32)})

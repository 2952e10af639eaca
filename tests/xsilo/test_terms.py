"""xsilo.terms: every terms type round-trips through its wire form, and anything malformed is
a ProtocolError that names the key, the value and the expected form."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsilo import terms as T
from xsilo.errors import ProtocolError
from xsilo.terms import (DPTerms, EvaluateTerms, JoinTerms, KeySetupTerms, SiloInfo, SiloMetrics,
                         TrainTerms, UnmaskTerms, is_silo_name)

INT64 = (1 << 63) - 1
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=40)
rounds = st.integers(0, INT64)
positive_floats = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False,
                            allow_infinity=False)
nonneg_floats = st.one_of(st.just(0.0), positive_floats)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | names
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8)


@st.composite
def dp_terms(draw: st.DrawFn, *, per_round: bool) -> DPTerms:
    n = draw(st.none() | st.integers(2, 1000)) if per_round else None
    return DPTerms(
        table=draw(st.dictionaries(names, json_values, max_size=4)), run=draw(names),
        clip_norm=draw(st.none() | positive_floats) if per_round else None,
        noise_stddev=draw(st.none() | nonneg_floats) if per_round else None,
        num_silos=n, min_survivors=None if n is None else draw(st.integers(2, n)),
        rotation_seed=draw(st.none() | st.binary(min_size=32, max_size=32)) if per_round else None)


@st.composite
def join_terms(draw: st.DrawFn) -> JoinTerms:
    secure = draw(st.booleans())
    return JoinTerms(run_name=draw(names), strategy=draw(names),
                     num_rounds=draw(st.integers(1, T.MAX_ROUNDS)),
                     seed=draw(st.integers(-INT64, INT64)), min_silos=draw(st.integers(1, 1000)),
                     num_silos=draw(st.integers(0, 1000)), secure_aggregation=secure,
                     secagg_threshold=draw(st.integers(2, 1000)) if secure else None,
                     dp=draw(st.none() | dp_terms(per_round=False)))


strategy_values = st.one_of(st.booleans(), st.integers(-INT64, INT64), names,
                            st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def train_terms(draw: st.DrawFn) -> TrainTerms:
    return TrainTerms(
        server_round=draw(rounds), num_rounds=draw(st.integers(1, T.MAX_ROUNDS)),
        local_epochs=draw(st.integers(1, 1000)), learning_rate=draw(positive_floats),
        batch_size=draw(st.integers(1, 10**6)), seed=draw(st.integers(-INT64, INT64)),
        strategy=draw(names), run_token=draw(names), participants=draw(st.integers(0, 10**6)),
        proximal_mu=draw(nonneg_floats), secagg_weighted=draw(st.none() | st.booleans()),
        dp=draw(st.none() | dp_terms(per_round=True)),
        strategy_config=draw(st.dictionaries(names.filter(lambda k: k not in T.TERM_KEYS),
                                             strategy_values, max_size=3)))


metric_values = st.floats(min_value=0, max_value=1e12, allow_nan=False)


@st.composite
def silo_metrics(draw: st.DrawFn) -> SiloMetrics:
    fields = [f.name for f in dataclasses.fields(SiloMetrics) if f.name != "extra"]
    values = {f: draw(st.none() | metric_values) for f in fields}
    if values["eval_accuracy"] is not None:  # a fraction (SiloMetrics.from_record checks)
        values["eval_accuracy"] = min(values["eval_accuracy"], 1.0)
    extra = draw(st.dictionaries(names.filter(lambda k: k not in T.TERM_KEYS), metric_values,
                                 max_size=3))
    return SiloMetrics(**values, extra=extra)


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    join_terms(), train_terms(),
    st.builds(EvaluateTerms, server_round=rounds, final=st.booleans()),
    st.builds(KeySetupTerms, silo=st.integers(0, INT64), server_round=rounds),
    st.builds(UnmaskTerms, server_round=rounds),
    st.builds(SiloInfo, name=names.filter(is_silo_name), fingerprint=st.dictionaries(names, json_values, max_size=4)
              .map(lambda fp: {**fp, "digest": "ab" * 32})),
))
def test_every_terms_type_round_trips(terms: object) -> None:
    wire = terms.to_config()  # type: ignore[attr-defined]
    assert all(isinstance(v, bool | int | float | str | bytes) for v in wire.values())
    assert type(terms).from_config(dict(wire)) == terms  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(dp_terms(per_round=True))
def test_dp_terms_round_trip(terms: DPTerms) -> None:
    assert DPTerms.from_config(terms.to_config()) == terms


@settings(max_examples=100, deadline=None)
@given(silo_metrics())
def test_silo_metrics_round_trip(metrics: SiloMetrics) -> None:
    record = metrics.to_record()
    assert all(isinstance(v, float) and math.isfinite(v) for v in record.values())
    assert SiloMetrics.from_record(record) == metrics


TRAIN = TrainTerms(server_round=3, num_rounds=5, local_epochs=1, learning_rate=0.1,
                   batch_size=32, seed=0, strategy="fedavg", run_token="tok", participants=3)


@pytest.mark.parametrize("key", sorted(k for k in TRAIN.to_config() if k != T.PROXIMAL_MU))
def test_a_missing_train_term_is_named(key: str) -> None:
    wire = TRAIN.to_config()
    del wire[key]
    with pytest.raises(ProtocolError, match=f"train terms: {key} is missing; expected"):
        TrainTerms.from_config(wire)


@pytest.mark.parametrize("key, value, form", [
    (T.SERVER_ROUND, -1, "an integer in 0.."),
    (T.SERVER_ROUND, 1 << 64, "an integer in 0.."),
    (T.SERVER_ROUND, True, "an integer"),  # a bool is not a round number
    (T.SERVER_ROUND, "3", "an integer"),
    (T.LEARNING_RATE, float("nan"), "a finite number > 0"),
    (T.LEARNING_RATE, 0.0, "a finite number > 0"),
    (T.BATCH_SIZE, 0, "an integer in 1.."),
    (T.STRATEGY, ["fedavg"], "a non-empty string"),
    (T.STRATEGY, "x" * 300, "at most 256 characters"),
    (T.SECAGG_WEIGHTED, 1, "true or false"),
    (T.PROXIMAL_MU, -0.5, "a finite number ≥ 0"),
    ("my-strategy-value", [1, 2], "a strategy value"),
])
def test_a_malformed_train_term_names_key_value_and_form(key: str, value: object,
                                                         form: str) -> None:
    with pytest.raises(ProtocolError) as err:
        TrainTerms.from_config({**TRAIN.to_config(), key: value})
    message = str(err.value)
    assert message.startswith(f"train terms: {key} = ") and form in message, message


@pytest.mark.parametrize("changes, fragment", [
    ({T.DP_TABLE: "[1, 2]"}, "expected a JSON object"),
    ({T.DP_TABLE: "{"}, "expected a JSON object"),
    ({T.DP_NUM_SILOS: 3}, "expected both or neither"),
    ({T.DP_NUM_SILOS: 3, T.DP_MIN_SURVIVORS: 4}, f"≤ {T.DP_NUM_SILOS}"),
    ({T.DP_ROTATION_SEED: bytes(31)}, "expected 32 bytes"),
    ({T.DP_RUN: None}, f"{T.DP_RUN} = None"),
])
def test_malformed_dp_terms_are_refused(changes: dict, fragment: str) -> None:
    wire = {T.DP_TABLE: "{}", T.DP_RUN: "run", **changes}
    with pytest.raises(ProtocolError, match="DP terms") as err:
        DPTerms.from_config(wire)
    assert fragment in str(err.value)


def test_a_secure_join_must_state_its_threshold() -> None:
    join = JoinTerms(run_name="r", strategy="fedavg", num_rounds=2, seed=0, min_silos=2,
                     num_silos=3, secure_aggregation=True, secagg_threshold=2)
    wire = join.to_config()
    del wire[T.SECAGG_THRESHOLD]
    with pytest.raises(ProtocolError, match=f"{T.SECAGG_THRESHOLD} is missing in a secure run"):
        JoinTerms.from_config(wire)


def test_strategy_values_are_passed_through_and_may_not_reuse_a_term_key() -> None:
    terms = TrainTerms.from_config({**TRAIN.to_config(), "server-lr": 0.5, "mode": "x"})
    assert terms.strategy_config == {"server-lr": 0.5, "mode": "x"}
    with pytest.raises(ProtocolError, match="reuses term key"):
        dataclasses.replace(TRAIN, strategy_config={T.SEED: 1})


@pytest.mark.parametrize("record, fragment", [
    ({T.NUM_EXAMPLES: float("inf")}, "a finite number"),
    ({T.NUM_EXAMPLES: -1.0}, "≥ 0"),
    ({T.EVAL_LOSS: "low"}, "a finite number"),
    ({T.TRAIN_LOSS: True}, "a finite number"),
    ({"x" * 300: 1.0}, "a metric name of at most 256 characters"),
])
def test_malformed_metrics_are_refused(record: dict, fragment: str) -> None:
    with pytest.raises(ProtocolError, match="silo metrics") as err:
        SiloMetrics.from_record(record)
    assert fragment in str(err.value)


def test_anything_but_a_record_is_refused() -> None:
    for bad in (None, [], "server-round=1", 3):
        with pytest.raises(ProtocolError, match="expected a record of terms"):
            TrainTerms.from_config(bad)  # type: ignore[arg-type]


def test_server_round_of_never_raises() -> None:
    assert T.server_round_of({T.SERVER_ROUND: 4}) == 4
    for bad in ({T.SERVER_ROUND: [4]}, {T.SERVER_ROUND: -2}, {T.SERVER_ROUND: True}, {}, None):
        assert T.server_round_of(bad) == 0  # type: ignore[arg-type]


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


JOIN = JoinTerms(run_name="r", strategy="fedavg", num_rounds=2, seed=0, min_silos=2,
                 num_silos=3, secure_aggregation=True, secagg_threshold=2,
                 dp=DPTerms(table={"mechanism": "central"}, run="run"))
INFO = SiloInfo(name="a", fingerprint={"digest": "ab" * 32})


@pytest.mark.parametrize("text", [
    "[" * 60000, '{"a":' * 13000,  # under 64 KiB, past the JSON parser's recursion limit
    _nested(900),  # parsed, but nested far past what any term holds
    _nested(17),  # past the terms' own nesting limit (a schema fingerprint nests 4 deep)
])
def test_deeply_nested_json_is_a_protocol_error_both_ways(text: str) -> None:
    """The coordinator's DP table at the silo, and a silo's schema fingerprint at the
    coordinator: nesting deep enough to exhaust the parser's stack, or any JSON code that
    later walks it, is refused as malformed, naming the key."""
    assert len(text) <= 1 << 16
    with pytest.raises(ProtocolError, match=f"join terms: {T.DP_TABLE} = .*nested at most 16"):
        JoinTerms.from_config({**JOIN.to_config(), T.DP_TABLE: text})
    with pytest.raises(ProtocolError,
                       match=f"join reply: {T.SCHEMA_FINGERPRINT} = .*nested at most 16"):
        SiloInfo.from_config({**INFO.to_config(), T.SCHEMA_FINGERPRINT: text})
    nested16 = {"digest": "ab" * 32, "x": json.loads(_nested(15))}
    assert SiloInfo.from_config(SiloInfo("a", nested16).to_config()).fingerprint == nested16


@pytest.mark.parametrize("terms, key, largest", [
    (JOIN, T.NUM_ROUNDS, T.MAX_ROUNDS), (JOIN, T.NUM_SILOS, T.MAX_SILOS),
    (JOIN, T.SECAGG_THRESHOLD, T.MAX_SILOS), (JOIN, T.MIN_SILOS, T.MAX_SILOS),
    (TRAIN, T.NUM_ROUNDS, T.MAX_ROUNDS),
])
def test_the_sizes_a_coordinator_states_are_bounded(terms, key: str, largest: int) -> None:
    """Each size a silo's work at join grows with (the ε projection over the rounds, the
    distributed mechanism's calibration over the silos) has a protocol maximum: above it the
    terms do not parse; at it they do."""
    cls = type(terms)
    assert cls.from_config({**terms.to_config(), key: largest})
    with pytest.raises(ProtocolError, match=f"{key} = {largest + 1} .*expected an integer in "
                                            f".*{largest}"):
        cls.from_config({**terms.to_config(), key: largest + 1})


def test_the_dp_roster_a_round_states_is_bounded() -> None:
    at = {T.DP_TABLE: "{}", T.DP_RUN: "run", T.DP_NUM_SILOS: T.MAX_SILOS,
          T.DP_MIN_SURVIVORS: T.MAX_SILOS}
    assert DPTerms.from_config(at).num_silos == T.MAX_SILOS
    for key in (T.DP_NUM_SILOS, T.DP_MIN_SURVIVORS):
        with pytest.raises(ProtocolError, match=f"{key} = {T.MAX_SILOS + 1} "):
            DPTerms.from_config({**at, key: T.MAX_SILOS + 1})


def test_the_largest_federation_is_the_largest_roster_a_key_request_lists() -> None:
    from strategies.secagg import messages

    assert T.MAX_SILOS == messages._MAX_ITEMS


@pytest.mark.parametrize("key, value", [
    (T.SERVER_ROUND, 10**5000),  # no text of it: Python refuses to write 5000 digits
    (T.LEARNING_RATE, 10**400),  # beyond any float
    (T.LEARNING_RATE, list(range(10**5))),
], ids=["5000-digit-round", "learning-rate-past-float", "long-list"])
def test_a_value_past_any_bound_is_a_protocol_error_with_a_bounded_message(
        key: str, value: object) -> None:
    config = {**TrainTerms(server_round=1, num_rounds=2, local_epochs=1, learning_rate=0.1,
                           batch_size=8, seed=1, strategy="fedavg", run_token="t",
                           participants=3).to_config(), key: value}
    with pytest.raises(ProtocolError) as err:
        TrainTerms.from_config(config)
    assert len(str(err.value)) < 400
    with pytest.raises(ProtocolError):
        SiloMetrics.from_record({T.NUM_EXAMPLES: 10**400})


def test_a_strategys_round_values_are_a_few_short_settings() -> None:
    base = TrainTerms(server_round=1, num_rounds=2, local_epochs=1, learning_rate=0.1,
                      batch_size=8, seed=1, strategy="fedavg", run_token="t",
                      participants=3).to_config()
    with pytest.raises(ProtocolError, match="at most 256 characters"):
        TrainTerms.from_config({**base, "note": "x" * 10**7})
    with pytest.raises(ProtocolError, match="more than 64 strategy values"):
        TrainTerms.from_config({**base, **{f"k{i}": i for i in range(5000)}})
    assert TrainTerms.from_config({**base, "beta": 0.9}).strategy_config == {"beta": 0.9}

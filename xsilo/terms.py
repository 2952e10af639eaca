"""The terms of every message between the coordinator and a silo, typed once for both sides.

Each message's ``ConfigRecord`` (what the coordinator asks) and ``MetricRecord`` (what a
silo reports) is a frozen dataclass here, with ``to_config()`` / ``from_config()`` (or
``to_record()`` / ``from_record()``) over the flat scalar dict Flower carries. The
coordinator builds terms and sends ``to_config()``; the silo parses with ``from_config()``
at its edge and works with the typed object from then on. A missing, mistyped or
out-of-range entry raises :class:`~xsilo.errors.ProtocolError` naming the key, the value
and the expected form. The key strings live in this module only (a test enforces it).

=================  ==============================  ==============================
message type       coordinator → silo (config)     silo → coordinator (metrics)
=================  ==============================  ==============================
``query`` (join)   :class:`JoinTerms`              :class:`SiloInfo` + model
``train``          :class:`TrainTerms`             :class:`SiloMetrics`
``evaluate``       :class:`EvaluateTerms`          :class:`SiloMetrics`
key setup          :class:`KeySetupTerms`          (a secure-aggregation record)
unmask             :class:`UnmaskTerms`            (a secure-aggregation record)
=================  ==============================  ==============================

Numbers the coordinator derives (the secure-aggregation threshold, the DP roster size and
minimum survivors, the noise per round) are computed once, by the coordinator, and travel
here; a silo checks them against its own state and policy, it never re-derives them.
Record names and message types are in :mod:`xsilo.protocol`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from xsilo.errors import ProtocolError

__all__ = [
    "MAX_STRATEGY_VALUES",
    "SILO_NAME_RULE",
    "is_silo_name",
    "printable",
    "COMPRESSION_METHODS",
    "MAX_ROUNDS",
    "MAX_SILOS",
    "SILO_STATISTICS",
    "CompressedHeader",
    "DPTerms",
    "EvaluateTerms",
    "JoinTerms",
    "KeySetupTerms",
    "PROXIMAL_MU",
    "SiloInfo",
    "SiloMetrics",
    "TERM_KEYS",
    "TrainTerms",
    "UnmaskTerms",
    "server_round_of",
]

Scalar = int | float | str | bool

_MAX_INT = (1 << 63) - 1  # ConfigRecord integers are signed 64-bit
_MAX_NAME = 256
MAX_STRATEGY_VALUES = 64  # a strategy's own per-round values in a train message
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = 4096, *, lines: bool = False) -> str:
    """A peer's text as it may be logged or shown to an operator: every control character
    (a newline would forge a log line, an ESC drive the terminal) written as ``\\uXXXX``
    (``lines``: newlines kept), cut to ``limit`` characters."""
    pattern = _CONTROLS_BUT_LINES if lines else _CONTROLS
    shown = pattern.sub(lambda m: f"\\u{ord(m.group()):04x}", text[:limit])
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"


SILO_NAME_RULE = "1 to 63 printable characters without '/'"


def is_silo_name(value: object) -> bool:
    """A silo's name as it may name files, log lines and table columns
    (:data:`SILO_NAME_RULE`; an enrolled name is stricter: ``deploy.pki.checks``)."""
    return (isinstance(value, str) and 1 <= len(value) <= 63 and "/" not in value
            and value.isprintable())


def _preview(value: Any) -> str:
    """A bounded ``repr`` of a peer's value (an integer of thousands of digits has none:
    Python refuses to write it)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, list | tuple) and len(value) > 8:
        return f"<a {type(value).__name__} of {len(value)} items>"
    if isinstance(value, str | bytes) and len(value) > 80:
        value = value[:80]
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _finite(value: int | float) -> bool:
    """``math.isfinite``, False for an integer beyond any float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
_MAX_JSON = 1 << 16  # characters of a JSON term (a DP table, a schema fingerprint)
_MAX_DEPTH = 16  # nesting of a JSON term (a fingerprint nests 4 deep; 16 is far above any)

MAX_SILOS = 1 << 20
"""The largest federation a term may state (``num-silos``, ``dp-num-silos``, thresholds): the
most silos a secure-aggregation key request can list (``strategies.secagg.messages``). A
silo's work at join (the distributed mechanism's calibration, O(n): 0.5 s at this bound) and
in the key setup stays bounded by it; its site policy's ``max_silos`` is usually far lower."""
MAX_ROUNDS = 10**6
"""The most rounds a run may state (``num-rounds``): far beyond any cross-silo run (a
round is minutes of every silo's time); a silo projects the run's ε over them at join."""

# ---------------------------------------------------------------------------- keys
# Join (query) -------------------------------------------------------------------
RUN_NAME = "run-name"
STRATEGY = "strategy-name"
NUM_ROUNDS = "num-rounds"
SEED = "run-seed"
MIN_SILOS = "min-silos"
NUM_SILOS = "num-silos"
SECURE_AGGREGATION = "secure-aggregation"
SECAGG_THRESHOLD = "secagg-threshold"
COMPRESSION = "compression"
COMPRESSION_FRACTION = "compression-fraction"
COMPRESSED_LENGTH = "compressed-length"  # a compressed reply: the dense update's length
STATISTICS = "silo-statistics"  # the silo-side statistics a round's strategy needs
# Train / evaluate ------------------------------------------------------------------
SERVER_ROUND = "server-round"
LOCAL_EPOCHS = "local-epochs"
LEARNING_RATE = "learning-rate"
BATCH_SIZE = "batch-size"
RUN_TOKEN = "run-token"
PARTICIPANTS = "participants-count"
SECAGG_WEIGHTED = "secagg-weighted"
FINAL = "final-evaluation"
PROXIMAL_MU = "proximal-mu"
"""FedProx's per-round term (a strategy's ``RoundPlan.config`` key; see ``TrainTerms``)."""
# Secure-aggregation round trips -----------------------------------------------------
SECAGG_SILO = "secagg-silo"
# DP (join and train) ----------------------------------------------------------------
DP_TABLE = "dp-table"
DP_RUN = "dp-run"
DP_CLIP_NORM = "dp-clip-norm"
DP_NOISE_STDDEV = "dp-noise-stddev"
DP_NUM_SILOS = "dp-num-silos"
DP_MIN_SURVIVORS = "dp-min-survivors"
DP_ROTATION_SEED = "dp-rotation-seed"
# Join reply (the silo's identity) ----------------------------------------------------
SILO_NAME = "silo-name"
SCHEMA_FINGERPRINT = "schema-fingerprint"
# Metrics a silo reports ---------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
FIT_SECONDS = "fit-seconds"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
EVAL_EXAMPLES = "eval-examples"
EVAL_MAE = "eval-mae"
EVAL_MSE = "eval-mse"
SECAGG_WEIGHT = "secagg-weight"
SECAGG_CAPPED = "secagg-capped"
SECAGG_CLIPPED = "secagg-clipped"
SECAGG_DP_CLIP_NORM = "secagg-dp-clip-norm"
DPSGD_EPSILON = "dpsgd-epsilon"
DPSGD_DELTA = "dpsgd-delta"
DPSGD_STEPS = "dpsgd-steps"
UPDATE_SQ_NORM = "update-sq-norm"
LOCAL_STEPS = "local-steps"
DP_EPSILON_TALLY = "dp-epsilon-tally"

TERM_KEYS: frozenset[str] = frozenset(
    value for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and not name.startswith("_"))
"""Every key of every terms and metrics record (no other module spells one out)."""

SILO_STATISTICS: tuple[str, ...] = ("update_sq_norm", "local_steps")
"""The statistics a sum strategy may ask of every silo (``SumStrategy.statistics``), the
fixed, auditable list: the squared L2 norm of the silo's update and its number of local
optimisation steps. They arrive as example-weighted means over the round's contributors
(summed under the masks in a secure round)."""

COMPRESSION_METHODS: tuple[str, ...] = ("none", "q8", "q4", "topk", "prune")
"""How a clear round's update may travel (``strategies.compression``): as it is, quantized
to 8 or 4 bits, its top-k values with error feedback, or under a pruning mask."""


# ---------------------------------------------------------------------------- parsing
class _Reader:
    """Typed reads from one received record; every problem is a ProtocolError naming it."""

    def __init__(self, record: Mapping[str, Any], what: str) -> None:
        if not isinstance(record, Mapping):
            raise ProtocolError(f"{what}: expected a record of terms, got {type(record).__name__}")
        self.record, self.what = record, what

    def _bad(self, key: str, value: Any, form: str) -> ProtocolError:
        shown = _preview(value)
        return ProtocolError(f"{self.what}: {key} = {shown} ({type(value).__name__}); "
                             f"expected {form}")

    def _get(self, key: str, form: str, default: Any) -> Any:
        if key not in self.record:
            if default is _REQUIRED:
                raise ProtocolError(f"{self.what}: {key} is missing; expected {form} (the "
                                    "coordinator and this silo must run the same xsilo release)")
            return default
        return self.record[key]

    def integer(self, key: str, *, low: int = 0, high: int = _MAX_INT, default: Any = None) -> Any:
        form = f"an integer in {low}..{high}"
        value = self._get(key, form, default)
        if value is default and key not in self.record:
            return value
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self._bad(key, value, form)
        return value

    def number(self, key: str, *, positive: bool = False, default: Any = None) -> Any:
        form = "a finite number" + (" > 0" if positive else " ≥ 0")
        value = self._get(key, form, default)
        if value is default and key not in self.record:
            return value
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not _finite(value) or value < 0 or (positive and value == 0)):
            raise self._bad(key, value, form)
        return float(value)

    def text(self, key: str, *, default: Any = None, empty: bool = False) -> Any:
        form = f"a{'' if empty else ' non-empty'} string of at most {_MAX_NAME} characters"
        value = self._get(key, form, default)
        if value is default and key not in self.record:
            return value
        if not isinstance(value, str) or len(value) > _MAX_NAME or (not empty and not value):
            raise self._bad(key, value, form)
        return value

    def flag(self, key: str, *, default: Any = None) -> Any:
        value = self._get(key, "true or false", default)
        if value is default and key not in self.record:
            return value
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def blob(self, key: str, *, length: int, default: Any = None) -> Any:
        form = f"{length} bytes"
        value = self._get(key, form, default)
        if value is default and key not in self.record:
            return value
        if not isinstance(value, bytes) or len(value) != length:
            raise self._bad(key, value, form)
        return value

    def json_object(self, key: str, *, default: Any = None) -> Any:
        form = f"a JSON object (text) nested at most {_MAX_DEPTH} deep"
        value = self._get(key, form, default)
        if value is default and key not in self.record:
            return value
        if not isinstance(value, str) or len(value) > _MAX_JSON:
            raise self._bad(key, value, form)
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):  # malformed, or nested past the parser's stack
            raise self._bad(key, value, form) from None
        if not isinstance(parsed, dict) or _depth(parsed) > _MAX_DEPTH:
            raise self._bad(key, value, form)
        return parsed


def _depth(value: Any) -> int:
    """How deep containers nest in parsed JSON (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = (item.values() if isinstance(item, dict)
                    else item if isinstance(item, list) else None)
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


_REQUIRED = object()


def _put(out: dict[str, Scalar | bytes], key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


# ---------------------------------------------------------------------------- DP
@dataclass(frozen=True)
class DPTerms:
    """Silo-level differential privacy as the coordinator states it to a silo.

    ``table`` is the run's ``[run.dp]`` table (``strategies.dp.DPConfig.to_mapping()``);
    the silo validates it into a ``DPConfig`` itself and derives every ε from it. ``run``
    keys the silo's tally of this run. Per round (train messages): ``clip_norm`` and
    ``noise_stddev`` (recorded in the silo's ledger) and, under secure aggregation, the
    roster size ``num_silos`` and threshold ``min_survivors`` the distributed mechanism is
    calibrated for, plus its public ``rotation_seed`` (32 bytes). At join, ``num_silos``
    and ``min_survivors`` are the coordinator's projection for the silos it contacted.
    """

    table: Mapping[str, Any]
    run: str
    clip_norm: float | None = None
    noise_stddev: float | None = None
    num_silos: int | None = None
    min_survivors: int | None = None
    rotation_seed: bytes | None = None

    def to_config(self) -> dict[str, Scalar | bytes]:
        out: dict[str, Scalar | bytes] = {DP_TABLE: json.dumps(dict(self.table), sort_keys=True),
                                          DP_RUN: self.run}
        for key, value in ((DP_CLIP_NORM, self.clip_norm), (DP_NOISE_STDDEV, self.noise_stddev),
                           (DP_NUM_SILOS, self.num_silos), (DP_MIN_SURVIVORS, self.min_survivors),
                           (DP_ROTATION_SEED, self.rotation_seed)):
            _put(out, key, value)
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, what: str = "DP terms") -> DPTerms | None:
        """The DP terms in a join or train record; None when the run uses no DP."""
        if DP_TABLE not in config:
            return None
        r = _Reader(config, what)
        terms = cls(table=r.json_object(DP_TABLE, default=_REQUIRED),
                    run=r.text(DP_RUN, default=_REQUIRED),
                    clip_norm=r.number(DP_CLIP_NORM, positive=True),
                    noise_stddev=r.number(DP_NOISE_STDDEV),
                    num_silos=r.integer(DP_NUM_SILOS, low=2, high=MAX_SILOS),
                    min_survivors=r.integer(DP_MIN_SURVIVORS, low=2, high=MAX_SILOS),
                    rotation_seed=r.blob(DP_ROTATION_SEED, length=32))
        if (terms.num_silos is None) != (terms.min_survivors is None) or (
                terms.num_silos is not None and terms.min_survivors > terms.num_silos):  # type: ignore[operator]
            raise ProtocolError(
                f"{what}: {DP_NUM_SILOS} = {terms.num_silos!r} and {DP_MIN_SURVIVORS} = "
                f"{terms.min_survivors!r}; expected both or neither, with 2 ≤ "
                f"{DP_MIN_SURVIVORS} ≤ {DP_NUM_SILOS}")
        return terms


def _compression_config(method: str, fraction: float) -> dict[str, Scalar]:
    """A run's compression as terms (nothing when updates travel as they are)."""
    return {} if method == "none" else {COMPRESSION: method, COMPRESSION_FRACTION: fraction}


def _read_statistics(r: _Reader) -> tuple[str, ...]:
    names = r.text(STATISTICS, default="")
    asked = tuple(n for n in names.split(",") if n) if names else ()
    if any(n not in SILO_STATISTICS for n in asked) or len(set(asked)) != len(asked):
        raise r._bad(STATISTICS, names, f"distinct names among {', '.join(SILO_STATISTICS)}")
    return asked


def _read_compression(r: _Reader) -> dict[str, Any]:
    method = r.text(COMPRESSION, default="none")
    if method not in COMPRESSION_METHODS:
        raise r._bad(COMPRESSION, method, f"one of {', '.join(COMPRESSION_METHODS)}")
    fraction = r.number(COMPRESSION_FRACTION, positive=True, default=0.01)
    if fraction > 1:
        raise r._bad(COMPRESSION_FRACTION, fraction, "a fraction in (0, 1]")
    return {"compression": method, "compression_fraction": fraction}


# ---------------------------------------------------------------------------- join
@dataclass(frozen=True)
class JoinTerms:
    """What a run asks of a silo before it starts (the ``query`` message).

    ``num_silos`` is how many silos the coordinator contacted; under secure aggregation
    ``secagg_threshold`` is the threshold it will use for them (the silo checks it, and
    projects a distributed-DP run's ε with it).
    """

    run_name: str
    strategy: str
    num_rounds: int
    seed: int
    min_silos: int
    num_silos: int
    secure_aggregation: bool = False
    secagg_threshold: int | None = None
    dp: DPTerms | None = None
    compression: str = "none"
    compression_fraction: float = 0.01
    run_token: str | None = None  # the coordinator's run identity (its train terms repeat it)

    WHAT: ClassVar[str] = "join terms"

    def to_config(self) -> dict[str, Scalar | bytes]:
        out: dict[str, Scalar | bytes] = {
            RUN_NAME: self.run_name, STRATEGY: self.strategy, NUM_ROUNDS: self.num_rounds,
            SEED: self.seed, MIN_SILOS: self.min_silos, NUM_SILOS: self.num_silos,
            SECURE_AGGREGATION: self.secure_aggregation}
        _put(out, SECAGG_THRESHOLD, self.secagg_threshold)
        _put(out, RUN_TOKEN, self.run_token)
        out.update(_compression_config(self.compression, self.compression_fraction))
        if self.dp is not None:
            out.update(self.dp.to_config())
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> JoinTerms:
        r = _Reader(config, cls.WHAT)
        terms = cls(run_name=r.text(RUN_NAME, default=_REQUIRED),
                    strategy=r.text(STRATEGY, default=_REQUIRED),
                    num_rounds=r.integer(NUM_ROUNDS, low=1, high=MAX_ROUNDS, default=_REQUIRED),
                    seed=r.integer(SEED, low=-_MAX_INT, default=_REQUIRED),
                    min_silos=r.integer(MIN_SILOS, low=1, high=MAX_SILOS, default=_REQUIRED),
                    num_silos=r.integer(NUM_SILOS, high=MAX_SILOS, default=_REQUIRED),
                    secure_aggregation=r.flag(SECURE_AGGREGATION, default=False),
                    secagg_threshold=r.integer(SECAGG_THRESHOLD, low=2, high=MAX_SILOS),
                    dp=DPTerms.from_config(config, what=cls.WHAT),
                    run_token=r.text(RUN_TOKEN),
                    **_read_compression(r))
        if terms.secure_aggregation and terms.secagg_threshold is None:
            raise ProtocolError(f"{cls.WHAT}: {SECAGG_THRESHOLD} is missing in a secure run; "
                                "expected the coordinator's threshold (an integer ≥ 2)")
        return terms


# ---------------------------------------------------------------------------- rounds
@dataclass(frozen=True)
class TrainTerms:
    """One training round as the coordinator asks it (the ``train`` message).

    ``secagg_weighted`` is set exactly in secure rounds (whether the masked update carries
    the example count as its weight). ``proximal_mu`` is FedProx's term (0: none).
    ``strategy_config`` holds a plugin strategy's own per-round values (its
    ``RoundPlan.config`` entries other than :data:`PROXIMAL_MU`), passed to the silo's
    model adapter as they are; they may not reuse a term key.
    """

    server_round: int
    num_rounds: int
    local_epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    strategy: str
    run_token: str
    participants: int
    proximal_mu: float = 0.0
    secagg_weighted: bool | None = None
    dp: DPTerms | None = None
    strategy_config: Mapping[str, Scalar] = field(default_factory=dict)
    compression: str = "none"
    compression_fraction: float = 0.01
    statistics: tuple[str, ...] = ()

    WHAT: ClassVar[str] = "train terms"

    def __post_init__(self) -> None:
        clash = sorted(set(self.strategy_config) & TERM_KEYS)
        if clash:
            raise ProtocolError(f"{self.WHAT}: the strategy's round config reuses term key(s) "
                                f"{clash}; a strategy must name its own values differently")

    @property
    def secure(self) -> bool:
        """Whether the round's update is masked (secure aggregation)."""
        return self.secagg_weighted is not None

    def to_config(self) -> dict[str, Scalar | bytes]:
        out: dict[str, Scalar | bytes] = {
            **self.strategy_config,
            SERVER_ROUND: self.server_round, NUM_ROUNDS: self.num_rounds,
            LOCAL_EPOCHS: self.local_epochs, LEARNING_RATE: self.learning_rate,
            BATCH_SIZE: self.batch_size, SEED: self.seed, STRATEGY: self.strategy,
            RUN_TOKEN: self.run_token, PARTICIPANTS: self.participants,
            PROXIMAL_MU: self.proximal_mu}
        _put(out, SECAGG_WEIGHTED, self.secagg_weighted)
        out.update(_compression_config(self.compression, self.compression_fraction))
        if self.statistics:
            out[STATISTICS] = ",".join(self.statistics)
        if self.dp is not None:
            out.update(self.dp.to_config())
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainTerms:
        r = _Reader(config, cls.WHAT)
        extra: dict[str, Scalar] = {}
        for key, value in config.items():
            if key in TERM_KEYS:
                continue
            if not isinstance(key, str) or len(key) > _MAX_NAME or not isinstance(
                    value, int | float | str | bool) or (
                    isinstance(value, float) and not math.isfinite(value)) or (
                    isinstance(value, str) and len(value) > _MAX_NAME):
                raise r._bad(str(key)[:_MAX_NAME], value, "a strategy value (a number, text of "
                             f"at most {_MAX_NAME} characters, or true/false)")
            if len(extra) == MAX_STRATEGY_VALUES:
                raise ProtocolError(f"{cls.WHAT}: more than {MAX_STRATEGY_VALUES} strategy "
                                    "values; a strategy's round config is a few settings")
            extra[key] = value
        return cls(server_round=r.integer(SERVER_ROUND, default=_REQUIRED),
                   num_rounds=r.integer(NUM_ROUNDS, low=1, high=MAX_ROUNDS, default=_REQUIRED),
                   local_epochs=r.integer(LOCAL_EPOCHS, low=1, default=_REQUIRED),
                   learning_rate=r.number(LEARNING_RATE, positive=True, default=_REQUIRED),
                   batch_size=r.integer(BATCH_SIZE, low=1, default=_REQUIRED),
                   seed=r.integer(SEED, low=-_MAX_INT, default=_REQUIRED),
                   strategy=r.text(STRATEGY, default=_REQUIRED),
                   run_token=r.text(RUN_TOKEN, default=_REQUIRED),
                   participants=r.integer(PARTICIPANTS, default=_REQUIRED),
                   proximal_mu=r.number(PROXIMAL_MU, default=0.0),
                   secagg_weighted=r.flag(SECAGG_WEIGHTED),
                   dp=DPTerms.from_config(config, what=cls.WHAT),
                   strategy_config=extra, statistics=_read_statistics(r),
                   **_read_compression(r))


@dataclass(frozen=True)
class CompressedHeader:
    """What a compressed update says of itself (beside its arrays): the method and the
    length of the dense update it stands for."""

    method: str
    length: int

    WHAT: ClassVar[str] = "compressed update"

    def to_config(self) -> dict[str, Scalar]:
        return {COMPRESSION: self.method, COMPRESSED_LENGTH: self.length}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CompressedHeader:
        r = _Reader(config, cls.WHAT)
        method = r.text(COMPRESSION, default=_REQUIRED)
        if method not in COMPRESSION_METHODS[1:]:
            raise r._bad(COMPRESSION, method, f"one of {', '.join(COMPRESSION_METHODS[1:])}")
        return cls(method=method, length=r.integer(COMPRESSED_LENGTH, low=1, default=_REQUIRED))


@dataclass(frozen=True)
class EvaluateTerms:
    """Score a global model on the local test split (the ``evaluate`` message)."""

    server_round: int
    final: bool = False

    WHAT: ClassVar[str] = "evaluate terms"

    def to_config(self) -> dict[str, Scalar | bytes]:
        return {SERVER_ROUND: self.server_round, FINAL: self.final}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EvaluateTerms:
        r = _Reader(config, cls.WHAT)
        return cls(server_round=r.integer(SERVER_ROUND, default=_REQUIRED),
                   final=r.flag(FINAL, default=False))


@dataclass(frozen=True)
class KeySetupTerms:
    """A secure-aggregation key request: this silo's roster index; ``server_round`` is 0 at
    the run's setup and the round of a re-key."""

    silo: int
    server_round: int = 0

    WHAT: ClassVar[str] = "key-setup terms"

    def to_config(self) -> dict[str, Scalar | bytes]:
        return {SECAGG_SILO: self.silo, SERVER_ROUND: self.server_round}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KeySetupTerms:
        r = _Reader(config, cls.WHAT)
        return cls(silo=r.integer(SECAGG_SILO, default=_REQUIRED),
                   server_round=r.integer(SERVER_ROUND, default=0))


@dataclass(frozen=True)
class UnmaskTerms:
    """Round trip 2 of a secure round."""

    server_round: int

    WHAT: ClassVar[str] = "unmask terms"

    def to_config(self) -> dict[str, Scalar | bytes]:
        return {SERVER_ROUND: self.server_round}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UnmaskTerms:
        return cls(server_round=_Reader(config, cls.WHAT).integer(SERVER_ROUND, default=_REQUIRED))


def server_round_of(config: Mapping[str, Any]) -> int:
    """The round a received record names, or 0 (for filing a refusal in the ledger; never
    raises, whatever the record holds)."""
    value = config.get(SERVER_ROUND, 0) if isinstance(config, Mapping) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# ---------------------------------------------------------------------------- replies
@dataclass(frozen=True)
class SiloInfo:
    """A silo's answer to join: its name and its data schema's fingerprint."""

    name: str
    fingerprint: Mapping[str, Any]

    WHAT: ClassVar[str] = "join reply"

    def to_config(self) -> dict[str, Scalar | bytes]:
        return {SILO_NAME: self.name,
                SCHEMA_FINGERPRINT: json.dumps(dict(self.fingerprint), sort_keys=True)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SiloInfo:
        r = _Reader(config, cls.WHAT)
        name = r.text(SILO_NAME, default=_REQUIRED)
        if not is_silo_name(name):  # it names the silo in logs, tables and the run's files
            raise r._bad(SILO_NAME, name, f"a silo name of {SILO_NAME_RULE}")
        fingerprint = r.json_object(SCHEMA_FINGERPRINT, default=_REQUIRED)
        digest = fingerprint.get("digest")
        if not isinstance(digest, str) or not 0 < len(digest) <= _MAX_NAME:
            raise r._bad(f"{SCHEMA_FINGERPRINT}.digest", digest,
                         f"the schema's digest, a non-empty string of at most {_MAX_NAME} "
                         "characters (the coordinator and this silo must run the same xsilo "
                         "release)")
        return cls(name=name, fingerprint=fingerprint)


_METRIC_FIELDS = {  # attribute -> key; every value a finite number
    "num_examples": NUM_EXAMPLES, "train_loss": TRAIN_LOSS, "fit_seconds": FIT_SECONDS,
    "eval_loss": EVAL_LOSS, "eval_accuracy": EVAL_ACCURACY, "eval_examples": EVAL_EXAMPLES,
    "eval_mae": EVAL_MAE, "eval_mse": EVAL_MSE,
    "secagg_weight": SECAGG_WEIGHT, "secagg_capped": SECAGG_CAPPED,
    "secagg_clipped": SECAGG_CLIPPED, "secagg_dp_clip_norm": SECAGG_DP_CLIP_NORM,
    "dpsgd_epsilon": DPSGD_EPSILON, "dpsgd_delta": DPSGD_DELTA, "dpsgd_steps": DPSGD_STEPS,
    "update_sq_norm": UPDATE_SQ_NORM, "local_steps": LOCAL_STEPS,
    "dp_epsilon_tally": DP_EPSILON_TALLY,
}


_COUNTS = ("num_examples", "eval_examples", "dpsgd_steps", "local_steps")
_MAX_COUNT = float(1 << 53)  # counts beyond any data set; every count still exact in a float


@dataclass(frozen=True)
class SiloMetrics:
    """The numbers a silo reports with a train or evaluate reply (all optional).

    Evaluation of the incoming model (``eval_*``; a regressor's ``eval_mae`` and
    ``eval_mse``, its ``eval_loss`` being the MSE), training (``train_loss``,
    ``num_examples``: the weight of a clear update, ``fit_seconds``), what secure
    aggregation capped or clipped, a DP-SGD silo's own record-level ε, and in a
    silo-level DP run ``dp_epsilon_tally``: the silo's own ε tally for the run after this
    round (its accountant, counted when the update left; the coordinator adopts a higher
    one). ``extra`` holds further numbers a model adapter's ``fit`` returned.
    """

    num_examples: float | None = None
    train_loss: float | None = None
    fit_seconds: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_examples: float | None = None
    eval_mae: float | None = None
    eval_mse: float | None = None
    secagg_weight: float | None = None
    secagg_capped: float | None = None
    secagg_clipped: float | None = None
    secagg_dp_clip_norm: float | None = None
    dpsgd_epsilon: float | None = None
    dpsgd_delta: float | None = None
    dpsgd_steps: float | None = None
    dp_epsilon_tally: float | None = None
    update_sq_norm: float | None = None
    local_steps: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    WHAT: ClassVar[str] = "silo metrics"

    def to_record(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.extra.items()}
        for attr, key in _METRIC_FIELDS.items():
            value = getattr(self, attr)
            if value is not None:
                out[key] = float(value)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SiloMetrics:
        r = _Reader(record, cls.WHAT)
        values: dict[str, Any] = {}
        extra: dict[str, float] = {}
        known = {key: attr for attr, key in _METRIC_FIELDS.items()}
        for key, value in record.items():
            if not isinstance(key, str) or len(key) > _MAX_NAME:
                raise r._bad(str(key)[:_MAX_NAME], value, "a metric name of at most 256 characters")
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not _finite(value)):
                raise r._bad(key, value, "a finite number")
            if key in known:
                values[known[key]] = float(value)
            else:
                extra[key] = float(value)
        for attr in ("num_examples", "eval_examples", "fit_seconds", "eval_loss", "eval_mae",
                     "eval_mse", "dp_epsilon_tally"):
            if values.get(attr, 0.0) < 0:
                raise r._bad(_METRIC_FIELDS[attr], values[attr], "a finite number ≥ 0")
        for attr in _COUNTS:  # a weight of 1e308 would overflow the round's sums
            if values.get(attr, 0.0) > _MAX_COUNT:
                raise r._bad(_METRIC_FIELDS[attr], values[attr], "a count ≤ 2**53")
        if not 0.0 <= values.get("eval_accuracy", 0.0) <= 1.0:
            raise r._bad(EVAL_ACCURACY, values["eval_accuracy"], "a fraction in [0, 1]")
        return cls(**values, extra=extra)

    def merged(self, other: SiloMetrics) -> SiloMetrics:
        """These metrics with every value ``other`` sets (its ``extra`` merged)."""
        values = {attr: getattr(other, attr) if getattr(other, attr) is not None
                  else getattr(self, attr) for attr in _METRIC_FIELDS}
        return SiloMetrics(**values, extra={**self.extra, **other.extra})


# ---------------------------------------------------------------------------- aggregate metrics
AGGREGATED_METRICS: tuple[tuple[str, str], ...] = (
    ("eval_loss", "eval_examples"), ("eval_accuracy", "eval_examples"),
    ("eval_mae", "eval_examples"), ("eval_mse", "eval_examples"),
    ("train_loss", "num_examples"), ("update_sq_norm", "num_examples"),
    ("local_steps", "num_examples"))
"""The metrics a secure round sums instead of sending per silo: each as ``(count, count ·
value)``, the count being the examples it was measured on (0 when the silo has none)."""


def aggregate_slots(metrics: SiloMetrics) -> list[float]:
    """A silo's metrics as the auxiliary statistics of a secure round (see above)."""
    out: list[float] = []
    for metric, weight in AGGREGATED_METRICS:
        value, count = getattr(metrics, metric), getattr(metrics, weight) or 0.0
        out += [count, count * value] if value is not None else [0.0, 0.0]
    return out


def from_aggregate(sums: Any) -> SiloMetrics:
    """The sums of :func:`aggregate_slots` over silos → their example-weighted means (each
    with its count as ``eval_examples`` / ``num_examples``; a metric nobody measured: None)."""
    values: dict[str, float | None] = {}
    for k, (metric, weight) in enumerate(AGGREGATED_METRICS):
        count, total = float(sums[2 * k]), float(sums[2 * k + 1])
        values[metric] = total / count if count > 0 else None
        values[weight] = max(values.get(weight) or 0.0, count) or None
    return SiloMetrics(**values)

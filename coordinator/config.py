"""The run configuration: one TOML file, parsed once into a frozen, validated object.

The coordinator operator writes (or the CLI generates) ``config.toml`` in the run
directory; the ServerApp reads exactly that file, so the run directory always holds the
configuration that was used.
"""

from __future__ import annotations

import math

import tomli_w
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from coordinator.evaluation import EvaluationConfig
from coordinator.exports import EXPORTS
from strategies.dp.config import DPConfig
from xsilo.errors import ConfigError
from xsilo.files import atomic_write, read_toml
from xsilo.terms import MAX_ROUNDS, MAX_SILOS

__all__ = ["RunConfig", "load_run_config", "write_run_config"]


@dataclass(frozen=True)
class RunConfig:
    """Everything the coordinator needs to drive one run.

    Attributes
    ----------
    num_rounds : number of training rounds (≥ 1).
    strategy, strategy_params : a strategy registered under ``xsilo.strategies`` and its params.
    min_silos : fewest silos that must reply for a round to update the model.
    expected_silos : silos to wait for before the run starts (default: ``min_silos``).
    local_epochs, learning_rate, batch_size : local training settings sent to silos.
    round_timeout : seconds to wait for replies in one round; late silos are dropped.
    straggler_grace : once enough silos answered an exchange (``min_silos`` updates; under
        secure aggregation the threshold), wait at most this many more seconds for the rest
        (never past ``round_timeout``); the silos still out are recorded with the reason.
        ``0`` stops at once; ``straggler_grace ≥ round_timeout`` always waits the timeout.
    join_timeout : seconds to wait for ``expected_silos`` to connect (a secure run's key
        setup also waits up to this long for joined silos the SuperLink reports offline).
    seed : seeds every silo's model initialisation identically.
    dp : silo-level differential privacy (``[run.dp]`` table, :class:`DPConfig`); None = off.
    secure_aggregation : mask every update (strategies.secagg); the coordinator sees only sums.
    secagg_threshold : fewest survivors for a secure round to unmask (0 = the default
        ``max(2, min_silos, ⌈2n/3⌉)`` for the ``n`` silos that joined); never below ``min_silos``.
    secagg_clip : each update value is clipped to ``[-clip, clip]`` before quantization.
    secagg_bits : quantization bits per value (step ``2·clip/(2^bits − 1)``).
    secagg_max_weight : largest integer weight (example count) a silo masks; larger counts
        are capped and reported in the round row.
    secagg_round_keys : ``"auto"`` (default), ``"on"`` or ``"off"``: each round first deals
        fresh round keys (one more round trip; a silo's dealing O(n·t) instead of O(n²·t)),
        ``auto`` from 200 silos on (docs/secure-aggregation.md, *Round keys*).
    exports : any of ``tensorboard``, ``mlflow``, ``prometheus`` (:mod:`coordinator.exports`).
    prometheus_host, prometheus_port : where the Prometheus endpoint listens (port 0: any
        free port, recorded in ``metrics.jsonl``).
    mlflow_tracking_uri, mlflow_experiment : the MLflow store ("": ``sqlite:///RUN_DIR/mlflow.db``)
        and experiment name.
    evaluation : coordinator-side validation (``[run.evaluation]`` table,
        :class:`~coordinator.evaluation.EvaluationConfig`); None = off.
    compression : how clear updates travel (:mod:`strategies.compression`): ``none``,
        ``q8`` / ``q4`` (unbiased stochastic quantization), ``topk`` (with error feedback at
        the silo) or ``prune`` (a magnitude mask of the global model); secure rounds use
        ``secagg_bits`` instead.
    compression_fraction : the share of values ``topk`` and ``prune`` keep (default 0.01).
    """

    num_rounds: int = 5
    strategy: str = "fedavg"
    strategy_params: Mapping[str, Any] = field(default_factory=dict)
    min_silos: int = 2
    expected_silos: int = 0
    local_epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    round_timeout: float = 300.0
    straggler_grace: float = 60.0
    join_timeout: float = 120.0
    seed: int = 0
    secure_aggregation: bool = False
    secagg_threshold: int = 0
    secagg_clip: float = 10.0
    secagg_bits: int = 16
    secagg_max_weight: int = 1000
    secagg_round_keys: str = "auto"
    dp: DPConfig | None = None
    name: str = "run"
    exports: tuple[str, ...] = ()
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 0
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "xsilo"
    evaluation: EvaluationConfig | None = None
    compression: str = "none"
    compression_fraction: float = 0.01

    def __post_init__(self) -> None:
        _positive_int("num_rounds", self.num_rounds, MAX_ROUNDS)
        _positive_int("min_silos", self.min_silos, MAX_SILOS)
        _positive_int("local_epochs", self.local_epochs)
        _positive_int("batch_size", self.batch_size)
        if not isinstance(self.expected_silos, int) or self.expected_silos < 0:
            raise ConfigError(f"expected_silos must be an integer ≥ 0, got {self.expected_silos!r}")
        if self.expected_silos and self.expected_silos < self.min_silos:
            raise ConfigError(
                f"expected_silos ({self.expected_silos}) is below min_silos ({self.min_silos}); "
                "raise expected_silos or lower min_silos"
            )
        for name in ("learning_rate", "round_timeout", "join_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        grace = self.straggler_grace
        if (not isinstance(grace, int | float) or isinstance(grace, bool)
                or not math.isfinite(grace) or grace < 0):
            raise ConfigError(f"straggler_grace must be a number of seconds ≥ 0 (at most "
                              f"round_timeout = {self.round_timeout!r} takes effect), got "
                              f"{grace!r}")
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ConfigError(f"strategy must be a strategy name, got {self.strategy!r}")
        if not isinstance(self.strategy_params, Mapping):
            raise ConfigError("strategy_params must be a table of parameter = value")
        if self.secagg_round_keys not in ("auto", "on", "off"):
            raise ConfigError(f"secagg_round_keys must be \"auto\", \"on\" or \"off\", got "
                              f"{self.secagg_round_keys!r}")
        if self.secure_aggregation:
            self._check_secagg()
        self._check_compression()
        if self.dp is not None and not isinstance(self.dp, DPConfig):
            if not isinstance(self.dp, Mapping):
                raise ConfigError(f"dp must be a table ([run.dp]), got {self.dp!r}")
            object.__setattr__(self, "dp", DPConfig.from_mapping(self.dp))
        self._check_observability()

    def _check_observability(self) -> None:
        if isinstance(self.exports, str) or not isinstance(self.exports, list | tuple):
            raise ConfigError(f"exports must be a list such as [\"tensorboard\", \"mlflow\"], "
                              f"got {self.exports!r}")
        unknown = [e for e in self.exports if e not in EXPORTS]
        if unknown or len(set(self.exports)) != len(self.exports):
            raise ConfigError(f"exports = {list(self.exports)}: each of {', '.join(EXPORTS)} at "
                              f"most once; unknown: {unknown or 'none'}")
        object.__setattr__(self, "exports", tuple(self.exports))
        port = self.prometheus_port
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"prometheus_port must be 0 (any free port) or 1..65535, "
                              f"got {port!r}")
        for name in ("prometheus_host", "mlflow_experiment"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got "
                                  f"{getattr(self, name)!r}")
        if not isinstance(self.mlflow_tracking_uri, str):
            raise ConfigError(f"mlflow_tracking_uri must be a string (\"\": the run directory's "
                              f"mlflow.db), got {self.mlflow_tracking_uri!r}")
        if self.evaluation is not None and not isinstance(self.evaluation, EvaluationConfig):
            object.__setattr__(self, "evaluation", EvaluationConfig.from_mapping(self.evaluation))

    def _check_compression(self) -> None:
        from strategies.compression import check_method

        if isinstance(self.compression_fraction, int) and not isinstance(
                self.compression_fraction, bool):
            object.__setattr__(self, "compression_fraction",
                               _float("compression_fraction", self.compression_fraction))
        if not isinstance(self.compression_fraction, float) or not math.isfinite(
                self.compression_fraction):
            raise ConfigError(f"compression_fraction must be a number in (0, 1], got "
                              f"{self.compression_fraction!r}")
        check_method(self.compression, self.compression_fraction)
        if self.compression != "none" and self.secure_aggregation:
            raise ConfigError(
                f"compression = {self.compression!r} applies to clear rounds; under secure "
                "aggregation masked updates travel bit-packed at the width the sum needs: "
                "lower secagg_bits (e.g. 8) to send fewer bytes, and set compression = \"none\"")

    def _check_secagg(self) -> None:
        from strategies.secagg import validate_params

        t = self.secagg_threshold
        if not isinstance(t, int) or isinstance(t, bool) or t < 0 or t == 1:
            raise ConfigError(f"secagg_threshold must be 0 (automatic) or an integer ≥ 2, got {t!r}")
        if t and t < self.min_silos:
            raise ConfigError(
                f"secagg_threshold ({t}) is below min_silos ({self.min_silos}): a round could "
                f"unmask fewer updates than min_silos; set secagg_threshold ≥ {self.min_silos} "
                "or lower min_silos")
        if t and 2 * t <= self.wait_for:
            raise ConfigError(
                f"secagg_threshold ({t}) is not a strict majority of the {self.wait_for} silos "
                f"the run waits for; silos refuse it (split-view recovery); set "
                f"secagg_threshold ≥ {self.wait_for // 2 + 1} or 0 (automatic)")
        if t and t > self.wait_for:
            raise ConfigError(
                f"secagg_threshold ({t}) is above the {self.wait_for} silo(s) the run waits for; "
                f"set expected_silos ≥ {t} or secagg_threshold ≤ {self.wait_for}")
        try:
            validate_params(num_silos=max(self.wait_for, 2), clip=self.secagg_clip,
                            bits=self.secagg_bits, max_weight=self.secagg_max_weight)
        except ConfigError as exc:  # name the run settings, not the protocol's parameters
            raise ConfigError(f"secure aggregation settings (secagg_clip, secagg_bits, "
                              f"secagg_max_weight): {exc}") from exc

    @property
    def grace(self) -> float:
        """Seconds an exchange waits for stragglers once enough silos answered."""
        return min(float(self.straggler_grace), float(self.round_timeout))

    @property
    def wait_for(self) -> int:
        """How many silos the run waits for before it starts."""
        return self.expected_silos or self.min_silos

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a TOML table; unknown keys are refused, listing the accepted ones."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"the run settings must be a table ([run]), got {values!r:.80}")
        accepted = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - accepted)
        if unknown:
            raise ConfigError(
                f"unknown run setting(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
            )
        kwargs = dict(values)
        for name in ("learning_rate", "round_timeout", "join_timeout", "secagg_clip",
                     "straggler_grace"):
            if isinstance(kwargs.get(name), int) and not isinstance(kwargs.get(name), bool):
                kwargs[name] = _float(name, kwargs[name])
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong type that dataclass itself rejects
            raise ConfigError(f"invalid run configuration: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (TOML-serialisable)."""
        out = asdict(self)
        out["strategy_params"] = dict(self.strategy_params)
        if self.dp is None:
            out.pop("dp")  # TOML has no null: an absent table means no DP
        else:
            out["dp"] = self.dp.to_mapping()
        out["exports"] = list(self.exports)
        if self.evaluation is None:
            out.pop("evaluation")
        else:
            out["evaluation"] = self.evaluation.to_mapping()
        return out


def _float(name: str, value: int) -> float:
    """A TOML integer as a float; ConfigError for one beyond any float (TOML allows any)."""
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{name} is an integer of {value.bit_length()} bits, beyond any "
                          "number it can be; set a realistic value") from None


def _positive_int(name: str, value: object, most: int | None = None) -> None:
    """An integer ≥ 1 (and ≤ ``most``: the bound every silo holds a join to, xsilo.terms)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (
            most is not None and value > most):
        bound = f" and ≤ {most:,}" if most is not None else ""
        raise ConfigError(f"{name} must be an integer ≥ 1{bound}, got {value!r}")


def load_run_config(path: Path) -> RunConfig:
    """Read ``config.toml`` (the ``[run]`` table) from a run directory or a file path."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.toml"
    data = read_toml(path, what="run configuration", missing=(
        f"run configuration {path} does not exist; create it or pass --config"))
    if "run" not in data:
        raise ConfigError(f"{path} has no [run] table; put the run settings under [run]")
    return RunConfig.from_mapping(data["run"])


def write_run_config(path: Path, config: RunConfig) -> None:
    """Write ``config`` as TOML under ``[run]``."""
    atomic_write(path, tomli_w.dumps({"run": config.to_dict()}))

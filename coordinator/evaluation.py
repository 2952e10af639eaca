"""Coordinator-side evaluation: the global model scored on a validation set the coordinator
holds, after join and after every round (``[run.evaluation]``).

The coordinator does not read data or build models itself (that is the silo's code, which
it may not import). The run configuration names an *evaluator* by import path, and the
coordinator calls it::

    [run.evaluation]
    evaluator = "federation.evaluation:holdout"   # package.module:factory
    data = "/srv/validation/val.csv"              # everything else goes to the factory
    model = "sklearn:SGDClassifier"
    schema = { label = "label", label_values = [0, 1], features = { … } }

``factory(settings, *, seed)`` is called once when the run starts (it validates its settings
and loads its data: a bad path or schema fails the run before any silo is contacted) and
returns ``evaluate(model) -> {"loss", "accuracy"}`` (classification) or ``{"loss", "mae"}``
(regression, the loss being the MSE), the :class:`ModelAdapter` convention. The built-in
factory, :func:`federation.evaluation.holdout`, evaluates with the silos' own data and
model code; a consortium can name its own.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xsilo.errors import ConfigError, ModelError

__all__ = ["EvaluationConfig", "Evaluator", "load_evaluator", "validation_fields"]

Evaluator = Callable[[Mapping[str, np.ndarray]], Mapping[str, float]]


@dataclass(frozen=True)
class EvaluationConfig:
    """``[run.evaluation]``: the evaluator's import path and its own settings."""

    evaluator: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        module, sep, attr = str(self.evaluator).partition(":")
        if not isinstance(self.evaluator, str) or not sep or not module or not attr:
            raise ConfigError(
                f"[run.evaluation] evaluator = {self.evaluator!r}: expected an import path "
                "'package.module:factory', e.g. 'federation.evaluation:holdout'")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> EvaluationConfig:
        if not isinstance(table, Mapping):
            raise ConfigError(f"evaluation must be a table ([run.evaluation]), got {table!r}")
        if "evaluator" not in table:
            raise ConfigError("[run.evaluation] needs `evaluator` (an import path such as "
                              "'federation.evaluation:holdout')")
        return cls(str(table["evaluator"]), {k: v for k, v in table.items() if k != "evaluator"})

    def to_mapping(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator, **dict(self.settings)}


def load_evaluator(config: EvaluationConfig, *, seed: int) -> Evaluator:
    """Import the factory ``config.evaluator`` names and build the evaluator with it."""
    module_name, _, attr = config.evaluator.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"[run.evaluation] evaluator {config.evaluator!r}: cannot import "
                          f"{module_name!r} ({exc}); install it on the coordinator") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"[run.evaluation] evaluator {config.evaluator!r}: "
                              f"{module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"[run.evaluation] evaluator {config.evaluator!r} is not callable")
    evaluate = obj(dict(config.settings), seed=seed)
    if not callable(evaluate):
        raise ConfigError(f"[run.evaluation] evaluator {config.evaluator!r} returned "
                          f"{type(evaluate).__name__}; a factory must return evaluate(model)")
    return evaluate


def validation_fields(scores: Mapping[str, Any]) -> dict[str, float]:
    """An evaluator's scores as a row's ``validation`` object: ``loss`` and ``accuracy``, or
    ``loss``, ``mse`` and ``mae`` for a regressor; non-finite or missing scores refused."""
    out: dict[str, float] = {}
    for key, value in scores.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ModelError(f"the coordinator's evaluator returned {key} = {value!r}; every "
                             "score must be a finite number (the global model may have "
                             "diverged: lower learning_rate)")
        out[str(key)] = float(value)
    if "loss" not in out:
        raise ModelError(f"the coordinator's evaluator returned {sorted(out)}; it must return "
                         "loss plus accuracy (classification) or mae (regression)")
    if "mae" in out and "accuracy" not in out:
        out["mse"] = out["loss"]  # a regressor's loss is its MSE (ModelAdapter.evaluate)
    return out

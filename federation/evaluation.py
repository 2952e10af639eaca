"""The built-in coordinator-side evaluator: a held-out CSV/Parquet file, scored with the
silos' own data and model code (``[run.evaluation]``, see :mod:`coordinator.evaluation`).

It lives here, on the roof, because it needs what the coordinator may not import: the
silo's data loader and schema validation (:mod:`silo_client.data`) and its model adapters
(:mod:`silo_client.adapters`). The coordinator names it by import path::

    [run.evaluation]
    evaluator = "federation.evaluation:holdout"
    data = "/srv/validation/val.csv"          # absolute: the ServerApp has its own cwd
    model = "sklearn:SGDClassifier"           # the silos' [model] spec
    params = {}                               # the silos' [model] params (optional)
    schema = { label = "label", label_values = [0, 1], features = { … } }   # [data.schema]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.evaluation import Evaluator
from silo_client.adapters.build import build_model
from silo_client.data import DataSchema, load_dataset
from xsilo.errors import ConfigError

__all__ = ["holdout"]

_KEYS = {"data", "model", "schema", "params"}


def holdout(settings: Mapping[str, Any], *, seed: int = 0) -> Evaluator:
    """Load and validate the held-out set now; return ``evaluate(model) -> scores``.

    Raises
    ------
    ConfigError
        A missing or unknown setting, a relative or missing data path.
    DataValidationError
        The file does not match the schema (file, column and row named).
    """
    unknown = sorted(set(settings) - _KEYS)
    missing = sorted({"data", "model", "schema"} - set(settings))
    if unknown or missing:
        raise ConfigError(f"[run.evaluation] (federation.evaluation:holdout) takes data, model, "
                          f"schema and optionally params; unknown {unknown}, missing {missing}")
    path = Path(str(settings["data"])).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"[run.evaluation] data = {str(path)!r} must be an absolute path (the "
                          "coordinator's ServerApp does not run in your working directory)")
    if not isinstance(settings["schema"], Mapping):
        raise ConfigError("[run.evaluation] schema must be a table like a silo's [data.schema]")
    schema = DataSchema.from_mapping(settings["schema"])
    data = load_dataset(path, schema)
    if len(data) == 0:
        raise ConfigError(f"[run.evaluation] data {path} has no rows to evaluate on")
    params = dict(settings.get("params") or {})
    model = build_model(str(settings["model"]), schema=schema, config=params, seed=seed)

    def evaluate(parameters: Mapping[str, np.ndarray]) -> dict[str, float]:
        model.set_parameters(dict(parameters))
        scores = {k: float(v) for k, v in model.evaluate(data).items()}
        scores["examples"] = float(len(data))
        return scores

    return evaluate

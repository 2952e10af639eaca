"""Model adapters: a model as named numpy arrays plus local fit/evaluate.

``SklearnAdapter`` and ``TorchAdapter`` are loaded on first access, so importing this package
pulls in neither scikit-learn nor torch (torch is an optional extra: ``pip install 'xsilo[torch]'``).
"""

from __future__ import annotations

from typing import Any

from silo_client.adapters.base import (
    FitSettings,
    ModelAdapter,
    NDArrays,
    ParameterSpec,
    assign_parameters,
    check_same_architecture,
    parameter_spec,
)
from silo_client.adapters.build import build_model

__all__ = [
    "FitSettings",
    "ModelAdapter",
    "NDArrays",
    "ParameterSpec",
    "SklearnAdapter",
    "TorchAdapter",
    "assign_parameters",
    "build_model",
    "check_same_architecture",
    "parameter_spec",
]


def __getattr__(name: str) -> Any:
    if name == "SklearnAdapter":
        from silo_client.adapters.sklearn import SklearnAdapter

        return SklearnAdapter
    if name == "TorchAdapter":
        from silo_client.adapters.torch import TorchAdapter

        return TorchAdapter
    raise AttributeError(f"module 'silo_client.adapters' has no attribute {name!r}")

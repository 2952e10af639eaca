"""The model-adapter protocol, parameter specs, and :func:`build_model`.

An adapter exposes a model as named numpy arrays (``NDArrays``) plus local ``fit`` and
``evaluate``. This module imports neither torch nor scikit-learn: concrete adapters are loaded
only when a spec needs them.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from xsilo.errors import ModelError

if TYPE_CHECKING:
    from silo_client.data import DataSchema, LocalDataset

__all__ = [
    "ModelAdapter",
    "NDArrays",
    "ParameterSpec",
    "assign_parameters",
    "build_model",
    "check_same_architecture",
    "parameter_spec",
]

log = logging.getLogger(__name__)

NDArrays = dict[str, np.ndarray]
ParameterSpec = Mapping[str, tuple[tuple[int, ...], str]]


@runtime_checkable
class ModelAdapter(Protocol):
    """A federatable model: named parameters in, local training, metrics out."""

    task: str

    def get_parameters(self) -> NDArrays:
        """Copies of every parameter, in a stable insertion order."""
        ...

    def set_parameters(self, params: NDArrays) -> None:
        """Load parameters exactly; wrong names or shapes raise :class:`ModelError`."""
        ...

    def fit(self, train: LocalDataset, *, epochs: int, config: Mapping[str, object]) -> dict[str, float]:
        """Train locally from the current parameters; returns ``{"train_loss": ...}``."""
        ...

    def evaluate(self, test: LocalDataset) -> dict[str, float]:
        """``{"loss", "accuracy"}`` for classification, ``{"loss" (MSE), "mae"}`` for regression."""
        ...


def parameter_spec(params: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype string) of each parameter, in order."""
    return {name: (tuple(int(d) for d in a.shape), str(a.dtype)) for name, a in params.items()}


def check_same_architecture(reference: ParameterSpec, mine: ParameterSpec) -> None:
    """Raise :class:`ModelError` naming the first tensor whose name, shape or dtype differs."""
    ref_names, my_names = list(reference), list(mine)
    for i, name in enumerate(ref_names):
        if name not in mine:
            raise ModelError(
                f"model architectures differ: tensor {name!r} (shape {tuple(reference[name][0])}, "
                f"{reference[name][1]}) is missing here; this model has {my_names}. "
                "Every silo must build the same model (same spec and schema)."
            )
        (ref_shape, ref_dtype), (my_shape, my_dtype) = reference[name], mine[name]
        if tuple(ref_shape) != tuple(my_shape) or str(ref_dtype) != str(my_dtype):
            raise ModelError(
                f"model architectures differ at tensor {name!r}: expected shape "
                f"{tuple(ref_shape)} {ref_dtype}, this silo has {tuple(my_shape)} {my_dtype}"
            )
        if i < len(my_names) and my_names[i] != name:
            raise ModelError(
                f"model architectures differ: tensor #{i} is {my_names[i]!r} here, {name!r} in the reference"
            )
    extra = [n for n in my_names if n not in reference]
    if extra:
        shape, dtype = mine[extra[0]]
        raise ModelError(
            f"model architectures differ: tensor {extra[0]!r} (shape {tuple(shape)}, {dtype}) "
            "is not in the reference model"
        )


def assign_parameters(current: Mapping[str, np.ndarray], incoming: Mapping[str, np.ndarray]) -> NDArrays:
    """Validate ``incoming`` against ``current`` and return copies cast to the held dtypes.

    Raises :class:`ModelError` naming the tensor with the expected and received shape.
    """
    missing = [n for n in current if n not in incoming]
    extra = [n for n in incoming if n not in current]
    if missing or extra:
        raise ModelError(
            f"parameter names do not match the model: missing {missing}, unexpected {extra}"
        )
    out: NDArrays = {}
    for name, held in current.items():
        arr = np.asarray(incoming[name])
        if arr.shape != held.shape:
            raise ModelError(
                f"tensor {name!r}: expected shape {held.shape}, received {arr.shape}"
            )
        if arr.dtype.kind not in "fiu":
            raise ModelError(f"tensor {name!r}: expected a numeric {held.dtype} array, received {arr.dtype}")
        out[name] = np.array(arr, dtype=held.dtype, copy=True)
    return out


def _import_object(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(
            f"model spec {spec!r} is neither a built-in (sklearn:<Name>) nor an import path "
            "'package.module:callable'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model spec {spec!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model spec {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _call_with_accepted(fn: Any, kwargs: Mapping[str, object]) -> Any:
    """Call ``fn`` with the subset of ``kwargs`` its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def _is_torch_module(obj: object) -> bool:
    torch = sys.modules.get("torch")  # a user module that built an nn.Module has imported torch
    return torch is not None and isinstance(obj, torch.nn.Module)


def build_model(spec: str, *, schema: DataSchema, config: Mapping[str, object]) -> ModelAdapter:
    """Build the silo's model adapter from a spec in the silo config.

    Parameters
    ----------
    spec
        ``"sklearn:<Estimator>"`` for a built-in, or ``"package.module:attr"`` where ``attr``
        is (or returns, when called with whichever of ``n_features``, ``classes``, ``seed``
        it accepts) an ``nn.Module``, a scikit-learn estimator or a :class:`ModelAdapter`.
    schema
        The validated data schema: feature width, task and label set.
    config
        Run/model config; ``"seed"`` makes the initial parameters identical on every silo.
    """
    seed = int(config.get("seed", 0))  # type: ignore[arg-type]
    if spec.startswith("sklearn:"):
        from silo_client.adapters.sklearn import SklearnAdapter, make_builtin

        return SklearnAdapter(make_builtin(spec.partition(":")[2], config), schema=schema, seed=seed)
    obj = _import_object(spec)
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
        kwargs = {"n_features": schema.n_features, "classes": schema.label_values, "seed": seed}
        torch = sys.modules.get("torch")
        if torch is None:
            obj = _call_with_accepted(obj, kwargs)
        else:  # identical initial weights on every silo, even if the builder ignores `seed`
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                obj = _call_with_accepted(obj, kwargs)
    return _wrap(obj, spec=spec, schema=schema, config=config, seed=seed)


def _wrap(obj: object, *, spec: str, schema: DataSchema, config: Mapping[str, object], seed: int) -> ModelAdapter:
    if _is_torch_module(obj):
        from silo_client.adapters.torch import TorchAdapter

        batch = int(config.get("batch-size", 32))  # type: ignore[arg-type]
        return TorchAdapter(obj, task=schema.task, seed=seed, batch_size=batch)
    if all(hasattr(obj, m) for m in ("get_parameters", "set_parameters", "fit", "evaluate")):
        return obj  # type: ignore[return-value]
    if hasattr(obj, "get_params") and hasattr(obj, "fit"):
        from silo_client.adapters.sklearn import SklearnAdapter

        return SklearnAdapter(obj, schema=schema, seed=seed)
    raise ModelError(
        f"model spec {spec!r} produced a {type(obj).__name__}; expected a torch nn.Module, "
        "a scikit-learn estimator or a ModelAdapter"
    )

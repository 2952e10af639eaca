"""Build a silo's model adapter from the ``[model] spec`` in its config.

A spec is ``"sklearn:<Estimator>"`` (a built-in, :mod:`~.sklearn`) or an import path
``"package.module:attr"`` to an ``nn.Module``, a scikit-learn estimator or a
:class:`~.base.ModelAdapter` (or a callable returning one). torch and scikit-learn are
imported only when a spec needs them.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from silo_client.adapters.base import ModelAdapter
from xsilo.errors import ModelError

if TYPE_CHECKING:
    from silo_client.data import DataSchema

__all__ = ["build_model"]


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


def build_model(spec: str, *, schema: DataSchema, config: Mapping[str, object] | None = None,
                seed: int = 0, learning_rate: float | None = None,
                batch_size: int = 32) -> ModelAdapter:
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
        The silo's own ``[model] params`` (e.g. ``C``, ``alpha``, ``hidden-layer-sizes``).
    seed
        Makes the initial parameters identical on every silo (the run's seed).
    learning_rate, batch_size
        The run's, for estimators that take them at construction.
    """
    config = config or {}
    if spec.startswith("sklearn:"):
        from silo_client.adapters.sklearn import SklearnAdapter, make_builtin

        return SklearnAdapter(make_builtin(spec.partition(":")[2], config, seed=seed,
                                           learning_rate=learning_rate),
                              schema=schema, seed=seed)
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
    return _wrap(obj, spec=spec, schema=schema, seed=seed, batch_size=batch_size)


def _wrap(obj: object, *, spec: str, schema: DataSchema, seed: int, batch_size: int) -> ModelAdapter:
    if _is_torch_module(obj):
        from silo_client.adapters.torch import TorchAdapter

        return TorchAdapter(obj, task=schema.task, seed=seed, batch_size=batch_size)
    if all(hasattr(obj, m) for m in ("get_parameters", "set_parameters", "fit", "evaluate")):
        return obj  # type: ignore[return-value]
    if hasattr(obj, "get_params") and hasattr(obj, "fit"):
        from silo_client.adapters.sklearn import SklearnAdapter

        return SklearnAdapter(obj, schema=schema, seed=seed)
    raise ModelError(
        f"model spec {spec!r} produced a {type(obj).__name__}; expected a torch nn.Module, "
        "a scikit-learn estimator or a ModelAdapter"
    )

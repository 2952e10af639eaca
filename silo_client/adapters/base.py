"""The model-adapter protocol, the settings of one local fit, and parameter specs.

An adapter exposes a model as named numpy arrays (``NDArrays``) plus local ``fit`` and
``evaluate``. This module imports neither torch nor scikit-learn; the concrete adapters
(:mod:`~.sklearn`, :mod:`~.torch`) build on it, and :mod:`~.build` picks one for a spec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from xsilo.errors import ModelError
from xsilo.terms import TrainTerms

if TYPE_CHECKING:
    from silo_client.data import LocalDataset

__all__ = [
    "FitSettings",
    "ModelAdapter",
    "NDArrays",
    "ParameterSpec",
    "assign_parameters",
    "check_same_architecture",
    "parameter_spec",
    "round_seed",
]


NDArrays = dict[str, np.ndarray]
ParameterSpec = Mapping[str, tuple[tuple[int, ...], str]]


def round_seed(run_seed: int, server_round: int) -> int:
    """The training seed of one round: SHA-256 of ``(run seed, round)``, 63 bits.

    Deterministic for a fixed run seed, different every round, so the local shuffle (and a
    torch model's dropout) does not repeat round after round. The model's initial
    parameters still come from the run seed itself (identical at every silo).
    """
    digest = hashlib.sha256(f"xsilo-round-seed:{int(run_seed)}:{int(server_round)}".encode())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


@dataclass(frozen=True)
class FitSettings:
    """What one local ``fit`` may use, from the round's terms (or a test's choice).

    ``seed`` drives the local shuffle; from a round's terms it is :func:`round_seed` of the
    run seed and the round.

    ``learning_rate`` / ``batch_size`` None: the adapter's own default. ``proximal_mu``:
    FedProx's term (0: none). ``strategy_config``: a plugin strategy's own per-round values
    (:attr:`xsilo.terms.TrainTerms.strategy_config`), for a model's own ``train_fn``.
    """

    seed: int = 0
    learning_rate: float | None = None
    batch_size: int | None = None
    proximal_mu: float = 0.0
    server_round: int = 0
    strategy_config: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_terms(cls, terms: TrainTerms) -> FitSettings:
        """The settings a train round's terms give the model."""
        return cls(seed=round_seed(terms.seed, terms.server_round),
                   learning_rate=terms.learning_rate,
                   batch_size=terms.batch_size, proximal_mu=terms.proximal_mu,
                   server_round=terms.server_round, strategy_config=dict(terms.strategy_config))


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

    def fit(self, train: LocalDataset, *, epochs: int, config: FitSettings) -> dict[str, float]:
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

"""Record-level DP-SGD inside a torch silo, through Opacus (Abadi et al. 2016).

Per-example gradients are clipped to ``max_grad_norm`` and Gaussian noise
``N(0, (noise_multiplier * max_grad_norm)^2)`` is added to each batch sum; with Poisson
sampling at rate ``q = batch_size / N`` every optimizer step is a sampled Gaussian event
``GaussianRound(z, q)``. The silo reports its own (ε, δ) either from Opacus' accountant
(:func:`opacus_epsilon`) or from ours over the same steps (:func:`step_events`).

This is the only module of :mod:`strategies.dp` that imports torch or opacus.

Randomness: Opacus draws noise from torch's generator unless ``secure_mode=True``, which
needs the ``torchcsprng`` package (not installed here). Without it the noise is statistically
right but not from a cryptographic generator; see docs/privacy.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strategies.dp.accounting import GaussianRound
from xsilo.errors import ConfigError

__all__ = ["PrivateTraining", "make_private", "opacus_epsilon", "step_events"]


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: use these instead of the originals."""

    model: Any
    optimizer: Any
    data_loader: Any
    engine: Any
    noise_multiplier: float
    sample_rate: float

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far (as counted by Opacus' accountant)."""
        return sum(n for _, _, n in self.engine.accountant.history)


def make_private(
    model: Any,
    optimizer: Any,
    data_loader: Any,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: str = "prv",
    secure_mode: bool = False,
) -> PrivateTraining:
    """Wrap a torch model/optimizer/loader with Opacus' ``PrivacyEngine.make_private``."""
    if not max_grad_norm > 0:
        raise ConfigError(
            f"dpsgd.max_grad_norm must be > 0, got {max_grad_norm!r}; DP-SGD without "
            "per-example clipping has no guarantee"
        )
    if not noise_multiplier > 0:
        raise ConfigError(f"dpsgd.noise_multiplier must be > 0, got {noise_multiplier!r}")
    from opacus import PrivacyEngine

    try:
        engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
    except ImportError as exc:
        raise ConfigError(
            "dpsgd.secure_mode=true needs the torchcsprng package; install it or set "
            f"secure_mode=false ({exc})"
        ) from exc
    model, optimizer, data_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )
    sample_rate = 1.0 / len(data_loader)
    return PrivateTraining(model, optimizer, data_loader, engine, noise_multiplier, sample_rate)


def opacus_epsilon(training: PrivateTraining, *, delta: float) -> float:
    """ε at ``delta`` from Opacus' own accountant (0.0 before the first step)."""
    if training.steps == 0:
        return 0.0
    return float(training.engine.get_epsilon(delta))


def step_events(training: PrivateTraining, steps: int | None = None) -> list[GaussianRound]:
    """The DP-SGD steps as events for :class:`strategies.dp.accounting.Accountant`."""
    n = training.steps if steps is None else steps
    return [GaussianRound(training.noise_multiplier, training.sample_rate)] * n

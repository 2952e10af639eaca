"""Record-level DP-SGD in a torch silo: Opacus' clipping and accountant (Abadi et al. 2016).

Per-example gradients are clipped to ``max_grad_norm`` (Opacus' ``GradSampleModule`` and
``DPOptimizer``) and Gaussian noise ``N(0, (noise_multiplier * max_grad_norm)^2)`` is added
to each batch sum; with Poisson sampling at rate ``q = 1 / len(data_loader)`` every
optimizer step is a sampled Gaussian event ``GaussianRound(z, q)``. The silo reports its own
(ε, δ) either from Opacus' accountant (:func:`opacus_epsilon`) or from ours over the same
steps (:func:`step_events`).

Randomness: both the noise and the Poisson sampling draw from a
:class:`strategies.randomness.ByteSource` (by default an AES-256-CTR keystream keyed from
``os.urandom``, :func:`strategies.randomness.default_source`), never from torch's
generator. Opacus' own secure mode needs ``torchcsprng``, which pip finds no distribution
of for torch 2.13; instead :class:`SecureDPOptimizer` overrides the documented
``DPOptimizer.add_noise`` step (noise from :func:`strategies.dp.noise.gaussian_noise`, the
noisy sum snapped to a grid of ``sigma * 2**-20`` as for central DP) and
:class:`SecurePoissonSampler` is the loader's batch sampler. Opacus still clips, scales and
accounts.

This is the only module of :mod:`strategies.dp` that imports torch or opacus.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import IAccountant, create_accountant
from opacus.data_loader import wrap_collate_with_empty
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader

from strategies.dp.accounting import GaussianRound
from strategies.dp.noise import gaussian_noise
from strategies.randomness import ByteSource, default_source, uniform01_open
from xsilo.errors import ConfigError

__all__ = ["PrivateTraining", "SecureDPOptimizer", "SecurePoissonSampler", "make_private",
           "opacus_epsilon", "step_events"]

_SNAP = 2.0**-20  # grid = stddev * 2^-20, as in strategies.dp.central


class SecureDPOptimizer(DPOptimizer):
    """Opacus' ``DPOptimizer`` whose noise comes from a secure :class:`ByteSource`.

    ``p.grad = snap(summed_clipped_grad + N(0, (z C)^2))`` per parameter, computed in
    float64 (on the CPU for devices without float64) and cast back; everything else
    (clipping, ``loss_reduction`` scaling, step hooks, skipped steps) is Opacus'.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, rng: ByteSource,
                 **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.rng = rng

    def add_noise(self) -> None:
        """Add secure Gaussian noise to every parameter's clipped gradient sum."""
        std = float(self.noise_multiplier) * float(self.max_grad_norm)
        for p in self.params:
            p.grad = _noised(p.summed_grad, std, self.rng).view_as(p)


def _noised(summed: torch.Tensor, std: float, rng: ByteSource) -> torch.Tensor:
    device = torch.device("cpu") if summed.device.type == "mps" else summed.device
    work = summed.detach().to(device=device, dtype=torch.float64)
    noise = gaussian_noise(tuple(work.shape), std, rng=rng)
    work = work + torch.from_numpy(np.ascontiguousarray(noise)).to(device)
    if std > 0:  # drop the float low-order bits of the release (Mironov 2012)
        grid = 2.0 ** math.ceil(math.log2(std * _SNAP))
        work = torch.round(work / grid) * grid
    return work.to(device=summed.device, dtype=summed.dtype)


class SecurePoissonSampler:
    """Batch sampler: each of ``num_samples`` examples joins a batch with prob. ``sample_rate``.

    Independent draws per example and per batch (``U < q`` with 53-bit secure uniforms
    ``U``), ``steps`` batches per epoch (default ``int(1 / sample_rate)``), as Opacus'
    ``UniformWithReplacementSampler`` but from a :class:`ByteSource`.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, rng: ByteSource,
                 steps: int | None = None) -> None:
        if num_samples <= 0 or not 0 < sample_rate <= 1:
            raise ConfigError(f"Poisson sampling needs num_samples > 0 and 0 < sample_rate <= 1, "
                              f"got {num_samples} and {sample_rate}")
        self.num_samples, self.sample_rate, self.rng = num_samples, sample_rate, rng
        self.steps = int(1 / sample_rate) if steps is None else steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            chosen = uniform01_open(self.num_samples, rng=self.rng) < self.sample_rate
            yield np.flatnonzero(chosen).tolist()


def _poisson_loader(data_loader: DataLoader, rng: ByteSource) -> DataLoader:
    """The loader over the same dataset with secure Poisson batches and empty-batch support."""
    dataset = data_loader.dataset
    sampler = SecurePoissonSampler(num_samples=len(dataset), sample_rate=1 / len(data_loader),
                                   rng=rng)
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=data_loader.collate_fn,
        sample_empty_shapes=[(0, *getattr(x, "shape", ())) for x in first],
        dtypes=[getattr(x, "dtype", type(x)) for x in first])
    workers = data_loader.num_workers
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      pin_memory=data_loader.pin_memory, timeout=data_loader.timeout,
                      worker_init_fn=data_loader.worker_init_fn,
                      multiprocessing_context=data_loader.multiprocessing_context,
                      prefetch_factor=data_loader.prefetch_factor if workers else None,
                      persistent_workers=data_loader.persistent_workers,
                      generator=data_loader.generator)  # worker seeds only


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: use these instead of the originals."""

    model: Any
    optimizer: SecureDPOptimizer
    data_loader: DataLoader
    accountant: IAccountant
    noise_multiplier: float
    sample_rate: float

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far (as counted by Opacus' accountant)."""
        return sum(n for _, _, n in self.accountant.history)


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: str = "prv",
    rng: ByteSource | None = None,
) -> PrivateTraining:
    """Wrap a torch model/optimizer/loader for DP-SGD with secure noise and sampling.

    Parameters
    ----------
    accountant
        Opacus accountant name (``"prv"``, ``"rdp"``, ``"gdp"``) used by :func:`opacus_epsilon`.
    rng
        Source of every random draw (noise and batch sampling); default
        :func:`strategies.randomness.default_source` (AES-256-CTR keyed from ``os.urandom``).
        Pass a fixed-key ``KeystreamSource`` only in tests.
    """
    if not max_grad_norm > 0:
        raise ConfigError(
            f"dpsgd.max_grad_norm must be > 0, got {max_grad_norm!r}; DP-SGD without "
            "per-example clipping has no guarantee"
        )
    if not noise_multiplier > 0:
        raise ConfigError(f"dpsgd.noise_multiplier must be > 0, got {noise_multiplier!r}")
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not optimized <= {id(p) for p in model.parameters()}:
        raise ConfigError("dpsgd: the optimizer holds parameters that are not the model's; "
                          "build the optimizer from model.parameters()")
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"dpsgd: the model is not DP-SGD compatible ({errors[0]}); put it in "
                          "training mode, and opacus.validators.ModuleValidator.fix(model) "
                          "replaces layers that mix examples (e.g. BatchNorm by GroupNorm)")
    rng = default_source() if rng is None else rng
    loader = _poisson_loader(data_loader, rng)
    sample_rate = 1.0 / len(loader)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    module.forbid_grad_accumulation()  # Poisson batches: one backward per step
    dp_optimizer = SecureDPOptimizer(
        optimizer, rng=rng, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(loader.dataset) * sample_rate), loss_reduction="mean")
    acct = create_accountant(mechanism=accountant)
    dp_optimizer.attach_step_hook(acct.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateTraining(module, dp_optimizer, loader, acct, noise_multiplier, sample_rate)


def opacus_epsilon(training: PrivateTraining, *, delta: float) -> float:
    """ε at ``delta`` from Opacus' own accountant (0.0 before the first step)."""
    if training.steps == 0:
        return 0.0
    return float(training.accountant.get_epsilon(delta))


def step_events(training: PrivateTraining, steps: int | None = None) -> list[GaussianRound]:
    """The DP-SGD steps as events for :class:`strategies.dp.accounting.Accountant`."""
    n = training.steps if steps is None else steps
    return [GaussianRound(training.noise_multiplier, training.sample_rate)] * n

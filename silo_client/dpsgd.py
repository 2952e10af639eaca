"""Record-level DP-SGD in a torch silo (Opacus), wired into the silo's model adapter.

``[model] dp_sgd = {noise_multiplier = 1.0, max_grad_norm = 1.0, delta = 1e-5}`` makes a
torch silo train through Opacus (:func:`strategies.dp.dpsgd.make_private`): per-example
clipping, Gaussian noise per batch, Poisson sampling. Every optimizer step is a sampled
Gaussian event; the silo composes them across rounds in its own accountant and reports
``dpsgd_epsilon`` / ``dpsgd_delta`` with its metrics. torch is imported only here, on that
path, and only when a round trains.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silo_client.adapters.base import FitSettings
from strategies.dp import Accountant
from xsilo.errors import ConfigError, ModelError
from xsilo.files import atomic_write, hashed_name

__all__ = ["DPSGDReport", "DPSGDSettings", "attach_dpsgd", "state_path"]


@dataclass(frozen=True)
class DPSGDSettings:
    """``[model] dp_sgd`` in silo.toml: record-level DP-SGD for a torch silo."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    accounting: str = "rdp"

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"[model] dp_sgd.{name} = {v!r}: must be a positive number "
                                  "(DP-SGD without per-example clipping and noise has no guarantee)")
        Accountant(self.delta, self.accounting)  # validates delta and the method

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, source: str = "silo.toml") -> DPSGDSettings:
        known = {"noise_multiplier", "max_grad_norm", "delta", "accounting"}
        unknown = sorted(set(table) - known)
        missing = sorted({"noise_multiplier", "max_grad_norm"} - set(table))
        if unknown or missing:
            raise ConfigError(f"{source}: [model] dp_sgd needs noise_multiplier and max_grad_norm "
                              f"(optional: delta, accounting); unknown {unknown}, missing {missing}")
        return cls(**dict(table))


@dataclass
class DPSGDReport:
    """Filled by the DP-SGD training function; read into the round's metrics."""

    epsilon: float | None = None
    delta: float | None = None
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """:class:`~xsilo.terms.SiloMetrics` fields (none before the first DP-SGD round)."""
        if self.epsilon is None:
            return {}
        return dict(dpsgd_epsilon=float(self.epsilon), dpsgd_delta=float(self.delta or 0.0),
                    dpsgd_steps=float(self.steps))


def attach_dpsgd(adapter: Any, settings: DPSGDSettings, *, state_path: Path) -> DPSGDReport:
    """Make ``adapter`` (a :class:`TorchAdapter`) train with DP-SGD; return its report.

    ε composes over every round of the run: the step history is kept in ``state_path``.
    """
    if not hasattr(adapter, "module") or not hasattr(adapter, "train_fn"):
        raise ModelError("[model] dp_sgd needs a torch model (an nn.Module spec); this silo's "
                         f"model is {type(adapter).__name__}. Remove dp_sgd or use a torch model")
    if adapter.train_fn is not None:
        raise ModelError("[model] dp_sgd replaces the training loop; this model brings its own "
                         "train_fn. Remove one of them")
    report = DPSGDReport()

    def train_fn(module: Any, train: Any, *, epochs: int, config: FitSettings,
                 device: Any, proximal: Any) -> float:
        if config.proximal_mu > 0:
            raise ConfigError("FedProx's proximal term is not supported with [model] dp_sgd "
                              "(Opacus clips per-example gradients only); use fedavg")
        loss, training = _dpsgd_epochs(adapter, module, train, epochs=epochs, config=config,
                                       settings=settings)
        _account_steps(report, training, settings, state_path, config)
        return loss

    adapter.train_fn = train_fn
    return report


def _dpsgd_epochs(adapter: Any, module: Any, train: Any, *, epochs: int,
                  config: FitSettings, settings: DPSGDSettings) -> tuple[float, Any]:
    import torch

    from strategies.dp.dpsgd import make_private

    # DP-SGD's noise and batch sampling come from xsilo's secure source (make_private), not
    # from torch's generator. The adapter seeds torch from the run seed for reproducible
    # dropout; reseed so dropout masks do not repeat across rounds either.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    X, y = adapter._tensors(train)
    batch = config.batch_size or adapter.batch_size
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=batch)
    lr = config.learning_rate or 0.01
    optimizer = adapter.optimizer_fn(module.parameters(), lr)
    training = make_private(module, optimizer, loader, noise_multiplier=settings.noise_multiplier,
                            max_grad_norm=settings.max_grad_norm)
    total, count = 0.0, 0
    for _ in range(max(1, int(epochs))):
        total, count = 0.0, 0
        for xb, yb in training.data_loader:
            if len(xb) == 0:
                continue
            training.optimizer.zero_grad()
            out = training.model(xb.to(adapter.device))
            loss = adapter.loss_fn(out, yb.to(adapter.device))
            loss.backward()
            training.optimizer.step()
            total, count = total + float(loss.detach()) * len(xb), count + len(xb)
    if count == 0 or not math.isfinite(total):
        raise ModelError(f"DP-SGD training produced no finite loss ({total}/{count}); lower "
                         "learning-rate or raise batch-size")
    return total / count, training


def state_path(workspace: Path, run_token: str) -> Path:
    """Where the DP-SGD accountant of the run ``run_token`` is kept: named by the token's
    hash, since the token is the coordinator's text (a path in it must not lead anywhere)."""
    return Path(workspace) / "privacy" / f"dpsgd-{hashed_name(run_token)}.json"


def _account_steps(report: DPSGDReport, training: Any, settings: DPSGDSettings,
                   state_path: Path, config: FitSettings) -> None:
    from strategies.dp.dpsgd import step_events

    acct = Accountant(settings.delta, settings.accounting)
    if state_path.exists():
        try:
            acct = Accountant.from_state_dict(json.loads(state_path.read_text())["accountant"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
                ConfigError) as exc:
            raise ConfigError(f"DP-SGD state {state_path} is unreadable ({type(exc).__name__}: "
                              f"{exc}); restore it from backup: spent budget must not be "
                              "forgotten") from exc
    for event in step_events(training):
        acct.compose_round(event)
    atomic_write(state_path, json.dumps({"accountant": acct.state_dict(),
                                         "last_round": config.server_round}))
    report.epsilon, report.delta, report.steps = acct.epsilon(), settings.delta, training.steps

"""PyTorch adapter: any ``nn.Module`` as named numpy arrays, with a default training loop.

Parameters are the module's floating-point ``state_dict`` entries (weights, biases and
float buffers such as BatchNorm running statistics). Classification models output logits.
FedProx adds ``mu/2 * ||w - w0||^2`` to each batch loss, ``w0`` being the parameters set
before ``fit`` (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", eq. 2).
Requires the optional extra: ``pip install 'xsilo[torch]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from silo_client.adapters.base import FitSettings, NDArrays, assign_parameters
from xsilo.errors import ModelError

try:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ModelError("the PyTorch adapter needs torch; install it with pip install 'xsilo[torch]'") from exc

if TYPE_CHECKING:
    from silo_client.data import LocalDataset

__all__ = ["TorchAdapter", "default_optimizer"]

log = logging.getLogger(__name__)

OptimizerFn = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]
ProximalFn = Callable[[], torch.Tensor]


def default_optimizer(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9: simple, and what FedProx's analysis assumes locally."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


class TorchAdapter:
    """Wrap an ``nn.Module`` for federation.

    Parameters
    ----------
    loss_fn
        Training loss ``(output, target) -> scalar``; cross-entropy (classification) or MSE.
    optimizer_fn
        ``(parameters, lr) -> Optimizer``, called afresh every round; lr is
        the round's learning rate (default 0.01).
    train_fn
        Replaces the loop: ``train_fn(module, train, *, epochs, config, device, proximal)``
        returning the train loss; ``proximal()`` is the FedProx term to add to each loss.
    eval_fn
        Replaces evaluation: ``eval_fn(module, test, *, device) -> dict[str, float]``.
    """

    def __init__(self, module: nn.Module, *, loss_fn: Callable | None = None,
                 optimizer_fn: OptimizerFn | None = None, train_fn: Callable | None = None,
                 eval_fn: Callable | None = None, task: str = "classification",
                 batch_size: int = 32, device: str | torch.device | None = None,
                 seed: int = 0) -> None:
        if not isinstance(module, nn.Module):
            raise ModelError(f"TorchAdapter needs an nn.Module, got {type(module).__name__}")
        if task not in ("classification", "regression"):
            raise ModelError(f"task {task!r}: use 'classification' or 'regression'")
        self.task, self.batch_size, self.seed = task, int(batch_size), int(seed)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device)
        self.loss_fn = loss_fn or (nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss())
        self.optimizer_fn = optimizer_fn or default_optimizer
        self.train_fn, self.eval_fn = train_fn, eval_fn
        if not self._float_state():
            raise ModelError(f"{type(module).__name__} has no floating-point parameters to federate")

    def _float_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.module.state_dict().items() if v.is_floating_point()}

    def get_parameters(self) -> NDArrays:
        """Copies of the float ``state_dict`` entries, in module order."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self._float_state().items()}

    def set_parameters(self, params: NDArrays) -> None:
        """Load parameters in place; mismatching names/shapes raise :class:`ModelError`."""
        state = self._float_state()
        new = assign_parameters({k: v.detach().cpu().numpy() for k, v in state.items()}, params)
        with torch.no_grad():
            for name, tensor in state.items():
                tensor.copy_(torch.from_numpy(new[name]).to(tensor.device))

    def _tensors(self, data: LocalDataset) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.from_numpy(np.ascontiguousarray(data.X, dtype=np.float32))
        if len(X) == 0:
            raise ModelError(f"{data.source}: no rows to train or evaluate on")
        y_np = data.y.astype(np.int64 if self.task == "classification" else np.float32)
        return X, torch.from_numpy(y_np)

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        out = self.module(xb.to(self.device))
        if self.task == "regression" and out.ndim == 2 and out.shape[1] == 1:
            out = out.squeeze(1)
        return out

    def _proximal(self, mu: float) -> ProximalFn:
        anchors = [(p, p.detach().clone()) for p in self.module.parameters() if p.requires_grad]

        def term() -> torch.Tensor:
            if mu <= 0:
                return torch.zeros((), device=self.device)
            return 0.5 * mu * sum(((p - p0) ** 2).sum() for p, p0 in anchors)

        return term

    def fit(self, train: LocalDataset, *, epochs: int, config: FitSettings) -> dict[str, float]:
        """Train ``epochs`` local epochs from the current parameters; ``{"train_loss": ...}``."""
        seed = config.seed
        proximal = self._proximal(config.proximal_mu)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout etc. are reproducible; the caller's RNG is untouched
            self.module.train()
            if self.train_fn is not None:
                loss = self.train_fn(self.module, train, epochs=epochs, config=config,
                                     device=self.device, proximal=proximal)
                return {"train_loss": float(loss)}
            return {"train_loss": self._default_loop(train, epochs, config, proximal, seed)}

    def _default_loop(self, train: LocalDataset, epochs: int, config: FitSettings,
                      proximal: ProximalFn, seed: int) -> float:
        X, y = self._tensors(train)
        lr = config.learning_rate or 0.01
        batch = config.batch_size or self.batch_size
        optimizer = self.optimizer_fn(self.module.parameters(), lr)
        order_rng = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        for _ in range(max(1, int(epochs))):
            total, count = 0.0, 0  # report the last epoch's mean loss
            for idx in torch.randperm(len(X), generator=order_rng).split(batch):
                optimizer.zero_grad()
                loss = self.loss_fn(self._forward(X[idx]), y[idx].to(self.device))
                (loss + proximal()).backward()
                optimizer.step()
                total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        if not np.isfinite(total):
            raise ModelError(f"local training diverged (loss {total / count}); lower learning-rate")
        return total / count

    @torch.no_grad()
    def evaluate(self, test: LocalDataset) -> dict[str, float]:
        """Log-loss and accuracy (classification) or MSE and MAE (regression)."""
        self.module.eval()
        if self.eval_fn is not None:
            return {k: float(v) for k, v in self.eval_fn(self.module, test, device=self.device).items()}
        X, y = self._tensors(test)
        sums = np.zeros(2)
        for lo in range(0, len(X), 1024):
            out, target = self._forward(X[lo:lo + 1024]), y[lo:lo + 1024].to(self.device)
            if self.task == "classification":
                sums += [float(F.cross_entropy(out, target, reduction="sum")),
                         float((out.argmax(dim=1) == target).sum())]
            else:
                err = out - target
                sums += [float((err**2).sum()), float(err.abs().sum())]
        loss, second = (float(v) for v in sums / len(X))
        return {"loss": loss, "accuracy" if self.task == "classification" else "mae": second}

"""A small CNN for scikit-learn's bundled 8x8 digits, as a silo declares it.

Silo config: ``model = "digits_cnn:build"`` with this directory on ``PYTHONPATH``.
xsilo calls ``build`` with the schema's feature count, the label set and the run seed.
"""

from __future__ import annotations

import torch
from torch import nn

PIXELS = 64  # 8 x 8 grey levels in 0..16


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool, a 64-unit head (about 40k parameters)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                  nn.Linear(64, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 64 flat features -> 1x8x8 image scaled to [0, 1]
        return self.head(self.features(x.view(-1, 1, 8, 8) / 16.0))


def build(n_features: int, classes: tuple, seed: int = 0) -> nn.Module:
    """The model every silo builds identically (same seed, same initial weights)."""
    if n_features != PIXELS:
        raise ValueError(f"DigitsCNN expects {PIXELS} pixel features, the schema has {n_features}")
    torch.manual_seed(seed)
    return DigitsCNN(len(classes))

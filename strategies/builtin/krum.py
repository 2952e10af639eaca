"""Krum (Blanchard et al., NeurIPS 2017): x ← x + the single delta with the lowest Krum score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strategies.builtin.multikrum import MultiKrum
from strategies.params import StrategyParams, param

__all__ = ["Krum"]


class Krum(MultiKrum):
    """Multi-Krum keeping exactly one update."""

    name: ClassVar[str] = "krum"

    @dataclass(frozen=True)
    class Params(StrategyParams):
        num_malicious_nodes: int = param(0, ge=0, doc="assumed Byzantine silos f")

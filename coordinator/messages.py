"""Plain data exchanged between the round loop and its transport (no Flower types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["Payload", "Reply", "SiloError"]


@dataclass(frozen=True)
class Payload:
    """What the coordinator sends one silo."""

    config: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] | None = None
    secagg: Mapping[str, Any] | None = None  # a strategies.secagg message's to_record()


@dataclass(frozen=True)
class SiloError:
    """A typed refusal or failure reported by a silo (or by the transport)."""

    type: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.type}[{self.reason}]: {self.message}"


@dataclass
class Reply:
    """One silo's answer, already out of Flower's records."""

    node_id: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: SiloError | None = None
    secagg: dict[str, Any] | None = None  # a strategies.secagg message record (masked input …)

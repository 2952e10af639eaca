"""``xsilo version``: what must match across a consortium, in one place.

Every site and the coordinator run the same xsilo release: the secure-aggregation protocol
revision (peers that differ refuse the key setup) and the default app's hash (a silo runs a
coordinator's run stub only if it hashes to its own) both follow from it. Before and after an
upgrade each site reads these lines to the coordinator operator (docs/operations.md).
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from rich.console import Console

__all__ = ["version_cmd", "versions"]


def _dist(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Name → value of everything a consortium compares before a run."""
    from deploy.launch.fab import xsilo_app_hash
    from strategies.secagg.messages import PROTOCOL_VERSION

    return {"xsilo": _dist("xsilo"), "flwr": _dist("flwr"),
            "python": platform.python_version(),
            "secure-aggregation protocol": str(PROTOCOL_VERSION),
            "default app sha256": xsilo_app_hash()}


def version_cmd() -> None:
    """Print the xsilo, Flower and Python versions, the secure-aggregation protocol and the
    default app's hash: what every site of a consortium must have the same of."""
    out = Console(highlight=False, soft_wrap=True)  # a hash is read out whole, never cut
    for name, value in versions().items():
        out.print(f"{name}: {value}")

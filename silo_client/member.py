"""Start a silo from a member kit: its local mTLS gateway first, then its SuperNode.

A ``silo.toml`` inside a member kit (``kit.toml`` beside it, made by ``xsilo silo enroll``
and ``xsilo silo import-bundle``) dials the silo's own gateway on loopback; the gateway
presents the silo's client certificate to the coordinator's gateway. Outside a kit the
SuperNode dials the coordinator directly (TLS + node authentication only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deploy.launch.processes import ManagedProcess
from silo_client.config import SiloConfig
from silo_client.launch import start_silo

__all__ = ["RunningSilo", "start_member"]


@dataclass
class RunningSilo:
    """The processes of one running silo."""

    supernode: ManagedProcess
    gateway: object | None = None
    _stopped: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        return self.supernode.alive()

    def stop(self) -> None:
        """Stop the SuperNode, then the gateway (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.supernode.stop()
        if self.gateway is not None:
            self.gateway.stop()  # type: ignore[attr-defined]


def start_member(config: SiloConfig, *, log_path: Path | None = None) -> RunningSilo:
    """Start the silo gateway (inside a member kit) and the SuperNode."""
    kit_dir = config.path.parent
    gateway = None
    if (kit_dir / "kit.toml").is_file():
        from deploy.gateway.nginx import SiloGateway
        from deploy.pki.kit import load_kit

        gateway = SiloGateway.start(load_kit(kit_dir))
    try:
        return RunningSilo(start_silo(config, log_path=log_path), gateway)
    except BaseException:
        if gateway is not None:
            gateway.stop()  # type: ignore[attr-defined]
        raise

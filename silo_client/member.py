"""Start a silo from a member kit: its local mTLS gateway first, then its SuperNode.

A ``silo.toml`` inside a member kit (``kit.toml`` beside it, made by ``xsilo silo enroll``
and ``xsilo silo import-bundle``) dials the silo's own gateway; the gateway presents the
silo's client certificate to the coordinator's gateway. Where the host allows it, the
SuperNode and its SuperExec run in a private network namespace and the gateway listens on a
unix socket only this account can open (:class:`~deploy.gateway.netns.Uplink`), so no other
local account can reach the SuperNode's unauthenticated Runtime API or speak through the
gateway; elsewhere both are on 127.0.0.1, with a warning saying so. Outside a kit the
SuperNode dials the coordinator directly (TLS + node authentication only), on this host's
network.

While it runs, every refusal the silo's egress ledger gains (a site-policy rule, an app it
did not approve …) is shown on its console as a warning (:class:`RefusalWatch`): the
ClientApp processes that refuse write to the ledger and to the SuperExec's log, not here.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.gateway.netns import Uplink, unavailable
from deploy.launch.processes import ManagedProcess
from deploy.launch.supernode import budget_from_env
from silo_client.config import SiloConfig
from silo_client.launch import start_silo
from silo_client.ledger import LEDGER_FILE
from xsilo.tail import Tail
from xsilo.terms import printable

__all__ = ["RefusalWatch", "RunningSilo", "start_member"]

log = logging.getLogger(__name__)


class RefusalWatch:
    """Logs (WARNING: the silo's console) each refusal appended to ``ledger`` from now on."""

    def __init__(self, ledger: Path, silo: str, *, interval: float = 1.0) -> None:
        self.ledger, self.silo, self.interval = Path(ledger), silo, interval
        self._tail = Tail(self.ledger)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"refusals-{silo}", daemon=True)

    def start(self) -> RefusalWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.poll()  # what came in since the last look

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> list[dict[str, Any]]:
        """Log and return the refusals appended since the last call (complete lines only)."""
        refusals = []
        for raw in self._tail.lines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and str(entry.get("message_type", "")).endswith(".refusal"):
                refusals.append(entry)
                # the refusal may quote what the coordinator sent: shown as text, never
                # as control characters on the silo operator's terminal or log
                log.warning("silo %s refused %s of run %s: %s", self.silo,
                            printable(entry["message_type"].removesuffix(".refusal"), 256),
                            printable(str(entry.get("run_id")), 256),
                            printable(_why(entry.get("extra"))))
        return refusals


def _why(extra: Any) -> str:
    """``Type[reason]: message`` from a refusal's ledger line (the reply it sent)."""
    try:
        body = json.loads(extra["reason"])
        return f"{body['type']}[{body['reason']}]: {body['message']}"
    except (TypeError, KeyError, ValueError):
        return str(extra)


@dataclass
class RunningSilo:
    """The processes of one running silo."""

    supernode: ManagedProcess
    gateway: object | None = None
    refusals: RefusalWatch | None = None
    uplink: Uplink | None = None  # the SuperNode runs in a private network namespace
    _stopped: bool = field(default=False, repr=False)

    def alive(self) -> bool:
        return self.supernode.alive()

    def start_supernode(self, config: SiloConfig) -> ManagedProcess:
        """A new SuperNode for this silo, as the first one ran (what a restart uses)."""
        return start_silo(config, uplink=self.uplink)

    def stop(self) -> None:
        """Stop the SuperNode, then the gateway (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.supernode.stop()
            if self.gateway is not None:
                self.gateway.stop()  # type: ignore[attr-defined]
        finally:
            if self.uplink is not None:
                self.uplink.remove()
            if self.refusals is not None:
                self.refusals.stop()


def _uplink(config: SiloConfig, private: bool) -> tuple[Uplink | None, str]:
    """The private namespace's link to the silo gateway, or None and the warning that says
    who can reach the SuperNode's Runtime API and the gateway instead."""
    exposed = (f"silo {config.name}: its SuperNode's Runtime API and its silo gateway listen "
               "on 127.0.0.1, where every local account on this host can reach them (take the "
               "silo's tasks: read the incoming model, answer in its name, or starve it)")
    if not private:
        return None, f"{exposed}; started without a private network namespace on request"
    reason = unavailable()
    if reason is not None:
        return None, (f"the SuperNode cannot get a private network namespace: {reason}. "
                      f"Falling back: {exposed}. Run the silo on a host without other "
                      "accounts, or as root; docs/security.md, \"Other accounts on a silo "
                      "host\".")
    return Uplink.create(), ""


def start_member(config: SiloConfig, *, log_path: Path | None = None,
                 private: bool = True) -> RunningSilo:
    """Start the silo gateway (inside a member kit) and the SuperNode; ``private``: in a
    private network namespace where the host allows it (else with a warning)."""
    budget_from_env()  # the silo's settings first: a bad XSILO_POLL_BUDGET starts nothing
    kit_dir = config.path.parent
    gateway = uplink = None
    if (kit_dir / "kit.toml").is_file():
        from deploy.gateway.nginx import SiloGateway
        from deploy.pki.crl_sync import refresh_crl
        from deploy.pki.kit import load_kit

        kit = load_kit(kit_dir)
        first = refresh_crl(kit, timeout=5.0)  # the coordinator's CRL before nginx loads it
        if first.outcome in ("unreachable", "refused"):  # the first word on what is wrong
            log.warning("silo %s: could not fetch the coordinator's CRL: %s", config.name,
                        first.detail)
        uplink, exposed = _uplink(config, private)
        if exposed:
            log.warning(exposed)
        try:
            gateway = SiloGateway.start(kit, listen_socket=uplink.socket if uplink else None)
        except BaseException:
            if uplink is not None:
                uplink.remove()
            raise
    try:
        watch = RefusalWatch(config.workspace / LEDGER_FILE, config.name)
        node = start_silo(config, log_path=log_path, uplink=uplink)
        if gateway is None:  # said once it runs: a bad data file is reported alone
            log.warning("silo %s has no member kit (%s is missing): its SuperNode dials the "
                        "coordinator directly and its Runtime API listens on 127.0.0.1, where "
                        "every local account on this host can reach it. Use a member kit "
                        "(`xsilo silo enroll`, `xsilo silo import-bundle`) on any shared "
                        "host.", config.name, kit_dir / "kit.toml")
        return RunningSilo(node, gateway, watch.start(), uplink=uplink)
    except BaseException:
        if gateway is not None:
            gateway.stop()  # type: ignore[attr-defined]
        if uplink is not None:
            uplink.remove()
        raise

"""What ``xsilo silo start`` does while the silo runs: keep its CRL fresh, and bring back a
SuperNode that lost its connection.

Every second (:meth:`Supervisor.step`):

* **CRL** (member kits): when :func:`~deploy.pki.crl_sync.check_interval` says so, fetch the
  coordinator's current CRL over the silo's own mTLS connection, install it if it is the
  CA's, unexpired and newer, and reload the silo gateway (which checks the coordinator's
  certificate against it: a lapsed CRL there would refuse the coordinator).
* **SuperNode**: Flower ends a SuperNode's connection for good on a refusal (HTTP 400 from
  the coordinator gateway, 401, a TLS error) but leaves its process running, silent;
  :meth:`~deploy.launch.processes.ManagedProcess.raise_if_exited` reports that, or an
  exited SuperNode or SuperExec. The supervisor then stops it and decides:

  - **stop the silo** (``DeploymentError``, the CLI exits non-zero) when waiting cannot
    help: this silo's certificate has expired, is in the installed CRL, or the coordinator
    gateway refuses it although the CRL is current (revoked since, or another CA);
  - otherwise **restart** the SuperNode after a back-off (2 s, doubling up to 5 min; back
    to 2 s after 10 healthy minutes), logging why — e.g. the coordinator's CRL had lapsed
    and is re-issued, or a node key is registered late.
* **Silo gateway**: a SuperNode only ever sees 502 (and retries) when its gateway cannot
  reach the coordinator; the gateway's ``error.log`` says why (the coordinator's
  certificate does not carry the expected name, is revoked; nothing answers at its
  address). Each such cause is logged as it appears, with its fix
  (:mod:`deploy.gateway.upstream`), and named again if the SuperNode then gives up.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.pki.certs import load_certificate
from deploy.pki.crl_sync import CrlRefresh, check_interval, installed_crl, refresh_crl
from deploy.pki.kit import MemberKit, load_kit
from silo_client.config import SiloConfig
from silo_client.launch import start_silo
from xsilo.errors import DeploymentError

__all__ = ["Supervisor", "permanent_reason"]

log = logging.getLogger(__name__)
FIRST_DELAY, MAX_DELAY, HEALTHY = 2.0, 300.0, 600.0  # s


def permanent_reason(kit: MemberKit | None, refresh: CrlRefresh | None,
                     now: dt.datetime | None = None) -> str | None:
    """Why restarting this silo's SuperNode cannot help (None when it may): its certificate
    expired or revoked, or refused by the coordinator although the CRL is current."""
    if kit is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    cert = load_certificate(kit.client_cert)
    if cert.not_valid_after_utc <= now:
        return (f"this silo's certificate {kit.client_cert} expired at "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it (`xsilo silo renew "
                f"--kit {kit.root}`), then start the silo again")
    crl = installed_crl(kit)
    if crl is not None and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
        return ("this silo's certificate is revoked (it is in the consortium CRL): the silo "
                "must enroll again with new keys (`xsilo silo enroll`)")
    if (refresh is not None and refresh.outcome == "refused" and crl is not None
            and crl.next_update_utc is not None and crl.next_update_utc > now):
        return ("the coordinator gateway refuses this silo's certificate although the CRL is "
                "current: it was revoked, or the consortium's CA changed; ask the coordinator "
                "operator (the gateway's error.log names the reason)")
    return None


class Supervisor:
    """Watches one running silo (``silo``: :class:`silo_client.member.RunningSilo`).

    ``start``, ``refresh`` and ``clock`` are what it uses to restart a SuperNode, fetch the
    CRL and tell the time (tests pass their own); ``say`` shows progress on the console.
    """

    def __init__(self, config: SiloConfig, silo: Any, *,
                 say: Callable[[str], None] = print,
                 start: Callable[[SiloConfig], Any] = start_silo,
                 refresh: Callable[..., CrlRefresh] = refresh_crl,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.silo, self.say = config, silo, say
        self.start, self.refresh, self.clock = start, refresh, clock
        kit_dir = Path(config.path).parent
        self.kit = load_kit(kit_dir) if (kit_dir / "kit.toml").is_file() else None
        now = clock()
        self._next_crl = now + (check_interval(self.kit) if self.kit is not None else 0)
        self._restart_at: float | None = None
        self._delay = FIRST_DELAY
        self._since = now  # when the current SuperNode started
        self._last_crl = ""

    def run(self, interval: float = 1.0) -> None:
        """Step until interrupted; a :class:`DeploymentError` means the silo must stop."""
        while True:
            self.step()
            time.sleep(interval)

    def step(self) -> None:
        """One look at the CRL and the SuperNode."""
        now = self.clock()
        if self.kit is not None and now >= self._next_crl:
            self.refresh_crl()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restart()
            return
        self.gateway_problems()
        try:
            self.silo.supernode.raise_if_exited()
        except DeploymentError as exc:
            self._lost(exc)

    def gateway_problems(self) -> list[str]:
        """Log (and return) why the silo gateway could not reach the coordinator since the
        last look, each cause once."""
        problems = getattr(self.silo.gateway, "upstream_problems", lambda: [])()
        for problem in problems:
            log.warning("silo %s: %s", self.config.name, problem)
        return problems

    def refresh_crl(self) -> CrlRefresh | None:
        """Fetch and install the coordinator's CRL now (member kits only)."""
        if self.kit is None:
            return None
        gateway = self.silo.gateway
        result = self.refresh(self.kit, reload=gateway.reload if gateway is not None else None)
        self._next_crl = self.clock() + check_interval(self.kit)
        if result.outcome == "installed":
            self.say(f"silo {self.config.name}: {result.detail}")
        elif result.outcome != "current" and result.outcome + result.detail != self._last_crl:
            log.warning("silo %s: could not refresh its CRL (%s): %s; the installed one is "
                        "valid until %s", self.config.name, result.outcome, result.detail,
                        result.next_update)
        self._last_crl = result.outcome + result.detail
        return result

    def _lost(self, exc: DeploymentError) -> None:
        self.silo.supernode.stop()
        watch = getattr(self.silo.gateway, "upstream", None)
        if getattr(watch, "last", None):  # the cause its gateway saw, which Flower never sees
            exc = DeploymentError(f"{exc}\nThe silo gateway's error.log says: {watch.last}")
        reason = permanent_reason(self.kit, self.refresh_crl())
        if reason is not None:
            raise DeploymentError(f"{exc}\nNot restarting it: {reason}") from exc
        now = self.clock()
        if now - self._since >= HEALTHY:
            self._delay = FIRST_DELAY
        log.warning("silo %s: %s\nrestarting the SuperNode in %.0f s", self.config.name, exc,
                    self._delay)
        self._restart_at = now + self._delay
        self._delay = min(MAX_DELAY, self._delay * 2)

    def _restart(self) -> None:
        try:
            node = self.start(self.config)
        except DeploymentError as exc:
            log.warning("silo %s: the SuperNode did not start again (%s); next try in %.0f s",
                        self.config.name, exc, self._delay)
            self._restart_at = self.clock() + self._delay
            self._delay = min(MAX_DELAY, self._delay * 2)
            return
        self.silo.supernode = node
        self._restart_at = None
        self._since = self.clock()
        self.say(f"silo {self.config.name}: SuperNode restarted (pid {node.pid}); log "
                 f"{node.log_path}")

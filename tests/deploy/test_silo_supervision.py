"""silo_client.supervise: what `xsilo silo start` does while it runs — refresh the kit's
CRL on schedule, restart a SuperNode that lost its connection (with back-off), and stop
the silo when waiting cannot help. Fake processes, a fake clock; no network."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.pki.certs import make_crl
from deploy.pki.crl_sync import CrlRefresh, check_interval, crl_path
from silo_client.supervise import Supervisor, permanent_reason
from tests.deploy.conftest import enroll_silo, make_pki
from xsilo.errors import DeploymentError

GAVE_UP = "flower-supernode (pid 1) lost its connection to the coordinator for good"


class FakeNode:
    def __init__(self, pid: int) -> None:
        self.pid, self.log_path, self.stopped, self.failure = pid, Path(f"/log/{pid}"), False, ""

    def raise_if_exited(self) -> None:
        if self.failure and not self.stopped:
            raise DeploymentError(self.failure)

    def stop(self) -> None:
        self.stopped = True


class FakeGateway:
    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1


class Harness:
    """A Supervisor over fakes: ``outcome`` is what the next CRL refresh reports."""

    def __init__(self, site: Path) -> None:
        self.now = 1000.0
        self.said: list[str] = []
        self.refreshes: list[object] = []
        self.outcome = CrlRefresh("current", "", None)
        self.pids = iter(range(2, 100))
        self.silo = SimpleNamespace(supernode=FakeNode(1), gateway=FakeGateway())
        config = SimpleNamespace(path=site / "silo.toml", name="hospital-a")
        self.sup = Supervisor(config, self.silo, say=self.said.append,  # type: ignore[arg-type]
                              start=lambda cfg: FakeNode(next(self.pids)),
                              refresh=self._refresh, clock=lambda: self.now)

    def _refresh(self, kit, *, reload=None):  # type: ignore[no-untyped-def]
        self.refreshes.append(reload)
        return self.outcome

    def step(self, after: float = 0.0) -> None:
        self.now += after
        self.sup.step()


@pytest.fixture
def kit(tmp_path: Path):  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path / "pki")
    return SimpleNamespace(pki=pki, kit=enroll_silo(pki, "hospital-a", tmp_path / "kit"))


def test_a_lost_supernode_is_restarted_with_back_off(kit) -> None:  # type: ignore[no-untyped-def]
    h = Harness(kit.kit.root)
    h.step()
    assert h.silo.supernode.pid == 1 and h.said == []
    delays = []
    for _ in range(4):
        node = h.silo.supernode
        node.failure = GAVE_UP
        h.step()
        assert node.stopped and h.silo.supernode is node  # stopped, not yet replaced
        waited = 0.0
        while h.silo.supernode is node:
            h.step(0.5)
            waited += 0.5
        delays.append(waited)
        assert h.said[-1].startswith(f"silo hospital-a: SuperNode restarted (pid "
                                     f"{h.silo.supernode.pid})")
    assert delays == [2.0, 4.0, 8.0, 16.0]
    h.now += 600  # ten healthy minutes: back to the first delay
    h.silo.supernode.failure = GAVE_UP
    h.step()
    node, waited = h.silo.supernode, 0.0
    while h.silo.supernode is node:
        h.step(0.5)
        waited += 0.5
    assert waited == 2.0


def test_each_loss_looks_at_the_crl_first_and_may_stop_the_silo(kit) -> None:  # type: ignore[no-untyped-def]
    h = Harness(kit.kit.root)
    h.outcome = CrlRefresh("refused", "the coordinator gateway refused this silo's client "
                           "certificate (HTTP 400 …)", None)
    h.silo.supernode.failure = GAVE_UP
    with pytest.raises(DeploymentError, match="Not restarting it: the coordinator gateway "
                       "refuses this silo's certificate although the CRL is current"):
        h.step()
    assert h.refreshes  # it fetched the CRL before deciding


def test_permanent_reasons(kit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    k = kit.kit
    refused = CrlRefresh("refused", "", None)
    assert permanent_reason(None, refused) is None  # no kit: always worth another try
    assert permanent_reason(k, CrlRefresh("unreachable", "", None)) is None
    assert permanent_reason(k, None) is None
    assert "although the CRL is current" in permanent_reason(k, refused)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=4)  # the 3-day CRL lapsed:
    assert permanent_reason(k, refused, now=later) is None  # the coordinator's may have too
    expired = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    assert "expired" in permanent_reason(k, None, now=expired)
    assert "xsilo silo renew --kit" in permanent_reason(k, None, now=expired)
    kit.pki.revoke("hospital-a")
    crl_path(k).write_bytes(kit.pki.crl_path.read_bytes())
    assert "revoked" in permanent_reason(k, None)


def test_the_crl_is_refreshed_on_schedule_and_the_gateway_reloaded(kit) -> None:  # type: ignore[no-untyped-def]
    h = Harness(kit.kit.root)
    interval = check_interval(kit.kit)
    assert interval == 3600.0  # a 3-day CRL: hourly
    h.step(interval - 1)
    assert h.refreshes == []
    h.outcome = CrlRefresh("installed", "installed a fresh CRL, valid until …", None)
    h.step(1)
    assert h.refreshes == [h.silo.gateway.reload]  # it reloads the running silo gateway
    assert h.said == ["silo hospital-a: installed a fresh CRL, valid until …"]
    # a short CRL is looked at more often, a lapsed one every 2 s
    pki = kit.pki
    short = make_crl(pki.unlock(), [], validity=dt.timedelta(seconds=40))
    crl_path(kit.kit).write_bytes(short.public_bytes(serialization.Encoding.PEM))
    assert 2.0 <= check_interval(kit.kit) <= 5.0
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    assert check_interval(kit.kit, now=later) == 2.0


def test_without_a_kit_it_only_supervises(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.silo.supernode.failure = GAVE_UP
    h.step(5000)
    assert h.refreshes == []
    h.step(2)
    assert h.silo.supernode.pid == 2

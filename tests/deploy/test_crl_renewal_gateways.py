"""A CRL that lapses while a client keeps making requests, at gateway level: real nginx on
both sides, the real coordinator reconcile (RunningCoordinator with its CrlKeeper) and the
real silo Supervisor fetching CRLs, an HTTPS stub in place of the SuperLink that answers
200. Lighter than tests/e2e/test_crl_renewal.py (no Flower), so it holds under load.

Every request goes SuperNode-side client → silo gateway (CRL-checks the coordinator) →
coordinator gateway (CRL-checks the silo) → stub; 200 means both gateways accepted. Each is
followed by one straight to the coordinator gateway (a new handshake each time). Once
the first CRL has lapsed, both gateways are reloaded, so their next connections are new
TLS handshakes (an open connection is never verified again).
"""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.home import CoordinatorHome, RunningCoordinator, _key_digest, write_gateway_home
from deploy.gateway.nginx import CoordinatorGateway, SiloGateway
from deploy.launch.processes import free_port
from deploy.pki.authority import Pki
from deploy.pki.certs import flower_public_key_header, issue_leaf, write_private_key, write_public_pem
from deploy.gateway.conf import CRL_PATH
from deploy.pki.crl_sync import refresh_crl
from deploy.pki.link import get
from deploy.pki.freshness import CrlKeeper
from deploy.pki.messages import parse_node_public_key
from silo_client.supervise import Supervisor
from tests.deploy.conftest import enroll_silo, make_pki

pytestmark = pytest.mark.e2e
VALIDITY = 8  # s: renewed with 4 s left; the silo looks every 2 s


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _stub(root: Path, pki: Pki) -> tuple[int, http.server.ThreadingHTTPServer]:
    """An HTTPS server with a 'localhost' certificate from the consortium CA (the name the
    coordinator gateway verifies its SuperLink by), answering 200 to every POST."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(pki.unlock(), "stub", public_key=key.public_key(),
                      server_hosts=["localhost"])
    write_private_key(root / "stub.key", key)
    write_public_pem(root / "stub.crt", cert)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(root / "stub.crt"), str(root / "stub.key"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server


def test_requests_across_a_lapsing_crl_are_never_refused(tmp_path: Path) -> None:
    cport = free_port()
    pki = make_pki(tmp_path / "pki", address=f"127.0.0.1:{cport}")
    kit = enroll_silo(pki, "hospital-a", tmp_path / "kit", local_port=free_port())
    pki.publish_crl(validity_seconds=VALIDITY)
    port, stub = _stub(tmp_path, pki)
    write_gateway_home(tmp_path / "home", pki_dir=pki.root)
    home = CoordinatorHome.load(tmp_path / "home")
    header = {"flwr-public-key": flower_public_key_header(
        parse_node_public_key(kit.node_public_key.read_text()))}
    statuses: list[tuple[float, int]] = []
    direct: list[tuple[float, int]] = []
    started = []
    try:
        coord = CoordinatorGateway.start(pki_dir=pki.root, port=cport, prefix=tmp_path / "cgw",
                                         superlink=f"127.0.0.1:{port}")
        started.append(coord)
        running = RunningCoordinator(home, superlink=None, node_ids={"hospital-a": 1},  # type: ignore[arg-type]
                                     gateway=coord, crl_keeper=CrlKeeper(Pki(pki.root)),
                                     node_keys={"hospital-a": _key_digest(
                                         pki.root / "nodes" / "hospital-a.pub")})
        running._seen = running._pki_state()
        assert refresh_crl(kit).outcome in ("installed", "current")  # what start_member does
        silo_gateway = SiloGateway.start(kit)
        started.append(silo_gateway)
        quiet = SimpleNamespace(raise_if_exited=lambda: None)  # a SuperNode that never fails
        config = SimpleNamespace(path=kit.root / "silo.toml", name="hospital-a")
        supervisor = Supervisor(config, SimpleNamespace(supernode=quiet, gateway=silo_gateway),  # type: ignore[arg-type]
                                say=lambda text: None)
        original = pki.crl_next_update().timestamp()
        reloaded = False
        with httpx.Client(verify=ssl.create_default_context(
                cafile=str(kit.root_certificates)), timeout=10) as client:
            while time.time() < original + 4:
                running.reconcile()  # what `xsilo coordinator start` does every 2 s
                supervisor.step()  # what `xsilo silo start` does every second
                if not reloaded and time.time() > original + 0.5:
                    coord.reload()
                    silo_gateway.reload()
                    reloaded = True
                res = client.post(f"https://{silo_gateway.address}/v1/fleet/pull-messages",
                                  content=b"", headers=header)
                # and straight to the coordinator gateway, a new handshake every time
                statuses.append((time.time(), res.status_code))
                direct.append((time.time(), get(kit, CRL_PATH)[0]))
                time.sleep(0.3)
    finally:
        for handle in reversed(started):
            handle.stop()
        stub.shutdown()
    after = [status for when, status in statuses if when > original + 1]
    assert after and set(after) == {200}, statuses
    assert {status for _, status in statuses} == {200}, statuses
    assert [s for when, s in direct if when > original + 1] and \
        {status for _, status in direct} == {200}, direct
    assert pki.crl_next_update().timestamp() > original  # renewed …
    crl_logs = (tmp_path / "cgw" / "logs" / "error.log").read_text() + \
        (kit.gateway_prefix / "logs" / "error.log").read_text()
    assert "CRL has expired" not in crl_logs  # … and never seen lapsed by either gateway
    assert dt.datetime.now(dt.timezone.utc).timestamp() > original

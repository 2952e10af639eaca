"""Real TLS handshakes through the real nginx gateways, in front of a real SuperLink.

One module-scoped federation (few processes): PKI, ``flower-superlink`` (TLS, node auth)
on loopback, the coordinator gateway, and hospital-a's silo gateway.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.pki.certs import (
    flower_public_key_header, issue_leaf, make_ca, write_private_key, write_public_pem,
)
from deploy.pki.enrollment import install_renewal
from deploy.gateway.nginx import CoordinatorGateway, GatewayHandle, SiloGateway
from deploy.pki.kit import MemberKit
from deploy.launch.processes import ManagedProcess, free_port, start_superlink
from deploy.pki.messages import parse_node_public_key
from deploy.pki.authority import Pki
from tests.deploy.conftest import enroll_silo, make_pki, private_key_leaks

pytestmark = pytest.mark.e2e
FLEET = "/v1/fleet/activate-node"


@dataclass
class Fed:
    root: Path
    pki: Pki
    superlink: ManagedProcess
    coord: GatewayHandle
    silo: GatewayHandle
    kits: dict[str, MemberKit]
    certs: dict[str, tuple[Path, Path]]  # extra client identities: expired, foreign


def _client_cert(root: Path, name: str, ca, **kw) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(ca, name, public_key=key.public_key(), client=True, **kw)
    write_private_key(root / f"{name}.key", key)
    write_public_pem(root / f"{name}.crt", cert)
    return root / f"{name}.crt", root / f"{name}.key"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("gw")
    cport, sl_port = free_port(), free_port()
    pki = make_pki(root / "pki", address=f"127.0.0.1:{cport}")
    kits = {n: enroll_silo(pki, n, root / n, local_port=free_port())
            for n in ("hospital-a", "hospital-b", "hospital-r")}
    pki.revoke("hospital-r")
    ca = pki.unlock()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    certs = {"expired": _client_cert(root, "hospital-x", ca, days=2, not_before=past),
             "foreign": _client_cert(root, "hospital-a", make_ca("impostor CA")),
             # signed by the consortium CA, but no node key is enrolled for its subject
             "unbound": _client_cert(root, "hospital-u", ca)}
    files = pki.coordinator_files()
    started: list = []
    try:
        sl = start_superlink(flwr_home=root / "flwr", log_path=root / "superlink.log",
                             host="127.0.0.1", port=sl_port, ca_cert=pki.ca_cert_path,
                             cert=files.superlink_cert, key=files.superlink_key)
        started.append(sl)
        coord = CoordinatorGateway.start(pki_dir=pki.root, port=cport,
                                         superlink=f"127.0.0.1:{sl_port}", prefix=root / "cgw")
        started.append(coord)
        silo = SiloGateway.start(kits["hospital-a"])
        started.append(silo)
        yield Fed(root, pki, sl, coord, silo, kits, certs)
    finally:
        for proc in reversed(started):
            proc.stop()
        for proc in started:
            pid = proc.pid if isinstance(proc, ManagedProcess) else None
            if pid:
                with pytest.raises(ProcessLookupError):
                    os.killpg(pid, 0)
        assert private_key_leaks([root / "cgw", root / "hospital-a" / "gateway" / "run",
                                  root / "flwr"]) == []


def _ctx(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _post(fed: Fed, path: str = FLEET, cert: tuple[Path, Path] | None = None,
          headers: dict[str, str] | None = None, method: str = "POST") -> httpx.Response:
    with httpx.Client(verify=_ctx(fed.pki.ca_cert_path, cert), timeout=10) as client:
        return client.request(method, f"https://{fed.coord.address}{path}", content=b"",
                              headers={"content-type": "application/protobuf", **(headers or {})})


def _log_after(handle: GatewayHandle, needle: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = handle.logs()
        text = logs["error"] + logs["access"]
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {handle.name} logs:\n{text[-3000:]}")


def _kit_cert(kit: MemberKit) -> tuple[Path, Path]:
    return kit.client_cert, kit.client_key


def _node_header(kit: MemberKit) -> dict[str, str]:
    key = parse_node_public_key(kit.node_public_key.read_text())
    return {"flwr-public-key": flower_public_key_header(key)}


@pytest.mark.parametrize("who, reason, verify", [
    (None, "client sent no required SSL certificate", "verify=NONE"),
    ("foreign", "unable to verify the first certificate", "verify=FAILED"),
    ("expired", "certificate has expired", "verify=FAILED"),
    ("revoked", "certificate revoked", "verify=FAILED"),
])
def test_refused_at_the_handshake(fed: Fed, who: str | None, reason: str, verify: str) -> None:
    cert = (_kit_cert(fed.kits["hospital-r"]) if who == "revoked"
            else fed.certs.get(who) if who else None)
    res = _post(fed, cert=cert, headers=_node_header(fed.kits["hospital-a"]))
    assert res.status_code == 400  # nginx: the client sees "400 ... SSL certificate ..."
    assert "SSL certificate" in res.text
    _log_after(fed.coord, reason)
    _log_after(fed.coord, verify)


def test_control_and_runtime_are_unreachable(fed: Fed) -> None:
    cert = _kit_cert(fed.kits["hospital-a"])
    for path in ("/v1/control/start-run", "/v1/runtime/pull-messages", "/health", "/docs"):
        assert _post(fed, path, cert=cert).status_code == 403
    assert _post(fed, FLEET, cert=cert, method="GET").status_code == 405  # never 403 on Fleet
    local = _ctx(fed.kits["hospital-a"].root_certificates)
    with httpx.Client(verify=local, timeout=10) as client:
        for path in ("/v1/control/start-run", "/v1/runtime/pull-messages"):
            assert client.post(f"https://{fed.silo.address}{path}").status_code == 403
    _log_after(fed.silo, '"POST /v1/runtime/pull-messages HTTP/1.1" status=403')
    assert "/v1/control/start-run HTTP/1.1\" status=403 bytes=146 verify=SUCCESS" in \
        _log_after(fed.coord, "/v1/control/start-run")


def test_enrolled_silo_reaches_the_superlink(fed: Fed) -> None:
    kit = fed.kits["hospital-a"]
    local = _ctx(kit.root_certificates)
    with httpx.Client(verify=local, timeout=10) as client:
        res = client.post(f"https://{fed.silo.address}{FLEET}", content=b"",
                          headers={"content-type": "application/protobuf", **_node_header(kit)})
    # The SuperLink's own answer (unsigned request), not nginx's HTML page
    assert res.status_code == 401 and "Invalid SuperNode authentication" in res.text
    text = _log_after(fed.coord, "upstream=401")
    assert 'verify=SUCCESS dn="O=Hospital,CN=hospital-a"' in text


def test_node_key_must_match_the_certificate(fed: Fed) -> None:
    res = _post(fed, cert=_kit_cert(fed.kits["hospital-a"]),
                headers=_node_header(fed.kits["hospital-b"]))
    assert res.status_code == 401 and "nginx" in res.text  # refused before the SuperLink
    res = _post(fed, cert=_kit_cert(fed.kits["hospital-b"]),
                headers=_node_header(fed.kits["hospital-b"]))
    assert res.status_code == 401 and "Invalid SuperNode authentication" in res.text


def _key_of(fed: Fed, name: str) -> str:
    return _node_header(fed.kits[name])["flwr-public-key"]


@pytest.mark.parametrize("who, header", [
    # the enrolled key wrapped so that "expected|header" reads as "X|X"
    ("hospital-a", "x|{a}|x"),
    ("hospital-a", "{a}|{a}"),
    ("hospital-a", "{a},{b}"),
    ("hospital-a", "{A}"),  # the same letters in another case: another key
    # a CA-signed certificate whose subject has no enrolled key (expected key "")
    ("unbound", "||"),
    ("unbound", "{a}||{a}"),
    ("unbound", "{a}"),
    ("unbound", ""),
])
def test_only_the_enrolled_key_itself_passes_the_binding(fed: Fed, who: str, header: str) -> None:
    cert = _client_cert_of(fed, who)
    value = header.replace("{a}", _key_of(fed, "hospital-a")).replace(
        "{b}", _key_of(fed, "hospital-b")).replace("{A}", _key_of(fed, "hospital-a").swapcase())
    res = _post(fed, cert=cert, headers={"flwr-public-key": value} if value else {})
    # nginx's own 401 page: the request never reached the SuperLink
    assert res.status_code == 401 and "nginx" in res.text, (res.status_code, res.text)
    assert "Invalid SuperNode authentication" not in res.text


def _client_cert_of(fed: Fed, who: str) -> tuple[Path, Path]:
    return fed.certs[who] if who in fed.certs else _kit_cert(fed.kits[who])


def test_coordinator_name_mismatch_is_refused(fed: Fed) -> None:
    ctx = _ctx(fed.pki.ca_cert_path, _kit_cert(fed.kits["hospital-a"]))
    with socket.create_connection(("127.0.0.1", fed.coord.port), timeout=10) as sock:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            ctx.wrap_socket(sock, server_hostname="wrong.example")
    kit = replace(fed.kits["hospital-a"], server_name="wrong.example")
    with SiloGateway.start(kit, port=free_port(), prefix=fed.root / "wrong-gw") as gw:
        with httpx.Client(verify=_ctx(kit.root_certificates), timeout=10) as client:
            res = client.post(f"https://{gw.address}{FLEET}", content=b"")
        assert res.status_code == 502  # Flower retries 502; the silo log says why
        _log_after(gw, 'upstream SSL certificate does not match "wrong.example"')
        said = gw.upstream_problems()  # what `xsilo silo start` tells its operator
        assert len(said) == 1 and "does not carry the name 'wrong.example'" in said[0], said
        assert "xsilo pki issue-coordinator --host wrong.example" in said[0]


def test_revocation_takes_effect_on_reload_others_continue(fed: Fed) -> None:
    b = _kit_cert(fed.kits["hospital-b"])
    assert _post(fed, cert=b, headers=_node_header(fed.kits["hospital-b"])).status_code == 401
    revoked = fed.coord.logs()["error"].count("certificate revoked")  # other tests' silos
    fed.pki.revoke("hospital-b")
    fed.coord.reload()
    res = _post(fed, cert=b, headers=_node_header(fed.kits["hospital-b"]))
    assert res.status_code == 400
    assert fed.coord.logs()["error"].count("certificate revoked") == revoked + 1  # hospital-b
    res = _post(fed, cert=_kit_cert(fed.kits["hospital-a"]),
                headers=_node_header(fed.kits["hospital-a"]))
    assert res.status_code == 401 and "Invalid SuperNode authentication" in res.text


def test_silo_renewal_reloads_the_running_gateway(fed: Fed) -> None:
    kit = fed.kits["hospital-a"]
    bundle = fed.pki.renew("hospital-a", out=fed.root / "renew-a.json")
    new_serial = fed.pki.records()[-1].serial
    install_renewal(bundle, kit.root)  # reloads the running silo gateway and waits for it
    with httpx.Client(verify=_ctx(kit.root_certificates), timeout=10) as client:
        res = client.post(f"https://{fed.silo.address}{FLEET}", content=b"",
                          headers={"content-type": "application/protobuf", **_node_header(kit)})
    assert res.status_code == 401 and "Invalid SuperNode authentication" in res.text
    _log_after(fed.coord, f"serial={new_serial}")
    assert fed.silo.proc is not None and fed.silo.proc.poll() is None  # never restarted


TRICKS = ("/v1/fleet/../control/start-run", "/v1/fleet/..%2fcontrol/start-run",
          "/v1/fleet/..%2f..%2fv1/control/start-run", "/v1/fleet/%2e%2e/control/start-run",
          "/v1/fleet/%2e%2e%2fcontrol/start-run", "//v1/control/start-run",
          "/v1//control/start-run", "/v1/fleet/x/../../control/start-run",
          "/v1/fleet/..%5ccontrol/start-run", "/v1/%66leet/../control/start-run",
          "/v1/fleet/pull-messages/../../control/list-runs")


def _raw_post(fed: Fed, path: str, kit: MemberKit) -> tuple[int, str]:
    """POST with the path exactly as given (httpx would normalise dot segments), with the
    silo's certificate and its enrolled node key header, so only the path is wrong."""
    ctx = _ctx(fed.pki.ca_cert_path, _kit_cert(kit))
    key = _node_header(kit)["flwr-public-key"]
    with socket.create_connection(("127.0.0.1", fed.coord.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                         f"Content-Type: application/protobuf\r\nflwr-public-key: {key}\r\n"
                         "Connection: close\r\n\r\n"
                         .encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    head = data.decode(errors="replace")
    return int(head.split()[1]), head


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_never_reach_the_control_api(fed: Fed, path: str) -> None:
    status, text = _raw_post(fed, path, fed.kits["hospital-a"])
    assert status in (400, 403) and "nginx" in text, text  # nginx's own answer …
    request = f'"POST {path} HTTP/1.1"'
    mine = [row for row in _log_after(fed.coord, request).splitlines() if request in row]
    assert mine and all("upstream=-" in row for row in mine), mine  # … never the SuperLink's
    assert "/control/" not in fed.superlink.log_path.read_text()


def test_the_exact_fleet_path_still_reaches_the_superlink(fed: Fed) -> None:
    status, text = _raw_post(fed, FLEET, fed.kits["hospital-a"])
    assert status == 401 and "Invalid SuperNode authentication" in text  # unsigned, as sent
    assert f'"POST {FLEET} HTTP/1.1" status=401' in _log_after(fed.coord, "upstream=401")

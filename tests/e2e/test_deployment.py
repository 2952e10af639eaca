"""The real deployment engine: flower-superlink + flower-supernode processes, TLS, node auth."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from deploy.launch.processes import find_binary, start_superlink
from silo_client.launch import start_silo
from xsilo.errors import DataValidationError, DeploymentError
from tests.deploy.conftest import private_key_leaks
from federation.deployment import LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone


def test_two_rounds_over_tls_with_node_auth(tmp_path: Path) -> None:
    """The default way a silo runs ClientApps: xsilo's warm SuperExec beside each SuperNode,
    sharing a secret nobody else may read. (Flower's own executor, which runs any app a run
    carries and so starts only when a site policy opts out of approved code only:
    tests/e2e/test_approved_apps.py, which runs the consortium's app on it too.)"""
    fed = LocalFederation(tmp_path).setup()
    with fed:
        fed.start()
        for silo in fed.silos:
            node = fed.supernodes[silo.name]
            assert "--isolation" in node.popen.args
            assert [c.name for c in node.companions] == ["SuperExec (deploy.launch.executor)"]
            secret = silo.workspace / "flwr-home" / "superexec-auth.secret"
            assert secret.stat().st_mode & 0o777 == 0o600
            assert str(secret) in node.popen.args and str(secret) in node.companions[0].popen.args
        outcome = fed.run(RunConfig(num_rounds=2, min_silos=3, expected_silos=3,
                                    round_timeout=60.0, join_timeout=45.0, name="e2e"),
                          timeout=85)
        processes = list(fed.processes)
        # the SuperLink's own SuperExec asks it for a task at Flower's 1 s, not quicker
        superexec = _superexec_of(fed.coordinator.superlink.pid)
        assert b"FLWR_SUPEREXEC_TASK_POLL_INTERVAL=1.0" in _environ(superexec)
        flower_log = fed.home.cli().run_log(outcome.store.events()[0]["flower_run_id"])
    # Flower's own status, not `flwr run`'s exit code
    assert outcome.status == "finished:completed", outcome.summary
    assert outcome.summary["status"] == "completed"
    rows = [e for e in outcome.store.events() if e["event"] == "round"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["global_accuracy"] > rows[0]["global_accuracy"] + 0.2
    assert rows[-1]["global_loss"] < rows[0]["global_loss"]
    assert (outcome.store.path / "model.npz").is_file()
    assert all(not p.alive() for p in processes)
    # the run's Flower log has the coordinator's lines, not a line per HTTP request (each of
    # which Flower uploads in a request of its own: coordinator.server_app.console_logging)
    assert "coordinator.server_app: run finished" in flower_log, flower_log[-2000:]
    assert "HTTP Request" not in flower_log, flower_log[-2000:]


def test_a_silo_joining_under_another_name_than_it_enrolled_with_is_refused(
        tmp_path: Path) -> None:
    """hospital-c's node key is enrolled as hospital-c; its silo.toml says hospital-a (whose
    own SuperNode is down, so no duplicate gives it away): the coordinator refuses it at join
    by the enrolment the run started with (``enrolled.json``), the run goes on without it,
    and the operator reads why in `xsilo coordinator status`."""
    import subprocess
    import sys

    fed = LocalFederation(tmp_path).setup()
    c = next(s for s in fed.silos if s.name == "hospital-c")
    c.path.write_text(c.path.read_text().replace('name = "hospital-c"', 'name = "hospital-a"'))
    with fed:
        fed.start()
        fed.supernodes["hospital-a"].stop()
        node_c = fed.coordinator.node_ids["hospital-c"]
        outcome = fed.run(RunConfig(num_rounds=1, min_silos=1, expected_silos=2,
                                    round_timeout=40.0, join_timeout=30.0, name="identity"),
                          timeout=85)
    assert outcome.status == "finished:completed", outcome.summary
    assert outcome.store.enrolled() == fed.coordinator.node_ids
    join = next(e for e in outcome.store.events() if e["event"] == "join")
    refusal = join["refused"]["hospital-a"]
    assert refusal.startswith("ProtocolError[identity]"), refusal
    assert f"node {node_c} joins as silo 'hospital-a'" in refusal
    assert outcome.summary["silos"] == ["hospital-b"]
    status = subprocess.run([str(Path(sys.executable).parent / "xsilo"), "coordinator",
                             "status", str(outcome.store.path)], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "identity" in status.stdout and "hospital-a" in status.stdout, status.stdout


def test_unregistered_node_key_is_refused_with_a_clear_reason(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path).setup()
    (fed.home_dir / "nodes" / "hospital-c.pub").unlink()  # never approved
    with fed:
        fed.start()
        proc = fed.supernodes["hospital-c"]
        deadline = time.monotonic() + 40
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not proc.alive(), "an unregistered SuperNode must not stay connected"
        with pytest.raises(DeploymentError, match="not registered"):
            proc.raise_if_exited()
        assert fed.supernodes["hospital-a"].alive()


def test_port_already_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        fed = LocalFederation(tmp_path).setup()
        home = fed.home
        with pytest.raises(DeploymentError, match=f"port {port} .* already in use"):
            start_superlink(flwr_home=tmp_path / "fh", log_path=tmp_path / "l.log",
                            host="127.0.0.1", port=port, ca_cert=home.ca_cert,
                            cert=home.cert, key=home.key)


def test_missing_data_file_stops_the_silo_before_it_connects(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path).setup()
    silo = fed.silos[0]
    silo.train.unlink()
    with pytest.raises(DataValidationError, match="train.csv"):
        start_silo(silo)


def test_flwr_not_found_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeploymentError, match="not found.*pip install xsilo"):
        find_binary("flwr")


def _environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _superexec_of(superlink: int) -> int:
    """The SuperExec process the SuperLink ``superlink`` (or a process under it) started."""
    from xsilo.procfs import parent_pid

    def under(pid: int) -> bool:
        while pid > 1:
            if pid == superlink:
                return True
            pid = parent_pid(pid) or 0
        return False

    found = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
             and b"superexec" in _cmdline(p) and under(int(p.name))]
    assert len(found) == 1, found
    return found[0]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_silo_killed_and_restarted_at_once_is_told_why_the_coordinator_waits(
        tmp_path: Path) -> None:
    """A kit silo killed outright (no sign-off: a crash, kill -9) still counts as connected
    at the coordinator for up to a minute; a SuperNode restarted meanwhile is refused (HTTP
    412 on activate-node) and the operator reads both possible causes, the wait first. A
    stopped silo signs off, so its restart is let in at once (test_secure_deployment.py)."""
    fed = LocalFederation(tmp_path, mtls=True).setup()
    with fed:
        fed.start()
        assert fed.coordinator is not None
        node_c, cli = fed.coordinator.node_ids["hospital-c"], fed.home.cli()
        _wait_for(lambda: any(int(n["node-id"]) == node_c and n["status"] == "online"
                              for n in cli.list_nodes()), 40, "hospital-c to be connected")
        old = fed.supernodes["hospital-c"]
        os.killpg(old.pid, signal.SIGKILL)  # the uplink and the SuperNode, no sign-off
        _wait_for(lambda: not old.alive(), 10, "hospital-c's SuperNode to die")
        fed.restart_silo("hospital-c")
        refused, access = _refused_activation(
            fed, "hospital-c", 412, r"still counts as connected there.*"
            r"`xsilo silo start` tries again by itself.*xsilo pki approve")
    assert refused and all('CN=hospital-c"' in line for line in refused), access


def _refused_activation(fed: LocalFederation, name: str, status: int,
                        reason: str) -> tuple[list[str], str]:
    """Silo ``name``'s SuperNode exits with ``reason`` (a regex) for its operator; the
    coordinator gateway's access-log lines of its refused activations, and the whole log."""
    proc = fed.supernodes[name]
    _wait_for(lambda: not proc.alive(), 40, f"{name}'s SuperNode to be refused")
    with pytest.raises(DeploymentError, match=reason):
        proc.raise_if_exited()
    access = fed.gateways["coordinator"].logs()["access"]
    return [line for line in access.splitlines() if "/v1/fleet/activate-node" in line
            and f"status={status}" in line], access


def test_mtls_unregistered_node_key_is_refused_with_a_clear_reason(tmp_path: Path) -> None:
    """Behind the gateways, a silo whose node key the coordinator does not hold gets a 401
    from the coordinator gateway; its SuperNode exits saying so, the gateway logs it."""
    fed = LocalFederation(tmp_path, mtls=True).setup()
    (fed.home_dir / "pki" / "nodes" / "hospital-c.pub").unlink()  # enrolled key withdrawn
    with fed:
        fed.start()
        refused, access = _refused_activation(
            fed, "hospital-c", 401,
            r"refused this silo's node key \(HTTP 401\).*xsilo pki approve")
        assert fed.supernodes["hospital-a"].alive()
    assert refused and all('CN=hospital-c"' in line and "verify=SUCCESS" in line
                           and "upstream=-" in line for line in refused), access
    assert "CN=hospital-a\" serial" in access or 'CN=hospital-a"' in access


def test_training_through_mtls_gateways_then_revoke_mid_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SuperNode → silo nginx → mTLS → coordinator nginx → SuperLink, node auth on top.
    After `revoke`, the revoked silo's next connection is refused at the handshake while the
    others finish; hospital-a renews its certificate mid-run (same key, gateway reloaded, no
    restart) and keeps training on the new one; no private key shows up in the run
    directory, logs or workspaces.

    The coordinator stands still between rounds 1 and 2 (the ``round:2`` failpoint) while
    all that happens: round 1 had hospital-c, round 2 must not, however quick rounds are."""
    from deploy.pki.enrollment import install_renewal
    from deploy.pki.authority import Pki
    from tests.e2e._kills import start, while_standing_at

    fed = LocalFederation(tmp_path, mtls=True).setup()
    pki = Pki(fed.home_dir / "pki")
    c_serial = next(r.serial for r in pki.records() if r.name == "hospital-c")
    a_serials: list[str] = []
    with fed:
        markers = start(fed, monkeypatch, "round:2")
        cli = fed.home.cli()
        node_ids = dict(fed.coordinator.node_ids)
        gateway = fed.gateways["coordinator"]

        def refused() -> bool:
            return any(f"serial={c_serial} " in line and "verify=FAILED" in line
                       for line in gateway.logs()["access"].splitlines())

        def revoke_after_first_round() -> None:  # round 1 is over, 2 not begun
            # hospital-a renews while training: the coordinator re-signs its key, the silo
            # installs the bundle, its running gateway reloads (SuperNode untouched)
            a_serials.append(next(r.serial for r in pki.records() if r.name == "hospital-a"))
            install_renewal(pki.renew("hospital-a"), fed.kits["hospital-a"].root)
            a_serials.append(next(r.serial for r in reversed(pki.records())
                                  if r.name == "hospital-a"))
            pki.revoke("hospital-c")
            gateway.reload()
            # the revoked silo's next connection is refused at the handshake; only then is
            # its node key unregistered, so that refusal is what ends it
            _wait_for(refused, 20, "the gateway to refuse hospital-c")
            cli.unregister_node(node_ids["hospital-c"])

        a_pid = fed.supernodes["hospital-a"].pid
        with while_standing_at("round:2", markers, revoke_after_first_round):
            outcome = fed.run(RunConfig(num_rounds=2, min_silos=2, expected_silos=3,
                                        round_timeout=40.0, join_timeout=45.0, name="mtls"),
                              timeout=85)
        gateway_log = gateway.logs()
        assert fed.supernodes["hospital-a"].alive() and fed.supernodes["hospital-a"].pid == a_pid
    assert outcome.status == "finished:completed", outcome.summary
    rows = {e["round"]: e for e in outcome.store.events() if e["event"] == "round"}
    assert rows[1]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert rows[2]["contributors"] == ["hospital-a", "hospital-b"]
    assert rows[2]["global_accuracy"] > rows[0]["global_accuracy"] + 0.2
    assert "certificate revoked" in gateway_log["error"]
    old_a, new_a = a_serials
    assert old_a != new_a  # renewed: a new certificate, and the later rounds came in on it
    assert any(f"serial={new_a} " in line and "verify=SUCCESS" in line
               for line in gateway_log["access"].splitlines()), gateway_log["access"][-3000:]
    assert refused(), gateway_log["access"][-3000:]
    keys = [p for p in tmp_path.rglob("*.key") if p.is_file()]
    assert any(p.name == "ca.key" for p in keys) and any(p.name == "node.key" for p in keys)
    scanned = [outcome.store.path, fed.home_dir / "logs", fed.home_dir / "gateway" / "logs",
               *(silo.workspace for silo in fed.silos),
               *(kit.gateway_prefix / "logs" for kit in fed.kits.values())]
    assert all(p.is_dir() for p in scanned), [p for p in scanned if not p.is_dir()]
    assert private_key_leaks(scanned, keys=keys) == []

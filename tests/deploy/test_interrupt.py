"""Ctrl-C or SIGTERM in the middle of start-up leaves no process behind.

Each test interrupts one start-up step of real processes (SuperLink, nginx, the
``xsilo coordinator start`` CLI) and then looks for survivors by process group, or by
scanning ``/proc`` for anything that still refers to the test's directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import coordinator.home as home_mod
import deploy.launch.processes as launch
from coordinator.home import CoordinatorHome, start_coordinator, write_gateway_home
from deploy.gateway.nginx import CoordinatorGateway, GatewayHandle
from deploy.launch.processes import free_port, start_superlink
from tests.deploy.conftest import make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
XSILO = str(Path(sys.executable).parent / "xsilo")


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _processes_mentioning(text: str) -> list[str]:
    """Live processes (not zombies) whose command line or environment contains ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().split(")")[-1].split()[0] == "Z":
                continue
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in blob:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


@pytest.fixture(autouse=True)
def _no_survivors_after_a_failure(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    for line in _processes_mentioning(str(tmp_path)):  # only when a test already failed
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_interrupted_superlink_start_stops_the_superlink(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki")
    files = pki.coordinator_files()
    seen: list = []
    real = launch.wait_https_ready

    def ready_then_interrupt(url, ca_file, *, timeout, process, client_cert=None):  # type: ignore[no-untyped-def]
        seen.append(process)
        real(url, ca_file, timeout=timeout, process=process)  # it really is up
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "wait_https_ready", ready_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        start_superlink(flwr_home=tmp_path / "flwr", log_path=tmp_path / "sl.log",
                        host="127.0.0.1", port=free_port(), ca_cert=pki.ca_cert_path,
                        cert=files.superlink_cert, key=files.superlink_key)
    assert len(seen) == 1
    assert _group_gone(seen[0].pid), "the SuperLink survived an interrupted start"
    assert _processes_mentioning(str(tmp_path)) == []


def test_interrupted_gateway_start_stops_nginx(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki")
    seen: list = []
    real = GatewayHandle._wait_listening

    def listening_then_interrupt(self: GatewayHandle, timeout: float) -> None:
        seen.append(self.proc.pid)  # type: ignore[union-attr]
        real(self, timeout)  # nginx really listens
        raise KeyboardInterrupt

    monkeypatch.setattr(GatewayHandle, "_wait_listening", listening_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        CoordinatorGateway.start(pki_dir=pki.root, port=free_port(),
                                 superlink=f"127.0.0.1:{free_port()}", prefix=tmp_path / "gw")
    assert len(seen) == 1
    assert _group_gone(seen[0]), "nginx survived an interrupted gateway start"
    assert _processes_mentioning(str(tmp_path)) == []


def test_interrupted_coordinator_start_stops_the_superlink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki", address=f"127.0.0.1:{free_port()}")
    write_gateway_home(tmp_path / "home", pki_dir=pki.root, public_host="127.0.0.1",
                       gateway_port=free_port(), superlink_port=free_port())
    started: list = []
    real = home_mod.start_superlink

    def record(**kw):  # type: ignore[no-untyped-def]
        started.append(real(**kw))
        return started[-1]

    def interrupted(**_kw):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # as if Ctrl-C hit while the gateway was starting

    monkeypatch.setattr(home_mod, "start_superlink", record)
    monkeypatch.setattr(CoordinatorGateway, "start", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        start_coordinator(CoordinatorHome.load(tmp_path / "home"))
    assert len(started) == 1 and not started[0].alive()
    assert _group_gone(started[0].pid)
    assert _processes_mentioning(str(tmp_path)) == []


def test_sigterm_to_the_cli_during_start_up_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while ``xsilo coordinator start`` waits for its SuperLink to come up."""
    pki = make_pki(tmp_path / "pki", address=f"127.0.0.1:{free_port()}")
    home = tmp_path / "home"
    write_gateway_home(home, pki_dir=pki.root, public_host="127.0.0.1",
                       gateway_port=free_port(), superlink_port=free_port())
    log = home / "logs" / "superlink.log"
    with open(tmp_path / "cli.log", "wb") as out:
        cli = subprocess.Popen([XSILO, "coordinator", "start", "--home", str(home)], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not log.exists():  # the SuperLink has been spawned; its health is not yet 200
            assert cli.poll() is None, (tmp_path / "cli.log").read_text()
            assert time.monotonic() < deadline, "the SuperLink was never started"
            time.sleep(0.02)
        while not _processes_mentioning(str(pki.root)):  # flower-superlink exec'd
            assert time.monotonic() < deadline, "the SuperLink never ran"
            time.sleep(0.02)
        os.kill(cli.pid, signal.SIGTERM)  # the CLI only, as `kill PID` would
        rc = cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    output = (tmp_path / "cli.log").read_text()
    assert rc == 130, output  # "interrupted", after its own clean-up; not killed by the signal
    assert "Traceback" not in output
    deadline = time.monotonic() + 10
    while (left := _processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes left after SIGTERM during start-up: {left}"

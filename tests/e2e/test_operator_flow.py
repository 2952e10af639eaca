"""The documented operator flow, command by command, with the real `xsilo` CLI.

pki init → issue-coordinator → (silo) enroll → (coordinator) approve → (silo) import-bundle
→ coordinator init → coordinator start → silo start --kit → coordinator run → revoke while
running (the coordinator applies it live). Every process is a real subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.launch.processes import free_port
from deploy.pki.authority import Pki
from silo_client.config import write_silo_config
from federation.demo_data import demo_schema, write_demo_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone
XSILO = str(Path(sys.executable).parent / "xsilo")


def _xsilo(*args: str, timeout: float = 60) -> str:
    out = subprocess.run([XSILO, *args], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"xsilo {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _background(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([XSILO, *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI stops its own children, then exits
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_documented_operator_flow_trains_over_mtls(tmp_path: Path) -> None:
    pki_dir, home = tmp_path / "pki", tmp_path / "coordinator"
    gw_port, sl_port = free_port(), free_port()
    _xsilo("pki", "init", "--pki-dir", str(pki_dir), "--organization", "Test Consortium",
           "--no-encrypt")
    _xsilo("pki", "issue-coordinator", "--pki-dir", str(pki_dir), "--host", "localhost",
           "--ip", "127.0.0.1", "--address", f"127.0.0.1:{gw_port}")
    ca_fp = Pki(pki_dir).ca_fingerprint  # read to the silos out of band
    kits = []
    for silo in write_demo_data(tmp_path / "data")[:2]:
        kit = tmp_path / f"kit-{silo.name}"
        _xsilo("silo", "enroll", silo.name, "--kit", str(kit), "--email", "it@example.org")
        _xsilo("pki", "approve", str(kit / "request.json"), "--pki-dir", str(pki_dir), "--yes")
        _xsilo("silo", "import-bundle", str(pki_dir / "bundles" / f"{silo.name}.json"),
               "--kit", str(kit), "--ca-fingerprint", ca_fp, "--port", str(free_port()))
        text = (kit / "silo.toml").read_text()  # the site adds its data and model
        assert "superlink" in text and "PRIVATE KEY" not in text
        import tomllib
        site = tomllib.loads(text)["silo"]
        write_silo_config(kit / "silo.toml", name=silo.name, train=silo.train, test=silo.test,
                          schema=demo_schema(), model="sklearn:LogisticRegression",
                          superlink=site["superlink"], root_certificates=site["root_certificates"],
                          auth_key=site["auth_key"])
        kits.append(kit)
    _xsilo("coordinator", "init", "--home", str(home), "--pki-dir", str(pki_dir),
           "--host", "127.0.0.1", "--port", str(gw_port), "--superlink-port", str(sl_port))
    procs = []
    try:
        coord = _background("coordinator", "start", "--home", str(home), log=tmp_path / "c.log")
        procs.append(coord)
        _wait_port(gw_port, coord, tmp_path / "c.log")
        for kit in kits:
            procs.append(_background("silo", "start", "--kit", str(kit),
                                     log=tmp_path / f"{kit.name}.log"))
        out = _xsilo("coordinator", "run", "--home", str(home), "--name", "flow", "--rounds", "2",
                     "--min-silos", "2", "--expected-silos", "2", timeout=80)
        assert "completed" in out
        # revoke while everything runs: the coordinator unregisters the key and reloads
        _xsilo("pki", "revoke", "hospital-b", "--pki-dir", str(pki_dir), "--yes")
        deadline = time.monotonic() + 20
        while "unregistered hospital-b" not in (tmp_path / "c.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "c.log").read_text()
            time.sleep(0.5)
        assert "gateway reloaded" in (tmp_path / "c.log").read_text()
    finally:
        for proc in reversed(procs):
            _stop(proc)
    assert all(p.poll() is not None for p in procs)

"""A CRL that lapses during a run, with the real `xsilo coordinator start` and `xsilo silo
start --kit` processes (their own loops do the work): the coordinator re-issues the CRL in
time and reloads its gateway, each silo fetches the new CRL and reloads its own gateway,
and no silo is refused. And a coordinator that cannot re-issue it says so at start.

The PKI, member kits and data are LocalFederation(mtls=True)'s; once the coordinator is up
the CRL is made short (``publish_crl(validity_seconds=…)``, which the running coordinator
loads), so the silos' first CRL, fetched at start, is short too. The run is submitted 4 s
before the CRL then in force lapses; once it has, every gateway is made to take new TLS
connections (an open one is never verified again), which a lapsed CRL anywhere would
refuse. tests/deploy/test_crl_renewal_gateways.py checks the same at gateway level.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from deploy.gateway.conf import CRL_PATH
from deploy.gateway.nginx import reload_running
from deploy.pki.authority import Pki
from deploy.pki.kit import load_kit
from deploy.pki.link import get
from deploy.pki.certs import load_private_key, write_private_key
from federation.deployment import LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone
XSILO = str(Path(sys.executable).parent / "xsilo")
VALIDITY = 20  # s: the coordinator renews with 10 s left; the silos look every 2-2.5 s
RECOVERY_VALIDITY = 25  # s: the silos start (~10 s) before it lapses
ROUNDS = 3  # ≥ 3 s each: the run outlasts the first CRL, submitted 4 s before it lapses


def _background(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([XSILO, *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "COLUMNS": "400"})


def _stop(*procs: subprocess.Popen) -> None:
    """SIGTERM to each CLI at once (each stops its own children, then exits), then wait."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(predicate, timeout: float, what: str, procs=(), logs=()) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc, log in zip(procs, logs):
            assert proc.poll() is None, f"{log} ended early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
            f"--- {log}\n{log.read_text()[-3000:]}" for log in logs)
        time.sleep(0.2)


def _short_crl(pki: Pki, seconds: int, log: Path, procs: list[subprocess.Popen],
               passphrase: bytes | None = None) -> None:
    """Make every CRL from now on ``seconds`` long and wait until the running coordinator's
    gateway has loaded the first."""
    reloads = log.read_text().count("gateway reloaded")
    pki.publish_crl(passphrase, validity_seconds=seconds)
    _wait(lambda: log.read_text().count("gateway reloaded") > reloads, 20,
          "the coordinator to load the short CRL", procs, [log])


def _new_connections_after(moment: float, fed: LocalFederation, names: tuple[str, ...],
                           seen: dict[str, object]) -> None:
    """Once ``moment`` passed, make every gateway take new TLS connections: an open
    connection is never verified again, so without new ones a lapsed CRL would go unseen.
    Each reload ends the old workers' keep-alive connections (any PKI change, or nginx's
    keep-alive limits, does the same in a real deployment); then one fresh request."""
    time.sleep(max(0.0, moment - time.time()))
    prefixes = [fed.home_dir / "gateway",
                *(fed.silo_root / name / "kit" / "gateway" / "run" for name in names)]
    for prefix in prefixes:
        reload_running(prefix)
    seen["reloaded_at"] = time.time()
    seen["crl_get"] = get(load_kit(fed.silo_root / names[0] / "kit"), CRL_PATH)[0]


def test_a_crl_that_lapses_mid_run_is_renewed_and_no_silo_is_refused(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, mtls=True).setup()
    pki = Pki(fed.home_dir / "pki")
    names = ("hospital-a", "hospital-b")
    logs = [tmp_path / "coordinator.log", *(tmp_path / f"{n}.log" for n in names)]
    procs: list[subprocess.Popen] = []
    seen: dict[str, object] = {}
    try:
        procs.append(_background("coordinator", "start", "--home", str(fed.home_dir),
                                 log=logs[0]))
        _wait(lambda: "coordinator up" in logs[0].read_text(), 40, "the coordinator", procs,
              logs)
        _short_crl(pki, VALIDITY, logs[0], procs)
        for name, log in zip(names, logs[1:]):
            procs.append(_background("silo", "start", "--kit",
                                     str(fed.silo_root / name / "kit"), log=log))
        supernode_logs = [fed.silo_root / n / "workspace" / "supernode.log" for n in names]
        _wait(lambda: all(p.exists() and "SuperNode ID" in p.read_text()
                          for p in supernode_logs), 40, "both SuperNodes", procs, logs)
        # The CRL in force now (the first, or a renewal if set-up was slow) is the one the
        # run must outlive: it is submitted 4 s before that CRL's nextUpdate.
        original = pki.crl_next_update()
        time.sleep(max(0.0, original.timestamp() - 4 - time.time()))
        after = threading.Thread(target=_new_connections_after, daemon=True,
                                 args=(original.timestamp() + 1, fed, names, seen))
        after.start()
        outcome = fed.run(RunConfig(num_rounds=ROUNDS, min_silos=2, expected_silos=2,
                                    round_timeout=20.0, join_timeout=20.0, name="lapse"),
                          timeout=40)
        after.join(timeout=15)
    finally:
        _stop(*procs[1:])  # the silos first: they say goodbye to the coordinator
        _stop(*procs[:1])
    assert all(p.poll() is not None for p in procs)
    coordinator, *silos = (log.read_text() for log in logs)

    assert outcome.completed, (outcome.status, outcome.summary)
    rounds = [e for e in outcome.store.events() if e["event"] == "round" and e["round"] >= 1]
    assert len(rounds) == ROUNDS
    assert all(sorted(e["contributors"]) == list(names) for e in rounds), rounds
    # after the first CRL lapsed, new TLS connections (both gateways reloaded) were accepted
    assert seen.get("crl_get") == 200, seen
    late = [e for e in rounds if e["time"] > seen["reloaded_at"]]  # type: ignore[operator]
    assert late, "the run ended before the first CRL lapsed and the gateways reloaded"
    # the coordinator re-issued in time (more than once: each CRL lives 20 s) and reloaded
    assert coordinator.count(" s left); valid until") >= 2, coordinator
    assert "had lapsed" not in coordinator
    assert "gateway reloaded" in coordinator and "warning:" not in coordinator
    for name, text in zip(names, silos):
        assert text.count("installed a fresh CRL") >= 2, text  # each renewal
        assert "SuperNode restarted" not in text and "restarting" not in text, text
    gateway = fed.home_dir / "gateway" / "logs"
    assert "status=400" not in (gateway / "access.log").read_text()
    assert "CRL has expired" not in (gateway / "error.log").read_text()
    for name in names:
        silo_gw = fed.silo_root / name / "kit" / "gateway" / "run" / "logs"
        errors = (silo_gw / "error.log").read_text()
        assert "CRL has expired" not in errors
        # A request in flight when the coordinator's gateway reloads (each renewal does) may
        # get a 502 from the silo gateway: nginx does not resend a POST on a connection the
        # old worker closed ("upstream prematurely closed"); Flower resends it. Nothing else.
        refused = (silo_gw / "access.log").read_text().count("status=502")
        assert refused <= errors.count("upstream prematurely closed connection"), errors


def test_a_coordinator_without_the_ca_key_warns_at_start(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("XSILO_CA_PASSPHRASE", raising=False)
    fed = LocalFederation(tmp_path, mtls=True).setup()
    pki = Pki(fed.home_dir / "pki")
    key = load_private_key(pki.ca_key_path)
    pki.ca_key_path.unlink()
    write_private_key(pki.ca_key_path, key, passphrase=b"kept offline")  # type: ignore[arg-type]
    log = tmp_path / "coordinator.log"
    proc = _background("coordinator", "start", "--home", str(fed.home_dir), log=log)
    try:
        # the warnings follow the "coordinator up" line: stopping at that line would race them
        # (the same words are logged before it, as "WARNING deploy.pki.freshness: …")
        _wait(lambda: "coordinator up" in log.read_text() and "warning: the CRL lapses in" in
              " ".join(log.read_text().split()), 40, "the coordinator's warning", [proc], [log])
    finally:
        _stop(proc)
    text = " ".join(log.read_text().split())  # unwrapped
    assert "warning: the CRL lapses in" in text and "cannot re-issue it by itself" in text
    assert "the CA key is encrypted" in text
    assert f"run `xsilo pki crl --pki-dir {pki.root} --passphrase-file FILE`" in text


def test_silos_recover_by_themselves_once_a_lapsed_crl_is_reissued(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """The coordinator cannot re-issue (encrypted CA key, no passphrase), so its CRL lapses
    and every new connection is refused; the operator re-issues it by hand and nobody at
    the silos does anything: they fetch it, reload, and their SuperNodes train again."""
    monkeypatch.delenv("XSILO_CA_PASSPHRASE", raising=False)
    fed = LocalFederation(tmp_path, mtls=True).setup()
    pki = Pki(fed.home_dir / "pki")
    key = load_private_key(pki.ca_key_path)
    pki.ca_key_path.unlink()
    write_private_key(pki.ca_key_path, key, passphrase=b"kept offline")  # type: ignore[arg-type]
    secret = tmp_path / "ca.pass"
    secret.write_text("kept offline\n")
    names = ("hospital-a", "hospital-b")
    logs = [tmp_path / "coordinator.log", *(tmp_path / f"{n}.log" for n in names)]
    kit = load_kit(fed.silo_root / names[0] / "kit")
    procs: list[subprocess.Popen] = []
    seen: dict[str, object] = {}
    try:
        procs.append(_background("coordinator", "start", "--home", str(fed.home_dir),
                                 log=logs[0]))
        _wait(lambda: "coordinator up" in logs[0].read_text(), 40, "the coordinator", procs,
              logs)
        _short_crl(pki, RECOVERY_VALIDITY, logs[0], procs, b"kept offline")
        lapse = pki.crl_next_update().timestamp()
        for name, log in zip(names, logs[1:]):
            procs.append(_background("silo", "start", "--kit",
                                     str(fed.silo_root / name / "kit"), log=log))
        supernode_logs = [fed.silo_root / n / "workspace" / "supernode.log" for n in names]
        _wait(lambda: all(p.exists() and "SuperNode ID" in p.read_text()
                          for p in supernode_logs), 40, "both SuperNodes", procs, logs)
        if time.time() > lapse - 2:
            pytest.skip(f"the silos took longer to start than the {RECOVERY_VALIDITY} s CRL "
                        "lives (they started with a lapsed CRL, which is another case)")
        _new_connections_after(lapse + 1, fed, names, seen)
        assert seen["crl_get"] == 400  # the coordinator gateway refuses every silo now
        silo_error = fed.silo_root / names[0] / "kit" / "gateway" / "run" / "logs" / "error.log"
        _wait(lambda: "CRL has expired" in silo_error.read_text(), 20,
              "a SuperNode request refused for the lapsed CRL", procs, logs)

        fixed = subprocess.run([XSILO, "pki", "crl", "--pki-dir", str(pki.root),
                                "--passphrase-file", str(secret), "--hours", "1"],
                               capture_output=True, text=True, timeout=30)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        _wait(lambda: all("installed a fresh CRL" in log.read_text() for log in logs[1:]), 20,
              "both silos to install the new CRL", procs, logs)
        assert get(kit, CRL_PATH)[0] == 200
        outcome = fed.run(RunConfig(num_rounds=1, min_silos=2, expected_silos=2,
                                    round_timeout=20.0, join_timeout=30.0, name="after"),
                          timeout=45)
        assert all(proc.poll() is None for proc in procs)  # nobody stopped
    finally:
        _stop(*procs[1:])
        _stop(*procs[:1])
    coordinator = logs[0].read_text()
    assert "cannot re-issue it by itself" in coordinator and "gateway reloaded" in coordinator
    assert outcome.completed, (outcome.status, outcome.summary)
    rounds = [e for e in outcome.store.events() if e["event"] == "round" and e["round"] >= 1]
    assert [sorted(e["contributors"]) for e in rounds] == [list(names)]

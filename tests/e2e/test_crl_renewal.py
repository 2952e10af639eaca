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

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from tests.e2e._cli import XSILO, background, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone
VALIDITY = 20  # s: the coordinator renews with 10 s left; the silos look every 2-2.5 s
RECOVERY_VALIDITY = 25  # s: the silos start (~10 s) before it lapses
ROUNDS = 3  # ≥ 3 s each: the run outlasts the first CRL, submitted 4 s before it lapses
NAMES = ("hospital-a", "hospital-b")
PASSPHRASE = b"kept offline"


@dataclass
class Consortium:
    """LocalFederation(mtls=True)'s PKI, kits and data, and the `xsilo` processes run on
    them: ``procs`` and ``logs`` hold the coordinator's first, then the silos' (NAMES)."""

    fed: LocalFederation
    pki: Pki
    logs: list[Path]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``predicate()``; every process started so far must stay up."""
        wait_for(predicate, timeout, what, alive=self.procs, logs=self.logs)

    def start_coordinator(self) -> None:
        self.procs.append(background("coordinator", "start", "--home",
                                     str(self.fed.home_dir), log=self.logs[0]))
        self.wait(lambda: "coordinator up" in self.logs[0].read_text(), 40, "the coordinator")

    def short_crl(self, seconds: int, passphrase: bytes | None = None) -> None:
        """Make every CRL from now on ``seconds`` long and wait until the running
        coordinator's gateway has loaded the first."""
        reloads = self.logs[0].read_text().count("gateway reloaded")
        self.pki.publish_crl(passphrase, validity_seconds=seconds)
        self.wait(lambda: self.logs[0].read_text().count("gateway reloaded") > reloads, 20,
                  "the coordinator to load the short CRL")

    def start_silos(self) -> None:
        """`xsilo silo start --kit` for each silo, until every SuperNode is in."""
        for name, log in zip(NAMES, self.logs[1:]):
            self.procs.append(background("silo", "start", "--kit",
                                         str(self.fed.silo_root / name / "kit"), log=log))
        supernode_logs = [self.fed.silo_root / n / "workspace" / "supernode.log" for n in NAMES]
        self.wait(lambda: all(p.exists() and "SuperNode ID" in p.read_text()
                              for p in supernode_logs), 40, "both SuperNodes")

    def stop(self) -> None:
        """The silos first (they say goodbye to the coordinator), then the coordinator."""
        stop(*self.procs[1:])
        stop(*self.procs[:1])
        assert all(p.poll() is not None for p in self.procs)


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    fed = LocalFederation(tmp_path, mtls=True).setup()
    made = Consortium(fed, Pki(fed.home_dir / "pki"),
                      [tmp_path / "coordinator.log", *(tmp_path / f"{n}.log" for n in NAMES)])
    try:
        yield made
    finally:
        made.stop()  # again if the test did: a no-op then


@pytest.fixture
def offline_ca(consortium: Consortium, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The CA key encrypted, its passphrase not given to the coordinator (which therefore
    cannot re-issue the CRL by itself); returns the passphrase."""
    monkeypatch.delenv("XSILO_CA_PASSPHRASE", raising=False)
    pki = consortium.pki
    key = load_private_key(pki.ca_key_path)
    pki.ca_key_path.unlink()
    write_private_key(pki.ca_key_path, key, passphrase=PASSPHRASE)  # type: ignore[arg-type]
    return PASSPHRASE


def _new_connections_after(moment: float, fed: LocalFederation, seen: dict[str, object]) -> None:
    """Once ``moment`` passed, make every gateway take new TLS connections: an open
    connection is never verified again, so without new ones a lapsed CRL would go unseen.
    Each reload ends the old workers' keep-alive connections (any PKI change, or nginx's
    keep-alive limits, does the same in a real deployment) and is in force when it returns
    (every new connection gets the reloaded configuration); then one fresh request."""
    time.sleep(max(0.0, moment - time.time()))
    prefixes = [fed.home_dir / "gateway",
                *(fed.silo_root / name / "kit" / "gateway" / "run" for name in NAMES)]
    for prefix in prefixes:
        reload_running(prefix)
    seen["reloaded_at"] = time.time()
    seen["crl_get"] = get(load_kit(fed.silo_root / NAMES[0] / "kit"), CRL_PATH)[0]


def test_a_crl_that_lapses_mid_run_is_renewed_and_no_silo_is_refused(
        consortium: Consortium) -> None:
    fed, pki = consortium.fed, consortium.pki
    seen: dict[str, object] = {}
    consortium.start_coordinator()
    consortium.short_crl(VALIDITY)
    consortium.start_silos()
    # The CRL in force now (the first, or a renewal if set-up was slow) is the one the run
    # must outlive: it is submitted 4 s before that CRL's nextUpdate.
    original = pki.crl_next_update()
    time.sleep(max(0.0, original.timestamp() - 4 - time.time()))
    after = threading.Thread(target=_new_connections_after, daemon=True,
                             args=(original.timestamp() + 1, fed, seen))
    after.start()
    outcome = fed.run(RunConfig(num_rounds=ROUNDS, min_silos=2, expected_silos=2,
                                round_timeout=20.0, join_timeout=20.0, name="lapse"),
                      timeout=40)
    after.join(timeout=15)
    consortium.stop()
    coordinator, *silos = (log.read_text() for log in consortium.logs)

    assert outcome.completed, (outcome.status, outcome.summary)
    rounds = [e for e in outcome.store.events() if e["event"] == "round" and e["round"] >= 1]
    assert len(rounds) == ROUNDS
    assert all(sorted(e["contributors"]) == list(NAMES) for e in rounds), rounds
    # after the first CRL lapsed, new TLS connections (both gateways reloaded) were accepted
    assert seen.get("crl_get") == 200, seen
    late = [e for e in rounds if e["time"] > seen["reloaded_at"]]  # type: ignore[operator]
    assert late, "the run ended before the first CRL lapsed and the gateways reloaded"
    # the coordinator re-issued in time (more than once: each CRL lives 20 s) and reloaded
    assert coordinator.count(" s left); valid until") >= 2, coordinator
    assert "had lapsed" not in coordinator
    assert "gateway reloaded" in coordinator and "warning:" not in coordinator
    for text in silos:
        assert text.count("installed a fresh CRL") >= 2, text  # each renewal
        assert "SuperNode restarted" not in text and "restarting" not in text, text
    gateway = fed.home_dir / "gateway" / "logs"
    assert "status=400" not in (gateway / "access.log").read_text()
    assert "CRL has expired" not in (gateway / "error.log").read_text()
    for name in NAMES:
        silo_gw = fed.silo_root / name / "kit" / "gateway" / "run" / "logs"
        errors = (silo_gw / "error.log").read_text()
        assert "CRL has expired" not in errors
        # A request in flight when the coordinator's gateway reloads (each renewal does) may
        # get a 502 from the silo gateway: nginx does not resend a POST on a connection the
        # old worker closed ("upstream prematurely closed"); Flower resends it. Nothing else.
        refused = (silo_gw / "access.log").read_text().count("status=502")
        assert refused <= errors.count("upstream prematurely closed connection"), errors


def test_a_coordinator_without_the_ca_key_warns_at_start(consortium: Consortium,
                                                         offline_ca: bytes) -> None:
    log, pki = consortium.logs[0], consortium.pki
    consortium.start_coordinator()
    # the warnings follow the "coordinator up" line: stopping at that line would race them
    # (the same words are logged before it, as "WARNING deploy.pki.freshness: …")
    consortium.wait(lambda: "warning: the CRL lapses in" in " ".join(log.read_text().split()),
                    40, "the coordinator's warning")
    consortium.stop()
    text = " ".join(log.read_text().split())  # unwrapped
    assert "warning: the CRL lapses in" in text and "cannot re-issue it by itself" in text
    assert "the CA key is encrypted" in text
    assert f"run `xsilo pki crl --pki-dir {pki.root} --passphrase-file FILE`" in text


def test_silos_recover_by_themselves_once_a_lapsed_crl_is_reissued(
        consortium: Consortium, offline_ca: bytes, tmp_path: Path) -> None:
    """The coordinator cannot re-issue (encrypted CA key, no passphrase), so its CRL lapses
    and every new connection is refused; the operator re-issues it by hand and nobody at
    the silos does anything: they fetch it, reload, and their SuperNodes train again."""
    fed, pki, logs = consortium.fed, consortium.pki, consortium.logs
    secret = tmp_path / "ca.pass"
    secret.write_text(offline_ca.decode() + "\n")
    kit = load_kit(fed.silo_root / NAMES[0] / "kit")
    seen: dict[str, object] = {}
    consortium.start_coordinator()
    consortium.short_crl(RECOVERY_VALIDITY, offline_ca)
    lapse = pki.crl_next_update().timestamp()
    consortium.start_silos()
    if time.time() > lapse - 2:
        pytest.skip(f"the silos took longer to start than the {RECOVERY_VALIDITY} s CRL "
                    "lives (they started with a lapsed CRL, which is another case)")
    _new_connections_after(lapse + 1, fed, seen)
    assert seen["crl_get"] == 400  # the coordinator gateway refuses every silo now
    silo_error = fed.silo_root / NAMES[0] / "kit" / "gateway" / "run" / "logs" / "error.log"
    consortium.wait(lambda: "CRL has expired" in silo_error.read_text(), 20,
                    "a SuperNode request refused for the lapsed CRL")

    fixed = subprocess.run([XSILO, "pki", "crl", "--pki-dir", str(pki.root),
                            "--passphrase-file", str(secret), "--hours", "1"],
                           capture_output=True, text=True, timeout=30)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    consortium.wait(lambda: all("installed a fresh CRL" in log.read_text() for log in logs[1:]),
                    20, "both silos to install the new CRL")
    assert get(kit, CRL_PATH)[0] == 200
    outcome = fed.run(RunConfig(num_rounds=1, min_silos=2, expected_silos=2,
                                round_timeout=20.0, join_timeout=30.0, name="after"),
                      timeout=45)
    assert all(proc.poll() is None for proc in consortium.procs)  # nobody stopped
    consortium.stop()
    coordinator = logs[0].read_text()
    assert "cannot re-issue it by itself" in coordinator and "gateway reloaded" in coordinator
    assert outcome.completed, (outcome.status, outcome.summary)
    rounds = [e for e in outcome.store.events() if e["event"] == "round" and e["round"] >= 1]
    assert [sorted(e["contributors"]) for e in rounds] == [list(NAMES)]

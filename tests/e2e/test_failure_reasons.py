"""Each refusal class on real processes: `xsilo coordinator run` (a real subprocess) against a
running coordinator and three SuperNodes prints the same message it writes to the run's
summary.json, within seconds, and a refused start never blocks the next attempt's name.

One coordinator serves every case (module fixture): the configuration refusals never reach
it; the site-policy refusal is answered by a silo at join and fails the run in the ServerApp.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation.deployment import LocalFederation
from tests.conftest import _processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone
XSILO = str(Path(sys.executable).parent / "xsilo")

DP_TOML = """[run]
num_rounds = 2

[run.dp]
mechanism = "distributed"
noise_multiplier = 1.0
clip_norm = 1.0
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refusals")
    (root / "dp.toml").write_text(DP_TOML)
    federation = LocalFederation(root / "fed", policies={
        "hospital-c": "max_rounds = 3\nmax_local_epochs = 2\n"})
    with federation.setup():
        federation.start()
        yield federation
    # Flower's SuperLink starts its SuperExec detached and gives it 1 s to exit; let it go
    # before the session's leftover check looks.
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(root)) and time.monotonic() < deadline:
        time.sleep(0.2)


def _squeeze(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines, also inside long words


# (case, arguments, status, error type, what the message says); the configuration refusals
# reuse one run name (a refused start leaves it free), the policy case starts a run.
CASES = [
    ("per-update-strategy", ["--strategy", "krum", "--secure-aggregation"], "refused",
     "StrategyError", "cannot run with secure aggregation"),
    ("bad-parameter", ["--strategy", "fedprox", "--param", "proximal_mu=-1"], "refused",
     "ConfigError", "proximal_mu"),
    ("missing-plugin", ["--strategy", "robust-median-plugin"], "refused", "StrategyError",
     "unknown strategy 'robust-median-plugin'"),
    ("dp-misconfiguration", ["--config", "{root}/dp.toml"], "refused", "ConfigError",
     "dp.mechanism = 'distributed' adds each silo's noise share under secure aggregation"),
    ("site-policy", ["--rounds", "5", "--min-silos", "3", "--expected-silos", "3"], "failed",
     "DeploymentError", "hospital-c: PolicyRefusal[max_rounds]"),
]


@pytest.mark.parametrize("case, args, status, kind, needle", CASES, ids=[c[0] for c in CASES])
def test_each_refusal_says_the_same_thing_in_the_cli_and_in_summary_json(
        fed: LocalFederation, case: str, args: list[str], status: str, kind: str,
        needle: str) -> None:
    name = "policy" if case == "site-policy" else "retry"
    args = [a.replace("{root}", str(fed.root.parent)) for a in args]
    started = time.monotonic()
    out = subprocess.run([XSILO, "coordinator", "run", "--home", str(fed.home_dir), "--name",
                          name, "--timeout", "60", *args], capture_output=True, text=True,
                         timeout=80, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    assert out.returncode == 2, out.stdout + out.stderr
    summary = json.loads((fed.home_dir / "runs" / name / "summary.json").read_text())
    error = summary["error"]
    assert summary["status"] == status and error["type"] == kind, summary
    assert needle in error["message"]
    assert _squeeze(error["message"]) in _squeeze(out.stderr), out.stderr
    if status == "refused":  # checked before anything reached the SuperLink
        assert error["phase"] == "start" and elapsed < 20, elapsed
        assert not (fed.home_dir / "runs" / name / "metrics.jsonl").exists()
    else:  # answered by hospital-c at join, as soon as the silos replied: no timeout waited
        assert error["phase"] == "join" and error["round"] == 0
        assert error["silo"] == "hospital-c" and elapsed < 60, elapsed
        assert _squeeze("failed while silos joined (silo hospital-c)") in _squeeze(out.stderr)
        assert needle in (fed.home_dir / "runs" / name / "coordinator.log").read_text()
        shown = subprocess.run([XSILO, "coordinator", "status", str(fed.home_dir / "runs" / name)],
                               capture_output=True, text=True, timeout=60)
        assert _squeeze(error["message"]) in _squeeze(shown.stdout), shown.stdout


def test_a_round_asking_more_local_epochs_than_a_site_allows_is_refused_by_that_site(
        fed: LocalFederation) -> None:
    """hospital-c's policy allows 2 local epochs; a run asking 5 goes on without it: its
    refusal (before any training) is in the round's row, in `xsilo coordinator status` and
    in hospital-c's ledger; the others train."""
    out = subprocess.run([XSILO, "coordinator", "run", "--home", str(fed.home_dir), "--name",
                          "epochs", "--timeout", "60", "--rounds", "1", "--local-epochs", "5",
                          "--min-silos", "2", "--expected-silos", "3"],
                         capture_output=True, text=True, timeout=80, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    store = fed.home_dir / "runs" / "epochs"
    rows = [json.loads(line) for line in (store / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r.get("event") == "round" and r["round"] == 1]
    assert row["contributors"] == ["hospital-a", "hospital-b"], row
    refusal = row["rejected"]["hospital-c"]
    assert "PolicyRefusal[max_local_epochs]" in refusal, refusal
    assert "round 1 asks for 5 local epochs, the site policy allows at most 2" in refusal
    shown = subprocess.run([XSILO, "coordinator", "status", str(store)], capture_output=True,
                           text=True, timeout=60)
    assert "max_local_epochs" in _squeeze(shown.stdout), shown.stdout
    silo = next(s for s in fed.silos if s.name == "hospital-c")
    entries = [json.loads(line) for line in
               (silo.workspace / "egress.jsonl").read_text().splitlines()]
    said = [e for e in entries if e["message_type"] == "train.refusal" and e["server_round"] == 1]
    assert len(said) == 1 and "max_local_epochs" in said[0]["extra"]["reason"], entries[-3:]
    run_id = said[0]["run_id"]  # nothing trained left hospital-c in that run
    assert not [e for e in entries if e["run_id"] == run_id and e["message_type"] == "train"]

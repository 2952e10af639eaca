"""A silo's SuperNode through a coordinator outage and through a refusal.

* The coordinator gateway goes away for a while and comes back: every SuperNode retries
  (with back-off, for as long as it takes) and trains in the next run, same process.
* A revoked silo's next request is refused (400 at the coordinator gateway): Flower ends
  that SuperNode's connection but leaves its process running, silent; ``raise_if_exited``
  — what ``xsilo silo start`` calls every second — must report it with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from deploy.pki.authority import Pki
from federation.deployment import LocalFederation
from xsilo.errors import DeploymentError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone
OUTAGE = 5.0  # s without the coordinator gateway


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _refusal(node) -> str:  # type: ignore[no-untyped-def]
    try:
        node.raise_if_exited()
    except DeploymentError as exc:
        return str(exc)
    return ""


def test_supernodes_come_back_after_an_outage_and_report_a_refusal(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, mtls=True).setup()
    with fed:
        fed.start()
        gateway = fed.gateways["coordinator"]
        nodes = dict(fed.supernodes)
        pids = {name: node.pid for name, node in nodes.items()}
        _wait_for(lambda: all("SuperNode ID" in n.log_tail(200) for n in nodes.values()), 30,
                  "every SuperNode to connect")

        gateway.stop()
        time.sleep(OUTAGE)
        assert all("Connection attempt failed" in n.log_tail(200) for n in nodes.values())
        assert all(_refusal(n) == "" for n in nodes.values())  # retrying, not given up
        gateway.start()

        Pki(fed.home_dir / "pki").revoke("hospital-c")
        gateway.reload()
        _wait_for(lambda: _refusal(nodes["hospital-c"]) != "", 40,
                  "hospital-c's SuperNode to report the refusal")
        refusal = _refusal(nodes["hospital-c"])
        assert nodes["hospital-c"].alive()  # Flower leaves it running …
        assert "for good" in refusal and "client certificate" in refusal, refusal  # … we say so
        fed.home.cli().unregister_node(fed.coordinator.node_ids["hospital-c"])

        outcome = fed.run(RunConfig(num_rounds=1, min_silos=2, expected_silos=2,
                                    round_timeout=30.0, join_timeout=40.0, name="after"),
                          timeout=60)
        for name in ("hospital-a", "hospital-b"):
            assert nodes[name].alive() and nodes[name].pid == pids[name]  # never restarted
            assert _refusal(nodes[name]) == ""
    assert outcome.status == "finished:completed", outcome.summary
    rows = {e["round"]: e for e in outcome.store.events() if e["event"] == "round"}
    assert rows[1]["contributors"] == ["hospital-a", "hospital-b"]

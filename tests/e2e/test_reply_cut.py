"""A silo cut off between pushing its reply and pushing the reply's content, on real processes.

Flower 1.42 moves a reply in two steps: the message (``push-messages``), then the objects of
its content (``push-object``). A silo whose link fails between the two leaves the SuperLink a
reply whose content never comes, and Flower's ServerApp would wait for it for two hours
(500 tries of its object pull). The round must still end at its deadline, with the others'
updates and the reason at the operator's console; once the link is back the silo trains again.

Deterministic: every silo's model blocks in its first ``fit`` until the test opens a gate,
so the cut (hospital-c's gateway refusing ``push-object``, nothing else) is in place before
any silo answers round 1; it is lifted once hospital-c's SuperNode gave that reply up
(Flower does not retry a refused object), well before round 2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from coordinator.config import RunConfig
from federation.deployment import LocalFederation
from silo_client.ledger import verify_ledger
from tests.e2e._cli import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

GATE_ENV = "XSILO_TEST_FIT_GATE"
SITE_MODEL = f'''
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

from sklearn.linear_model import LogisticRegression

from silo_client.adapters.sklearn import SklearnAdapter


class GatedAdapter(SklearnAdapter):
    """xsilo's own adapter, waiting in fit until the test opens the gate (at most 60 s)."""

    def fit(self, train, **kwargs):
        gate = Path(os.environ["{GATE_ENV}"])
        (gate / f"in-fit-{{uuid.uuid4().hex}}").touch()
        until = time.monotonic() + 60
        while not (gate / "open").exists() and time.monotonic() < until:
            time.sleep(0.05)
        return super().fit(train, **kwargs)


def build(n_features, classes, seed):
    schema = SimpleNamespace(task="classification", n_features=n_features,
                             label_values=tuple(classes))
    return GatedAdapter(LogisticRegression(), schema=schema, seed=seed)
'''
CUT = "        location = /v1/fleet/push-object { return 400; }  # the test's cut\n"
ROUND_TIMEOUT = 20.0


def test_a_silo_cut_between_its_reply_and_its_content_ends_the_round_on_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, gate = tmp_path / "site-models", tmp_path / "gate"
    site.mkdir()
    gate.mkdir()
    (site / "site_gated.py").write_text(SITE_MODEL)
    monkeypatch.setenv("PYTHONPATH", str(site))  # inherited by every Flower process started
    monkeypatch.setenv(GATE_ENV, str(gate))
    fed = LocalFederation(tmp_path / "fed", mtls=True, model="site_gated:build").setup()
    out = io.StringIO()
    with fed:
        fed.start()
        cut = fed.gateways["hospital-c"]
        silo_c = next(c for c in fed.silos if c.name == "hospital-c")
        render = cut.render
        marker = "        location /v1/fleet/ {"
        assert marker in render(cut.scratch)  # where the cut goes: before the Fleet location
        cut.render = lambda scratch: render(scratch).replace(marker, CUT + marker, 1)
        run_id, store = fed.submit(RunConfig(
            num_rounds=2, min_silos=2, expected_silos=3, round_timeout=ROUND_TIMEOUT,
            join_timeout=45.0, straggler_grace=ROUND_TIMEOUT, name="cut"))
        # all three silos are in round 1's fit, none has answered: cut hospital-c's content
        wait_for(lambda: len(list(gate.glob("in-fit-*"))) >= 3, 60, "three silos in fit")
        cut.reload()
        (gate / "open").touch()
        wait_for(lambda: any("push-object" in line and "status=400" in line
                              for line in cut.logs()["access"].splitlines()),
                  30, "hospital-c's gateway to refuse its reply's content")
        # Flower's SuperNode gives the reply up at the first refusal (it does not retry a
        # 400): once it says so, the link is back, long before round 2
        supernode_log = silo_c.workspace / "supernode.log"
        wait_for(lambda: "Failed to send message" in supernode_log.read_text(), 30,
                  "hospital-c's SuperNode to give its reply up")
        cut.render = render
        cut.reload()
        outcome = fed.wait(run_id, store, console=Console(file=out, width=200), timeout=80)
        access = cut.logs()["access"].splitlines()
    assert outcome.status == "finished:completed", outcome.summary
    rows = {e["round"]: e for e in outcome.store.events() if e["event"] == "round"}
    # round 1: the reply whose content never came did not stall it past its deadline
    assert rows[1]["contributors"] == ["hospital-a", "hospital-b"], rows[1]
    assert rows[1]["round_seconds"] <= ROUND_TIMEOUT + 5, rows[1]
    reason = rows[1]["rejected"]["hospital-c"]
    assert reason.startswith("DeploymentError[reply-content-missing]: its reply came, its "
                             "content was not complete by the round's deadline"), reason
    # the operator saw why in the run's one line for the round
    assert "hospital-c: DeploymentError[reply-content-missing]" in out.getvalue(), \
        out.getvalue()
    # the link back, hospital-c trains again: its content goes through the same gateway
    assert rows[2]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"], rows[2]
    refused = max(i for i, line in enumerate(access) if "push-object" in line
                  and "status=400" in line)
    assert any("push-object" in line and "status=200" in line for line in access[refused:])
    # hospital-c's ledger holds both train replies: the cut one left in part (its message)
    ledger = silo_c.workspace / "egress.jsonl"
    assert verify_ledger(ledger).ok
    sent = [json.loads(line)["message_type"] for line in ledger.read_text().splitlines()]
    assert sent.count("train") == 2, sent

"""A torch silo federation on the real deployment engine: SuperLink, SuperNodes, TLS, node auth.

Each silo declares its own ``nn.Module`` by import path, as an operator would; the module
lives outside xsilo, so the SuperNodes (and the ``flwr-clientapp`` process Flower starts per
message, which inherits their environment) find it through ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from federation.deployment import LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone

# Tiny on purpose: every ClientApp message is a fresh process that imports torch.
SITE_MODEL = '''
from torch import nn


def build(n_features, classes):
    return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, len(classes)))
'''


def test_torch_silos_train_over_tls_with_node_auth(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    site = tmp_path / "site-models"
    site.mkdir()
    (site / "site_torch_mlp.py").write_text(SITE_MODEL)
    monkeypatch.setenv("PYTHONPATH", str(site))  # inherited by every Flower process started
    started = time.monotonic()
    fed = LocalFederation(tmp_path / "fed", model="site_torch_mlp:build").setup()
    with fed:
        fed.start()
        # 5 local epochs cost nothing on a model this size, and make learning unmistakable
        outcome = fed.run(RunConfig(num_rounds=2, min_silos=3, expected_silos=3, local_epochs=5,
                                    round_timeout=60.0, join_timeout=45.0, name="torch-e2e"),
                          timeout=80)
        processes = list(fed.processes)
    elapsed = time.monotonic() - started
    assert outcome.status == "finished:completed", outcome.summary
    assert outcome.completed, outcome.summary
    join = next(e for e in outcome.store.events() if e["event"] == "join")
    assert not join.get("refused"), join["refused"]  # every silo could import and build it
    rows = [e for e in outcome.store.events() if e["event"] == "round"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"]
    # in-process, the same run goes from loss 0.71 / accuracy 0.37 to 0.19 / 0.94
    assert rows[-1]["global_loss"] < 0.6 * rows[0]["global_loss"]
    assert rows[-1]["global_accuracy"] > rows[0]["global_accuracy"] + 0.3
    assert (outcome.store.path / "model.npz").is_file()
    assert all(not p.alive() for p in processes)
    assert elapsed < 90, f"took {elapsed:.0f} s"

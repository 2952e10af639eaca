"""Site policy: one refusal per rule (reason code and message), loading, the privacy tally."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from silo_client.policy import (
    PrivacyTally,
    RunTerms,
    SitePolicy,
    check_round,
    check_run,
    normalize_fingerprint,
)
from xsilo.errors import ConfigError, PolicyRefusal

FP = "sha256:AB:CD:EF:01"
STRICT = SitePolicy(require_secure_aggregation=True, max_epsilon=4.0, delta=1e-5,
                    allowed_strategies=("FedAvg", "fedprox"), min_silos_per_round=3,
                    max_rounds=10, allowed_coordinator_fingerprints=(FP,), max_local_epochs=5)
GOOD = RunTerms(strategy="fedavg", num_rounds=5, secure_aggregation=True,
                coordinator_fingerprint="abcdef01", dp_epsilon_total=2.0, dp_delta=1e-6,
                num_silos=3)

RUN_RULES = [  # (changed terms, epsilon already spent, reason, message fragments)
    ({"secure_aggregation": False}, 0.0, "require_secure_aggregation",
     ["requires secure aggregation", "enable secure aggregation"]),
    ({"strategy": "FedAdam"}, 0.0, "allowed_strategies", ["'FedAdam' is not allowed", "fedprox"]),
    ({"num_rounds": 11}, 0.0, "max_rounds", ["11 rounds", "at most 10"]),
    ({"num_silos": 2}, 0.0, "min_silos_per_round", ["has 2 silos", "at least 3"]),
    ({"num_silos": 1001}, 0.0, "max_silos", ["has 1001 silos", "at most 1000"]),
    ({"coordinator_fingerprint": "ffff"}, 0.0, "allowed_coordinator_fingerprints",
     ["'ffff' is not in", "out of band"]),
    ({"coordinator_fingerprint": None}, 0.0, "allowed_coordinator_fingerprints", ["None"]),
    ({"dp_epsilon_total": None}, 0.0, "max_epsilon", ["uses no differential privacy"]),
    ({}, 2.5, "max_epsilon", ["epsilon 2 on top of 2.5", "total 4.5 > max_epsilon 4.0"]),
    ({"dp_delta": 1e-4}, 0.0, "delta", ["0.0001 exceeds", "1e-05"]),
    ({"dp_delta": None}, 0.0, "delta", ["None exceeds"]),
]


@pytest.mark.parametrize(("changes", "spent", "reason", "fragments"), RUN_RULES,
                         ids=[f"{r[2]}-{i}" for i, r in enumerate(RUN_RULES)])
def test_check_run_refuses_per_rule(changes, spent, reason, fragments) -> None:
    check_run(STRICT, GOOD, epsilon_spent=spent if reason != "max_epsilon" else 0.0)
    with pytest.raises(PolicyRefusal) as err:
        check_run(STRICT, replace(GOOD, **changes), epsilon_spent=spent)
    assert err.value.reason == reason
    assert all(f in str(err.value) for f in fragments), str(err.value)


def test_permissive_default_accepts_anything() -> None:
    check_run(SitePolicy(), RunTerms("whatever", 1000, False))
    check_round(SitePolicy(), server_round=1000, participants=1, epsilon_spent=None, epsilon_next=None)


ROUND_RULES = [  # (kwargs, reason, message fragments)
    ({"secure_aggregation": False}, "require_secure_aggregation",
     ["round 10 is not under secure aggregation", "no update sent in the clear"]),
    ({"strategy": "FedAdam"}, "allowed_strategies",
     ["round 10 runs strategy 'FedAdam'", "allowed: ['fedavg', 'fedprox']"]),
    ({"strategy": None}, "allowed_strategies", ["strategy None"]),
    ({"server_round": 11}, "max_rounds", ["round 11 exceeds", "max_rounds 10"]),
    ({"local_epochs": 2**63 - 1}, "max_local_epochs",
     [f"asks for {2**63 - 1} local epochs", "at most 5"]),
    ({"participants": 2}, "min_silos_per_round", ["only 2 silo(s)", "at least 3", "no update"]),
    ({"epsilon_next": 4.2}, "max_epsilon", ["from 3.5 to 4.2 > max_epsilon 4.0"]),
    ({"epsilon_next": None}, "max_epsilon", ["no DP accounting"]),
]


ROUND_OK = {"server_round": 10, "participants": 3, "epsilon_spent": 3.5, "epsilon_next": 4.0,
            "strategy": "FedProx", "secure_aggregation": True, "local_epochs": 5}


@pytest.mark.parametrize(("changes", "reason", "fragments"), ROUND_RULES,
                         ids=[f"{r[1]}-{i}" for i, r in enumerate(ROUND_RULES)])
def test_check_round_refuses_per_rule(changes, reason, fragments) -> None:
    ok = ROUND_OK
    check_round(STRICT, **ok)
    with pytest.raises(PolicyRefusal) as err:
        check_round(STRICT, **{**ok, **changes})
    assert err.value.reason == reason
    assert all(f in str(err.value) for f in fragments), str(err.value)


def test_load_policy_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('require_secure_aggregation = true\nmax_epsilon = 4.0\ndelta = 1e-5\n'
                    'allowed_strategies = ["FedAvg", "fedprox"]\nmin_silos_per_round = 3\n'
                    f'max_rounds = 10\nallowed_coordinator_fingerprints = ["{FP}"]\n'
                    'max_local_epochs = 5\n')
    assert SitePolicy.load(path) == STRICT
    assert STRICT.allowed_coordinator_fingerprints == ("abcdef01",)
    assert normalize_fingerprint("SHA256:Ab:cD") == "abcd"


@pytest.mark.parametrize(("text", "needle"), [
    ("max_epsilon = 1\nmax_epsilom = 2\n", r"unknown key\(s\) \['max_epsilom'\]"),
    ("max_epsilon = -1\n", "max_epsilon = -1: must be a positive number"),
    ("delta = 2.0\n", r"delta = 2.0: must be in \(0, 1\)"),
    ("min_silos_per_round = 1.5\n", "must be a positive integer"),
    ("require_secure_aggregation = 'yes'\n", "must be true or false"),
    ("allowed_strategies = []\n", "non-empty list of strings"),
    ("max_rounds = \n", "policy.toml is not valid TOML"),
    ("max_silos = 0\n", "max_silos = 0: must be a positive integer"),
    ("max_local_epochs = 0\n", "max_local_epochs = 0: must be a positive integer"),
    ("max_silos = 2\nmin_silos_per_round = 3\n", "at least min_silos_per_round"),
])
def test_bad_policy_files(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        SitePolicy.load(path)


def test_missing_policy_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; a silo never runs on a silently permissive"):
        SitePolicy.load(tmp_path / "policy.toml")


def test_privacy_tally_persists_and_refuses(tmp_path: Path) -> None:
    path = tmp_path / "ws" / "privacy-tally.json"
    tally = PrivacyTally(path, max_epsilon=4.0)
    assert tally.total() == 0.0 and not tally.would_exceed(4.0, run="r1")
    tally.record("r1", 1, 1.0)
    tally.record("r1", 2, 1.5)  # cumulative within a run
    tally.record("r2", 1, 2.0)
    again = PrivacyTally(path, max_epsilon=4.0)
    assert again.total() == pytest.approx(3.5)
    assert again.total_after("r2", 2.4) == pytest.approx(3.9)
    assert not again.would_exceed(2.5, run="r2") and again.would_exceed(2.6, run="r2")
    assert again.would_exceed(0.6, run="r3")
    assert json.loads(path.read_text())["total_epsilon"] == pytest.approx(3.5)
    assert [p.name for p in path.parent.iterdir()] == ["privacy-tally.json"]  # no temp left
    check_round(STRICT, **{**ROUND_OK, "server_round": 3, "epsilon_spent": again.total(),
                           "epsilon_next": again.total_after("r2", 2.5)})
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        PrivacyTally(path)


def test_pure_modules_load_neither_torch_nor_flower() -> None:
    code = ("import sys, silo_client.data, silo_client.policy, silo_client.ledger, "
            "silo_client.adapters\n"
            "print(','.join(m for m in ('torch', 'flwr', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_pinned() -> None:
    import silo_client.policy as mod

    assert sorted(mod.__all__) == ["PrivacyTally", "RunTerms", "SHARE_METRICS", "SitePolicy",
                                   "check_round", "check_run", "check_run_rules",
                                   "normalize_fingerprint"]


def _kit_with_data(kit: Path) -> Path:
    """The member kit's silo.toml stub, completed the way a site does ([data], [model])."""
    import tomli_w

    from deploy.pki.kit import write_silo_stub
    from federation.demo_data import demo_schema

    path = write_silo_stub(kit, name="hospital-a", local_port=9555)
    assert path == kit / "silo.toml"
    with path.open("a") as fh:
        fh.write("\n" + tomli_w.dumps({"data": {"train": "data/train.csv", "schema": demo_schema()},
                                       "model": {"spec": "sklearn:LogisticRegression"}}))
    return path


def test_member_kit_has_a_policy_stub_the_silo_loads_as_the_permissive_default(
        tmp_path: Path) -> None:
    from silo_client.config import load_silo_config
    from silo_client.silo import Silo

    kit = tmp_path / "kit"
    config = load_silo_config(_kit_with_data(kit))
    assert config.policy_file == (kit / "policy.toml").resolve() and config.policy_file.is_file()
    assert SitePolicy.load(config.policy_file) == SitePolicy()
    assert Silo(config).policy == SitePolicy()


def test_policy_stub_documents_every_rule() -> None:
    from dataclasses import fields

    from deploy.pki.kit import POLICY_STUB

    examples = "\n".join(line.removeprefix("# ") for line in POLICY_STUB.splitlines()
                         if line.startswith("# ") and " = " in line)
    policy = SitePolicy.from_mapping(tomllib.loads(examples))
    for f in fields(SitePolicy):  # each example, uncommented, sets its rule
        assert getattr(policy, f.name) != f.default, f.name


def test_policy_stub_keeps_an_existing_site_policy(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "policy.toml").write_text("max_rounds = 5\n")
    _kit_with_data(kit)
    assert SitePolicy.load(kit / "policy.toml") == SitePolicy(max_rounds=5)


def test_a_roster_above_max_silos_is_refused_before_any_key_is_drawn() -> None:
    """Without enrollment identities a coordinator could list any roster up to a key
    request's 2**20 silos and make a silo deal n² · t shares a round; the site's max_silos
    (1000 by default) reaches the key setup as the secure-aggregation limits, and a larger
    roster is refused there, before the silo draws a key."""
    from strategies.secagg import KeyRequest, make_config, new_silo, silo_step

    class Untouched:
        def read(self, n: int) -> bytes:
            raise AssertionError("the silo drew randomness for a roster it must refuse")

    assert SitePolicy().secagg_limits().max_roster == 1000
    def config(n: int):
        return make_config(run_id="r", roster=list(range(n)), threshold=n // 2 + 1, length=4,
                           clip=1.0, bits=8, max_weight=10)

    big = config(1001)
    with pytest.raises(PolicyRefusal) as err:
        silo_step(new_silo(0), KeyRequest.for_config(big, epoch=1), rng=Untouched(),
                  limits=SitePolicy().secagg_limits())
    assert err.value.reason == "max_silos" and "1001 silos" in str(err.value)
    small = config(5)
    limits = SitePolicy(max_silos=5).secagg_limits()
    state, _ = silo_step(new_silo(0), KeyRequest.for_config(small, epoch=1), limits=limits)
    assert state.config is not None and len(state.config.roster) == 5

"""Site policy refusals reach the coordinator; every outgoing message is in the ledger."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from flwr.app import Context, Message
from rich.console import Console

from coordinator.config import RunConfig, write_run_config
from coordinator.console import round_table
from coordinator.local_grid import LocalGrid
from coordinator.run_store import RunStore
from coordinator.server_app import run_coordinator
from silo_client.client_app import app as client_app
from silo_client.config import load_silo_config, write_silo_config
from silo_client.ledger import verify_ledger
from federation.demo_data import demo_schema
from federation.local import run_in_process
from xsilo.protocol import CONFIG
from xsilo import terms as T


def _with_policy(config: Path, policy: str) -> None:
    (config.parent / "policy.toml").write_text(policy)
    write_silo_config(config, name=config.parent.name, train=config.parent / "data/train.csv",
                      test=config.parent / "data/test.csv", schema=demo_schema(),
                      model="sklearn:LogisticRegression", policy_file=Path("policy.toml"))


@pytest.mark.parametrize("policy, run, reason", [
    ("require_secure_aggregation = true", {}, "require_secure_aggregation"),
    ('allowed_strategies = ["fedprox"]', {}, "allowed_strategies"),
    ("max_rounds = 1", {"num_rounds": 2}, "max_rounds"),
    ("min_silos_per_round = 4", {}, "min_silos_per_round"),
    ("max_epsilon = 1.0\ndelta = 1e-5", {}, "max_epsilon"),
    ("delta = 1e-6", {"dp": {"mechanism": "central", "noise_multiplier": 1.0,
                             "clip_norm": 1.0, "delta": 1e-5}}, "delta"),
])
def test_policy_refusal_reason_reaches_the_coordinator(tmp_path: Path, make_silos,
                                                       policy: str, run: dict, reason: str) -> None:
    configs = make_silos(tmp_path / "silos")
    _with_policy(configs[0], policy)
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, RunConfig(**{"num_rounds": 1, "min_silos": 2, **run}),
                             configs)
    assert summary["status"] == "completed"
    assert "hospital-a" not in summary["silos"]
    join = next(e for e in RunStore(run_dir).events() if e["event"] == "join")
    refusal = join["refused"]["hospital-a"]
    assert refusal.startswith(f"PolicyRefusal[{reason}]")
    ledger = load_silo_config(configs[0]).workspace / "egress.jsonl"
    assert verify_ledger(ledger).ok  # the refusal left the site, so it is recorded
    assert "refusal" in ledger.read_text()
    shown = _render(RunStore(run_dir).events())  # the operator's console says so too
    assert f"refused at join: hospital-a: PolicyRefusal[{reason}]" in shown


def _render(events: list[dict]) -> str:
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(round_table(events))
    return console.export_text()


def test_the_console_shows_join_refusals_and_round_refusals_with_their_reason(
        tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_event({"event": "join", "silos": {"hospital-b": {}, "hospital-c": {}},
                        "refused": {"node-1": "PolicyRefusal[max_rounds]: the run asks for 5 "
                                              "rounds, the site policy allows at most 2"},
                        "silent_nodes": [4]})
    store.append_event({"event": "round", "round": 1, "status": "ok", "silos": {},
                        "contributors": ["hospital-b"], "rejected": {
                            "hospital-c": "PolicyRefusal[min_silos_per_round]: only 1"}})
    shown = _render(store.events())
    assert ("refused at join: node-1: PolicyRefusal[max_rounds]: the run asks for 5 rounds, "
            "the site policy allows at most 2") in shown
    assert "silent at join: node(s) 4" in shown
    assert "ok (hospital-c: PolicyRefusal[min_silos_per_round]: only 1)" in shown
    quiet = [e for e in store.events() if e["event"] != "join"]
    assert "at join" not in _render(quiet)


def _rounds(run_dir: Path) -> dict[int, dict]:
    return {e["round"]: e for e in RunStore(run_dir).events() if e["event"] == "round"}


def _ledger_types(config: Path) -> list[str]:
    path = load_silo_config(config).workspace / "egress.jsonl"
    assert verify_ledger(path).ok
    return [json.loads(line)["message_type"] for line in path.read_text().splitlines()]


def test_a_round_with_too_few_participants_is_refused(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    _with_policy(configs[0], "min_silos_per_round = 3")
    (configs[2].parent / "data" / "train.csv").unlink()  # hospital-c refuses at join
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, RunConfig(num_rounds=2, min_silos=1), configs)
    # hospital-a accepted the run (three silos were asked), then refused every round
    assert summary["status"] == "completed" and summary["silos"] == ["hospital-a", "hospital-b"]
    rows = _rounds(run_dir)
    for r in (1, 2):
        refusal = rows[r]["rejected"]["hospital-a"]
        assert refusal.startswith("PolicyRefusal[min_silos_per_round]"), refusal
        assert f"only 2 silo(s) take part in round {r}" in refusal
        assert rows[r]["contributors"] == ["hospital-b"]
    assert _ledger_types(configs[0]) == ["query", "train.refusal", "train.refusal", "evaluate"]


def _run_announcing(run_dir: Path, config: RunConfig, silo_configs: list[Path],
                    **announced: object) -> dict:
    """A run whose coordinator tells hospital-a (node 1) ``announced`` at join (e.g. fewer
    rounds than it then runs): the real loop and ClientApp, the join terms rewritten on the way."""
    def client(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == "query" and context.node_id == 1:
            for key, value in announced.items():
                msg.content.config_records[CONFIG][key] = value
        return client_app(msg, context)

    run_dir.mkdir(parents=True)
    write_run_config(run_dir / "config.toml", config)
    grid = LocalGrid(client, {i + 1: {"silo-config": str(p.resolve())}
                              for i, p in enumerate(silo_configs)})
    return run_coordinator(grid, str(run_dir), poll_interval=0.0)


@pytest.mark.parametrize("policy, run, announced, refused_from, reason", [
    ("max_rounds = 2", {"num_rounds": 3}, {T.NUM_ROUNDS: 2}, 3, "PolicyRefusal[max_rounds]"),
    ('allowed_strategies = ["fedprox"]', {"strategy": "fedavg"}, {T.STRATEGY: "fedprox"}, 1,
     "PolicyRefusal[allowed_strategies]"),
    # refused by the ClientApp before any training: no mask request in the message of a run
    # it joined as secure (the join record is checked before the site policy's rules)
    ("require_secure_aggregation = true", {},
     {T.SECURE_AGGREGATION: True, T.SECAGG_THRESHOLD: 2}, 1,
     "ProtocolError[ProtocolError]: this silo joined the run with secure aggregation but the "
     "train message has no mask request"),
])
def test_a_round_beyond_the_announced_terms_is_refused(
        tmp_path: Path, make_silos, policy: str, run: dict, announced: dict,
        refused_from: int, reason: str) -> None:
    configs = make_silos(tmp_path / "silos")
    _with_policy(configs[0], policy)
    run_dir = tmp_path / "run"
    config = RunConfig(**{"num_rounds": 1, "min_silos": 2, **run})
    summary = _run_announcing(run_dir, config, configs, **announced)
    assert summary["status"] == "completed" and "hospital-a" in summary["silos"]
    rows = _rounds(run_dir)
    for r in range(1, config.num_rounds + 1):
        if r < refused_from:
            assert "hospital-a" in rows[r]["contributors"] and not rows[r]["rejected"]
        else:
            assert rows[r]["rejected"]["hospital-a"].startswith(reason), rows[r]["rejected"]
            assert rows[r]["contributors"] == ["hospital-b", "hospital-c"]
    trains = [t for t in _ledger_types(configs[0]) if t.startswith("train")]
    assert trains == ["train"] * (refused_from - 1) + ["train.refusal"] * (
        config.num_rounds - refused_from + 1)


def test_a_secure_run_satisfies_a_policy_that_requires_it(tmp_path: Path, make_silos) -> None:
    configs = make_silos(tmp_path / "silos")
    _with_policy(configs[0], 'require_secure_aggregation = true\nallowed_strategies = ["fedavg"]')
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, RunConfig(num_rounds=2, min_silos=3,
                                                secure_aggregation=True), configs)
    assert summary["status"] == "completed" and summary["rounds_failed"] == []
    rows = _rounds(run_dir)
    assert all(rows[r]["contributors"] == ["hospital-a", "hospital-b", "hospital-c"]
               and not rows[r]["rejected"] for r in (1, 2))


def test_every_outgoing_message_is_in_a_valid_ledger(tmp_path: Path, federation: list[Path]) -> None:
    run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3), federation)
    for config in federation:
        path = load_silo_config(config).workspace / "egress.jsonl"
        assert verify_ledger(path).ok
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert [e["message_type"] for e in entries] == ["query", "train", "train", "evaluate"]
        assert [e["server_round"] for e in entries] == [0, 1, 2, 2]
        assert entries[1]["tensors"] and entries[1]["tensors"] == entries[0]["tensors"]
        assert entries[3]["tensors"] == {}  # evaluation replies carry metrics only
        assert all(len(e["payload_sha256"]) == 64 for e in entries)


def _tls_server(tmp_path: Path):
    """A TLS endpoint on loopback presenting a CA-signed 'coordinator' certificate."""
    import socket
    import ssl
    import threading

    from cryptography.hazmat.primitives.asymmetric import ec

    from deploy.pki import certs

    ca = certs.make_ca("test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.issue_leaf(ca, "coordinator", public_key=key.public_key(),
                            server_hosts=["127.0.0.1"])
    certs.write_public_pem(tmp_path / "ca.crt", ca.cert)
    certs.write_public_pem(tmp_path / "srv.crt", cert)
    certs.write_private_key(tmp_path / "srv.key", key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    return sock, stop, certs.fingerprint(cert)


@pytest.mark.parametrize("pinned_matches", [False, True])
def test_coordinator_fingerprint_pinning(tmp_path: Path, make_silos, pinned_matches: bool) -> None:
    sock, stop, real_fp = _tls_server(tmp_path)
    try:
        configs = make_silos(tmp_path / "silos")
        fp = real_fp if pinned_matches else "00" * 32
        (configs[0].parent / "policy.toml").write_text(
            f'allowed_coordinator_fingerprints = ["{fp}"]\n')
        write_silo_config(configs[0], name="hospital-a",
                          train=configs[0].parent / "data/train.csv",
                          test=configs[0].parent / "data/test.csv", schema=demo_schema(),
                          model="sklearn:LogisticRegression", policy_file=Path("policy.toml"),
                          superlink=f"127.0.0.1:{sock.getsockname()[1]}",
                          root_certificates=tmp_path / "ca.crt")
        summary = run_in_process(tmp_path / "run", RunConfig(num_rounds=1, min_silos=2), configs)
    finally:
        stop.set()
        sock.close()
    join = next(e for e in RunStore(tmp_path / "run").events() if e["event"] == "join")
    if pinned_matches:
        assert "hospital-a" in summary["silos"] and not join["refused"]
    else:
        assert join["refused"]["hospital-a"].startswith("PolicyRefusal[allowed_coordinator_fingerprints]")

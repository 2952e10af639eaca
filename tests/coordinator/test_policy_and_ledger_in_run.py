"""Site policy refusals reach the coordinator; every outgoing message is in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import RunConfig
from coordinator.run_store import RunStore
from silo_client.config import load_silo_config, write_silo_config
from silo_client.ledger import verify_ledger
from xsilo.demo_data import demo_schema
from xsilo.local import run_in_process


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
    refusal = join["refused"]["node-1"]
    assert refusal.startswith(f"PolicyRefusal[{reason}]")
    ledger = load_silo_config(configs[0]).workspace / "egress.jsonl"
    assert verify_ledger(ledger).ok  # the refusal left the site, so it is recorded
    assert "refusal" in ledger.read_text()


def test_every_outgoing_message_is_in_a_valid_ledger(tmp_path: Path, federation: list[Path]) -> None:
    run_in_process(tmp_path / "run", RunConfig(num_rounds=2, min_silos=3), federation)
    import json

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

    from deploy import certs

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
        assert join["refused"]["node-1"].startswith("PolicyRefusal[allowed_coordinator_fingerprints]")

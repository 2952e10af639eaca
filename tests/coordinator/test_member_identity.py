"""Members are who they say they are: signed key adverts, checked by every silo, and a pinned
roster that a coordinator running the CA cannot extend with minted members.

Real certificates from ``deploy.pki.certs``; the real ServerApp and ClientApp in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message

from coordinator.config import RunConfig, write_run_config
from coordinator.local_grid import LocalGrid
from coordinator.messages import Observers
from coordinator.run_store import RunStore
from coordinator.server_app import run_coordinator
from deploy.pki import certs
from silo_client.client_app import app as client_app
from silo_client.config import load_silo_config
from xsilo.protocol import SECAGG, SECAGG_SETUP

CONFIG = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                   name="members")


def _enroll(silo: Path, ca: certs.CertifiedKey, name: str) -> str:
    """Give ``silo`` an [identity] signed by ``ca``; return its key fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.issue_leaf(ca, name, public_key=key.public_key(), client=True)
    certs.write_private_key(silo.parent / "silo.key", key)
    certs.write_public_pem(silo.parent / "silo.crt", cert)
    certs.write_public_pem(silo.parent / "ca.crt", ca.cert)
    if "[identity]" not in silo.read_text():
        silo.write_text(silo.read_text() + '\n[identity]\ncertificate = "silo.crt"\n'
                        'key = "silo.key"\nca = "ca.crt"\n')
    assert load_silo_config(silo).identity_certificate == silo.parent / "silo.crt"
    return "sha256:" + certs.public_key_fingerprint(key.public_key())


def _pin(silo: Path, roster: dict[str, str]) -> None:
    entries = ", ".join(f'"{name}" = "{fp}"' for name, fp in roster.items())
    (silo.parent / "policy.toml").write_text(f"roster = {{ {entries} }}\n")
    silo.write_text(silo.read_text() + '\n[policy]\nfile = "policy.toml"\n')


def _run(tmp: Path, silos: list[Path], *, config: RunConfig = CONFIG,
         rewrite: Callable[[Message, Context], None] | None = None, view: list | None = None,
         drop: Callable[[int, str], bool] | None = None):
    def client(msg: Message, context: Context) -> Message:
        if rewrite is not None:
            rewrite(msg, context)
        return client_app(msg, context)

    run_dir = tmp / "run"
    run_dir.mkdir()
    write_run_config(run_dir / "config.toml", config)
    grid = LocalGrid(client, {i + 1: {"silo-config": str(p.resolve())}
                              for i, p in enumerate(silos)}, drop=drop)
    summary = run_coordinator(grid, str(run_dir), poll_interval=0.0,
                              observers=Observers(reply=None if view is None else view.append))
    return summary, [e for e in RunStore(run_dir).events() if e["event"] == "round"][1:]


@pytest.fixture
def enrolled(tmp_path: Path, federation: list[Path]) -> tuple[list[Path], certs.CertifiedKey,
                                                              dict[str, str]]:
    ca = certs.make_ca("Consortium CA", curve="P-256")
    names = ["hospital-a", "hospital-b", "hospital-c"]
    roster = {name: _enroll(silo, ca, name) for name, silo in zip(names, federation)}
    return federation, ca, roster


def test_signed_adverts_are_checked_and_the_run_completes(tmp_path: Path, enrolled) -> None:
    silos, _, roster = enrolled
    for silo in silos:
        _pin(silo, roster)
    view: list[Message] = []
    summary, rows = _run(tmp_path, silos, view=view)
    assert summary["status"] == "completed" and rows[0]["contributors"] == sorted(roster)
    adverts = [m for m in view if m.metadata.message_type == SECAGG_SETUP]
    assert len(adverts) == 3 and all(
        len(m.content.config_records[SECAGG]["certificate"]) > 200
        and len(m.content.config_records[SECAGG]["signature"]) > 60 for m in adverts)


def test_a_minted_member_is_refused_by_every_silo_that_pins_the_roster(
        tmp_path: Path, enrolled, make_silos) -> None:
    """The coordinator runs the CA: it mints "hospital-x" and puts it in the round."""
    silos, ca, roster = enrolled
    minted = make_silos(tmp_path / "minted")[0]
    # Its own name: two nodes joining as one silo are both refused at join.
    minted.write_text(minted.read_text().replace('name = "hospital-a"', 'name = "hospital-x"'))
    _enroll(minted, ca, "hospital-x")
    for silo in silos:
        _pin(silo, roster)
    config = RunConfig(num_rounds=1, min_silos=2, expected_silos=4, secure_aggregation=True,
                       name="minted")
    summary, rows = _run(tmp_path, [*silos, minted], config=config)
    assert summary["rounds_failed"] == [1]  # no sum: the real silos never masked
    for name in roster:
        refusal = rows[0]["rejected"][name]
        assert refusal.startswith("PolicyRefusal[roster]"), refusal
        assert "(hospital-x) with key sha256:" in refusal and "not in this site's roster" in refusal


def test_a_substituted_key_fails_its_signature(tmp_path: Path, enrolled) -> None:
    """A coordinator swapping one peer's masking key in hospital-a's directory (a man in the
    middle between silos) is caught: the key is no longer the one the peer signed."""
    silos, _, _ = enrolled

    def swap(msg: Message, context: Context) -> None:
        if msg.metadata.message_type == "train" and context.node_id == 1:
            record = dict(msg.content.config_records[SECAGG])
            keys = list(record["dir_mask_pks"])
            keys[1] = bytes(range(1, 33))  # a key of the coordinator's choosing
            record["dir_mask_pks"] = keys
            msg.content[SECAGG] = ConfigRecord(record)

    summary, rows = _run(tmp_path, silos, rewrite=swap)
    refusal = rows[0]["rejected"]["hospital-a"]
    assert "silo 1 (hospital-b): the signature over its secure-aggregation keys does not " \
           "verify" in refusal, refusal


def test_a_peer_from_another_ca_or_unsigned_is_refused(tmp_path: Path, enrolled) -> None:
    silos, _, _ = enrolled
    impostor = certs.make_ca("Another CA", curve="P-256")
    _enroll(silos[2], impostor, "hospital-c")  # hospital-c now carries an outsider's certificate
    summary, rows = _run(tmp_path, silos)
    refusal = rows[0]["rejected"]["hospital-a"]
    assert "silo 2 (hospital-c): its certificate was not issued by this consortium's CA" \
        in refusal, refusal


def test_a_pinned_roster_needs_an_identity(tmp_path: Path, federation: list[Path]) -> None:
    _pin(federation[0], {"hospital-b": "sha256:" + "ab" * 32})
    summary, rows = _run(tmp_path, federation)
    assert "needs this silo's [identity]" in rows[0]["rejected"]["hospital-a"]


ROUND_KEYS = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_round_keys="on", name="round-keys")


def test_signed_round_keys_are_checked_and_the_run_completes(tmp_path: Path, enrolled) -> None:
    silos, _, roster = enrolled
    for silo in silos:
        _pin(silo, roster)
    view: list[Message] = []
    summary, rows = _run(tmp_path, silos, config=ROUND_KEYS, view=view)
    assert summary["status"] == "completed" and rows[0]["contributors"] == sorted(roster)
    dealt = [m.content.config_records[SECAGG] for m in view
             if m.metadata.message_type == SECAGG_SETUP
             and m.content.config_records[SECAGG]["kind"] == "secagg/dealt"]
    assert len(dealt) == 2 * 3  # round 1 and the final evaluation, three silos each
    assert all(len(d["signature"]) > 60 for d in dealt)


def test_a_substituted_round_key_fails_its_signature(tmp_path: Path, enrolled) -> None:
    """A coordinator swapping hospital-b's round key in hospital-a's mask request (to sit
    between them) is caught: the key is not the one hospital-b signed for this round."""
    silos, _, _ = enrolled

    def swap(msg: Message, context: Context) -> None:
        if msg.metadata.message_type == "train" and context.node_id == 1:
            record = dict(msg.content.config_records[SECAGG])
            keys = list(record["round_pks"])
            keys[1] = bytes(range(1, 33))  # a key of the coordinator's choosing
            record["round_pks"] = keys
            msg.content[SECAGG] = ConfigRecord(record)

    summary, rows = _run(tmp_path, silos, config=ROUND_KEYS, rewrite=swap)
    refusal = rows[0]["rejected"]["hospital-a"]
    assert "silo 1 (hospital-b): the signature over its secure-aggregation keys does not " \
           "verify" in refusal, refusal


def test_a_round_key_of_a_superseded_dealing_fails_its_signature(tmp_path: Path,
                                                                  enrolled) -> None:
    """Round 1's DealRequest to hospital-c is lost, so hospital-a and hospital-b deal again
    between themselves. A coordinator showing hospital-a hospital-b's round key of the first
    dealing (signed then, for the three silos it dealt to) is caught: a round key's
    signature names the set it was dealt to."""
    silos, _, _ = enrolled
    setups = {3: 0}

    def lose_deal(node: int, message_type: str) -> bool:  # the key setup, then the dealing
        if node == 3 and message_type == SECAGG_SETUP:
            setups[3] += 1
            return setups[3] == 2
        return False

    view: list[Message] = []

    def replay(msg: Message, context: Context) -> None:
        if msg.metadata.message_type == "train" and context.node_id == 1:
            first = next(m.content.config_records[SECAGG] for m in view
                         if m.metadata.message_type == SECAGG_SETUP
                         and m.content.config_records[SECAGG].get("kind") == "secagg/dealt"
                         and m.content.config_records[SECAGG]["silo"] == 1)
            record = dict(msg.content.config_records[SECAGG])
            assert list(record["active"]) == [0, 1]  # the second dealing's set
            keys, signatures = list(record["round_pks"]), list(record["round_signatures"])
            assert keys[1] != first["round_pk"]  # hospital-b dealt a fresh key
            keys[1], signatures[1] = first["round_pk"], first["signature"]
            record["round_pks"], record["round_signatures"] = keys, signatures
            msg.content[SECAGG] = ConfigRecord(record)

    config = RunConfig(num_rounds=1, min_silos=2, expected_silos=3, secure_aggregation=True,
                       secagg_round_keys="on", name="round-keys", round_timeout=2.0,
                       straggler_grace=0.0)
    summary, rows = _run(tmp_path, silos, config=config, rewrite=replay, view=view,
                         drop=lose_deal)
    assert rows[0]["secure_aggregation"]["redealt"] == 1
    refusal = rows[0]["rejected"]["hospital-a"]
    assert "silo 1 (hospital-b): the signature over its secure-aggregation keys does not " \
           "verify" in refusal, refusal

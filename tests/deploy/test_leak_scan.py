"""The private-key leak scan used after real runs (tests.deploy.conftest.private_key_leaks)
must itself catch a key in every shape it can leak in."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from deploy.pki.certs import make_ca, make_node_auth_key, write_private_key, write_public_pem
from tests.deploy.conftest import private_key_leaks


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    kit, run = tmp_path / "kit", tmp_path / "run"
    run.mkdir()
    write_private_key(kit / "silo.key", ec.generate_private_key(ec.SECP256R1()))
    make_node_auth_key(kit / "node.key", kit / "node.pub")
    ca = make_ca("scan CA")
    write_public_pem(run / "ca.crt", ca.cert)  # public material must not be flagged
    (run / "metrics.jsonl").write_text('{"event": "round", "round": 1}\n')
    return kit, run, kit / "silo.key"


def test_clean_directories_pass(tmp_path: Path) -> None:
    kit, run, _ = _setup(tmp_path)
    assert private_key_leaks([run], keys=[kit / "silo.key", kit / "node.key"]) == []
    assert private_key_leaks([kit]) == []  # the key files themselves, 0600


def test_base64_body_without_header_is_found(tmp_path: Path) -> None:
    kit, run, key = _setup(tmp_path)
    body = "\n".join(line for line in key.read_text().splitlines() if not line.startswith("-"))
    (run / "summary.json").write_text(json.dumps({"note": body}))  # newlines JSON-escaped
    assert private_key_leaks([run]) == []  # the key file is elsewhere: nothing to look for
    problems = private_key_leaks([run], keys=[key])
    assert problems == [f"base64 body of {key} in {run / 'summary.json'}"]


def test_one_line_of_an_openssh_node_key_is_found(tmp_path: Path) -> None:
    kit, run, _ = _setup(tmp_path)
    node = kit / "node.key"
    line = [ln for ln in node.read_text().splitlines() if not ln.startswith("-")][1]
    (run / "supernode.log").write_text(f"INFO something {line} more\n")
    assert private_key_leaks([run], keys=[node]) == [
        f"base64 body of {node} in {run / 'supernode.log'}"]


def test_pem_header_and_key_file_mode(tmp_path: Path) -> None:
    kit, run, key = _setup(tmp_path)
    (run / "copy.txt").write_bytes(key.read_bytes())
    os.chmod(key, 0o644)
    problems = private_key_leaks([run, kit])
    assert f"private key in {run / 'copy.txt'}" in problems
    assert f"{key} mode 0o644" in problems

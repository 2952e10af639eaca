"""Operator mistakes through the real ``xsilo`` executable: one red line, non-zero exit,
no traceback. Each case fails before any long-running process is started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.home import CoordinatorHome
from silo_client.config import write_silo_config
from federation.demo_data import demo_schema, write_demo_data

pytestmark = pytest.mark.timeout(90)
XSILO = str(Path(sys.executable).parent / "xsilo")


def _fails(*args: str) -> str:
    out = subprocess.run([XSILO, *args], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "400"})
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text, text
    assert text.strip().startswith("error: "), text
    return text


def test_pki_init_with_a_missing_passphrase_file(tmp_path: Path) -> None:
    text = _fails("pki", "init", "--pki-dir", str(tmp_path / "pki"),
                  "--passphrase-file", str(tmp_path / "missing"))
    assert "--passphrase-file" in text and "missing" in text and "No such file" in text
    assert not (tmp_path / "pki" / "ca.key").exists()


def _silo(tmp_path: Path) -> tuple[Path, Path]:
    """A silo.toml that would start (certificate and key files present); its train CSV."""
    silo = write_demo_data(tmp_path / "data")[0]
    (tmp_path / "ca.crt").write_text("placeholder: the data check comes first\n")
    (tmp_path / "node.key").write_text("placeholder\n")
    path = write_silo_config(tmp_path / "silo.toml", name=silo.name, train=silo.train,
                             schema=demo_schema(), model="sklearn:LogisticRegression",
                             superlink="127.0.0.1:1", root_certificates=tmp_path / "ca.crt",
                             auth_key=tmp_path / "node.key")
    return path, Path(silo.train)


def test_silo_start_with_a_missing_data_file(tmp_path: Path) -> None:
    config, train = _silo(tmp_path)
    train.unlink()
    text = _fails("silo", "start", "--config", str(config))
    assert "train.csv" in text
    assert not (tmp_path / "workspace" / "supernode.log").exists()  # never started


def test_silo_start_with_a_wrong_csv_column(tmp_path: Path) -> None:
    config, train = _silo(tmp_path)
    header, rest = train.read_text().split("\n", 1)
    column = next(c for c in header.split(",") if c != "label")
    train.write_text(header.replace(column, "not a declared column", 1) + "\n" + rest)
    text = _fails("silo", "start", "--config", str(config))
    assert column.strip('"') in text or "not a declared column" in text
    assert not (tmp_path / "workspace" / "supernode.log").exists()


def test_coordinator_start_on_a_port_in_use(tmp_path: Path) -> None:
    from tests.deploy.conftest import make_pki

    pki = make_pki(tmp_path / "pki")
    files = pki.coordinator_files()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        CoordinatorHome.write(tmp_path / "home", host="127.0.0.1", port=port,
                              cert=str(files.superlink_cert), key=str(files.superlink_key))
        (tmp_path / "home" / "pki").mkdir()
        (tmp_path / "home" / "pki" / "ca.crt").write_bytes(pki.ca_cert_path.read_bytes())
        text = _fails("coordinator", "start", "--home", str(tmp_path / "home"))
    assert f"port {port}" in text and "already in use" in text
    assert not (tmp_path / "home" / "logs" / "superlink.log").exists()

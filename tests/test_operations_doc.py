"""docs/operations.md runs as written: every ```bash block, in order, on this machine.

What differs from a real consortium, and only that:

* the hosts' directories are moved under a temporary one (``/srv/``, ``/media/usb``,
  ``/etc/systemd/system``, ``/etc/nftables.d``, ``/var/backups``), and a runnable block that
  still names another absolute system path fails the test before it runs: nothing here
  writes outside the temporary directory;
* the CA host, the coordinator host and the silo host are one machine and one account, so
  ``sudo -u xsilo`` (act as the service account) is dropped;
* what the page asks a person for comes from the test: the CA passphrase
  (``$XSILO_CA_PASSPHRASE``, one of the three sources `pki init` names), the CA fingerprint
  read by phone (``$CA_FINGERPRINT``, computed from the CA certificate), the ``y`` that
  approves a request after comparing fingerprints;
* once the silo is configured, two messages are written to its egress ledger, as a run
  would, so that the backup and restore blocks have a ledger to carry and verify.

Blocks preceded by ``<!-- not run: REASON -->`` are skipped (they create accounts, enable
services, install into /opt or need the registry; the air-gapped install is run by
tests/e2e/test_airgapped_install.py); the ``<!-- firewall -->`` block is checked by its own
test, which needs ``nft``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]  # ~30 `xsilo` processes
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
MOVED = ("/srv/", "/media/usb", "/etc/systemd/system", "/etc/nftables.d", "/var/backups")
_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>\w*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(?P<mark>not run|firewall)\s*:?\s*(?P<why>.*?)\s*-->\s*$")
_SYSTEM_PATH = re.compile(r"(?<![\w./-])/(srv|etc|var|opt|media|usr/local|home|root)/")


def blocks() -> list[tuple[str, str, str]]:
    """(mark, reason, text) of every ```bash block of the page, in order; mark is "run",
    "not run" or "firewall"."""
    out, lines, i = [], DOC.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence or not fence["lang"]:
            i += 1
            continue
        indent, body, j = len(fence["indent"]), [], i + 1
        while not _FENCE.match(lines[j]) or _FENCE.match(lines[j])["lang"]:
            body.append(lines[j][indent:])
            j += 1
        if fence["lang"] == "bash":
            prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            mark = _MARK.match(prev)
            out.append((mark["mark"] if mark else "run", mark["why"] if mark else "",
                        "\n".join(body) + "\n"))
        i = j + 1
    return out


def _moved(text: str, tmp: Path) -> str:
    rest = text
    for path in MOVED:
        rest = rest.replace(path, "")
        text = text.replace(path, f"{tmp}{path}")
    stray = [m.group(0) for m in _SYSTEM_PATH.finditer(rest)]
    assert not stray, f"a runnable block names a system path {stray}: move it or mark it"
    return text.replace("sudo -u xsilo ", "")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSILO_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               HOME=str(tmp / "home"), COLUMNS="200", XSILO_CA_PASSPHRASE="a long CA passphrase",
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    ca = tmp / "srv" / "xsilo-ca" / "pki" / "ca.crt"
    if ca.is_file():
        from deploy.pki.certs import fingerprint, load_certificate

        env["CA_FINGERPRINT"] = fingerprint(load_certificate(ca))
    return env


def _a_run_happened(tmp: Path) -> None:
    """What rounds leave in a configured silo's workspace: ledger lines, the sealing key."""
    from silo_client.config import load_silo_config
    from silo_client.ledger import LEDGER_FILE, EgressLedger
    from silo_client.sealed import state_key

    silo_toml = tmp / "srv" / "xsilo" / "kit" / "silo.toml"
    if not silo_toml.is_file() or not re.search(r"(?m)^\[data\]", silo_toml.read_text()):
        return
    workspace = load_silo_config(silo_toml).workspace
    if (workspace / LEDGER_FILE).exists():
        return
    workspace.mkdir(parents=True, exist_ok=True)
    ledger = EgressLedger(workspace / LEDGER_FILE)
    for rnd in (1, 2):
        ledger.append(run_id=7, server_round=rnd, message_type="train", masked=False,
                      tensors={"coef": ((1, 2), "float32")}, payload_sha256="0" * 64,
                      clip_norm=None, noise_sigma=None, epsilon=None)
    state_key(workspace)


def _run(text: str, tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=tmp, env=_env(tmp),
                          input="y\n" * 20, capture_output=True, text=True, timeout=timeout)


def test_the_page_marks_what_it_does_not_run() -> None:
    found = blocks()
    assert sum(mark == "run" for mark, _, _ in found) >= 15
    skipped = [(why, text) for mark, why, text in found if mark == "not run"]
    assert len(skipped) <= 6 and all(why for why, _ in skipped), skipped


def test_every_command_runs_as_written(tmp_path: Path) -> None:
    for tool in ("openssl", "tar", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed; the page uses it (Debian: openssl, tar, "
                        "systemd; .ci/run installs them)")
    (tmp_path / "home").mkdir()
    for mark, _why, text in blocks():
        if mark != "run":
            continue
        res = _run(_moved(text, tmp_path), tmp_path)
        assert res.returncode == 0, f"block failed:\n{text}\n--- stdout\n{res.stdout}\n" \
                                    f"--- stderr\n{res.stderr}"
        _a_run_happened(tmp_path)

    srv = tmp_path / "srv"
    assert b"ENCRYPTED" in (srv / "xsilo-ca" / "pki" / "private" / "ca.key").read_bytes()
    for copy in (srv / "xsilo" / "pki", tmp_path / "media" / "usb" / "pki"):
        assert not (copy / "private").exists() and (copy / "crl.pem").is_file()
    units = tmp_path / "etc" / "systemd" / "system"
    assert {"xsilo-coordinator.service", "xsilo-coordinator-certs.timer", "xsilo-silo.service",
            "xsilo-silo-certs.timer"} <= {p.name for p in units.iterdir()}
    assert not (units / "xsilo-coordinator-crl.timer").exists()  # the CA key is offline
    restored = srv / "xsilo" / "restore" / "kit" / "workspace"
    assert (restored / "egress.jsonl.head").is_file() and not (restored / "state.key").exists()


def test_firewall_rules_parse(tmp_path: Path) -> None:
    (block,) = [text for mark, _, text in blocks() if mark == "firewall"]
    if shutil.which("nft") is None:
        pytest.skip("`nft` is not installed (Debian: nftables; .ci/run installs it)")
    prefix: list[str] = []
    if os.geteuid() != 0:  # `nft -c` asks the kernel; a user namespace lets it, touching nothing
        if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
            pytest.skip("`nft -c` needs root or an unprivileged user namespace")
        prefix = ["unshare", "-rn"]
    text = _moved(block, tmp_path)
    res = subprocess.run([*prefix, "bash", "-euo", "pipefail", "-c", text], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

"""Another local account on the coordinator host cannot use the SuperLink's Control API.

A real coordinator (SuperLink in its private network namespace + the mTLS gateway, through
``start_coordinator``) and, as the account ``nobody`` — the account the gateway's nginx
workers run as here, so file modes alone cannot keep it out — every way in we know of:
``flwr`` with a FLWR_HOME of its own (list nodes, register a node key, start a run) at the
SuperLink's port and at the gateway, a raw HTTPS POST to the Control API, the bridge's unix
socket, and ``nsenter`` into the namespace. Each must fail; the operator's own ``flwr``
calls (list, register, run, status, stop) must still work.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from coordinator.home import CoordinatorHome, start_coordinator, write_gateway_home
from coordinator.runs import APP_DIR, new_run_dir, submit_run
from deploy.gateway.netns import unavailable
from deploy.launch.processes import free_port
from deploy.pki.certs import make_node_auth_key
from tests.deploy.conftest import make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone
OTHER = "nobody"
# `env` execs the program as that account (setpriv itself may reach paths that account cannot)
SETPRIV = ["setpriv", f"--reuid={OTHER}", "--regid=nogroup", "--clear-groups", "env"]
UNAVAILABLE = "Connection to the SuperLink is unavailable"

# What the other account runs: each attempt in turn, one JSON object of outcomes at the end.
ATTACK = r'''
import json, os, socket, ssl, subprocess, sys
port, gw_port, sock_path, pid, pub, app = sys.argv[1:7]
out = {}

def flwr(*args):
    code = "import sys; from flwr.cli.app import app; sys.argv[0] = 'flwr'; app()"
    res = subprocess.run([sys.executable, "-c", code, *args, "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    text = res.stdout[res.stdout.find("{"):] if "{" in res.stdout else ""
    try:
        return json.loads(text)
    except ValueError:
        return {"success": None, "error-message": (res.stdout + res.stderr)[-600:]}

for conn in ("superlink", "gateway"):
    out[f"list-{conn}"] = flwr("supernode", "list", conn)
    out[f"register-{conn}"] = flwr("supernode", "register", pub, conn)
    out[f"run-{conn}"] = flwr("run", app, conn)
    out[f"ls-{conn}"] = flwr("ls", conn)
try:
    socket.create_connection(("127.0.0.1", int(port)), timeout=3).close()
    out["tcp"] = "connected"
except OSError as exc:
    out["tcp"] = f"{type(exc).__name__}: {exc}"
ctx = ssl.create_default_context(cafile=os.environ["CA"])
ctx.check_hostname = False
try:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=3) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"POST /v1/control/list-nodes HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 0\r\n\r\n")
            out["post"] = tls.recv(200).decode(errors="replace")
except (OSError, ssl.SSLError) as exc:
    out["post"] = f"{type(exc).__name__}: {exc}"
try:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(sock_path)
        out["unix-connected"] = True
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"POST /v1/control/list-nodes HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 0\r\n\r\n")
            out["unix"] = tls.recv(200).decode(errors="replace")
except (OSError, ssl.SSLError) as exc:
    out["unix"] = f"{type(exc).__name__}: {exc}"
res = subprocess.run(["nsenter", "--target", pid, "--net", "--", sys.executable, "-c",
                      "print('inside')"], capture_output=True, text=True, timeout=30)
out["nsenter"] = [res.returncode, res.stdout + res.stderr]
res = subprocess.run(["nsenter", "--target", pid, "--user", "--net", "--", sys.executable,
                      "-c", "print('inside')"], capture_output=True, text=True, timeout=30)
out["nsenter-user"] = [res.returncode, res.stdout + res.stderr]
print("RESULT " + json.dumps(out))
'''


def _as_other(argv: list[str], *, env: dict[str, str], timeout: float = 80) -> str:
    res = subprocess.run([*SETPRIV, *argv], capture_output=True, text=True, env=env,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr


def _other_python(env: dict[str, str]) -> str | None:
    """An interpreter the other account can execute that imports this venv's Flower (the
    venv's own may sit under a directory closed to it, e.g. /root/.pyenv)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  shutil.which(f"python{version}"), f"/usr/bin/python{version}",
                  f"/usr/local/bin/python{version}"]
    for candidate in dict.fromkeys(c for c in candidates if c):
        if "import ok" in _as_other([candidate, "-c", "import flwr.cli.app; print('import ok')"],
                                    env=env, timeout=60):
            return candidate
    return None


@pytest.fixture
def other_dir() -> Iterator[Path]:
    """A directory of the other account's own (pytest's tmp_path is closed to it)."""
    path = Path(tempfile.mkdtemp(prefix="xsilo-other-"))
    entry = pwd.getpwnam(OTHER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_another_local_account_cannot_use_the_control_api(tmp_path: Path,
                                                          other_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second local account with setpriv")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to act as a second local account")
    if (reason := unavailable()) is not None:
        pytest.skip(f"no private network namespace here ({reason}); the coordinator falls "
                    "back to a loopback SuperLink, which any local account can use")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(other_dir),
           "FLWR_HOME": str(other_dir / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "CA": str(other_dir / "ca.crt")}
    python = _other_python(env)
    if python is None:
        pytest.skip(f"no Python interpreter that account {OTHER} can run imports this "
                    "environment's Flower")

    gw_port, sl_port = free_port(), free_port()
    pki = make_pki(tmp_path / "pki", address=f"127.0.0.1:{gw_port}")
    write_gateway_home(tmp_path / "home", pki_dir=pki.root, public_host="127.0.0.1",
                       gateway_port=gw_port, superlink_port=sl_port)
    home = CoordinatorHome.load(tmp_path / "home")
    make_node_auth_key(tmp_path / "op.key", tmp_path / "op.pub")
    (other_dir / "flwr").mkdir()
    shutil.copy(pki.ca_cert_path, other_dir / "ca.crt")  # public: silos get it too
    make_node_auth_key(other_dir / "mine.key", other_dir / "mine.pub")
    shutil.copytree(APP_DIR, other_dir / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (other_dir / "attack.py").write_text(ATTACK)
    (other_dir / "flwr" / "config.toml").write_text(
        '[superlink]\ndefault = "superlink"\n\n'
        f'[superlink.superlink]\naddress = "127.0.0.1:{sl_port}"\n'
        f'root-certificates = "{other_dir / "ca.crt"}"\n\n'
        f'[superlink.gateway]\naddress = "127.0.0.1:{gw_port}"\n'
        f'root-certificates = "{other_dir / "ca.crt"}"\n')
    subprocess.run(["chown", "-R", f"{OTHER}:", str(other_dir)], check=True)

    running = start_coordinator(home)
    try:
        pid = running.superlink.pid
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert running.bridge is not None
        output = _as_other([python, str(other_dir / "attack.py"), str(sl_port), str(gw_port),
                            str(running.bridge.socket), str(pid), str(other_dir / "mine.pub"),
                            str(other_dir / "app")], env=env)
        assert "RESULT " in output, output
        out = json.loads(output.split("RESULT ", 1)[1])

        for what in ("list", "register", "run", "ls"):
            at_superlink, at_gateway = out[f"{what}-superlink"], out[f"{what}-gateway"]
            # nothing listens on the SuperLink's port where this account lives …
            assert at_superlink["success"] is False, (what, at_superlink)
            assert UNAVAILABLE in at_superlink["error-message"], (what, at_superlink)
            # … and the gateway wants a consortium client certificate
            assert at_gateway["success"] is False, (what, at_gateway)
        assert out["tcp"].startswith("ConnectionRefusedError"), out["tcp"]
        assert out["post"].startswith("ConnectionRefusedError"), out["post"]
        # the workers' group may open the socket, but the bridge closes on anyone else
        assert "HTTP/1.1" not in out["unix"], out["unix"]
        deadline = time.monotonic() + 5
        while "refused a connection from pid" not in running.superlink.log_tail(200):
            assert time.monotonic() < deadline, running.superlink.log_tail(40)
            time.sleep(0.1)
        assert out["nsenter"][0] != 0 and "inside" not in out["nsenter"][1], out["nsenter"]
        assert out["nsenter-user"][0] != 0 and "inside" not in out["nsenter-user"][1]

        # the operator's own calls go on working, through the namespace
        cli = home.cli()
        assert cli.netns is not None
        assert cli.list_nodes() == []  # no silo enrolled yet
        node = cli.register_node(tmp_path / "op.pub")
        assert [int(n["node-id"]) for n in cli.list_nodes()] == [node]
        run_dir = new_run_dir(home.runs, "probe")
        run_id, _store = submit_run(cli, run_dir, RunConfig(num_rounds=1, min_silos=1,
                                                            join_timeout=60.0, name="probe"))
        assert not cli.status(run_id).startswith("finished"), cli.status(run_id)
        cli.stop_run(run_id)
        deadline = time.monotonic() + 20
        while not (status := cli.status(run_id)).startswith("finished"):
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert status == "finished:stopped", status
        # nothing the other account tried reached the SuperLink
        superlink_log = running.superlink.log_tail(10_000)
        assert "mine.pub" not in superlink_log and superlink_log.count("RegisterNode]") == 1
    finally:
        running.stop()
    assert not running.superlink.alive()
    assert not running.bridge.socket.parent.exists()

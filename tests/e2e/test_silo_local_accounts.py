"""Another local account on a silo host cannot take the silo's tasks or speak through its
gateway.

Each SuperNode serves Flower's Runtime API (acquire a task, pull its input — the global
model and run config —, push its output) on a local port without authentication of its own,
and the silo gateway presents the silo's client certificate to whoever reaches it. A real
mTLS federation (two silos, started as ``xsilo silo start`` starts them) and, as the account
``nobody`` — the account the gateways' nginx workers run as here, so file modes alone cannot
keep it out — every way in we know of, while a run trains: a TCP connection to the
SuperNode's Runtime API port and to the silo gateway's port on 127.0.0.1, Flower's own
Runtime client acquiring a task there, the gateway's unix socket, and ``nsenter`` into the
SuperNode's network namespace. Each must fail, and the run must complete with both silos.
As a control, the same acquire run by root inside the namespace reaches the API (and is
refused there by Flower's SuperExec authentication, HTTP 401), so the attack code is not
simply broken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from deploy.gateway.netns import PrivateNet, unavailable
from federation.demo_data import write_demo_data
from federation.deployment import LocalFederation
from tests.e2e.test_local_accounts import SETPRIV, _other_python, other_dir  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~60 s alone

# Flower's own Runtime client, as its SuperExec builds it, asking for a ClientApp task.
ACQUIRE = r"""
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient

def acquire(port):
    client = RuntimeHttpClient.from_server_address(
        server_address=f"127.0.0.1:{port}", insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
    try:
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return "acquired a task" if res.HasField("task") else "answered: no task"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
"""

# What the other account runs: each attempt in turn, one JSON object of outcomes at the end.
ATTACK = ACQUIRE + r"""
import json, socket, subprocess, sys, time
runtime_port, gateway_port, sock_path, pid, seconds = sys.argv[1:6]
out = {}

def tcp(port):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=3).close()
        return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"

out["runtime-port"] = tcp(runtime_port)
out["gateway-port"] = tcp(gateway_port)
attempts, deadline = set(), time.monotonic() + float(seconds)
while time.monotonic() < deadline:  # while the run's tasks come and go
    attempts.add(acquire(runtime_port))
    time.sleep(0.5)
out["acquire"] = sorted(attempts)
try:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(sock_path)
        out["unix"] = "connected"
except OSError as exc:
    out["unix"] = f"{type(exc).__name__}: {exc}"
for flags in (["--net"], ["--user", "--net"]):
    res = subprocess.run(["nsenter", "--target", pid, *flags, "--", sys.executable, "-c",
                          "print('inside')"], capture_output=True, text=True, timeout=30)
    out["nsenter " + " ".join(flags)] = [res.returncode, res.stdout + res.stderr]
print("RESULT " + json.dumps(out))
"""
CONTROL = ACQUIRE + "\nimport sys\nprint(acquire(sys.argv[1]))\n"


def _runtime_port(uplink_pid: int) -> int:
    """The Runtime API port of the SuperNode the uplink started (its ``--port``)."""
    children = Path(f"/proc/{uplink_pid}/task/{uplink_pid}/children").read_text().split()
    for child in children:
        argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        if any(a.endswith("flower-supernode") or a == "deploy.launch.supernode" for a in argv):
            return int(argv[argv.index("--port") + 1])
    raise AssertionError(f"no flower-supernode among the children of {uplink_pid}")


def test_another_local_account_cannot_take_a_silos_tasks(tmp_path: Path,
                                                         other_dir: Path) -> None:  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second local account with setpriv")
    if shutil.which("setpriv") is None or shutil.which("nsenter") is None:
        pytest.skip("needs setpriv and nsenter (util-linux) to act as a second local account")
    if (reason := unavailable()) is not None:
        pytest.skip(f"no private network namespace here ({reason}); `xsilo silo start` falls "
                    "back to 127.0.0.1, which any local account can reach")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(other_dir),
           "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    python = _other_python(env)
    if python is None:
        pytest.skip("no Python interpreter that account nobody can run imports this "
                    "environment's Flower")
    (other_dir / "attack.py").write_text(ATTACK)

    fed = LocalFederation(tmp_path, mtls=True,
                          write_data=lambda root: write_demo_data(root)[:2]).setup()
    with fed:
        fed.start()
        kit = fed.kits["hospital-a"]
        silo = next(m for m in fed.running if getattr(m, "uplink", None) is not None)
        node = silo.supernode
        assert os.readlink(f"/proc/{node.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        for companion in node.companions:  # the SuperExec runs in the same namespace
            assert node.netns is not None
            assert os.readlink(f"/proc/{companion.pid}/ns/net") == node.netns.ident
        assert silo.uplink.socket.parent.stat().st_mode & 0o077 == 0
        runtime_port = _runtime_port(node.pid)
        attack = subprocess.Popen(
            [*SETPRIV, python, str(other_dir / "attack.py"), str(runtime_port),
             str(kit.listen_port), str(silo.uplink.socket), str(node.pid), "8"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            stdin=subprocess.DEVNULL)
        try:
            outcome = fed.run(RunConfig(num_rounds=1, min_silos=2, expected_silos=2,
                                        round_timeout=30.0, join_timeout=40.0, name="guarded"),
                              timeout=70)
            output = attack.communicate(timeout=60)[0]
        finally:
            if attack.poll() is None:
                attack.kill()
                attack.wait()
        # control: inside the namespace (root, nsenter) the same client reaches the API
        control = subprocess.run([*PrivateNet.of(node.pid).enter_argv(), sys.executable,
                                  "-c", CONTROL, str(runtime_port)],
                                 capture_output=True, text=True, timeout=60)
    assert "RESULT " in output, output
    out = json.loads(output.split("RESULT ", 1)[1])
    assert out["runtime-port"].startswith("ConnectionRefusedError"), out
    assert out["gateway-port"].startswith("ConnectionRefusedError"), out
    assert out["acquire"] and all(a.startswith("ConnectError") for a in out["acquire"]), out
    assert out["unix"].startswith("PermissionError"), out
    for flags in ("--net", "--user --net"):
        code, text = out[f"nsenter {flags}"]
        assert code != 0 and "inside" not in text, (flags, code, text)
    # inside, the port answers: Flower's SuperExec authentication refuses an unsigned acquire
    assert "401 Unauthorized" in control.stdout and "acquire-task" in control.stdout, (
        control.stdout, control.stderr)

    assert outcome.completed, (outcome.status, outcome.summary)
    rounds = [e for e in outcome.store.events() if e["event"] == "round" and e["round"] >= 1]
    assert [sorted(e["contributors"]) for e in rounds] == [["hospital-a", "hospital-b"]]
    # nothing of the silo is left behind: namespace holders, SuperExecs, socket directories
    assert not silo.uplink.socket.parent.exists()
    assert not node.alive() and not any(c.alive() for c in node.companions)
    assert not re.search(r"\bdeploy\.gateway\.uplink\b.*" + re.escape(str(silo.uplink.socket)),
                         subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                        text=True).stdout)

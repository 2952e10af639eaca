"""deploy.launch.executor: the silo's SuperExec forks ClientApp processes from a warm server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.launch.executor import ForkserverExecutor
from deploy.launch.processes import spawn
from silo_client.config import load_silo_config, write_silo_config
from silo_client.launch import model_modules
from federation.demo_data import demo_schema
from xsilo.errors import ConfigError, DeploymentError

# Run in a fresh interpreter: multiprocessing keeps one forkserver per process, so only the
# first executor of a process decides what its server preloads.
_PROBE = """
import sys
from deploy.launch.executor import ForkserverExecutor
executor = ForkserverExecutor({modules!r})
"""


def _probe(tmp_path: Path, modules: tuple[str, ...], names: tuple[str, ...]) -> dict:
    out = tmp_path / "probe.json"
    # The forked child execs _CHILD first thing: every listed module it finds in sys.modules
    # was imported by the server before the fork.
    code = _PROBE.format(modules=modules) + (
        f"child = executor._ctx.Process(target=exec, args=({_CHILD!r}.format(out={str(out)!r}, "
        f"names={names!r}),))\nchild.start(); child.join(60); executor.close()\n"
        "sys.exit(child.exitcode)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(out.read_text()), "stderr": proc.stderr}


_CHILD = ("import sys, json, pathlib, ctypes, ctypes.util\n"
          "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
          "pathlib.Path({out!r}).write_text(json.dumps({{'loaded': [m for m in {names!r} "
          "if m in sys.modules], 'dumpable': libc.prctl(3, 0, 0, 0, 0)}}))\n")


def _wait(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_task_process_starts_warm_and_non_dumpable(tmp_path: Path) -> None:
    names = ("flwr.supernode.runtime.run_clientapp", "silo_client.client_app",
             "sklearn.linear_model", "torch")
    seen = _probe(tmp_path, ("sklearn.linear_model",), names)
    assert seen["loaded"] == list(names[:3])  # not torch: nobody asked for it
    assert seen["dumpable"] == 0  # inherited from the server: no core dump, no ptrace


def test_a_silo_module_that_fails_to_import_does_not_stop_the_server(tmp_path: Path) -> None:
    broken = tmp_path / "broken_model.py"
    broken.write_text("raise RuntimeError('no GPU here')\n")
    import os

    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:
        seen = _probe(tmp_path, ("broken_model", "sklearn.linear_model"),
                      ("silo_client.client_app", "sklearn.linear_model", "broken_model"))
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    assert seen["loaded"] == ["silo_client.client_app", "sklearn.linear_model"]
    assert "not preloading 'broken_model' (RuntimeError: no GPU here)" in seen["stderr"]


def test_reconcile_forgets_ended_tasks_and_close_stops_running_ones() -> None:
    executor = ForkserverExecutor()
    try:
        short = executor._ctx.Process(target=time.sleep, args=(0,))
        long = executor._ctx.Process(target=time.sleep, args=(60,))
        for p in (short, long):
            p.start()
            executor._children.append(p)
        _wait(lambda: not short.is_alive())
        executor.reconcile()
        assert executor._children == [long]
    finally:
        executor.close()
    long.join(10)
    assert long.exitcode is not None and long.exitcode != 0  # terminated, not finished
    assert executor._children == []


def test_a_dead_superexec_is_reported_with_its_own_log(tmp_path: Path) -> None:
    node = spawn("flower-supernode", [sys.executable, "-c", "import time; time.sleep(60)"],
                 env={}, log_path=tmp_path / "supernode.log")
    companion = spawn("SuperExec (deploy.launch.executor)",
                      [sys.executable, "-c", "print('boom'); exit(3)"],
                      env={}, log_path=tmp_path / "superexec.log")
    node.companions.append(companion)
    try:
        _wait(lambda: not companion.alive())
        with pytest.raises(DeploymentError, match=r"(?s)SuperExec \(deploy.launch.executor\) exited \(code 3\)"
                           r".*restart the silo.*superexec.log ends with:\nboom"):
            node.raise_if_exited()
    finally:
        node.stop()
    assert not node.alive() and not companion.alive()


def test_stopping_the_supernode_stops_its_superexec(tmp_path: Path) -> None:
    node = spawn("n", [sys.executable, "-c", "import time; time.sleep(60)"], env={},
                 log_path=tmp_path / "n.log")
    node.companions.append(spawn("c", [sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={}, log_path=tmp_path / "c.log"))
    node.stop(grace=2.0)
    assert not node.alive() and not node.companions[0].alive()


def test_silo_toml_chooses_the_executor(tmp_path: Path) -> None:
    common = dict(name="a", train=tmp_path / "t.csv", schema=demo_schema(),
                  model="sklearn:LogisticRegression")
    assert load_silo_config(write_silo_config(tmp_path / "1.toml", **common)).executor == "warm"
    flower = write_silo_config(tmp_path / "2.toml", executor="flower", **common)
    assert load_silo_config(flower).executor == "flower"
    bad = write_silo_config(tmp_path / "3.toml", executor="thread", **common)
    with pytest.raises(ConfigError, match=r"executor = 'thread' is not one of \"warm\""):
        load_silo_config(bad)


def test_the_model_spec_names_what_to_preload() -> None:
    assert model_modules("sklearn:LogisticRegression") == ["silo_client.adapters.sklearn"]
    assert model_modules("examples.digits_torch.model:build") == ["examples.digits_torch.model"]
    assert model_modules("nonsense") == []


def test_the_executor_cli_refuses_a_missing_address() -> None:
    out = subprocess.run([sys.executable, "-m", "deploy.launch.executor"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--runtime-api-address" in out.stderr

"""deploy.executor: the silo's SuperExec forks ClientApp processes from a warm server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.executor import DEFAULT_PRELOAD, ForkserverExecutor
from deploy.launch import ManagedProcess, spawn
from silo_client.config import load_silo_config, write_silo_config
from silo_client.launch import model_modules
from xsilo.demo_data import demo_schema
from xsilo.errors import ConfigError, DeploymentError

_PROBE = ("import sys, pathlib; pathlib.Path({out!r}).write_text(' '.join("
          "m for m in {mods!r} if m in sys.modules))")


def _wait(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_task_process_starts_with_flower_and_the_silo_already_imported(tmp_path: Path) -> None:
    executor = ForkserverExecutor(DEFAULT_PRELOAD + ("sklearn.linear_model",))
    try:
        out = tmp_path / "modules.txt"
        # The probe runs first thing in a child of the forkserver and lists which of these
        # modules are already loaded: anything present came from the server's preload.
        mods = ("flwr.supernode.runtime.run_clientapp", "silo_client.client_app",
                "sklearn.linear_model", "torch")
        child = executor._ctx.Process(target=exec, args=(_PROBE.format(out=str(out), mods=mods),))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert out.read_text().split() == list(mods[:3])  # not torch: nobody asked for it
    finally:
        executor.close()


def test_reconcile_forgets_ended_tasks_and_close_stops_running_ones() -> None:
    executor = ForkserverExecutor(("deploy.executor",))
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
    companion = spawn("SuperExec (deploy.executor)",
                      [sys.executable, "-c", "print('boom'); exit(3)"],
                      env={}, log_path=tmp_path / "superexec.log")
    node.companions.append(companion)
    try:
        _wait(lambda: not companion.alive())
        with pytest.raises(DeploymentError, match=r"(?s)SuperExec \(deploy.executor\) exited \(code 3\)"
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
    out = subprocess.run([sys.executable, "-m", "deploy.executor"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--runtime-api-address" in out.stderr

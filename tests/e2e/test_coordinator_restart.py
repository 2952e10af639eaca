"""A coordinator host that crashes mid-run, with the real `xsilo coordinator start`, `xsilo
silo start --kit` and `xsilo coordinator run` processes: while round 2 is out, everything on
the coordinator side is SIGKILLed at once, as a power cut would — the `coordinator start`
CLI, its gateway (nginx), the SuperLink and whatever runs in the SuperLink's private network
namespace (its SuperExec, the run's ServerApp). Then the operator starts the coordinator
again and runs `xsilo coordinator run --resume`.

What it shows: no silo process exits at any point and no silo is told to be approved again
(the SuperLink's database kept their node registrations: same node ids); the first `run`
says the run stopped and how to continue it; the restarted coordinator stops the crashed
Flower run before it lets silos in (``coordinator.runs.stop_orphaned_runs``); the resumed
run completes the requested rounds from its last checkpoint with every silo in them; every
checkpoint verifies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from coordinator.config import RunConfig, write_run_config
from coordinator.run_record import unique_rounds
from coordinator.run_store import RunStore
from deploy.gateway.netns import Pinned, read_record
from federation.deployment import LocalFederation
from tests.e2e._cli import background, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]  # a hang guard: ~70 s alone
ROUNDS = 4
NAME = "crash"


def _awaiting(store: RunStore, server_round: int) -> bool:
    return any(e["event"] == "awaiting" and e["round"] == server_round for e in store.events())


def _namespace_members(ns: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and os.readlink(entry / "ns" / "net") == ns
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _crash_coordinator(home: Path, cli: subprocess.Popen) -> None:
    """SIGKILL the coordinator side, nothing warned: the `coordinator start` CLI's group,
    the SuperLink's (it runs in a session of its own, in its private namespace), every
    process in that namespace (SuperExec and ServerApp: sessions of their own) and the
    gateway nginx's group (master and workers). What a crashed host leaves on disk stays."""
    holder = read_record(home / "flwr-home")
    assert holder is not None, "the SuperLink recorded no private network namespace"
    pinned = Pinned.of(holder.pid)  # its identity cannot pass to a new namespace meanwhile
    assert pinned is not None
    nginx = int((home / "gateway" / "logs" / "nginx.pid").read_text().strip())
    try:
        members = _namespace_members(pinned.ident)
        assert len(members) >= 3, members  # bridge + SuperLink, SuperExec, the ServerApp
        for pgid in (cli.pid, holder.pid, nginx):  # each leads its own session
            _killpg(pgid)
        deadline = time.monotonic() + 10
        while members := _namespace_members(pinned.ident):
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert time.monotonic() < deadline, f"still in the namespace: {members}"
            time.sleep(0.05)
    finally:
        pinned.close()
    cli.wait(timeout=10)
    for pgid in (holder.pid, nginx):
        deadline = time.monotonic() + 10
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"process group {pgid} outlived SIGKILL"
            time.sleep(0.05)


def _crash_debris(home: Path) -> list[Path]:
    """The private directories the crashed coordinator made outside its home (the bridge's
    socket directory, nginx workers' scratch): nobody removed them."""
    conf = (home / "gateway" / "conf" / "nginx.conf").read_text()
    found = {Path(m) for m in re.findall(r"(/[^\s;:]*/xsilo-(?:link|nginx)-[A-Za-z0-9_]+)", conf)}
    return sorted(found)


def _node_ids(home: Path) -> dict[str, int]:
    data = json.loads((home / "flwr-home" / "registrations.json").read_text())
    return {name: int(v["node_id"]) for name, v in data.items()}


def test_silos_survive_a_coordinator_crash_and_the_resumed_run_includes_them_all(
        tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, mtls=True).setup()
    home = fed.home_dir
    names = sorted(s.name for s in fed.silos)
    assert len(names) == 3
    logs = {"coordinator": tmp_path / "coordinator.log",
            "restarted": tmp_path / "coordinator-restarted.log",
            "run": tmp_path / "run.log", "resume": tmp_path / "resume.log",
            **{n: tmp_path / f"{n}.log" for n in names}}
    silo_logs = [logs[n] for n in names]
    config = tmp_path / "run.toml"
    # min_silos = 3: a round without every silo fails (and is recorded as failed)
    write_run_config(config, RunConfig(num_rounds=ROUNDS, min_silos=3, expected_silos=3,
                                       round_timeout=30.0, join_timeout=45.0, name=NAME))
    store = RunStore(home / "runs" / NAME)
    silos: list[subprocess.Popen] = []
    coordinators: list[subprocess.Popen] = []
    runs: list[subprocess.Popen] = []
    debris: list[Path] = []
    started = time.monotonic()
    try:
        coordinators.append(background("coordinator", "start", "--home", str(home),
                                       log=logs["coordinator"]))
        wait_for(lambda: "coordinator up" in logs["coordinator"].read_text(), 40,
                 "the coordinator", alive=silos, logs=[logs["coordinator"]])
        for name in names:
            silos.append(background("silo", "start", "--kit",
                                    str(fed.silo_root / name / "kit"), log=logs[name]))
        supernode_logs = [fed.silo_root / n / "workspace" / "supernode.log" for n in names]
        wait_for(lambda: all(p.exists() and "SuperNode ID" in p.read_text()
                             for p in supernode_logs), 40, "every SuperNode", alive=silos,
                 logs=silo_logs)
        registered = _node_ids(home)
        assert sorted(registered) == names

        runs.append(background("coordinator", "run", "--home", str(home), "--config",
                               str(config), "--name", NAME, "--timeout", "120",
                               log=logs["run"]))
        wait_for(lambda: _awaiting(store, 2), 60, "round 2", alive=silos,
                 logs=[logs["run"], *silo_logs])
        debris = _crash_debris(home)
        seen = [p.stat().st_size for p in supernode_logs]
        _crash_coordinator(home, coordinators[0])
        crashed = time.monotonic()
        assert store.summary() is None  # a crash leaves only what was written
        # the operator's `coordinator run` says the run stopped, and how to continue it
        wait_for(lambda: runs[0].poll() is not None, 30, "`coordinator run` to give up",
                 alive=silos, logs=[logs["run"]])
        said = " ".join(logs["run"].read_text().split())
        assert runs[0].returncode != 0 and f"--resume {NAME}" in said, said
        # every silo saw the coordinator gone: its SuperNode retries, nobody restarts it
        wait_for(lambda: all(b"Connection attempt failed" in p.read_bytes()[n:]
                             for p, n in zip(supernode_logs, seen)), 30,
                 "every SuperNode to lose its connection", alive=silos, logs=silo_logs)

        coordinators.append(background("coordinator", "start", "--home", str(home),
                                       log=logs["restarted"]))
        wait_for(lambda: "coordinator up" in logs["restarted"].read_text(), 40,
                 "the restarted coordinator", alive=silos, logs=[logs["restarted"]])
        assert _node_ids(home) == registered  # the SuperLink's database kept them
        # the crashed run's Flower run is stopped before any silo is let in (a SuperNode
        # would otherwise take its stale round-2 message and fall one reply behind)
        restarted = " ".join(logs["restarted"].read_text().split())
        assert f"run {NAME} stopped when its ServerApp did" in restarted, restarted
        runs.append(background("coordinator", "run", "--home", str(home), "--resume", NAME,
                               "--timeout", "100", log=logs["resume"]))
        wait_for(lambda: runs[1].poll() is not None, 100, "the resumed run", alive=silos,
                 logs=[logs["resume"], logs["restarted"], *silo_logs])
        resumed = time.monotonic()
        assert runs[1].returncode == 0, logs["resume"].read_text()
        assert all(proc.poll() is None for proc in silos)  # never exited, not once
    finally:
        stop(*runs)
        stop(*silos)  # the silos first: they say goodbye to the coordinator
        stop(*coordinators)
        for path in debris:
            shutil.rmtree(path, ignore_errors=True)
    assert all(p.poll() is not None for p in [*runs, *silos, *coordinators])

    summary = store.summary()
    assert summary is not None and summary["status"] == "completed", summary
    assert summary["rounds_requested"] == ROUNDS and summary["rounds_failed"] == []
    assert store.verify_checkpoints() == {}
    assert sorted(p.name for p in store.checkpoints.glob("*.npz")) == [
        f"round-{r:04d}.npz" for r in range(1, ROUNDS + 1)]
    events = store.events()
    assert next(e for e in events if e["event"] == "resume")["from_round"] == 1
    rows = unique_rounds(events)[0]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    for row in rows[1:]:  # every round, before the crash and after, summed every silo
        assert sorted(row["contributors"]) == names, row
    for name in names:
        text = " ".join(logs[name].read_text().split())
        for refusal in ("approve", "not registered", "restarting the SuperNode",
                        "SuperNode restarted"):
            assert refusal not in text, f"{name}: {refusal!r} in its log:\n{text}"
        node = (fed.silo_root / name / "workspace" / "supernode.log").read_text()
        for refusal in ("Failed to activate", "Giving up reconnection"):
            assert refusal not in node, f"{name}'s SuperNode: {refusal!r}:\n{node[-3000:]}"
    print(f"\ncoordinator crash: set-up and rounds 1-2 {crashed - started:.1f} s; restart, "
          f"resume and rounds 2-{ROUNDS} {resumed - crashed:.1f} s")

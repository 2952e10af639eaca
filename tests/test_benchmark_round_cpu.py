"""benchmarks/round_cpu.py's pure part (each process's role, CPU between two instants) and
its sampler on a real child process (the measurement itself runs deployments and is a
benchmark, not a test)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import round_cpu  # noqa: E402

PY = "/venv/bin/python"
SUPERLINK = f"{PY} /venv/bin/flower-superlink --host 127.0.0.1 --port 9092"
FORKSERVER = f"{PY} -B -c from multiprocessing.forkserver import main; main(3, 5, [])"


@pytest.mark.parametrize(("chain", "role"), [
    ([SUPERLINK, f"{PY} bench.py"], "SuperLink"),
    ([f"{PY} /venv/bin/flower-superexec --runtime-api-address 127.0.0.1:9091", SUPERLINK],
     "coordinator"),
    ([f"{PY} /venv/bin/flwr-serverapp --token t", f"{PY} /venv/bin/flower-superexec x",
      SUPERLINK], "coordinator"),
    ([f"{PY} -m deploy.launch.supernode --superlink 127.0.0.1:9092"], "SuperNodes"),
    ([f"{PY} /venv/bin/flower-supernode --superlink 127.0.0.1:9092"], "SuperNodes"),
    ([f"{PY} /venv/bin/flower-superexec --plugin-type clientapp",
      f"{PY} /venv/bin/flower-supernode"], "SuperExecs"),
    ([f"{PY} /venv/bin/flwr-clientapp --token t", f"{PY} /venv/bin/flower-superexec",
      f"{PY} /venv/bin/flower-supernode"], "ClientApps"),
    ([f"{PY} -m deploy.launch.executor --parent-pid 7"], "SuperExecs"),
    ([FORKSERVER, f"{PY} -m deploy.launch.executor"], "SuperExecs"),
    ([FORKSERVER, FORKSERVER, f"{PY} -m deploy.launch.executor"], "ClientApps"),
    ([f"{PY} -B -c from multiprocessing.resource_tracker import main;main(3)"], "SuperExecs"),
    ([f"{PY} /venv/bin/flwr ls xsilo --run-id 1 --format json"], "flwr CLI"),
    (["nginx: worker process", f"{PY} -m deploy.launch.supernode"], "SuperNodes"),
    (["sleep 1"], None),
])
def test_each_process_is_given_the_role_of_its_part_of_the_deployment(
        chain: list[str], role: str | None) -> None:
    assert round_cpu.classify(chain) == role


def test_cpu_between_two_instants_is_interpolated_between_samples() -> None:
    series = [(10.0, 0.0), (11.0, 0.5), (13.0, 1.5)]  # born at 10 s; 0.5 CPU s a second
    assert round_cpu.spent(series, 10.5, 12.0) == pytest.approx(0.75)
    assert round_cpu.spent(series, 0.0, 10.0) == 0  # before the process was born
    assert round_cpu.spent(series, 12.0, 99.0) == pytest.approx(0.5)  # gone at 13 s
    assert round_cpu.spent(series, 14.0, 20.0) == 0
    assert round_cpu.spent([], 0.0, 1.0) == 0


def test_the_sampler_sees_a_child_spend_its_cpu(tmp_path: Path) -> None:
    """A child of this process that burns about 0.5 s of CPU: the sampler attributes it to
    its tree (a command line no rule knows: "benchmark") and the machine's busy CPU holds
    it too."""
    sampler = round_cpu.Sampler(every=0.05)
    sampler.start()
    started = time.time()
    child = subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.5"
                            "\nwhile time.process_time() < end: pass\ntime.sleep(0.2)"],
                           check=True)
    assert child.returncode == 0
    sampler.stop()
    cpu = sampler.account(started, time.time())
    assert 0.35 <= cpu["benchmark"] <= 1.5, cpu  # the child's 0.5 s, seen before it ended
    assert cpu["machine"] >= 0.4, cpu
    assert all(cpu[r] == 0 for r in round_cpu.ROLES if r != "benchmark"), cpu
    row = {"case": "x", "round_s": 1.0, "cpu_s": {**cpu, "SuperNodes": 1.0, "ClientApps": 1.0}}
    assert "| x | 1.00 |" in round_cpu.table([row], silos=2)
    assert round_cpu.table([row], silos=2).rstrip().endswith(" | 1.00 |")  # 2 CPU s / 2 silos


def test_the_superlinks_requests_are_counted_by_kind_within_a_round() -> None:
    def request(at: float, path: str, pid: int = 7) -> dict:
        return {"event": "http.request", "at": at, "path": path, "pid": pid}

    events = [request(9.9, "/v1/fleet/pull-messages"), request(10.0, "/v1/fleet/pull-messages"),
              request(10.1, "/v1/fleet/pull-object"), request(10.2, "/v1/fleet/push-object"),
              request(10.3, "/v1/fleet/confirm-message-received"),
              request(10.4, "/v1/runtime/pull-messages"),
              request(10.4, "/v1/runtime/acquire-task", pid=8),  # a SuperNode's Runtime API
              {"event": "node.got", "at": 10.5, "id": "m"},
              request(11.0, "/v1/fleet/pull-messages")]
    counts = round_cpu.requests(events, 10.0, 11.0, link={7})
    assert counts == {"looks": 1, "objects": 2, "other Fleet": 1, "coordinator's": 1}
    assert round_cpu.paths(events, 10.0, 11.0, link={7, 8})["/v1/runtime/acquire-task"] == 1
    row = {"case": "x", "requests": counts, "cpu_s": {"SuperLink": 0.05}}
    assert round_cpu.request_table([row]).endswith("| x | 5 | 1 | 2 | 1 | 1 | 10.0 |")


def test_the_superlinks_samples_go_to_the_handler_on_their_stack() -> None:
    import superlink_profile

    raw = "\n".join([
        "<module> (flower-superlink:8);Runner.run (asyncio/runners.py:118) 40",
        "run (x.py:1);fleet_pull_object (flwr/superlink/routers/fleet/router.py:185);"
        "check_abort (flwr/server/superlink/utils.py:35) 30",
        "run (x.py:1);authenticate_node (flwr/superlink/routers/fleet/node_auth.py:80);"
        "verify_signature (flwr/supercore/primitives/asymmetric.py:106) 20",
        "run (x.py:1);acquire_task (flwr/supercore/routers/runtime/router.py:122) 10",
        "py-spy noise without a count"])
    samples = superlink_profile.by_handler(raw)
    assert samples == {"HTTP server, TLS and framework": 40, "fleet: fleet_pull_object": 30,
                       "node authentication": 20, "runtime: acquire_task": 10}
    text = superlink_profile.table(samples, top=2)
    assert "| HTTP server, TLS and framework | 40.0% |" in text
    assert text.endswith("| everything else | 30.0% |")

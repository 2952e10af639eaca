"""What the silos' looks cost a real SuperLink: CPU per look, and latency, at the look
rates of 100 and 1,000 silos.

    .venv/bin/python benchmarks/superlink_load.py [--nodes 50] [--seconds 20]
        [--rates 10 33 72 100 207 423] [--compare-memory] [--no-results]

``benchmarks/poll_load.py`` counts the looks (pull-messages requests) a consortium's
SuperNodes send, with Flower's 3 s loop and with xsilo's quick look after an answer; this
script measures what those looks cost. A real ``flower-superlink`` as the coordinator
starts it (``coordinator.home.start_coordinator``: TLS, SuperNode authentication, its
SQLite database), ``--nodes`` node keys registered with it, and as many node connections
made by Flower 1.42's own SuperNode code
(``flwr.supernode.fleet_http_connection.http_request_response``: the same HTTPS requests,
each signed with the node's key, the same 30 s heartbeats). For each rate, the nodes
spread their looks evenly over ``--seconds``, with nothing waiting for them (what a
silo's look finds most of the time). Measured: the looks per second achieved, the
SuperLink process's CPU (user + system, from ``/proc``; its SuperExec, a child, not
counted) less what it spends with no looks at all, and each look's latency at the node.

With ``--compare-memory`` the same rates are measured again on a SuperLink that keeps its
state in memory (Flower's ``InMemoryLinkState``: no ``--database``), the state xsilo does
not use: the coordinator keeps runs and node registrations in SQLite so that they survive a
restart. The difference is what that durable state costs per look.

The looks come from one client process whose threads share the same cores: where the
achieved rate falls short of the target, that process (signing every request, Python
HTTPS) is the limit, and the CPU per look is still the SuperLink's own. The SuperLink here
terminates TLS itself (the non-gateway deployment); behind xsilo's nginx gateway it is
spared the TLS, so the figures are an upper bound for it.

Writes ``benchmarks/out/superlink_load.json`` and, unless ``--no-results``, the section
"The SuperNode's poll: what the looks cost the SuperLink" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _bench import proc_status_kib, replace_section, save_raw  # noqa: E402

OUT = HERE / "out" / "superlink_load.json"
HEADING = "## The SuperNode's poll: what the looks cost the SuperLink"
# poll_load.py's counts (looks/s at the SuperLink): which consortium each rate stands for
# (mean looks/s; "busiest": its busiest second; "unbudgeted": xsilo's quick look before it
# kept within its budget, deploy/launch/poll.py)
RATE_LABELS = {33: "100 silos idle (either loop)", 42: "100 silos in rounds, Flower's 3 s",
               72: "100 silos in rounds, xsilo",
               100: "100 silos in rounds, xsilo's busiest second: its budget",
               207: "100 silos in rounds, xsilo unbudgeted",
               333: "1,000 silos idle (either loop)", 423: "1,000 silos in rounds (either loop)",
               546: "100 silos in rounds, xsilo unbudgeted, busiest second",
               2071: "1,000 silos in rounds, xsilo unbudgeted"}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14, 15


def spread(n: int, rate: float, seconds: float) -> list[list[float]]:
    """When each of ``n`` nodes looks (seconds from the start), ``rate`` looks/s in all over
    ``seconds``: each node every ``n / rate`` s, the nodes' phases evenly staggered."""
    interval = n / rate
    out = []
    for i in range(n):
        first = i * interval / n
        out.append([first + k * interval for k in range(int((seconds - first) / interval) + 1)
                    if first + k * interval < seconds])
    return out


def drive(receivers: list, rate: float, seconds: float) -> dict:
    """Look at ``rate`` looks/s through ``receivers`` for ``seconds``; latencies, and how
    late the looks were against their schedule (the client's own limit)."""
    schedules = spread(len(receivers), rate, seconds)
    latencies: list[list[float]] = [[] for _ in receivers]
    lateness: list[float] = []
    start = time.monotonic() + 0.5

    def node(i: int) -> None:
        for at in schedules[i]:
            if time.monotonic() > start + seconds:  # behind: the looks left are not sent
                return
            wait = start + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                lateness.append(-wait)
            began = time.perf_counter()
            if receivers[i]() is not None:
                raise RuntimeError("a look found a message: this SuperLink has no runs")
            latencies[i].append(time.perf_counter() - began)

    threads = [threading.Thread(target=node, args=(i,), daemon=True)
               for i in range(len(receivers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    flat = sorted(x for per in latencies for x in per)
    scheduled = sum(len(s) for s in schedules)
    return {"looks": len(flat), "wall_s": wall, "unsent": scheduled - len(flat),
            "p50_ms": 1e3 * statistics.median(flat),
            "p99_ms": 1e3 * flat[min(len(flat) - 1, int(0.99 * len(flat)))],
            "late_share": len(lateness) / max(len(flat), 1)}


def measure(nodes: int, rates: list[float], seconds: float, *, durable: bool = True) -> dict:
    """The looks at each rate; unless ``durable``, the coordinator's SuperLink starts without
    ``--database`` (Flower's in-memory state), everything else as it ships."""
    import coordinator.home
    from coordinator.home import start_coordinator
    from deploy.pki.certs import load_private_key, make_node_auth_key
    from federation.deployment import LocalFederation
    from flwr.supernode.fleet_http_connection import http_request_response

    shipped = coordinator.home.start_superlink
    in_memory = mock.patch.object(coordinator.home, "start_superlink",
                                  lambda **kw: shipped(**{**kw, "database": None}))
    with tempfile.TemporaryDirectory() as tmp, (contextlib.nullcontext() if durable else in_memory):
        fed = LocalFederation(Path(tmp)).setup()  # the demo's coordinator home and CA
        keys = []
        for i in range(nodes):
            key = Path(tmp) / "load" / f"node-{i:04d}.key"
            make_node_auth_key(key, fed.home.nodes / f"load-{i:04d}.pub")
            keys.append(load_private_key(key))
        started = time.monotonic()
        running = start_coordinator(fed.home)
        registered_s = time.monotonic() - started
        try:
            pid = running.superlink.pid
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if (b"--database" in argv) != durable:
                raise RuntimeError(f"the SuperLink's state is not the one asked for: {argv}")
            address = f"127.0.0.1:{fed.port}"
            ca = str(fed.home_dir / "pki" / "ca.crt")
            with contextlib.ExitStack() as stack:
                receivers = []
                for key in keys:
                    conn = stack.enter_context(http_request_response(
                        address, False, ca, authentication_keys=(key, key.public_key())))
                    receivers.append(conn[1])
                time.sleep(2)
                before, t0 = cpu_seconds(pid), time.monotonic()
                time.sleep(seconds)  # connected, no looks: heartbeats and the link's own loops
                idle_cpu_s = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
                rows = []
                for rate in rates:
                    before, t0 = cpu_seconds(pid), time.monotonic()
                    row = drive(receivers, rate, seconds)
                    busy = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
                    row.update(target=rate, achieved=row["looks"] / row["wall_s"],
                               cpu_share=busy,
                               cpu_ms_per_look=1e3 * max(busy - idle_cpu_s, 0.0)
                               / (row["looks"] / row["wall_s"]))
                    rows.append(row)
                    print({k: round(v, 3) if isinstance(v, float) else v
                           for k, v in row.items()}, flush=True)
                rss = proc_status_kib(pid, "VmRSS") / 1024
        finally:
            running.stop()
    return {"nodes": nodes, "seconds": seconds, "register_s": registered_s,
            "state": "SQLite file" if durable else "in memory",
            "idle_cpu_share": idle_cpu_s, "superlink_rss_mib": rss, "rows": rows}


def table(result: dict) -> str:
    lines = ["| looks/s: target (stands for) | achieved | SuperLink CPU, share of one core "
             "| CPU ms per look | look latency p50 / p99 ms |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        label = RATE_LABELS.get(round(r["target"]), "")
        lines.append(f"| {r['target']:g}{f' ({label})' if label else ''} | {r['achieved']:.0f} "
                     f"| {100 * r['cpu_share']:.0f} % | {r['cpu_ms_per_look']:.2f} "
                     f"| {r['p50_ms']:.1f} / {r['p99_ms']:.1f} |")
    return "\n".join(lines)


def projection(result: dict) -> str:
    """Cores the SuperLink would spend on looks at poll_load.py's rates, from the median
    CPU per look of the rows the client kept up with (achieved within 10 % of target)."""
    kept = [r["cpu_ms_per_look"] for r in result["rows"] if r["achieved"] >= 0.9 * r["target"]]
    if not kept:
        return "No rate was kept up with; no projection."
    per_look = statistics.median(kept)
    parts = [f"{label}: {rate * per_look / 1e3:.2f} cores" for rate, label in RATE_LABELS.items()]
    return (f"At {per_look:.2f} CPU ms per look (median of the rows the client kept up with), "
            "the looks alone would take the SuperLink " + "; ".join(parts) + ".")


def state_cost(result: dict) -> str:
    """What the durable state costs per look: the median CPU ms per look of the rates both
    runs kept up with, SQLite file against in memory."""
    memory = result.get("memory")
    if not memory:
        return ""
    pairs = [(d["cpu_ms_per_look"], m["cpu_ms_per_look"])
             for d, m in zip(result["rows"], memory["rows"])
             if d["achieved"] >= 0.9 * d["target"] and m["achieved"] >= 0.9 * m["target"]]
    if not pairs:
        return "No rate was kept up with in both runs; no comparison."
    durable = statistics.median(d for d, _ in pairs)
    in_memory = statistics.median(m for _, m in pairs)
    return (f"Over the {len(pairs)} rate{'s' * (len(pairs) != 1)} both runs kept up with, a "
            f"look costs the SuperLink {durable:.2f} CPU ms with its state in the SQLite file "
            f"and {in_memory:.2f} ms with Flower's in-memory state: the durable state is "
            f"{100 * (durable - in_memory) / durable:.0f} % of a look's cost.")


def memory_text(result: dict) -> str:
    """The ``--compare-memory`` part of the section (empty without it)."""
    if not result.get("memory"):
        return ""
    return ("\nThe same looks on a SuperLink that keeps its state in memory (Flower's "
            "in-memory state, no `--database`: not what xsilo runs, whose coordinator keeps "
            "runs and node registrations in SQLite across restarts; "
            f"{100 * result['memory']['idle_cpu_share']:.1f} % of a core with no looks):\n\n"
            + table(result["memory"]) + "\n\n" + state_cost(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 33, 72, 100, 207, 423])
    parser.add_argument("--compare-memory", action="store_true",
                        help="measure the rates again with the SuperLink's state in memory")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    result = measure(args.nodes, args.rates, args.seconds)
    if args.compare_memory:
        result["memory"] = measure(args.nodes, args.rates, args.seconds, durable=False)
    print(table(result))
    print(projection(result))
    if args.compare_memory:
        print(table(result["memory"]))
        print(state_cost(result))
    meta = save_raw(OUT, "benchmarks/superlink_load.py", **result)
    if not args.no_results:
        replace_section(HEADING, (
            f"{HEADING}\n\n`{meta['command']}` ({meta['date']}, commit {meta['commit']}; "
            "a real SuperLink with TLS and SuperNode authentication, its state in its SQLite "
            f"file as the coordinator starts it, {result['nodes']} "
            "registered nodes looking through Flower 1.42's own SuperNode connection, "
            f"{result['seconds']:g} s per rate; with the nodes connected and not looking it "
            f"used {100 * result['idle_cpu_share']:.1f} % of a core; "
            f"{result['superlink_rss_mib']:.0f} MiB resident at the end; raw rows in "
            "`benchmarks/out/superlink_load.json`; what each rate stands for: "
            "`benchmarks/poll_load.py`, section *The SuperNode's poll*).\n\n"
            + table(result) + "\n\n" + projection(result) + "\n" + memory_text(result)))


if __name__ == "__main__":
    main()

"""Where a deployed round's CPU goes, process by process: xsilo's clear and secure rounds and
Flower's FedAvg and SecAgg+ on the same deployment.

    .venv/bin/python benchmarks/round_cpu.py [--silos 5] [--params 1000000] [--no-results]

Runs the ``xsilo-deployment`` and ``flower-deployment`` cases of ``benchmarks/secagg.py``
(``flower-superlink`` and one ``flower-supernode`` per silo, TLS and node authentication on
loopback, every process on this machine's cores; 3 rounds; each stack as it ships; xsilo's
clear round once more with its updates sent 8-bit, ``compression = "q8"``; and the clear
rounds with the same parameters cut into 60 tensors, as a real model's layers, xsilo's
also with ``XSILO_PACK_ARRAYS=0``, one Flower ``Array`` per tensor) while a
thread of this process reads ``/proc`` every 0.05 s: the machine's busy CPU
(``/proc/stat``) and each process's own user + system time (``/proc/PID/stat``). Each
process is given a role by its command line and its parents' (:func:`classify`). For each
round from round 2 on, the CPU each role spent between the round's start and end is summed
(:func:`spent`, interpolated between samples); the table shows the mean per round.

* **machine**: all the machine's busy CPU in the round; **cores busy**: that over the
  round's wall time (at most the machine's core count: the round was CPU-bound there);
* **rest**: the machine's busy CPU no process was seen spending: the last < 0.05 s of each
  short-lived process (a ClientApp answers one message and exits), the kernel, and anything
  else on the machine.

The SuperLink is one Python process: what it spends per round bounds a deployed round from
below on any hardware, however many hosts the silos have. Writes
``benchmarks/out/round_cpu.json`` and, unless ``--no-results``, the section "A deployed
round's CPU, process by process" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _bench import child_env, replace_section, save_raw  # noqa: E402

OUT = HERE / "out" / "round_cpu.json"
TRACE_SITE = HERE / "_trace_site"  # its HTTP server hook: a line per request
HEADING = "## A deployed round's CPU, process by process"
TICK = os.sysconf("SC_CLK_TCK")
ROLES = ("SuperLink", "coordinator", "SuperNodes", "SuperExecs", "ClientApps", "flwr CLI",
         "benchmark")
REQUESTS = ("looks", "objects", "other Fleet", "coordinator's")


class Case(NamedTuple):
    label: str
    secure: bool
    engine: str  # "xsilo" or "flower"
    compression: str = "none"  # how xsilo's clear updates travel
    tensors: int = 1  # the model's parameters cut into this many tensors
    pack: bool = True  # xsilo sends several arrays as one Flower Array (xsilo.records)


# in run order
CASES = (Case("xsilo clear", False, "xsilo"),
         Case("xsilo clear, q8 updates", False, "xsilo", "q8"),
         Case("xsilo secure", True, "xsilo"),
         Case("Flower FedAvg", False, "flower"),
         Case("Flower SecAgg+", True, "flower"),
         Case("xsilo clear, 60 tensors", False, "xsilo", tensors=60),
         Case("xsilo clear, 60 tensors, unpacked", False, "xsilo", tensors=60, pack=False),
         Case("Flower FedAvg, 60 tensors", False, "flower", tensors=60))


def classify(chain: list[str]) -> str | None:
    """The role of a process from its command line and its parents' (``chain``: its own
    first, then its parent's, …): which part of the deployment spends what it spends.
    None: not the deployment's."""
    own = chain[0]
    parents = chain[1:]
    if "flower-superlink" in own:
        return "SuperLink"
    if "flwr-serverapp" in own:
        return "coordinator"
    if "flower-superexec" in own:  # the SuperLink's runs ServerApps, a SuperNode's ClientApps
        return "coordinator" if any("flower-superlink" in p for p in parents) else "SuperExecs"
    if "flwr-clientapp" in own:
        return "ClientApps"
    if "multiprocessing.forkserver" in own:  # xsilo's warm SuperExec: its server, its forks
        return "ClientApps" if parents and "multiprocessing.forkserver" in parents[0] else (
            "SuperExecs")
    if "multiprocessing.resource_tracker" in own or "deploy.launch.executor" in own:
        return "SuperExecs"
    if "deploy.launch.supernode" in own or "flower-supernode" in own:
        return "SuperNodes"
    if own.split(" ", 1)[0].endswith("/flwr") or " /flwr " in own or "bin/flwr " in own:
        return "flwr CLI"
    return classify(parents) if parents else None


@dataclass
class Process:
    """One process as sampled: its command line, parent, and (epoch s, CPU s) samples, the
    first one its start at 0 CPU."""

    cmd: str
    ppid: int
    series: list[tuple[float, float]] = field(default_factory=list)


def request_kind(path: str) -> str:
    """What a request to the SuperLink is, from its path: a silo's look for messages, a
    silo's push or pull of a message's object, another Fleet request (the message itself,
    its receipt, a heartbeat), or the coordinator's (its ServerApp and SuperExec, on the
    SuperLink's Runtime API)."""
    if not path.startswith("/v1/fleet/"):
        return "coordinator's"
    if path == "/v1/fleet/pull-messages":
        return "looks"
    return "objects" if path in ("/v1/fleet/push-object", "/v1/fleet/pull-object") else (
        "other Fleet")


def requests(events: list[dict], start: float, end: float, link: set[int]) -> dict[str, int]:
    """How many requests of each kind (:func:`request_kind`) the SuperLink (``link``: its
    pids) took between ``start`` and ``end`` (epoch s), from the trace's ``http.request``
    lines (each SuperNode's Runtime API writes them too: other pids)."""
    out = dict.fromkeys(REQUESTS, 0)
    for e in events:
        if e.get("event") == "http.request" and e["pid"] in link and start <= e["at"] < end:
            out[request_kind(e["path"])] += 1
    return out


def paths(events: list[dict], start: float, end: float, link: set[int]) -> dict[str, int]:
    """Requests per path the SuperLink took between ``start`` and ``end`` (the raw rows)."""
    out: dict[str, int] = {}
    for e in events:
        if e.get("event") == "http.request" and e["pid"] in link and start <= e["at"] < end:
            out[e["path"]] = out.get(e["path"], 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def at(series: list[tuple[float, float]], t: float) -> float:
    """The cumulative value of ``series`` (time-ordered) at ``t``, interpolated; 0 before
    it starts, its last value after it ends."""
    if not series or t <= series[0][0]:
        return 0.0 if not series or t < series[0][0] else series[0][1]
    i = bisect.bisect_right(series, (t, float("inf")))
    if i >= len(series):
        return series[-1][1]
    (t0, v0), (t1, v1) = series[i - 1], series[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1


def spent(series: list[tuple[float, float]], start: float, end: float) -> float:
    """What ``series`` (cumulative CPU s) grew by between ``start`` and ``end``."""
    return at(series, end) - at(series, start)


def _busy() -> float:
    """The machine's busy CPU seconds since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / TICK


class Sampler(threading.Thread):
    """Reads ``/proc`` every ``every`` s until stopped: :attr:`machine` and :attr:`procs`."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.machine: list[tuple[float, float]] = []
        self.procs: dict[tuple[int, int], Process] = {}  # (pid, start tick) → process
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()

    def sample(self) -> None:
        now = time.time()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        self.machine.append((now, _busy()))
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    rest = f.read().rsplit(b")", 1)[1].split()
                key = (int(entry.name), int(rest[19]))
                proc = self.procs.get(key)
                if proc is None:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    born = now - (uptime - key[1] / TICK)
                    proc = self.procs[key] = Process(cmd, int(rest[1]), [(born, 0.0)])
                proc.series.append((now, (int(rest[11]) + int(rest[12])) / TICK))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile

    def roles(self) -> dict[tuple[int, int], str]:
        """Each sampled process of this benchmark's tree: its role (:func:`classify`)."""
        latest: dict[int, tuple[int, int]] = {}  # a reused pid: its latest process
        for key in sorted(self.procs, key=lambda k: k[1]):
            latest[key[0]] = key
        me = os.getpid()
        out = {}
        for key, proc in self.procs.items():
            if key[0] == me:
                out[key] = "benchmark"
                continue
            chain, parent = [proc.cmd], proc.ppid
            while parent != me and parent in latest:
                chain.append(self.procs[latest[parent]].cmd)
                parent = self.procs[latest[parent]].ppid
            if parent == me:  # of this benchmark's tree
                out[key] = classify(chain) or "benchmark"
        return out

    def account(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each role, the machine and the rest spent between ``start`` and
        ``end`` (epoch s)."""
        cpu = dict.fromkeys(ROLES, 0.0)
        for key, role in self.roles().items():
            cpu[role] += spent(self.procs[key].series, start, end)
        cpu["machine"] = spent(self.machine, start, end)
        cpu["rest"] = cpu["machine"] - sum(cpu[r] for r in ROLES)
        return cpu


def _xsilo(silos: int, secure: bool, compression: str = "none") -> list[tuple[float, float]]:
    """A deployed xsilo run; (start, end) epoch s of its rounds from round 2 on."""
    import dataclasses

    import secagg

    config = dataclasses.replace(secagg._config(silos, secure), compression=compression)
    with tempfile.TemporaryDirectory() as tmp:
        fed = secagg._federation(Path(tmp), silos)
        with fed:
            fed.start()
            outcome = fed.run(config, timeout=secagg.CASE_LIMIT)
        assert outcome.completed, outcome.summary
        events = outcome.store.events()
    # A round starts where it names the silos it waits for ("awaiting"); its row is written
    # later (with the next round's evaluation), so the row's own time is not its end.
    starts: dict[int, float] = {}
    for e in events:
        if e.get("event") == "awaiting":
            starts.setdefault(e["round"], e["time"])
    return [(starts[e["round"]], starts[e["round"]] + e["round_seconds"]) for e in events
            if e.get("event") == "round" and e["round"] >= 2]


def _flower(silos: int, params: int, secure: bool) -> list[tuple[float, float]]:
    """Flower's app deployed the same way; (start, end) epoch s of its rounds from round 2."""
    import secagg

    spans = secagg.case_flower_deployment(silos, params, secure)["spans"]
    return [tuple(s) for s in spans[1:]]


def run_case(silos: int, params: int, case: Case) -> dict:
    """One deployment sampled; per round from round 2 on: wall time and CPU by role."""
    import secagg

    from xsilo.records import PACK_ENV

    label, secure, engine, compression = case.label, case.secure, case.engine, case.compression
    saved = dict(os.environ)  # the deployment's processes import the synthetic model
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        os.environ.update(child_env(TRACE_SITE, HERE, XSILO_TRACE_FILE=str(trace), **{
            secagg.PARAMS_ENV: str(params), secagg.TENSORS_ENV: str(case.tensors),
            PACK_ENV: "1" if case.pack else "0"}))
        sampler = Sampler()
        sampler.start()
        try:
            spans = (_xsilo(silos, secure, compression) if engine == "xsilo"
                     else _flower(silos, params, secure))
        finally:
            sampler.stop()
            os.environ.clear()
            os.environ.update(saved)
        events = [json.loads(line) for line in trace.read_text().splitlines()]
    link = {key[0] for key, role in sampler.roles().items() if role == "SuperLink"}
    rounds = [{"round_s": end - start, **sampler.account(start, end),
               "requests": requests(events, start, end, link),
               "paths": paths(events, start, end, link)} for start, end in spans]
    return {"case": label, "secure": secure, "engine": engine, "compression": compression,
            "tensors": case.tensors, "pack": case.pack, "rounds": rounds,
            "round_s": statistics.median(r["round_s"] for r in rounds),
            "cpu_s": {k: statistics.mean(r[k] for r in rounds)
                      for k in (*ROLES, "rest", "machine")},
            "requests": {k: statistics.mean(r["requests"][k] for r in rounds)
                         for k in REQUESTS}}


COLUMNS = (*ROLES, "rest")


def table(cases: list[dict], silos: int) -> str:
    lines = ["| round | round s | machine CPU s | cores busy | " + " | ".join(COLUMNS)
             + " | a silo's CPU s |", "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for c in cases:
        cpu = c["cpu_s"]
        silo = sum(cpu[r] for r in ("SuperNodes", "SuperExecs", "ClientApps")) / silos
        lines.append(f"| {c['case']} | {c['round_s']:.2f} | {cpu['machine']:.2f} | "
                     f"{cpu['machine'] / c['round_s']:.2f} | "
                     + " | ".join(f"{cpu[k]:.2f}" for k in COLUMNS) + f" | {silo:.2f} |")
    return "\n".join(lines)


def request_table(cases: list[dict]) -> str:
    lines = ["| round | SuperLink requests | " + " | ".join(REQUESTS)
             + " | SuperLink CPU ms per request |", "|---|---|" + "---|" * len(REQUESTS) + "---|"]
    for c in cases:
        n = sum(c["requests"].values())
        per = f"{1000 * c['cpu_s']['SuperLink'] / n:.1f}" if n else "—"
        lines.append(f"| {c['case']} | {n:.0f} | "
                     + " | ".join(f"{c['requests'][k]:.0f}" for k in REQUESTS) + f" | {per} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, default=5)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    started = time.time()
    cases = [run_case(args.silos, args.params, case) for case in CASES]
    print(table(cases, args.silos))
    print(request_table(cases))
    meta = save_raw(OUT, "benchmarks/round_cpu.py", silos=args.silos, params=args.params,
                    cores=os.cpu_count(), seconds=round(time.time() - started), cases=cases)
    if not args.no_results:
        replace_section(HEADING, (
            f"{HEADING}\n\n`{meta['command']}` ({meta['date']}, commit {meta['commit']}; "
            f"{args.silos} silos × {args.params:,} parameters on {os.cpu_count()} cores, "
            "the deployment cases of `benchmarks/secagg.py`, each stack as it ships; CPU "
            "seconds per round, the mean over rounds 2–3, from `/proc` every 0.05 s; raw rows "
            "in `benchmarks/out/round_cpu.json`).\n\n" + table(cases, args.silos) + "\n\n"
            "Requests to the SuperLink per round (the mean over rounds 2–3, counted by "
            "`benchmarks/_trace_site/sitecustomize.py`):\n\n" + request_table(cases) + "\n"))


if __name__ == "__main__":
    main()

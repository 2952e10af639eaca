"""Scale: the real xsilo round loop with 100 and 1,000 silos on Flower's Ray simulation,
against Flower's own FedAvg (and SecAgg+) in the same invocation.

    .venv/bin/python benchmarks/scale.py                      # the default grid, writes results
    .venv/bin/python benchmarks/scale.py --grid xsilo-sim:100:clear flower-sim:100:clear

Every silo holds one float32 tensor of ``--params`` values (default 100,000); "training" adds
a fixed seeded step (benchmark data, nothing secret), so the figures are the protocol and
the engine, not a model (the synthetic model of ``benchmarks/secagg.py``). Both stacks run
on ``flwr.simulation.run_simulation`` with two ClientApp actors (one CPU each, the
machine's two cores); the ServerApp runs in the driver process.

Per case (a fresh subprocess each): the median round time over rounds 2..R, and peak
resident memory (VmHWM from ``/proc``, sampled every 0.2 s) of the **coordinator** (the
driver process: the ServerApp and Ray's driver) and of **a silo** (the largest ClientApp
actor process, ``ray::…``; each actor serves many virtual silos one message at a time).
xsilo secure uses t = ⌈2n/3⌉ (``secagg_threshold`` = ``min_silos``), in the pair-seed mode
(``secure``) or with round keys (``secure-rk``: ``secagg_round_keys = "on"``); Flower SecAgg+
``num_shares = n``, ``reconstruction_threshold = ⌈2n/3⌉`` (as in ``benchmarks/secagg.py``).

Results: ``benchmarks/out/scale.json`` and the section "## Scale: 100 and 1,000 silos" of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

from _bench import child_env, commit, emit, proc_status_kib, replace_section, run_child

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## Scale: 100 and 1,000 silos"
ROUNDS = 3
# ENGINE:SILOS:MODE[:ROUNDS]. Flower SecAgg+ at 100 silos takes ~10 minutes a round on two
# cores, so it runs 2 rounds (its time is round 2's alone).
DEFAULT_GRID = ["xsilo-sim:100:clear", "flower-sim:100:clear", "xsilo-sim:100:secure",
                "xsilo-sim:100:secure-rk", "flower-sim:100:secure:2", "xsilo-sim:1000:clear",
                "flower-sim:1000:clear", "xsilo-sim:1000:secure-rk:2"]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


class PeakMemory:
    """Peak RSS of this process and of the largest Ray actor process, sampled from /proc."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.coordinator_kib = 0
        self.silo_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.coordinator_kib = max(self.coordinator_kib, proc_status_kib(os.getpid(), "VmHWM"))
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _cmdline(entry.name).startswith("ray::"):
                self.silo_kib = max(self.silo_kib, proc_status_kib(entry.name, "VmHWM"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


MODES = {"clear": (False, "off"), "secure": (True, "off"), "secure-rk": (True, "on")}
"""A case's mode: (secure, secagg_round_keys). ``secure`` is the pair-seed mode (two round
trips), ``secure-rk`` round keys (a dealing round trip first); Flower has ``secure`` only."""


def _parse(spec: str) -> tuple[str, int, str, int]:
    engine, silos, mode, *rounds = spec.split(":")
    if mode not in MODES or (engine == "flower-sim" and mode == "secure-rk"):
        raise SystemExit(f"case {spec!r}: mode must be one of {sorted(MODES)} "
                         "(secure-rk for xsilo-sim only)")
    return engine, int(silos), mode, int(rounds[0]) if rounds else ROUNDS


def _child(engine: str, silos: int, params: int, mode: str, rounds: int) -> dict:
    sys.path[:0] = [str(ROOT), str(HERE)]
    import secagg as bench  # benchmarks/secagg.py: the synthetic model and Flower's app

    bench.LOCAL_ROUNDS = rounds
    os.environ[bench.PARAMS_ENV] = str(params)
    secure, round_keys = MODES[mode]
    with PeakMemory() as memory:
        result = (bench.case_simulation(silos, params, secure, round_keys)
                  if engine == "xsilo-sim" else bench.case_flower_sim(silos, params, secure))
    return {**result, "rounds": rounds,
            "coordinator_peak_mib": round(memory.coordinator_kib / 1024, 1),
            "silo_peak_mib": round(memory.silo_kib / 1024, 1)}


def _run_case(spec: str, params: int, timeout: float) -> dict:
    engine, silos, mode, _ = _parse(spec)
    method = {("xsilo-sim", "clear"): "xsilo FedAvg", ("xsilo-sim", "secure"): "xsilo secure",
              ("xsilo-sim", "secure-rk"): "xsilo secure, round keys",
              ("flower-sim", "clear"): "Flower FedAvg", ("flower-sim", "secure"): "Flower SecAgg+"}
    row = {"engine": engine, "silos": silos, "params": params,
           "method": method[(engine, mode)]}
    env = child_env(HERE, RAY_DEDUP_LOGS="0", XSILO_BENCH_PARAMS=str(params))
    started = time.perf_counter()
    result = run_child([__file__, "--child", spec, "--params", str(params)], env=env,
                       timeout=timeout)
    if "error" in result:
        return {**row, "error": result["error"]}
    return {**row, **result, "case_s": round(time.perf_counter() - started, 1)}


def _table(rows: list[dict]) -> str:
    out = ["| silos | method | round s | vs Flower FedAvg | coordinator peak MiB | "
           "silo (actor) peak MiB |", "|---|---|---|---|---|---|"]
    flower = {r["silos"]: r.get("round_s") for r in rows if r["method"] == "Flower FedAvg"}
    for r in sorted(rows, key=lambda r: (r["silos"], r["method"])):
        if "error" in r:
            out.append(f"| {r['silos']:,} | {r['method']} | – | – | – | – ({r['error']}) |")
            continue
        base = flower.get(r["silos"])
        ratio = f"{r['round_s'] / base:.2f}×" if base else "–"
        out.append(f"| {r['silos']:,} | {r['method']} | {r['round_s']:.2f} | {ratio} | "
                   f"{r['coordinator_peak_mib']:.0f} | {r['silo_peak_mib']:.0f} |")
    return "\n".join(out)


def _write_results(rows: list[dict], argv: list[str]) -> None:
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    meta = {"commit": commit(), "argv": argv, "python": platform.python_version(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    (out / "scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    section = (f"{SECTION}\n\n`.venv/bin/python benchmarks/scale.py {' '.join(argv)}`".rstrip()
               + f"\n({meta['date']}, commit {meta['commit']}, {meta['cpus']} CPUs; raw rows in "
               "`benchmarks/out/scale.json`). Ray simulation, two ClientApp actors, "
               f"{rows[0]['params']:,} float32 parameters per silo, {ROUNDS} rounds unless the "
               "spec says (`:R`), median of rounds 2..R; peak memory is VmHWM (see the script's "
               "docstring).\n\n"
               + _table(rows) + "\n")
    replace_section(SECTION, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="+", default=DEFAULT_GRID,
                        help="cases ENGINE:SILOS:clear|secure|secure-rk[:ROUNDS] (engines xsilo-sim, "
                             f"flower-sim; {ROUNDS} rounds unless given)")
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, silos, mode, rounds = _parse(args.child)
        emit(_child(engine, silos, args.params, mode, rounds))
        return
    rows = []
    for spec in args.grid:
        row = _run_case(spec, args.params, args.timeout)
        rows.append(row)
        shown = (f"{row['round_s']:.2f} s/round, coordinator {row['coordinator_peak_mib']} MiB, "
                 f"silo {row['silo_peak_mib']} MiB" if "error" not in row else row["error"])
        print(f"{spec}: {shown}", flush=True)
    print(_table(rows))
    if not args.no_write:
        _write_results(rows, sys.argv[1:])


if __name__ == "__main__":
    main()

"""What round keys' extra round trip costs on real processes: pair seeds against round keys.

    .venv/bin/python benchmarks/round_keys_deployment.py [--repeats 2] [--rounds 4] [--no-results]

Three demo hospitals on the real deployment engine (SuperLink, one SuperNode per silo,
mTLS gateways, node authentication: ``federation.deployment.LocalFederation``), a secure
run of ``--rounds`` rounds with ``secagg_round_keys = "off"`` (pair seeds, two round trips)
and ``"on"`` (round keys, a dealing round trip first), alternating, ``--repeats`` times.
Per mode: the median round time over rounds 2..R of every run, and the median of each
round trip. At three silos the dealing itself is negligible, so the difference is the
price of the dealing round trip: what a consortium pays for round keys before its pair-seed
dealing (``benchmarks/secagg_growth.py``) and share traffic cost more.

Writes ``benchmarks/out/round_keys_deployment.json`` and, unless ``--no-results``, the
section "Secure aggregation: the round-keys trip in deployment" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _bench import replace_section, save_raw  # noqa: E402
from coordinator.config import RunConfig  # noqa: E402
from federation.deployment import LocalFederation  # noqa: E402

OUT = HERE / "out" / "round_keys_deployment.json"
HEADING = "## Secure aggregation: the round-keys trip in deployment"


def one_run(mode: str, rounds: int) -> list[dict]:
    """Rounds 2..R of one secure run: round seconds and each round trip's seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        fed = LocalFederation(Path(tmp), mtls=True).setup()
        with fed:
            fed.start()
            outcome = fed.run(RunConfig(
                num_rounds=rounds, min_silos=3, expected_silos=3, secure_aggregation=True,
                secagg_round_keys=mode, round_timeout=40.0, join_timeout=45.0,
                name=f"round-keys-{mode}"), timeout=60 + 30 * rounds)
        if outcome.status != "finished:completed":
            raise SystemExit(f"the {mode} run did not complete: {outcome.summary}")
        rows = [e for e in outcome.store.events() if e["event"] == "round"]
        return [{"round": r["round"], "round_s": r["round_seconds"],
                 "trips_s": r["secure_aggregation"]["seconds"]} for r in rows[2:]]


def summary(rows: list[dict]) -> dict:
    trips = sorted({k for r in rows for k in r["trips_s"]})
    return {"round_s": round(statistics.median(r["round_s"] for r in rows), 2),
            **{f"{k}_s": round(statistics.median(r["trips_s"][k] for r in rows), 2)
               for k in trips}}


def table(result: dict[str, dict]) -> str:
    lines = ["| secagg_round_keys | round s | dealing s | masked input s | unmasking s |",
             "|---|---|---|---|---|"]
    for mode, s in result.items():
        lines.append(f"| {mode} | {s['round_s']:.2f} | {s.get('dealing_s', '—')} | "
                     f"{s['masked_input_s']:.2f} | {s['unmasking_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in runs:  # alternating, so a drift in the machine hits both
            rows = one_run(mode, args.rounds)
            runs[mode].extend(rows)
            print(mode, json.dumps(rows), flush=True)
    result = {mode: summary(rows) for mode, rows in runs.items()}
    print(table(result))
    meta = save_raw(OUT, "benchmarks/round_keys_deployment.py", runs=runs, result=result)
    if not args.no_results:
        replace_section(HEADING, (
            f"{HEADING}\n\n`{meta['command']}` ({meta['date']}, commit "
            f"{meta['commit']}; 3 silos on the real deployment engine with mTLS gateways, "
            f"{args.rounds} rounds a run, {args.repeats} runs per mode alternating, medians "
            "over rounds 2..R of all runs; raw rows in "
            "`benchmarks/out/round_keys_deployment.json`).\n\n" + table(result) + "\n\n"
            "Reading: docs/secure-aggregation.md, *Round keys*.\n"))


if __name__ == "__main__":
    main()

"""How secure aggregation's per-round cost grows with the number of silos (pure protocol).

    .venv/bin/python benchmarks/secagg_growth.py [--silos 25 50 100 200 400 1000]
        [--pair-seeds-up-to 400] [--length 100000] [--stepped 3] [--full 100] [--no-results]

For each roster size ``n`` (threshold ``t = ⌈2n/3⌉``, xsilo's default) and each mode it keys
every silo in memory (no transport, no Flower), opens round 1 and times ``--stepped``
silos' steps (median):

* **pair seeds** (the two-trip mode): the masked-input step with the model (``--length``
  float32 parameters), and the same step with a 16-parameter model, which is the share
  dealing (Shamir, commitments, sealing) and the pair-seed derivation alone;
* **round keys** (``secagg_round_keys``): the dealing step (DealRequest → Dealt) and the
  masked-input step with the model.

It also counts the share bytes a silo sends a round (its sealed bundles and commitments)
and, from them, the coordinator's share traffic per round (``n`` silos' bundles in,
``t + 1`` unmask requests out). For ``n`` up to ``--full`` it runs the whole round with one
silo dropped and times the coordinator's unmasking. Pair seeds run only up to
``--pair-seeds-up-to`` silos (their dealing grows as n³).

Writes ``benchmarks/out/secagg_growth.json`` and, unless ``--no-results``, the section
"Secure aggregation: growth with the number of silos" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import replace_section, save_raw  # noqa: E402
from strategies.secagg import coordinator as co  # noqa: E402
from strategies.secagg import make_config, new_silo, silo_step  # noqa: E402
from strategies.secagg.messages import Dealt, MaskedInput  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "secagg_growth.json"
HEADING = "## Secure aggregation: growth with the number of silos"


def _keyed(n: int, length: int, round_keys: bool) -> tuple[co.CoordinatorState, dict]:
    config = make_config(run_id="growth", roster=list(range(n)),
                         threshold=math.ceil(2 * n / 3), length=length, clip=1.0, bits=16,
                         max_weight=1000, round_keys=round_keys)
    state, requests = co.start_run(config)
    silos = {}
    for s, request in requests.items():
        silos[s], advert = silo_step(new_silo(s), request)
        state = co.receive_advert(state, advert)
    return state, silos


def _share_bytes(message: MaskedInput | Dealt) -> int:
    return sum(map(len, message.bundles)) + sum(map(len, message.commitments))


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _opened(n: int, length: int, round_keys: bool):
    """Round 1 opened for every silo: (coordinator state, silos, mask requests), after the
    dealing in round-keys mode (with every silo's dealing times)."""
    state, silos = _keyed(n, length, round_keys)
    state, requests = co.begin_round(state, round_=1)
    dealing = []
    if round_keys:
        for s, request in requests.items():
            seconds, (silos[s], dealt) = _timed(lambda: silo_step(silos[s], request))
            dealing.append((seconds, dealt))
            state = co.receive_dealt(state, dealt)
        state, requests = co.begin_masking(state)
    return state, silos, requests, dealing


def one_size(n: int, length: int, stepped: int, full: bool, round_keys: bool = False) -> dict:
    t = math.ceil(2 * n / 3)
    row: dict = {"mode": "round keys" if round_keys else "pair seeds", "silos": n,
                 "threshold": t, "length": length}
    update = np.linspace(-1, 1, length, dtype=np.float32)
    state, silos, requests, dealing = _opened(n, length, round_keys)
    times, masked = [], None
    for s in list(requests)[:stepped]:
        seconds, (silos[s], masked) = _timed(
            lambda: silo_step(silos[s], requests[s], update=update, weight=100))
        times.append(seconds)
    row["step_ms"] = round(1e3 * statistics.median(times), 1)
    if round_keys:
        row["dealing_ms"] = round(1e3 * statistics.median(d for d, _ in dealing[:stepped]), 1)
        row["share_bytes_per_silo"] = _share_bytes(dealing[0][1])
        bundle = len(dealing[0][1].bundles[0])
    else:  # the same step without the model: the dealing and pair seeds alone
        _, small, small_requests, _ = _opened(n, 16, False)
        little = np.zeros(16, dtype=np.float32)
        row["dealing_ms"] = round(1e3 * statistics.median(
            _timed(lambda: silo_step(small[s], small_requests[s], update=little, weight=1))[0]
            for s in list(small_requests)[:stepped]), 1)
        assert isinstance(masked, MaskedInput)
        row["share_bytes_per_silo"] = _share_bytes(masked)
        bundle = len(masked.bundles[0])
    row["unmask_request_bytes"] = n * bundle  # a bundle from each silo (all n in the round)
    if full:  # a whole round afresh, silo 0 dropped after its dealing / keys
        state, silos, requests, _ = _opened(n, length, round_keys)
        for s, request in requests.items():
            silos[s], masked = silo_step(silos[s], request, update=update, weight=100)
            if s != 0:
                state = co.receive_masked(state, masked)
        state, unmask = co.request_unmask(state, ask=sorted(state.bundles)[:t + 1])
        row["unmask_request_bytes"] = sum(map(len, next(iter(unmask.values())).bundles))
        for s, request in unmask.items():
            silos[s], reply = silo_step(silos[s], request)
            state = co.receive_unmask(state, reply)
        seconds, _ = _timed(lambda: co.finish_round(state))
        row["coordinator_unmask_ms"] = round(1e3 * seconds, 1)
    row["coordinator_share_mb_per_round"] = round(
        (n * row["share_bytes_per_silo"] + (t + 1) * row["unmask_request_bytes"]) / 1e6, 2)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| mode | silos n | t | a silo's masked input, ms | its dealing, ms | share bytes a "
             "silo sends | share MB through the coordinator per round | coordinator "
             "unmasking, ms (1 dropped) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['silos']:,} | {r['threshold']} | {r['step_ms']:.1f} | "
                     f"{r['dealing_ms']:.1f} | {r['share_bytes_per_silo']:,} | "
                     f"{r['coordinator_share_mb_per_round']:,} | "
                     f"{r.get('coordinator_unmask_ms', '—')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[25, 50, 100, 200, 400, 1000])
    parser.add_argument("--pair-seeds-up-to", type=int, default=400)
    parser.add_argument("--length", type=int, default=100_000)
    parser.add_argument("--stepped", type=int, default=3)
    parser.add_argument("--full", type=int, default=100,
                        help="run the whole round (and time the unmasking) up to this n")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    rows = []
    for round_keys in (False, True):
        for n in args.silos:
            if not round_keys and n > args.pair_seeds_up_to:
                continue
            row = one_size(n, args.length, args.stepped, n <= args.full, round_keys)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = save_raw(OUT, "benchmarks/secagg_growth.py", rows=rows)
    print(table(rows))
    if not args.no_results:
        replace_section(HEADING, (
            f"{HEADING}\n\n`{meta['command']}` ({meta['date']}, commit "
            f"{meta['commit']}; the pure protocol in one process, no transport, no Flower; "
            f"{args.length:,} parameters, t = ⌈2n/3⌉; times are the median of "
            f"{args.stepped} silos' steps (for pair seeds the dealing column is the step with a 16-parameter model: dealing and pair seeds alone); raw rows in `benchmarks/out/secagg_growth.json`)."
            "\n\n" + table(rows) + "\n\nReading, and what it means for large consortia: "
            "[docs/secure-aggregation.md](../docs/secure-aggregation.md#how-far-it-scales).\n"))


if __name__ == "__main__":
    main()

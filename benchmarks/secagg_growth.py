"""How secure aggregation's per-round cost grows with the number of silos (pure protocol).

    .venv/bin/python benchmarks/secagg_growth.py [--silos 25 50 100 200 400] [--length 100000]
                                                 [--stepped 3] [--no-results]

For each roster size ``n`` (threshold ``t = ⌈2n/3⌉``, xsilo's default) it keys every silo
in memory (no transport, no Flower), opens round 1 and times ``--stepped`` silos'
masked-input step (median), twice:

* with the model (``--length`` float32 parameters): what a silo spends on its masked input;
* with a 16-parameter model: the same step without the mask expansion, i.e. the share
  dealing (Shamir, commitments, sealing) and the pair-seed derivation.

It also counts the bytes the protocol adds beside the masked vector: a masked input's
sealed share bundles and commitments, and an unmask request (the bundles addressed to one
asked silo), and from them the coordinator's share traffic per round (``n`` masked inputs
in, ``t + 1`` unmask requests out). For ``n`` up to ``--full`` it also runs the whole
round with one silo dropped and times the coordinator's unmasking.

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

from _bench import commit, replace_section  # noqa: E402
from strategies.secagg import coordinator as co  # noqa: E402
from strategies.secagg import make_config, new_silo, silo_step  # noqa: E402
from strategies.secagg.messages import MaskedInput, UnmaskRequest  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "secagg_growth.json"
HEADING = "## Secure aggregation: growth with the number of silos"


def _keyed(n: int, length: int) -> tuple[co.CoordinatorState, dict]:
    config = make_config(run_id="growth", roster=list(range(n)),
                         threshold=math.ceil(2 * n / 3), length=length, clip=1.0, bits=16,
                         max_weight=1000)
    state, requests = co.start_run(config)
    silos = {}
    for s, request in requests.items():
        silos[s], advert = silo_step(new_silo(s), request)
        state = co.receive_advert(state, advert)
    return state, silos


def _share_bytes(masked: MaskedInput) -> int:
    return sum(map(len, masked.bundles)) + sum(map(len, masked.commitments))


def _unmask_bytes(request: UnmaskRequest) -> int:
    return sum(map(len, request.bundles))


def one_size(n: int, length: int, stepped: int, full: bool) -> dict:
    row: dict = {"silos": n, "threshold": math.ceil(2 * n / 3), "length": length}
    for what, d in (("step", length), ("dealing", 16)):
        state, silos = _keyed(n, d)
        state, requests = co.begin_round(state, round_=1)
        update = np.linspace(-1, 1, d, dtype=np.float32)
        times, masked = [], None
        for s in list(requests)[:stepped]:
            start = time.perf_counter()
            silos[s], masked = silo_step(silos[s], requests[s], update=update, weight=100)
            times.append(time.perf_counter() - start)
        row[f"{what}_ms"] = round(1e3 * statistics.median(times), 1)
        assert isinstance(masked, MaskedInput)
        row["share_bytes_per_input"] = _share_bytes(masked)
    t = row["threshold"]
    # An unmask request carries, from each survivor, the bundle addressed to the asked silo.
    row["unmask_request_bytes"] = n * len(masked.bundles[0])  # (all n survived)
    row["coordinator_share_mb_per_round"] = round(
        (n * row["share_bytes_per_input"] + (t + 1) * row["unmask_request_bytes"]) / 1e6, 2)
    if full:
        state, silos = _keyed(n, length)
        state, requests = co.begin_round(state, round_=1)
        update = np.linspace(-1, 1, length, dtype=np.float32)
        for s, request in requests.items():
            silos[s], masked = silo_step(silos[s], request, update=update, weight=100)
            if s != 0:  # silo 0 drops after keys: its peers' seeds with it are recovered
                state = co.receive_masked(state, masked)
        state, unmask = co.request_unmask(state, ask=sorted(state.bundles)[:t + 1])
        row["unmask_request_bytes"] = _unmask_bytes(next(iter(unmask.values())))
        for s, request in unmask.items():
            silos[s], reply = silo_step(silos[s], request)
            state = co.receive_unmask(state, reply)
        start = time.perf_counter()
        co.finish_round(state)
        row["coordinator_unmask_ms"] = round(1e3 * (time.perf_counter() - start), 1)
        row["coordinator_share_mb_per_round"] = round(
            (n * row["share_bytes_per_input"] + (t + 1) * row["unmask_request_bytes"]) / 1e6, 2)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| silos n | t | a silo's masked input, ms | the same without the model (the dealing), ms | share bytes "
             "per masked input | share MB through the coordinator per round | coordinator "
             "unmasking, ms (1 dropped) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['silos']} | {r['threshold']} | {r['step_ms']:.1f} | "
                     f"{r['dealing_ms']:.1f} | {r['share_bytes_per_input']:,} | "
                     f"{r['coordinator_share_mb_per_round']:,} | "
                     f"{r.get('coordinator_unmask_ms', '—')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--length", type=int, default=100_000)
    parser.add_argument("--stepped", type=int, default=3)
    parser.add_argument("--full", type=int, default=100,
                        help="run the whole round (and time the unmasking) up to this n")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in args.silos:
        row = one_size(n, args.length, args.stepped, n <= args.full)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"commit": commit(), "argv": sys.argv[1:],
            "date": time.strftime("%Y-%m-%d", time.gmtime())}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    if not args.no_results:
        command = " ".join(["benchmarks/secagg_growth.py", *sys.argv[1:]])
        replace_section(HEADING, (
            f"{HEADING}\n\n`.venv/bin/python {command}` ({meta['date']}, commit "
            f"{meta['commit']}; the pure protocol in one process, no transport, no Flower; "
            f"{args.length:,} parameters, t = ⌈2n/3⌉; times are the median of "
            f"{args.stepped} silos' steps; raw rows in `benchmarks/out/secagg_growth.json`)."
            "\n\n" + table(rows) + "\n\nReading, and what it means for large consortia: "
            "[docs/secure-aggregation.md](../docs/secure-aggregation.md#how-far-it-scales).\n"))


if __name__ == "__main__":
    main()

"""Bytes per round and final accuracy: update compression in clear and secure rounds.

    .venv/bin/python benchmarks/compression.py                 # the default grid, writes results
    .venv/bin/python benchmarks/compression.py --rounds 5 --no-write

The task keeps learning over rounds: the digits CNN of ``examples/digits-torch`` (about 40k
parameters) on scikit-learn's digits split non-IID over three silos (``alpha`` 0.5), FedAvg,
one local epoch per round, the real coordinator loop and ClientApp in one process
(``federation.local.run_in_process``). Each case is one run with the same seed and data.

* clear: ``compression`` none / ``q8`` / ``q4`` / ``topk`` (1 %, error feedback at the silo);
* secure: secure aggregation at the default 16 bits and at ``secagg_bits`` 8 (masked vectors
  bit-packed to the width the sum needs, so fewer quantization bits are fewer bytes).

"bytes / round" is what the silos send in a training round (update payload as the
coordinator receives it: ``bytes.received`` of rounds 1..R−1, mean; row R also holds the
final evaluation), its ratio to the clear
float32 update, and the final global accuracy (example-weighted over the silos' test
splits). Results: ``benchmarks/out/compression.json`` and the section "## Compression:
bytes per round and accuracy" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import child_env, commit, emit, replace_section, run_child

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "digits-torch"
SECTION = "## Compression: bytes per round and accuracy"
CASES = [("clear", "none", {}), ("clear", "q8", {"compression": "q8"}),
         ("clear", "q4", {"compression": "q4"}),
         ("clear", "topk 1% + error feedback", {"compression": "topk",
                                                "compression_fraction": 0.01}),
         ("secure", "16 bits (default)", {"secure_aggregation": True}),
         ("secure", "8 bits", {"secure_aggregation": True, "secagg_bits": 8})]


def _case(root: Path, rounds: int, seed: int, settings: dict) -> dict:
    sys.path[:0] = [str(ROOT), str(EXAMPLE)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    import prepare_data

    from coordinator.config import RunConfig
    from coordinator.run_store import RunStore
    from federation.local import run_in_process
    from silo_client.config import write_silo_config

    configs = [write_silo_config(root / "silos" / s.name / "silo.toml", name=s.name,
                                 train=Path("data/train.csv"), test=Path("data/test.csv"),
                                 schema=prepare_data.schema(), model="digits_cnn:build")
               for s in prepare_data.write_silos(root / "silos", alpha=0.5, seed=seed)]
    config = RunConfig(num_rounds=rounds, min_silos=3, seed=seed, learning_rate=0.05,
                       round_timeout=600.0, name="compression", **settings)
    started = time.perf_counter()
    summary = run_in_process(root / "run", config, configs)
    rows = [e for e in RunStore(root / "run").events() if e.get("event") == "round"]
    # rounds 1..R-1: the last row also carries the final evaluation's traffic (under secure
    # aggregation a masked round of its own)
    train = [r for r in rows if 1 <= r["round"] < max(rounds, 2)]
    return {"status": summary["status"], "final_accuracy": summary["final_accuracy"],
            "final_loss": summary["final_loss"],
            "bytes_per_round": statistics.mean(r["bytes"]["received"] for r in train),
            "accuracy_by_round": [r.get("global_accuracy") for r in rows],
            "seconds": round(time.perf_counter() - started, 1)}


def _float32_update_bytes() -> int:
    sys.path[:0] = [str(EXAMPLE)]
    import digits_cnn

    model = digits_cnn.build(64, tuple(range(10)), seed=0)
    return 4 * sum(p.numel() for p in model.parameters())


def _table(rows: list[dict], silos: int, dense: int) -> str:
    out = ["| rounds | method | bytes / round (3 silos) | vs clear float32 | final accuracy | "
           "vs none |", "|---|---|---|---|---|---|"]
    base = next((r["final_accuracy"] for r in rows if r["method"] == "none"), None)
    for r in rows:
        ratio = r["bytes_per_round"] / (silos * dense)
        delta = (f"{100 * (r['final_accuracy'] - base):+.1f} pt"
                 if base is not None and r["final_accuracy"] is not None else "–")
        out.append(f"| {r['mode']} | {r['method']} | {r['bytes_per_round']:,.0f} | "
                   f"{ratio:.3f}× | {r['final_accuracy']:.4f} | {delta} |")
    return "\n".join(out)


def _goals(rows: list[dict], silos: int, dense: int) -> str:
    base = next(r for r in rows if r["method"] == "none")
    lines = []
    for r in rows:
        ratio = r["bytes_per_round"] / (silos * dense)
        drop = 100 * (base["final_accuracy"] - r["final_accuracy"])
        goal = 0.3 if r["mode"] == "clear" else 0.7
        if r["method"] == "none" or r["method"].startswith("16"):
            continue
        ok = ratio <= goal and (r["mode"] == "secure" or drop <= 1.0)
        lines.append(f"* {r['mode']} {r['method']}: {ratio:.3f}× float32 bytes (goal ≤ {goal}×), "
                     f"accuracy {-drop:+.1f} points vs uncompressed"
                     + (" (goal: within 1 point)" if r["mode"] == "clear" else "")
                     + f": {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        mode, method, settings = CASES[args.child]
        with tempfile.TemporaryDirectory() as tmp:
            emit(_case(Path(tmp), args.rounds, args.seed, settings))
        return
    env = child_env(EXAMPLE)
    rows = []
    for k, (mode, method, _) in enumerate(CASES):
        result = run_child([__file__, "--child", str(k), "--rounds", str(args.rounds),
                            "--seed", str(args.seed)], env=env)
        if "error" in result:
            raise SystemExit(f"{mode} {method} failed: {result.get('stderr') or result['error']}")
        row = {"mode": mode, "method": method, **result}
        rows.append(row)
        print(f"{mode} {method}: {row['bytes_per_round']:,.0f} B/round, accuracy "
              f"{row['final_accuracy']:.4f} ({row['seconds']} s)", flush=True)
    dense = _float32_update_bytes()
    table, goals = _table(rows, 3, dense), _goals(rows, 3, dense)
    print(table + "\n\n" + goals)
    if args.no_write:
        return
    meta = {"commit": commit(), "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d"),
            "python": platform.python_version(), "float32_update_bytes": dense}
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "compression.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                              indent=1))
    section = (f"{SECTION}\n\n`.venv/bin/python benchmarks/compression.py "
               f"{' '.join(sys.argv[1:])}`".rstrip()
               + f"\n({meta['date']}, commit {meta['commit']}; "
               f"the digits CNN, {dense // 4:,} parameters = {dense:,} float32 bytes per "
               f"update, three non-IID silos, {args.rounds} rounds, one process; raw rows with "
               "each round's accuracy in `benchmarks/out/compression.json`).\n\n"
               + table + "\n\nAgainst the goals (computed by the script):\n\n" + goals + "\n")
    replace_section(SECTION, section)


if __name__ == "__main__":
    main()

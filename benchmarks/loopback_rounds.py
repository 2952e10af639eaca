"""Round times of the multi-host test's runs, on one host's loopback: the reference for the
figures `tests/e2e/test_multi_host.py` prints (four network namespaces, a firewall, a host
name, mTLS gateways; see benchmarks/RESULTS.md, "Deployment across hosts").

The same federation (the demo's three hospitals, LogisticRegression), the same mTLS
gateways and the same runs (clear, 4 rounds, min_silos 2 of 3, straggler_grace 8 s; secure,
1 round, 3 of 3), but every process on 127.0.0.1 and no link cut. Prints a table; writes
benchmarks/out/loopback_rounds.json.

    .venv/bin/python benchmarks/loopback_rounds.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from _bench import commit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.config import RunConfig  # noqa: E402
from federation.deployment import LocalFederation  # noqa: E402


def _seconds(outcome) -> list[float]:  # type: ignore[no-untyped-def]
    return [round(float(e["round_seconds"]), 3) for e in outcome.store.events()
            if e["event"] == "round" and e["round"] >= 1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fed = LocalFederation(Path(tmp), mtls=True).setup()
        with fed:
            started = time.monotonic()
            fed.start()
            ready = time.monotonic() - started
            clear = fed.run(RunConfig(num_rounds=4, min_silos=2, expected_silos=3,
                                      round_timeout=60.0, straggler_grace=8.0,
                                      join_timeout=40.0, name="clear"),
                            timeout=120)
            secure = fed.run(RunConfig(num_rounds=1, min_silos=3, expected_silos=3,
                                       secure_aggregation=True, round_timeout=40.0,
                                       join_timeout=40.0, name="secure"), timeout=120)
        assert clear.completed and secure.completed, (clear.summary, secure.summary)
        clear_s, secure_s = _seconds(clear), _seconds(secure)  # before the directory goes
    result = {"set_up_s": round(ready, 1), "clear_round_s": clear_s,
              "secure_round_s": secure_s, "commit": commit()}
    print("| where | set-up (s) | clear round seconds | secure round seconds |")
    print("|---|---|---|---|")
    print(f"| loopback, one host | {result['set_up_s']} | {result['clear_round_s']} | "
          f"{result['secure_round_s']} |")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "loopback_rounds.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

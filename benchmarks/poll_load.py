"""What the SuperNodes' polling costs the SuperLink: requests per second at 10, 100 and
1,000 silos, idle and in rounds, with Flower's fixed 3 s poll and with xsilo's (quick after
an answer, back to 3 s, no quicker than the federation's share of the look budget:
deploy/launch/poll.py, the same AdaptivePoll the launcher runs, with its default budget).

A discrete-event count, not a load test: each silo's loop as Flower 1.42 runs it (look;
nothing → sleep; a message → answer after `compute` seconds, push, look again at once),
messages arriving as a round loop sends them (train, then evaluate once every silo has
answered, the next round `gap` seconds after that). tests/e2e/test_poll.py checks the
same pattern on real processes (the coordinator gateway's access log). Prints a table;
writes benchmarks/out/poll_load.json.

    .venv/bin/python benchmarks/poll_load.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.launch.poll import AdaptivePoll  # noqa: E402

HORIZON = 600.0  # seconds simulated per case


def _silo_looks(arrivals: list[float], compute: float, adaptive: bool,
                rng: random.Random, silos: int) -> tuple[list[float], list[float]]:
    """When one silo looks over HORIZON, and how long each message waited to be seen."""
    poll = AdaptivePoll() if adaptive else None
    t, looks, waited, pending = rng.uniform(0, 3.0), [], [], sorted(arrivals)
    while t < HORIZON:
        looks.append(t)
        if pending and pending[0] <= t:
            waited.append(t - pending.pop(0))
            t += compute  # the ClientApp runs, the reply is pushed, then a look at once
            if poll is not None:
                poll.answered(silos)  # the run named the federation's size
            continue
        t += poll.next_wait() if poll is not None else 3.0
    return looks, waited


def _case(n: int, active: bool, adaptive: bool, *, round_gap: float = 2.0,
          compute: float = 1.5, seed: int = 0) -> dict:
    rng = random.Random(seed)
    # rounds: train sent at r0, evaluate when the slowest silo answered (+ the polls' worst
    # case, 3 s), the next round round_gap after that: one message pair per silo per round
    arrivals: list[float] = []
    t = 5.0
    while active and t < HORIZON:
        arrivals += [t, t + compute + 3.0]
        t += 2 * (compute + 3.0) + round_gap
    per_second = [0] * (int(HORIZON) + 1)  # looks at the SuperLink in each second
    waits: list[float] = []
    for _ in range(n):
        k, w = _silo_looks(arrivals, compute, adaptive, rng, n)
        for at in k:
            per_second[int(at)] += 1
        waits += w
    return {"silos": n, "active": active, "poll": "xsilo" if adaptive else "flower",
            "requests_per_s": round(sum(per_second) / HORIZON, 1),
            "peak_per_s": max(per_second),
            "mean_wait_s": round(sum(waits) / len(waits), 3) if waits else None}


def main() -> None:
    rows = [_case(n, active, adaptive) for n in (10, 100, 1000) for active in (False, True)
            for adaptive in (False, True)]
    print("| silos | state | Flower 3 s: looks/s at the SuperLink, mean / busiest second | "
          "xsilo: looks/s, mean / busiest second | mean wait for a message, Flower → xsilo |")
    print("|---|---|---|---|---|")
    for flower, xsilo in zip(rows[::2], rows[1::2]):
        wait = ("—" if flower["mean_wait_s"] is None else
                f"{flower['mean_wait_s']:.2f} s → {xsilo['mean_wait_s']:.2f} s")
        print(f"| {flower['silos']} | {'in rounds' if flower['active'] else 'idle'} | "
              f"{flower['requests_per_s']} / {flower['peak_per_s']} | "
              f"{xsilo['requests_per_s']} / {xsilo['peak_per_s']} | {wait} |")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "poll_load.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

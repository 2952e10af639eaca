"""Where a deployed round trip's seconds go, hop by hop: clear and secure rounds as xsilo
ships them, and secure ones with Flower 1.42's own object back-off or its own 3 s poll.

    .venv/bin/python benchmarks/round_trip.py [--silos 5] [--params 1000000] [--no-results]

Runs the ``xsilo-deployment`` case of ``benchmarks/secagg.py`` (``flower-superlink`` and
one ``flower-supernode`` per silo, TLS and node authentication on loopback, xsilo's warm
SuperExec, 3 rounds) four times: clear and secure as it ships, then secure with
``XSILO_QUICK_PULLS=0`` in every process (``deploy/launch/pulls.py`` off: a missing object is
asked for again after 1 s, 2 s, …), then secure with ``XSILO_FAST_POLL=0`` (the SuperNodes'
quick look off: Flower's 3 s).
Every process of the deployment runs ``benchmarks/_trace_site/sitecustomize.py``, which
appends a timestamped line at each hop of each message; the hops of one message, from the
coordinator's push to its pull of the reply, are joined by message id:

* **push**: the coordinator's push of the batch the message is in (the message, then its
  objects, to the SuperLink); the next hops overlap it, since a silo can take the message
  before its objects are all there;
* **taken**: from the start of that push to the silo's SuperNode taking the message (its
  look);
* **to the ClientApp**: from there to the ClientApp holding the whole message (the
  SuperNode pulls its objects from the SuperLink, the SuperExec's task poll forks a
  ClientApp, which pulls the message from its SuperNode);
* **handle**: the silo's handler (the xsilo ClientApp: policy, training, masking…);
* **reply**: the ClientApp's push of its reply to its SuperNode, and from there the
  SuperNode's push to the SuperLink;
* **coordinator pull**: from the SuperNode's push to the coordinator holding the reply.

**trip** (push start to the coordinator holding the reply) is the sum of all hops but
**push**. Each cell is the median over the run's messages of that type. Writes
``benchmarks/out/round_trip.json`` and, unless ``--no-results``, the section "A deployed
round trip, step by step" of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _bench import replace_section, save_raw  # noqa: E402

OUT = HERE / "out" / "round_trip.json"
HEADING = "## A deployed round trip, step by step"
TRACE_SITE = HERE / "_trace_site"
HOPS = ("push", "taken", "to the ClientApp", "handle", "reply", "coordinator pull", "trip")
# (secure, quick object pulls, quick look), in run order
CASES = ((False, True, True), (True, True, True), (True, False, True), (True, True, False))


def trips(events: list[dict]) -> list[dict]:
    """One row per message the coordinator sent and got a reply to: its type and the
    seconds of each hop (module docstring); messages missing an event are left out."""
    got, app_pull, app_push, pushed, pulled = {}, {}, {}, {}, {}
    sent: list[tuple[dict, dict]] = []
    for e in events:
        kind = e["event"]
        if kind == "coord.push":
            sent += [(m, e) for m in e["messages"]]
        elif kind == "node.got":
            got.setdefault(e["id"], e["at"])
        elif kind == "app.pull":
            app_pull.setdefault(e["id"], e)
        elif kind == "app.push":
            app_push.setdefault(e["reply_to"], e)
        elif kind == "node.pushed":
            for m in e["reply_to"]:
                pushed.setdefault(m, e["at"])
        elif kind == "coord.pulled":
            for r in e["replies"]:
                pulled.setdefault(r["reply_to"], e["at"])
    rows = []
    for message, push in sent:
        m = message["id"]
        if not all(m in d for d in (got, app_pull, app_push, pushed, pulled)):
            continue
        rows.append({"type": message["type"], "group": message["group"],
                     "push": push["end"] - push["start"],
                     "taken": got[m] - push["start"],
                     "to the ClientApp": app_pull[m]["end"] - got[m],
                     "handle": app_push[m]["start"] - app_pull[m]["end"],
                     "reply": pushed[m] - app_push[m]["start"],
                     "coordinator pull": pulled[m] - pushed[m],
                     "trip": pulled[m] - push["start"]})
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per message type: the median of each hop, and how many messages."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted({r["type"] for r in rows}):
        of = [r for r in rows if r["type"] == kind]
        out[kind] = {hop: statistics.median(r[hop] for r in of) for hop in HOPS}
        out[kind]["messages"] = len(of)
    return out


def run_case(silos: int, params: int, secure: bool, quick: bool, fast_poll: bool = True) -> dict:
    """One deployment, traced; its hops and round times."""
    import secagg

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        saved = dict(os.environ)
        os.environ.update({
            "XSILO_TRACE_FILE": str(trace), secagg.PARAMS_ENV: str(params),
            "XSILO_QUICK_PULLS": "1" if quick else "0",
            "XSILO_FAST_POLL": "1" if fast_poll else "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TRACE_SITE), str(HERE),
                                                        str(HERE.parent),
                                                        saved.get("PYTHONPATH")]))})
        try:
            fed = secagg._federation(Path(tmp) / "fed", silos)
            with fed:
                fed.start()
                outcome = fed.run(secagg._config(silos, secure), timeout=secagg.CASE_LIMIT)
            assert outcome.completed, outcome.summary
            timings = secagg._timings(outcome.store.events())
        finally:
            os.environ.clear()
            os.environ.update(saved)
        events = [json.loads(line) for line in trace.read_text().splitlines()]
    rows = trips(events)
    return {"secure": secure, "quick": quick, "fast_poll": fast_poll,
            "round_s": timings["round_s"],
            "trips_s": timings["trips_s"],
            "hops": summarize(rows), "messages": rows}


def label(case: dict) -> str:
    changed = [*([] if case["quick"] else ["Flower's 1 s object back-off"]),
               *([] if case.get("fast_poll", True) else ["Flower's 3 s poll"])]
    return f"{'secure' if case['secure'] else 'clear'}, {' + '.join(changed) or 'as shipped'}"


def table(cases: list[dict]) -> str:
    lines = ["| round, as run | message | messages | " + " | ".join(HOPS) + " |",
             "|---|---|---|" + "---|" * len(HOPS)]
    for case in cases:
        mode = label(case)
        for kind, hops in case["hops"].items():
            lines.append(f"| {mode} | {kind} | {hops['messages']:.0f} | "
                         + " | ".join(f"{hops[h]:.2f}" for h in HOPS) + " |")
    return "\n".join(lines)


def rounds(cases: list[dict]) -> str:
    parts = []
    for case in cases:
        trips_s = ", ".join(f"{k} {v:.2f} s" for k, v in case["trips_s"].items())
        parts.append(f"{label(case)}: {case['round_s']:.2f} s"
                     + (f" ({trips_s})" if trips_s else ""))
    return "Round time, median of rounds 2–3: " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, default=5)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    started = time.time()
    cases = [run_case(args.silos, args.params, *case) for case in CASES]
    print(table(cases))
    print(rounds(cases))
    meta = save_raw(OUT, "benchmarks/round_trip.py", silos=args.silos, params=args.params,
                    seconds=round(time.time() - started), cases=cases)
    if not args.no_results:
        replace_section(HEADING, (
            f"{HEADING}\n\n`{meta['command']}` ({meta['date']}, commit {meta['commit']}; "
            f"{args.silos} silos × {args.params:,} parameters, the `xsilo-deployment` "
            "case of `benchmarks/secagg.py` traced by `benchmarks/_trace_site/sitecustomize.py`; "
            "seconds, the median over the run's messages of each type; raw rows in "
            "`benchmarks/out/round_trip.json`).\n\n" + table(cases) + "\n\n" + rounds(cases)
            + "\n"))


if __name__ == "__main__":
    main()

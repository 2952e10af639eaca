"""What the SuperLink's Python does during deployed rounds, by request handler (py-spy).

    .venv/bin/python benchmarks/superlink_profile.py --py-spy PATH [--silos 5]
        [--params 1000000] [--secure] [--no-results]

py-spy is not one of xsilo's dependencies: install it anywhere (``python3 -m venv /tmp/spy
&& /tmp/spy/bin/pip install py-spy``) and name its binary. Runs the ``xsilo-deployment``
case of ``benchmarks/secagg.py`` (4 rounds) with ``py-spy record --gil`` attached to
``flower-superlink`` at 200 samples/s: only samples of the thread holding the GIL, that
is the SuperLink's Python work (its SQLite and TLS calls count where they hold it). Each
sample goes to the Fleet or Runtime API handler on its stack (:func:`by_handler`), to node
authentication (the Fleet API's, on every silo request), or to "HTTP server, TLS and
framework": uvicorn, Starlette/FastAPI middleware, the thread pool that runs handlers, the
event loop. Writes ``benchmarks/out/superlink_profile.json`` (the raw stacks' shares) and,
unless ``--no-results``, the section "The SuperLink's Python, by request" of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _bench import child_env, replace_section, save_raw  # noqa: E402

OUT = HERE / "out" / "superlink_profile.json"
HEADING = "## The SuperLink's Python, by request"
FRAMEWORK = "HTTP server, TLS and framework"
AUTH = "node authentication"
ROUNDS = 4


def by_handler(raw: str) -> Counter[str]:
    """Samples per part of the SuperLink, from py-spy's raw output (one ``frame;frame;…
    count`` line per stack, outermost frame first)."""
    out: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        part = FRAMEWORK
        for frame in stack.split(";"):
            if "authenticate_node" in frame:
                part = AUTH
                break
            if "/routers/" in frame and "router.py" in frame:  # flwr/…/routers/API/router.py
                api = frame.split("/routers/", 1)[1].split("/", 1)[0]
                part = f"{api}: {frame.split(' (', 1)[0]}"
                break
        out[part] += int(count)
    return out


def table(samples: Counter[str], top: int = 12) -> str:
    total = sum(samples.values())
    lines = ["| part of the SuperLink | share of its Python samples |", "|---|---|"]
    rest = total
    for part, n in samples.most_common(top):
        lines.append(f"| {part} | {n / total:.1%} |")
        rest -= n
    if rest:
        lines.append(f"| everything else | {rest / total:.1%} |")
    return "\n".join(lines)


def profile(spy: str, silos: int, params: int, secure: bool, out: Path) -> list[float]:
    """One deployed run with py-spy on its SuperLink; the round times."""
    import secagg

    os.environ.update(child_env(HERE, **{secagg.PARAMS_ENV: str(params)}))
    with tempfile.TemporaryDirectory() as tmp:
        fed = secagg._federation(Path(tmp), silos)
        with fed:
            fed.start()
            pid = _superlink(tmp)
            spy_proc = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "-f", "raw",
                                         "--gil", "--nonblocking", "-o", str(out)],
                                        stdout=subprocess.DEVNULL)
            try:
                outcome = fed.run(secagg._config(silos, secure, rounds=ROUNDS),
                                  timeout=secagg.CASE_LIMIT)
            finally:
                spy_proc.send_signal(signal.SIGINT)
                spy_proc.wait(timeout=60)
        assert outcome.completed, outcome.summary
        return [e["round_seconds"] for e in outcome.store.events()
                if e.get("event") == "round" and e["round"] >= 1]


def _superlink(root: str) -> int:
    """The pid of the ``flower-superlink`` serving the federation under ``root``."""
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in c for c in cmd) and root.encode() in b" ".join(cmd):
            return int(entry.name)
    raise RuntimeError(f"no flower-superlink of {root} is running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", required=True, help="the py-spy binary")
    parser.add_argument("--silos", type=int, default=5)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--secure", action="store_true")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "superlink.txt"
        started = time.time()
        rounds = profile(args.py_spy, args.silos, args.params, args.secure, raw)
        samples = by_handler(raw.read_text())
    print(table(samples))
    print("round s (rounds 1..):", ", ".join(f"{r:.2f}" for r in rounds))
    meta = save_raw(OUT, "benchmarks/superlink_profile.py", silos=args.silos,
                    params=args.params, secure=args.secure, rounds_s=rounds,
                    seconds=round(time.time() - started), samples=dict(samples))
    if not args.no_results:
        replace_section(HEADING, (
            f"{HEADING}\n\n`{meta['command'].replace(args.py_spy, 'PATH')}` ({meta['date']}, "
            f"commit {meta['commit']}; {args.silos} silos × {args.params:,} parameters, "
            f"{'secure' if args.secure else 'clear'}, {ROUNDS} rounds and the join; "
            f"{sum(samples.values())} samples of the thread holding the SuperLink's GIL; raw "
            "shares in `benchmarks/out/superlink_profile.json`).\n\n" + table(samples) + "\n"))


if __name__ == "__main__":
    main()

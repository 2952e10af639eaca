"""Fuzz every message either side receives: mutated valid records must end in xsilo's errors.

    .venv/bin/python benchmarks/fuzz.py [--mutations 10000] [--seed 1] [--no-results]

Both sides receive records a peer controls. This benchmark takes **valid** ones, recorded from
real in-process runs (the real ServerApp over ``LocalGrid`` driving the real ClientApp, clear
and secure) and from the secure-aggregation state machines, mutates them (a key dropped or
added, a value replaced by another type, an out-of-range or boundary number, bytes and lists
truncated, extended or bit-flipped, arrays reshaped or retyped; one to three mutations each)
and hands them to the code that receives them:

* **silo side** — the ClientApp (``silo_client.client_app``) on the coordinator's join, train
  (clear and masked), evaluate, key-setup and unmask messages, each with the silo's node state
  as it was when the original arrived; and ``silo_step`` on KeyRequest, MaskRequest and
  UnmaskRequest records, and in a round-keys run on DealRequest, MaskRequest and
  UnmaskRequest records;
* **coordinator side** — the transport's parse of every reply (``coordinator.transport``),
  then what the round loop does with it (the clear round's collector, the join's identity),
  and the coordinator's state machine on KeyAdvert, MaskedInput and UnmaskResponse records,
  and in a round-keys run on Dealt, MaskedInput and UnmaskResponse records.

An outcome is ``accepted`` (the mutation was harmless) or the class of the error raised (the
ClientApp reports it as its error reply's type). Anything outside xsilo's error tree is a bug,
and so is a call that takes longer than ``--hang`` seconds. The table goes to stdout,
``benchmarks/out/fuzz.json`` and, unless ``--no-results``, to ``benchmarks/RESULTS.md``.
``tests/test_fuzz.py`` drives the same targets with hypothesis.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _bench import commit as checkout_commit
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import xsilo.errors as xerrors  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "fuzz.json"
XSILO_ERRORS = frozenset(name for name in xerrors.__all__)
ACCEPTED = "accepted"

# ---------------------------------------------------------------------------- mutations
_WEIRD: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, 2**70, -2**63, 0.0, -0.5, 1.5,
    math.nan, math.inf, -math.inf, 1e308, "", "x", "x" * 300, "secagg/key_advert", b"", b"\x00",
    b"\x00" * 32, b"\xff" * 33, [], [1, 2], [-1], [2**64], ["a"], [b"x"], [True], [[1]],
    {"kind": "x"}, (1,), np.zeros(3), np.zeros((2, 2), np.uint32), np.array(["a"]),
    np.zeros(0, np.uint64), np.arange(4, dtype=np.uint32), np.float64(1.0), np.int64(3))


def _tweak(value: Any, rng: random.Random) -> Any:
    """A type-preserving change of ``value`` (boundary numbers, edited bytes and lists)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, -value, value * 2**40, 2**63 + value, 0])
    if isinstance(value, float):
        return rng.choice([-value, value * 1e300, math.nan, math.inf, 0.0, value + 1e-9])
    if isinstance(value, str):
        return rng.choice([value + "x", value[:-1], value.upper(), "", value * 50])
    if isinstance(value, bytes):
        if value and rng.random() < 0.5:
            flip = bytearray(value)
            flip[rng.randrange(len(flip))] ^= 1 << rng.randrange(8)
            return bytes(flip)
        return rng.choice([value[:-1], value + b"\x00", value[: len(value) // 2], b""])
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            return np.zeros(3)
        flat = value.reshape(-1)
        return rng.choice([flat[:-1], np.concatenate([flat, flat[:1]]),
                           value.astype(np.float64), value.reshape(1, -1),
                           value.astype(np.uint32 if value.dtype == np.uint64 else np.uint64)])
    if isinstance(value, list | tuple):
        items = list(value)
        if items and rng.random() < 0.5:
            i = rng.randrange(len(items))
            items[i] = _tweak(items[i], rng)
            return items
        return rng.choice([items[:-1], items + items[:1], items[::-1], items + [rng.choice(_WEIRD)]])
    return rng.choice(_WEIRD)


def mutate_record(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One to three mutations of a flat record (keys dropped or added, values changed)."""
    out = dict(record)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        keys = list(out)
        if op < 0.15 and keys:
            del out[rng.choice(keys)]
        elif op < 0.25:
            out[rng.choice(["kind", "junk", "silo", "round", "server-round", "x" * 70])] = \
                rng.choice(_WEIRD)
        elif keys:
            key = rng.choice(keys)
            out[key] = _tweak(out[key], rng) if op < 0.7 else rng.choice(_WEIRD)
    return out


# ---------------------------------------------------------------------------- targets
@dataclass
class Target:
    """One thing a side receives: a valid record and the code that receives it."""

    side: str  # "silo" or "coordinator"
    name: str
    record: Any  # what gets mutated
    receive: Callable[[Any, random.Random], str]  # → outcome (ACCEPTED or an error class)


def _outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as exc:  # classified, never swallowed: a non-xsilo class is reported
        return type(exc).__name__
    return ACCEPTED


def _flower_targets(root: Path) -> list[Target]:
    """Silo- and coordinator-side targets from real in-process runs (clear and secure)."""
    from flwr.app import Context, Message

    from coordinator.collect import RoundCollector
    from coordinator.config import RunConfig, write_run_config
    from coordinator.local_grid import LocalGrid
    from coordinator.messages import Observers
    from coordinator.server_app import run_coordinator
    from coordinator.transport import _to_reply
    from federation.demo_data import demo_schema, write_demo_data
    from silo_client.client_app import app as client_app
    from silo_client.config import write_silo_config
    from strategies.builtin import FedAvg
    from strategies.secagg import message_from_record

    configs = [write_silo_config(root / s.name / "silo.toml", name=s.name, train=s.train,
                                 test=s.test, schema=demo_schema(),
                                 model="sklearn:LogisticRegression")
               for s in write_demo_data(root / "silos", seed=0)]
    node_configs = {i + 1: {"silo-config": str(p.resolve())} for i, p in enumerate(configs)}
    inbound: list[tuple[Message, dict[str, Any]]] = []  # coordinator → silo, with the state
    replies: list[Message] = []  # silo → coordinator

    def recording(msg: Message, context: Context) -> Message:
        inbound.append((copy.deepcopy(msg), copy.deepcopy(context.state)))
        return client_app(msg, context)

    for secure in (False, True):
        run_dir = root / f"run-{secure}"
        run_dir.mkdir()
        write_run_config(run_dir / "config.toml", RunConfig(
            num_rounds=1, min_silos=3, secure_aggregation=secure, name=f"fuzz-{secure}"))
        grid = LocalGrid(recording, node_configs)
        summary = run_coordinator(grid, str(run_dir), poll_interval=0.0,
                                  observers=Observers(reply=replies.append))
        assert summary["status"] == "completed", summary

    def silo_target(msg: Message, state: Any) -> Target:
        node = msg.metadata.dst_node_id

        def receive(content: dict[str, Any], rng: random.Random) -> str:
            mutated = copy.deepcopy(msg)
            try:
                mutated.content = _to_record_dict(content)
            except (TypeError, ValueError):
                return "unsendable"  # Flower itself refuses to carry such a value
            context = Context(run_id=1, node_id=node, node_config=dict(node_configs[node]),
                              state=copy.deepcopy(state), run_config={})
            reply = client_app(mutated, context)
            if not reply.has_error():
                return ACCEPTED
            try:
                return str(json.loads(reply.error.reason)["type"])
            except (ValueError, KeyError, TypeError):
                return "UnparsedError"

        kind = msg.metadata.message_type + ("+mask" if "secagg" in msg.content else "")
        return Target("silo", f"ClientApp {kind}", _from_record_dict(msg.content), receive)

    def coordinator_target(msg: Message) -> Target:
        template = {"coef": np.zeros((1, 30)), "intercept": np.zeros(1)}

        def receive(content: dict[str, Any], rng: random.Random) -> str:
            mutated = copy.deepcopy(msg)
            try:
                mutated.content = _to_record_dict(content)
            except (TypeError, ValueError):
                return "unsendable"
            reply = _to_reply(1, mutated)
            if reply.error is not None:
                return reply.error.type
            if reply.secagg is not None:  # what coordinator.secure parses before its state
                return _outcome(lambda: message_from_record(reply.secagg))
            if reply.info is not None:  # join: the identity was parsed; the model is checked
                return ACCEPTED  # against the other silos' (RoundLoop._check_agreement)
            if reply.arrays:  # a clear update: the round's collector validates and folds it
                collector = RoundCollector(FedAvg(), template, {1: "silo"})
                collector.accept(1, reply)
                return ACCEPTED if not collector.rejected else "UpdateRejected"
            return ACCEPTED  # join (identity parsed above) or evaluate (metrics parsed above)

        kind = "+".join(sorted(msg.content.keys())) or "empty"
        return Target("coordinator", f"transport reply [{kind}]",
                      _from_record_dict(msg.content), receive)

    seen: set[str] = set()
    targets = []
    for msg, state in inbound:
        t = silo_target(msg, state)
        if t.name not in seen:
            seen.add(t.name)
            targets.append(t)
    for msg in replies:
        if msg.has_error():
            continue
        t = coordinator_target(msg)
        if t.name not in seen:
            seen.add(t.name)
            targets.append(t)
    return targets


def _from_record_dict(content: Any) -> dict[str, Any]:
    """A Flower RecordDict as a flat dict ``"record/key" → value`` (arrays as numpy)."""
    flat: dict[str, Any] = {}
    for name, record in content.config_records.items():
        flat.update({f"config:{name}/{k}": v for k, v in record.items()})
    for name, record in content.metric_records.items():
        flat.update({f"metric:{name}/{k}": v for k, v in record.items()})
    from xsilo.records import record_to_arrays

    for name, record in content.array_records.items():  # packed or not: tensor by tensor
        flat.update({f"array:{name}/{k}": v for k, v in record_to_arrays(record).items()})
    return flat


def _to_record_dict(flat: dict[str, Any]) -> Any:
    """Inverse of :func:`_from_record_dict`; a key without ``kind:record/`` lands in config."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from xsilo.records import arrays_to_record

    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in flat.items():
        kind, _, rest = str(key).partition(":")
        name, _, field = rest.partition("/")
        if kind not in ("config", "metric", "array") or not field:
            kind, name, field = "config", "config", str(key)
        groups.setdefault((kind, name), {})[field] = value
    content = RecordDict()
    for (kind, name), values in groups.items():
        if kind == "array":
            content[name] = arrays_to_record({k: np.asarray(v) for k, v in values.items()})
        elif kind == "metric":
            content[name] = MetricRecord(values)
        else:
            content[name] = ConfigRecord(values)
    return content


def _protocol_targets() -> list[Target]:
    """The secure-aggregation state machines on both sides, at the stage each message meets."""
    from strategies.secagg import coordinator as co
    from strategies.secagg import make_config, message_from_record, silo_step
    from strategies.secagg.simulate import LocalFederation

    config = make_config(run_id="fuzz", roster=[0, 1, 2, 3], threshold=3, length=8, clip=1.0,
                         bits=16, max_weight=100)
    fed = LocalFederation(config, seed=b"fuzz")
    start, key_requests = co.start_run(config)
    silos0 = dict(fed.silos)
    fed.setup()
    keyed_silos, keyed = dict(fed.silos), fed.coordinator
    assert keyed is not None
    masking, mask_requests = co.begin_round(keyed, round_=1)
    updates = {s: np.linspace(-1, 1, config.length) * (s + 1) / 4 for s in config.roster}
    masked_silos, inputs = {}, {}
    state = masking
    for s, req in mask_requests.items():
        masked_silos[s], inputs[s] = silo_step(keyed_silos[s], req, update=updates[s], weight=10)
        state = co.receive_masked(state, inputs[s])
    unmasking, unmask_requests = co.request_unmask(state)
    responses = {s: silo_step(masked_silos[s], req)[1] for s, req in unmask_requests.items()}
    _, advert = silo_step(silos0[0], key_requests[0])

    def machine(side: str, name: str, record: dict[str, Any],
                step: Callable[[Any], Any]) -> Target:
        return Target(side, name, record,
                      lambda r, rng: _outcome(lambda: step(message_from_record(r))))

    return [
        machine("silo", "silo_step KeyRequest", key_requests[0].to_record(),
                lambda m: silo_step(silos0[0], m)),
        machine("silo", "silo_step MaskRequest", mask_requests[1].to_record(),
                lambda m: silo_step(keyed_silos[1], m, update=updates[1], weight=10)),
        machine("silo", "silo_step UnmaskRequest", unmask_requests[2].to_record(),
                lambda m: silo_step(masked_silos[2], m)),
        machine("coordinator", "receive_advert", advert.to_record(),
                lambda m: co.receive_advert(start, m)),
        machine("coordinator", "receive_masked", inputs[3].to_record(),
                lambda m: co.receive_masked(masking, m)),
        machine("coordinator", "receive_unmask", responses[1].to_record(),
                lambda m: co.receive_unmask(unmasking, m)),
        *_round_key_targets(machine, updates),
    ]


def _round_key_targets(machine: Callable[..., Target], updates: dict) -> list[Target]:
    """The round-keys run's messages, each at the stage that receives it (silo 0 dropped
    after its dealing, so the unmask carries a round-key share)."""
    from strategies.secagg import coordinator as co
    from strategies.secagg import make_config, silo_step
    from strategies.secagg.simulate import LocalFederation

    config = make_config(run_id="fuzz-rk", roster=[0, 1, 2, 3], threshold=3, length=8,
                         clip=1.0, bits=16, max_weight=100, round_keys=True)
    fed = LocalFederation(config, seed=b"fuzz-rk")
    fed.setup()
    keyed_silos, keyed = dict(fed.silos), fed.coordinator
    assert keyed is not None
    dealing, deal_requests = co.begin_round(keyed, round_=1)
    dealt_silos, dealt = {}, {}
    for s, req in deal_requests.items():
        dealt_silos[s], dealt[s] = silo_step(keyed_silos[s], req)
        dealing = co.receive_dealt(dealing, dealt[s])
    masking, mask_requests = co.begin_masking(dealing)
    masked_silos, inputs, state = {}, {}, masking
    for s, req in mask_requests.items():
        masked_silos[s], inputs[s] = silo_step(dealt_silos[s], req, update=updates[s], weight=10)
        if s != 0:
            state = co.receive_masked(state, inputs[s])
    unmasking, unmask_requests = co.request_unmask(state)
    responses = {s: silo_step(masked_silos[s], req)[1] for s, req in unmask_requests.items()}
    before_dealt = co.begin_round(keyed, round_=1)[0]
    return [
        machine("silo", "silo_step DealRequest", deal_requests[0].to_record(),
                lambda m: silo_step(keyed_silos[0], m)),
        machine("silo", "silo_step MaskRequest (round keys)", mask_requests[1].to_record(),
                lambda m: silo_step(dealt_silos[1], m, update=updates[1], weight=10)),
        machine("silo", "silo_step UnmaskRequest (round keys)", unmask_requests[2].to_record(),
                lambda m: silo_step(masked_silos[2], m)),
        machine("coordinator", "receive_dealt", dealt[2].to_record(),
                lambda m: co.receive_dealt(before_dealt, m)),
        machine("coordinator", "receive_masked (round keys)", inputs[3].to_record(),
                lambda m: co.receive_masked(masking, m)),
        machine("coordinator", "receive_unmask (round keys)", responses[1].to_record(),
                lambda m: co.receive_unmask(unmasking, m)),
    ]


def build_targets(root: Path) -> list[Target]:
    """Every target of both sides (records valid; receiving them unmutated is accepted).
    The runs that record them log quietly; the root logger's level is put back after."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.CRITICAL)
    try:
        targets = _flower_targets(root) + _protocol_targets()
    finally:
        root_logger.setLevel(level)
    for t in targets:  # sanity: the unmutated record goes through
        assert t.receive(dict(t.record), random.Random(0)) == ACCEPTED, t.name
    return targets


def fuzz_once(target: Target, rng: random.Random) -> str:
    return target.receive(mutate_record(target.record, rng), rng)


def run(targets: list[Target], *, mutations: int, seed: int,
        hang: float = 5.0) -> tuple[dict[str, Counter], list[dict[str, Any]], dict[str, float]]:
    """``mutations`` per side, round-robin over that side's targets. Returns outcomes per
    target, the failures (non-xsilo classes and hangs, with seeds to replay) and the slowest
    call per side."""
    rng = random.Random(seed)
    outcomes: dict[str, Counter] = {t.name: Counter() for t in targets}
    failures: list[dict[str, Any]] = []
    slowest: dict[str, float] = Counter()
    for side in ("silo", "coordinator"):
        mine = [t for t in targets if t.side == side]
        for i in range(mutations):
            target = mine[i % len(mine)]
            case = rng.randrange(1 << 32)
            started = time.perf_counter()
            outcome = fuzz_once(target, random.Random(case))
            took = time.perf_counter() - started
            slowest[side] = max(slowest[side], took)
            outcomes[target.name][outcome] += 1
            if (outcome not in XSILO_ERRORS | {ACCEPTED, "unsendable"}) or took > hang:
                failures.append({"side": side, "target": target.name, "outcome": outcome,
                                 "seconds": round(took, 3), "case": case})
    return outcomes, failures, dict(slowest)


def _table(targets: list[Target], outcomes: dict[str, Counter]) -> list[str]:
    classes = sorted({c for counts in outcomes.values() for c in counts})
    lines = ["| side | target | " + " | ".join(classes) + " |",
             "|---|---|" + "---:|" * len(classes)]
    for t in targets:
        counts = outcomes[t.name]
        lines.append(f"| {t.side} | {t.name} | "
                     + " | ".join(str(counts.get(c, 0)) for c in classes) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, default=10_000, help="per side (default 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hang", type=float, default=5.0, help="seconds that count as a hang")
    ap.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    started = time.monotonic()
    logging.getLogger().setLevel(logging.CRITICAL)  # ten thousand refusals, each logged
    with tempfile.TemporaryDirectory() as tmp:
        targets = build_targets(Path(tmp))
        outcomes, failures, slowest = run(targets, mutations=args.mutations, seed=args.seed,
                                          hang=args.hang)
    seconds = time.monotonic() - started
    lines = _table(targets, outcomes)
    bad = len(failures)
    summary = (f"{args.mutations} mutations per side, seed {args.seed}: {bad} outside the error "
               f"tree or hung; slowest call {slowest.get('silo', 0):.3f} s (silo), "
               f"{slowest.get('coordinator', 0):.3f} s (coordinator); {seconds:.0f} s in all")
    print("\n".join(lines) + "\n\n" + summary)
    for f in failures[:20]:
        print("FAILURE", f)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    commit = checkout_commit()
    OUT.write_text(json.dumps({
        "meta": {"command": " ".join([".venv/bin/python", *sys.argv]), "commit": commit,
                 "seconds": round(seconds, 1)},
        "outcomes": {k: dict(v) for k, v in outcomes.items()}, "failures": failures,
        "slowest": slowest}, indent=2) + "\n")
    if not args.no_results:
        _write_results(lines, summary, commit)
    sys.exit(1 if bad else 0)


def _write_results(lines: list[str], summary: str, commit: str) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- fuzz:start -->", "<!-- fuzz:end -->"
    block = (f"{start}\nMeasured at {commit} with `.venv/bin/python {' '.join(sys.argv)}`.\n\n"
             + "\n".join(lines) + f"\n\n{summary}.\n{end}")
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Fuzzing the message edges\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""Round time: plain FedAvg vs xsilo secure aggregation vs Flower SecAgg+ (same synthetic data).

    .venv/bin/python benchmarks/secagg.py                          # the default grid, writes results
    .venv/bin/python benchmarks/secagg.py --silos 5 --params 1000000 --engines xsilo-inprocess
    .venv/bin/python benchmarks/secagg.py --engines xsilo-deployment flower-deployment \
        --silos 5 --params 1000000

Every silo holds one float32 tensor of ``--params`` values; "training" adds a fixed,
seeded vector (benchmark data, nothing secret) so the round time is the protocol and the
engine, not the model. Engines (their times are comparable only within one engine):

* ``xsilo-inprocess``: the real coordinator loop and ClientApp over ``LocalGrid`` (one
  process; messages deep-copied). Plain = the clear round (one round trip); secure =
  two round trips with masking, shares, unmasking. Time = median ``round_seconds`` of
  rounds 2..R from ``metrics.jsonl`` (includes the silos' evaluation and "training").
* ``flower-sim``: Flower's Ray simulation (``run_simulation``), legacy FedAvg with
  ``DefaultWorkflow``; plain = default fit workflow, SecAgg+ = ``SecAggPlusWorkflow``
  (num_shares = n, reconstruction_threshold = ⌈2n/3⌉; xsilo runs with the same t as
  ``secagg_threshold`` and ``min_silos``). Time = median
  of the fit workflow's wall time over rounds 2..R.
* ``xsilo-sim``: the real xsilo ServerApp and ClientApp on Flower's Ray simulation engine
  (``federation.local.run_in_simulation``: ``run_simulation``, one Ray actor per silo with one
  CPU); plain and secure; time = median ``round_seconds`` of rounds 2..R. The like-for-like
  comparison with ``flower-sim``.
* ``xsilo-deployment``: ``flower-superlink`` + one ``flower-supernode`` per silo (TLS, node
  auth, loopback), plain and secure, each SuperNode running ClientApps the xsilo way (the
  silo default, ``[silo] executor = "warm"``: ``deploy.launch.executor``, a process per message
  forked from a preloaded server); time = median ``round_seconds`` of rounds 2..R.
* ``flower-deployment``: the same processes (``LocalFederation``: TLS, node auth, one
  SuperNode per silo) running a Flower app built here (legacy FedAvg; plain = default fit
  workflow, SecAgg+ = ``SecAggPlusWorkflow`` with the ``flower-sim`` settings and
  ``secaggplus_mod`` on the NumPyClient), each SuperNode on Flower's own SuperExec (a new
  ``flwr-clientapp`` process per message), as Flower ships; time = median of the fit
  workflow's wall time over rounds 2..R, measured inside the ServerApp.
* ablations (``--ablation-grid``): ``xsilo-deployment-flower-exec`` (xsilo on Flower's
  SuperExec) and ``flower-deployment-warm-exec`` (Flower's app on xsilo's warm SuperExec),
  so the protocol's share of the speed-up can be told from the executor's.

Each case runs in a fresh subprocess. Results: ``benchmarks/out/secagg.json`` and the
section "## Secure aggregation: round time" of ``benchmarks/RESULTS.md``.
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

from _bench import child_env, commit, emit, run_child

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "## Secure aggregation: round time"
PARAMS_ENV = "XSILO_BENCH_PARAMS"
TENSORS_ENV = "XSILO_BENCH_TENSORS"
ROUNDS = 3  # deployment rounds (a 10 x 10M SecAgg+ round takes minutes)
LOCAL_ROUNDS = 6  # in-process and simulation rounds: cheap, and their round times are noisier
CASE_LIMIT = 1500  # seconds one deployment run may take inside its case (10 x 10M SecAgg+)


# ----------------------------------------------------------------- synthetic model
class SyntheticModel:
    """A ModelAdapter with float32 tensors of ``size`` values in all (one tensor ``w``, or
    ``tensors`` of them, ``w0``…, as a real model's layers); fit adds a fixed seeded step
    (not a secret)."""

    task = "classification"

    def __init__(self, size: int, seed: int, tensors: int = 1) -> None:
        cuts = np.linspace(0, size, tensors + 1).astype(int)
        names = ["w"] if tensors == 1 else [f"w{i}" for i in range(tensors)]
        self.w = {n: np.zeros(b - a, dtype=np.float32)
                  for n, a, b in zip(names, cuts[:-1], cuts[1:])}
        self.size = size

    def get_parameters(self) -> dict[str, np.ndarray]:
        return {n: w.copy() for n, w in self.w.items()}

    def set_parameters(self, params: dict[str, np.ndarray]) -> None:
        self.w = {n: np.asarray(params[n], dtype=np.float32).copy() for n in self.w}

    def fit(self, train, *, epochs: int, config) -> dict[str, float]:
        step = np.random.default_rng(len(train)).standard_normal(self.size, dtype=np.float32)
        at = 0
        for w in self.w.values():
            w += 1e-3 * step[at:at + w.size]
            at += w.size
        return {"train_loss": self._loss()}

    def _loss(self) -> float:
        return float(np.abs(np.concatenate([w[:1000] for w in self.w.values()])[:1000]).mean())

    def evaluate(self, test) -> dict[str, float]:
        return {"loss": self._loss(), "accuracy": 0.5}


def build(seed: int = 0) -> SyntheticModel:
    """Model spec ``secagg:build`` (benchmarks/ on PYTHONPATH, size from $XSILO_BENCH_PARAMS,
    tensors from $XSILO_BENCH_TENSORS, 1 if unset)."""
    return SyntheticModel(int(os.environ[PARAMS_ENV]), seed,
                          int(os.environ.get(TENSORS_ENV, "1")))


def _silo_configs(root: Path, silos: int, **kwargs) -> list[Path]:
    from silo_client.config import write_silo_config
    from federation.demo_data import demo_schema, write_demo_data

    data = write_demo_data(root / "data")
    paths = []
    for i in range(silos):
        src = data[i % len(data)]
        paths.append(write_silo_config(root / f"silo-{i}" / "silo.toml", name=f"silo-{i}",
                                       train=src.train, test=src.test, schema=demo_schema(),
                                       model="secagg:build", **kwargs))
    return paths


def _round_seconds(events: list[dict]) -> list[float]:
    return [e["round_seconds"] for e in events if e.get("event") == "round" and e["round"] >= 2]


def _trip_seconds(events: list[dict]) -> dict[str, list[float]]:
    """Wall time of each secure round trip in rounds 2..R (empty for clear runs)."""
    rows = [e["secure_aggregation"]["seconds"] for e in events
            if e.get("event") == "round" and e["round"] >= 2 and "secure_aggregation" in e]
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def _timings(events: list[dict]) -> dict:
    """Median round and round-trip times over rounds 2..R, and the per-round values."""
    rounds, trips = _round_seconds(events), _trip_seconds(events)
    return {"round_s": statistics.median(rounds), "rounds_s": rounds,
            "trips_s": {k: statistics.median(v) for k, v in trips.items()},
            "trips_rounds_s": trips}


def _pooled(runs: list[dict]) -> dict:
    """One row from repeated runs of a case: medians over every run's rounds 2..R."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    if len(runs) == 1:
        return runs[0]
    rounds = [t for r in runs for t in r["rounds_s"]]
    trips: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r.get("trips_rounds_s", {}).items():
            trips.setdefault(k, []).extend(v)
    return {**runs[0], "round_s": statistics.median(rounds), "rounds_s": rounds,
            "runs_round_s": [r["round_s"] for r in runs],
            "trips_s": {k: statistics.median(v) for k, v in trips.items()},
            "trips_rounds_s": trips, "total_s": sum(r["total_s"] for r in runs)}


def threshold(silos: int) -> int:
    """t = ⌈2n/3⌉ for both stacks (Flower's reconstruction_threshold, xsilo's secagg_threshold):
    xsilo's default threshold when a round needs no more than two silos."""
    from coordinator.secure_settings import default_threshold

    return default_threshold(silos, min_silos=2)


def _config(silos: int, secure: bool, rounds: int = ROUNDS, round_keys: str = "auto"):
    from coordinator.config import RunConfig

    # Every silo joins and trains (expected_silos = n); a round needs t of them (min_silos,
    # secagg_threshold = t), as Flower's SecAgg+ below is configured.
    return RunConfig(num_rounds=rounds, min_silos=threshold(silos), expected_silos=silos,
                     secagg_threshold=threshold(silos),
                     secure_aggregation=secure, secagg_round_keys=round_keys,
                     round_timeout=600.0, join_timeout=120.0, name="bench")


def _local_case(run, silos: int, secure: bool,  # noqa: ANN001 - a federation.local runner
                round_keys: str = "auto") -> dict:
    from coordinator.run_store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        configs = _silo_configs(Path(tmp), silos)
        started = time.perf_counter()
        summary = run(Path(tmp) / "run", _config(silos, secure, LOCAL_ROUNDS, round_keys),
                      configs)
        assert summary["status"] == "completed", summary
        return {**_timings(RunStore(Path(tmp) / "run").events()),
                "total_s": time.perf_counter() - started}


def case_inprocess(silos: int, params: int, secure: bool) -> dict:
    from federation.local import run_in_process

    return _local_case(run_in_process, silos, secure)


def case_simulation(silos: int, params: int, secure: bool, round_keys: str = "auto") -> dict:
    from federation.local import run_in_simulation

    return _local_case(run_in_simulation, silos, secure, round_keys)


def _federation(root: Path, silos: int, executor: str = "warm"):
    """A LocalFederation of ``silos`` SuperNodes (TLS, node auth) with the synthetic model;
    ``executor`` is how each SuperNode runs ClientApps (``[silo] executor``)."""
    from federation.demo_data import write_demo_data
    from federation.deployment import LocalFederation

    def write_data(base_dir: Path) -> list:  # silo-i gets a copy of demo hospital i mod 3
        import dataclasses
        import shutil

        base = write_demo_data(base_dir / "_demo")
        out = []
        for i in range(silos):
            src = base[i % len(base)]
            data = base_dir / f"silo-{i}" / "data"
            data.mkdir(parents=True)
            shutil.copy(src.train, data / "train.csv")
            shutil.copy(src.test, data / "test.csv")
            out.append(dataclasses.replace(src, name=f"silo-{i}", train=data / "train.csv",
                                           test=data / "test.csv"))
        return out

    # Flower's own executor runs whatever app a run carries: an xsilo silo allows that only
    # when its site policy says so (silo_client.apps), as here, for Flower's app.
    return LocalFederation(root, model="secagg:build", write_data=write_data,
                           executor=executor,
                           allow_unapproved_code=executor == "flower").setup()


def case_deployment(silos: int, params: int, secure: bool, executor: str = "warm") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fed = _federation(Path(tmp), silos, executor)
        with fed:
            fed.start()
            started = time.perf_counter()
            outcome = fed.run(_config(silos, secure), timeout=CASE_LIMIT)
            total = time.perf_counter() - started
        assert outcome.completed, outcome.summary
        _no_refusals(fed)
        return {**_timings(outcome.store.events()), "total_s": total}


OUT_ENV = "XSILO_BENCH_FLOWER_OUT"

FLOWER_APP = """
import json, os, time
from pathlib import Path
import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

PARAMS, SILOS, SECURE, ROUNDS, THRESHOLD = {params}, {silos}, {secure}, {rounds}, {threshold}
TENSORS = {tensors}
OUT_ENV = "{out_env}"
CUTS = np.linspace(0, PARAMS, TENSORS + 1).astype(int)


class Client(NumPyClient):
    def fit(self, parameters, config):
        step = np.random.default_rng(192).standard_normal(PARAMS, dtype=np.float32)
        cuts = zip(parameters, CUTS[:-1], CUTS[1:])
        return [p + 1e-3 * step[a:b] for p, a, b in cuts], 192, {{}}


client = ClientApp(client_fn=lambda context: Client().to_client(),
                   mods=[secaggplus_mod] if SECURE else [])
server = ServerApp()


@server.main()
def main(grid, context: Context) -> None:
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=SILOS,
                      min_available_clients=SILOS,
                      initial_parameters=ndarrays_to_parameters(
                          [np.zeros(b - a, np.float32) for a, b in zip(CUTS[:-1], CUTS[1:])]))
    ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=ROUNDS),
                        strategy=strategy)
    inner = (SecAggPlusWorkflow(num_shares=SILOS,
                                reconstruction_threshold=THRESHOLD,
                                timeout=600) if SECURE else None)
    times, spans = [], []

    def fit(grid, ctx) -> None:
        t0, start = time.perf_counter(), time.time()
        (inner or DefaultWorkflow().fit_workflow)(grid, ctx)
        times.append(time.perf_counter() - t0)
        spans.append([start, time.time()])
        Path(context.run_config.get("out") or os.environ[OUT_ENV]).write_text(
            json.dumps({{"seconds": times, "spans": spans}}))

    DefaultWorkflow(fit_workflow=fit)(grid, ctx)
"""


def _flower_app(root: Path, silos: int, params: int, secure: bool, rounds: int = ROUNDS) -> Path:
    """Write Flower's own FedAvg / SecAgg+ app (legacy strategy + workflows, NumPyClient with
    ``secaggplus_mod``) as an app directory; both Flower engines run this same code. Its model
    has as many tensors as xsilo's synthetic one ($XSILO_BENCH_TENSORS, 1 if unset)."""
    app = root / "flower-bench-app"
    app.mkdir()
    (app / "flower_bench_app.py").write_text(FLOWER_APP.format(
        params=params, silos=silos, secure=secure, rounds=rounds, threshold=threshold(silos),
        tensors=int(os.environ.get(TENSORS_ENV, "1")), out_env=OUT_ENV))
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "flower-bench-app"\nversion = "1.0.0"\ndescription = "bench"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n\n'
        '[tool.flwr.app]\npublisher = "bench"\n\n[tool.flwr.app.components]\n'
        'serverapp = "flower_bench_app:server"\nclientapp = "flower_bench_app:client"\n\n'
        '[tool.flwr.app.config]\nout = ""\n')
    return app


def _no_refusals(fed) -> None:  # noqa: ANN001 - a LocalFederation
    """A run its silos refused is no measurement (Flower's legacy FedAvg takes failures and
    goes on, fast): raise when any silo's ledger records a refusal."""
    from silo_client.ledger import LEDGER_FILE, summarize

    for silo in fed.silos:
        ledger = silo.workspace / LEDGER_FILE
        refused = [r for r in (summarize(ledger) if ledger.exists() else [])
                   if str(r["type"]).endswith(".refusal")]
        if refused:
            raise RuntimeError(f"silo {silo.name} refused {len(refused)} message(s), the first "
                               f"a {refused[0]['type']} in round {refused[0]['round']} (its "
                               f"ledger: {ledger})")


def _flower_rounds(out: Path) -> dict[str, list]:
    """What Flower's app wrote so far: each round's ``seconds`` and ``spans`` (epoch s)."""
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):  # not yet written, or being written
        return {"seconds": [], "spans": []}


def _flower_times(out: Path, rounds: int = ROUNDS) -> list[float]:
    times = _flower_rounds(out)["seconds"]
    assert len(times) == rounds, f"Flower finished {len(times)} of {rounds} rounds"
    return times


def case_flower_sim(silos: int, params: int, secure: bool) -> dict:
    """Flower's app on Ray simulation (``run_simulation``), one CPU per ClientApp actor."""
    import importlib

    from flwr.simulation import run_simulation

    with tempfile.TemporaryDirectory() as tmp:
        app = _flower_app(Path(tmp), silos, params, secure, LOCAL_ROUNDS)
        out = Path(tmp) / "times.json"
        os.environ[OUT_ENV] = str(out)
        sys.path.insert(0, str(app))  # Ray's workers inherit PYTHONPATH to import the app
        os.environ["PYTHONPATH"] = os.pathsep.join([str(app), os.environ.get("PYTHONPATH", "")])
        module = importlib.import_module("flower_bench_app")
        started = time.perf_counter()
        run_simulation(server_app=module.server, client_app=module.client,
                       num_supernodes=silos, backend_config={"client_resources": {"num_cpus": 1}})
        times = _flower_times(out, LOCAL_ROUNDS)
        return {"round_s": statistics.median(times[1:]), "rounds_s": times[1:],
                "total_s": time.perf_counter() - started}


def case_flower_deployment(silos: int, params: int, secure: bool,
                           executor: str = "flower") -> dict:
    """Flower's app on the same SuperLink + SuperNodes (TLS, node auth) as xsilo's; by
    default each SuperNode runs Flower's own SuperExec, as Flower ships."""
    with tempfile.TemporaryDirectory() as tmp:
        app = _flower_app(Path(tmp), silos, params, secure)
        out = Path(tmp) / "times.json"
        fed = _federation(Path(tmp) / "fed", silos, executor)
        if executor != "flower":  # xsilo's executor runs approved apps only: approve this one
            from silo_client.apps import approve, fab_of

            fab_hash, app_id, source = fab_of(app)
            for silo in fed.silos:
                approve(silo, fab_hash, note="benchmarks/secagg.py: Flower's own app",
                        source=source, app=app_id)
        with fed:
            fed.start()
            cli = fed.home.cli()
            started = time.perf_counter()
            run_id = cli.submit(app, {"out": str(out)})
            status = _flower_wait(cli, run_id, out)
            assert status == "finished:completed", status
            rounds = _flower_rounds(out)
            times = _flower_times(out)
            total = time.perf_counter() - started
        _no_refusals(fed)
        return {"round_s": statistics.median(times[1:]), "rounds_s": times[1:],
                "spans": rounds["spans"], "total_s": total}


def _flower_wait(cli, run_id: int, out: Path, status_every: float = 10.0) -> str:  # noqa: ANN001
    """Wait for Flower's run as ``LocalFederation.run`` waits for xsilo's: the app's own file
    twice a second, Flower's status (a ``flwr ls`` process, about a second of CPU that the
    silos on the same cores would lose) every ``status_every`` s and once the rounds are
    done."""
    deadline = time.monotonic() + CASE_LIMIT
    next_status = time.monotonic()
    while time.monotonic() < deadline:
        done = len(_flower_rounds(out)["seconds"]) >= ROUNDS
        if done or time.monotonic() >= next_status:
            status = cli.status(run_id)
            if status.startswith("finished"):
                return status
            next_status = time.monotonic() + (1 if done else status_every)
        time.sleep(0.5)
    raise RuntimeError(f"Flower run {run_id} not finished after {CASE_LIMIT} s")


CASES = {"xsilo-inprocess": case_inprocess, "xsilo-sim": case_simulation,
         "xsilo-deployment": case_deployment, "flower-sim": case_flower_sim,
         "flower-deployment": case_flower_deployment,
         # Ablations: each stack on the other's SuperExec, to separate protocol from executor.
         "xsilo-deployment-flower-exec": lambda n, d, s: case_deployment(n, d, s, "flower"),
         "flower-deployment-warm-exec": lambda n, d, s: case_flower_deployment(n, d, s, "warm")}
NAMES = {("xsilo-inprocess", False): "plain FedAvg", ("xsilo-inprocess", True): "xsilo secure",
         ("xsilo-sim", False): "plain FedAvg", ("xsilo-sim", True): "xsilo secure",
         ("xsilo-deployment", False): "plain FedAvg", ("xsilo-deployment", True): "xsilo secure",
         ("flower-sim", False): "Flower FedAvg", ("flower-sim", True): "Flower SecAgg+",
         ("flower-deployment", False): "Flower FedAvg",
         ("flower-deployment", True): "Flower SecAgg+",
         ("xsilo-deployment-flower-exec", False): "plain FedAvg",
         ("xsilo-deployment-flower-exec", True): "xsilo secure",
         ("flower-deployment-warm-exec", False): "Flower FedAvg",
         ("flower-deployment-warm-exec", True): "Flower SecAgg+"}
DEPLOYMENT = ("xsilo-deployment", "flower-deployment")
ABLATION = ("xsilo-deployment-flower-exec", "flower-deployment-warm-exec")


def _child(args: argparse.Namespace) -> None:
    sys.path[:0] = [str(ROOT), str(HERE)]
    os.environ[PARAMS_ENV] = str(args.params)
    result = CASES[args.engine](args.silos, args.params, args.secure)
    emit(result)


def _run_case(engine: str, silos: int, params: int, secure: bool, timeout: float) -> dict:
    env = child_env(HERE, RAY_DEDUP_LOGS="0", **{PARAMS_ENV: str(params)})
    argv = [__file__, "--child", "--engine", engine, "--silos", str(silos),
            "--params", str(params)] + (["--secure"] if secure else [])
    row = {"engine": engine, "method": NAMES[(engine, secure)], "silos": silos, "params": params}
    result = run_child(argv, env=env, timeout=timeout)
    result.pop("stderr", None)
    return {**row, **result}


def _table(rows: list[dict]) -> str:
    out = ["| engine | silos | params | method | round s | vs plain (same engine) |",
           "|---|---|---|---|---|---|"]
    plain = {(r["engine"], r["silos"], r["params"]): r.get("round_s") for r in rows
             if r["method"] in ("plain FedAvg", "Flower FedAvg")}
    for r in rows:
        base = plain.get((r["engine"], r["silos"], r["params"]))
        t = r.get("round_s")
        ratio = f"{t / base:.2f}×" if t and base else "–"
        cell = f"{t:.2f}" if t is not None else f"not measured: {r['error']}"
        out.append(f"| {r['engine']} | {r['silos']} | {r['params']:,} | {r['method']} | {cell} "
                   f"| {ratio} |")
    return "\n".join(out)


SIM_GOAL, DEPLOY_GOAL, GAP_GOAL = 1.15, 1.2, 0.5  # issue 20's goals at 10 silos x 1M


def _ratio_lines(t: dict, rows: list[dict], engine: str, goal: float, where: str) -> list[str]:
    """secure / plain at 10 silos x 1M on ``engine`` against ``goal``, run by run where the
    case was repeated, and the two round trips' shares of the plain round."""
    sec, plain = (t.get((engine, 10, 1_000_000, m)) for m in ("xsilo secure", "plain FedAvg"))
    if not (sec and plain):
        return []
    out = [f"* {where}, 10 silos x 1M: xsilo secure / plain = {sec / plain:.2f}x "
           f"(goal <= {goal}x: {'met' if sec / plain <= goal else 'not met'})"]
    pick = {r["method"]: r for r in rows if r["engine"] == engine
            and r["silos"] == 10 and r["params"] == 1_000_000}
    runs = [pick[m].get("runs_round_s") for m in ("xsilo secure", "plain FedAvg")]
    if runs[0] and runs[1] and len(runs[0]) > 1:
        each = ", ".join(f"{a / b:.2f}x" for a, b in zip(*runs))
        out.append(f"  * run by run (plain and secure interleaved): {each}")
    trips = pick.get("xsilo secure", {}).get("trips_s")
    if trips and "unmasking" in trips:
        out.append(f"  * of which the unmasking round trip alone: {trips['unmasking']:.3f} s = "
                   f"{trips['unmasking'] / plain:.0%} of the plain round; the masked-input "
                   f"round trip: {trips['masked_input']:.3f} s = "
                   f"{trips['masked_input'] / plain:.2f}x the plain round")
    return out


def _goals(rows: list[dict]) -> str:
    """Issue 20's goals (and the SecAgg+ comparison), computed from this run's rows."""
    t = {(r["engine"], r["silos"], r["params"], r["method"]): r.get("round_s") for r in rows}
    out = [*_ratio_lines(t, rows, "xsilo-sim", SIM_GOAL, "simulation"),
           *_ratio_lines(t, rows, "xsilo-deployment", DEPLOY_GOAL, "deployment")]
    for (engine, silos, params, method), deployed in sorted(t.items()):
        local = t.get(("xsilo-inprocess", silos, params, method))
        if engine == "xsilo-deployment" and deployed and local:
            gap = deployed - local
            out.append(f"* deployed vs in process, {silos} silos x {params:,}, {method}: "
                       f"{deployed:.2f} s vs {local:.2f} s, {gap:+.2f} s (goal <= "
                       f"{GAP_GOAL} s: {'met' if gap <= GAP_GOAL else 'not met'})")
    for (engine, silos, params, method), mine in sorted(t.items()):
        if engine != "xsilo-deployment" or method != "xsilo secure" or not mine:
            continue
        theirs = t.get(("flower-deployment", silos, params, "Flower SecAgg+"))
        if theirs:
            out.append(f"* deployment, {silos} silos x {params:,}: Flower SecAgg+ / xsilo secure "
                       f"= {theirs / mine:.2f}x (goal >= 3x: "
                       f"{'met' if theirs / mine >= 3 else 'not met'}; each on its own SuperExec)")
        same = [(what, t.get((ours, silos, params, "xsilo secure")),
                 t.get((flower, silos, params, "Flower SecAgg+")))
                for what, ours, flower in (
                    ("Flower's SuperExec", "xsilo-deployment-flower-exec", "flower-deployment"),
                    ("xsilo's warm SuperExec", "xsilo-deployment", "flower-deployment-warm-exec"))]
        for what, a, b in same:
            if a and b:
                out.append(f"  * both on {what}: Flower SecAgg+ / xsilo secure = {b / a:.2f}x")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="+", choices=sorted(CASES),
                    default=["xsilo-inprocess", "xsilo-sim", "flower-sim", "xsilo-deployment",
                             "flower-deployment", *ABLATION])
    ap.add_argument("--deployment-grid", nargs="+", default=["5x1000000"],
                    help="SILOSxPARAMS cases run on xsilo-deployment (each SuperNode and every "
                         "message's ClientApp process share the 2 cores)")
    ap.add_argument("--ablation-grid", nargs="+", default=["5x1000000"],
                    help="SILOSxPARAMS cases run on the ablation engines (each stack on the "
                         "other's SuperExec) when they are among --engines")
    ap.add_argument("--silos", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each in-process and simulation case (deployment: one)")
    ap.add_argument("--no-results", action="store_true", help="print only; write nothing")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--secure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.silos, args.params = args.silos[0], args.params[0]
        return _child(args)
    rows = []
    for engine in args.engines:
        for silos in args.silos:
            for params in args.params:
                if engine in DEPLOYMENT and f"{silos}x{params}" not in args.deployment_grid:
                    continue
                if engine in ABLATION and f"{silos}x{params}" not in args.ablation_grid:
                    continue
                # In-process and simulation cases are cheap and noisy (a round is a few tenths
                # of a second, quantized by the engine's 0.1 s poll): each runs --repeats
                # times, plain and secure interleaved, and the row pools their rounds.
                repeats = 1 if engine in DEPLOYMENT or engine in ABLATION else args.repeats
                runs: dict[bool, list[dict]] = {False: [], True: []}
                for _ in range(repeats):
                    for secure in (False, True):
                        runs[secure].append(_run_case(engine, silos, params, secure,
                                                      args.timeout))
                for secure in (False, True):
                    row = _pooled(runs[secure])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    table = _table(rows)
    print(table)
    print(_goals(rows))
    if args.no_results:
        return
    (HERE / "out").mkdir(exist_ok=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "rounds": {"deployment": ROUNDS, "inprocess and simulation": LOCAL_ROUNDS},
            "repeats": {"deployment": 1, "inprocess and simulation": args.repeats},
            "commit": commit(), "command": " ".join([".venv/bin/python", *sys.argv])}
    (HERE / "out" / "secagg.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {HERE / 'out' / 'secagg.json'}")


if __name__ == "__main__":
    main()

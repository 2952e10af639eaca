"""Record-level DP-SGD vs silo-level DP vs no DP, on federations of ten torch silos.

    .venv/bin/python benchmarks/dp_sgd_utility.py            # ~15 min on 2 cores
    .venv/bin/python benchmarks/dp_sgd_utility.py --quick    # 1 repetition, 4 rounds

Also run by ``benchmarks/dp_utility.py`` (after its silo-level curves). Everything runs in
one process through the real round loop (``federation.local.run_in_process``), FedAvg over
ten silos, every silo every round, the same torch MLP everywhere (``build_mlp`` below, SGD
with momentum 0.9, the run's learning rate and batch size; the learning rate is the best of
{0.05, 0.1, 0.2} for the non-private run of each federation, and is kept for its DP runs).
Two federations:

* **digits-10** — scikit-learn's 8x8 digits split over 10 silos with Dirichlet(α = 1) label
  skew (``examples/digits-torch/prepare_data.py``): about 135 training records per silo,
  the small-site regime;
* **synthetic-10** — ``make_classification`` (20 features, 4 classes, seed 0), 2,000 training
  and 500 test records per silo: the regime record-level DP is made for.

Mechanisms, each at ε ∈ {1, 3, 8}, δ = 1e-5 after all rounds:

* **DP-SGD (record-level)** — ``[model] dp_sgd`` in every silo: Opacus per-example clipping
  (max_grad_norm 1.0), secure Gaussian noise, Poisson sampling at q = 1/⌈n/batch⌉. Each
  silo's noise multiplier is calibrated for its own n: the smallest z (to 0.5 %) whose RDP ε
  (``strategies.dp.Accountant``, the silo's own accountant) after rounds × epochs × ⌈n/batch⌉
  steps is ≤ the target. The ε each silo reported at the end is checked against the target.
  Protects each record of each silo, from everyone (the coordinator and the other silos).
* **silo-level central DP** — ``[run.dp]`` mechanism "central": the coordinator clips each
  silo's update to C and adds N(0, (zC)²) to the sum; z calibrated with PLD for the run's
  rounds (``dp_utility.noise_for``). Protects a whole silo's contribution, from whoever sees
  the released models — not from the coordinator.

Accuracy: global model on every silo's test split (example-weighted), mean ± std over REPS
repetitions (DP noise differs per repetition; the non-private run is deterministic).
Writes benchmarks/dp_sgd_utility.png and benchmarks/out/dp_sgd_utility.json (every
repetition's accuracy) and prints the Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "examples" / "digits-torch")]

from coordinator.config import RunConfig  # noqa: E402
from silo_client.config import write_silo_config  # noqa: E402
from strategies.dp import Accountant, DPConfig  # noqa: E402
from strategies.dp.accounting import GaussianRound  # noqa: E402
from federation.local import run_in_process  # noqa: E402

EPSILONS = (1.0, 3.0, 8.0)
DELTA = 1e-5
ROUNDS, EPOCHS, BATCH = 10, 1, 32
MAX_GRAD_NORM = 1.0
REPS = 3
SILOS = 10
MODEL = "dp_sgd_utility:build_mlp"
CLIP_SILO_LEVEL = 1.0  # C for silo-level DP (about the median round-1 update norm here)


def build_mlp(n_features: int, classes: tuple, seed: int = 0):  # noqa: ANN201 (torch type)
    """The MLP every silo builds: n_features → 64 → ReLU → classes."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, len(classes)))


# ------------------------------------------------------------------------ federations
def _write(path: Path, X: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*names, "label"])
        w.writerows([*(f"{v:.6g}" for v in row), int(label)] for row, label in zip(X, y))


def _schema(names: list[str], classes: int, kind: str) -> dict:
    return {"label": "label", "task": "classification", "label_values": list(range(classes)),
            "missing": "error", "features": {n: kind for n in names}}


def digits_federation(root: Path) -> tuple[list[tuple[str, Path, Path, int]], dict]:
    """Digits over SILOS silos, Dirichlet(1) label skew, 25 % of each silo held out."""
    import prepare_data  # examples/digits-torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    names = [f"px{i}" for i in range(64)]
    out = []
    for i, rows in enumerate(prepare_data.split_non_iid(digits.target, SILOS, 1.0, rng)):
        n_test = max(1, len(rows) // 4)
        base = root / f"silo-{i:02d}"
        test, train = rows[:n_test], rows[n_test:]
        _write(base / "test.csv", digits.data[test] / 16.0, digits.target[test], names)
        _write(base / "train.csv", digits.data[train] / 16.0, digits.target[train], names)
        out.append((f"silo-{i:02d}", base / "train.csv", base / "test.csv", len(rows) - n_test))
    return out, _schema(names, 10, "float")


def synthetic_federation(root: Path) -> tuple[list[tuple[str, Path, Path, int]], dict]:
    """make_classification, 2,000 + 500 records per silo (IID shards)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=SILOS * 2500, n_features=20, n_informative=10,
                               n_redundant=4, n_classes=4, class_sep=1.0, random_state=0)
    names = [f"f{i}" for i in range(20)]
    out = []
    for i in range(SILOS):
        rows = np.arange(i * 2500, (i + 1) * 2500)
        base = root / f"silo-{i:02d}"
        _write(base / "train.csv", X[rows[:2000]], y[rows[:2000]], names)
        _write(base / "test.csv", X[rows[2000:]], y[rows[2000:]], names)
        out.append((f"silo-{i:02d}", base / "train.csv", base / "test.csv", 2000))
    return out, _schema(names, 4, "float")


# federation → (writer, learning rate: the best of 0.05 / 0.1 / 0.2 without DP, 10 rounds)
FEDERATIONS = {"digits-10": (digits_federation, 0.1), "synthetic-10": (synthetic_federation, 0.05)}


# ------------------------------------------------------------------------ calibration
def dpsgd_epsilon(z: float, n: int, *, rounds: int) -> float:
    """A silo's RDP ε at DELTA after ``rounds`` rounds of DP-SGD on n records."""
    steps_per_epoch = math.ceil(n / BATCH)  # Opacus: q = 1 / len(loader)
    acct = Accountant(DELTA, "rdp")
    for _ in range(rounds * EPOCHS * steps_per_epoch):
        acct.compose_round(GaussianRound(z, 1.0 / steps_per_epoch))
    return acct.epsilon()


def dpsgd_noise_for(target: float, n: int, *, rounds: int) -> float:
    """Smallest z (to 0.5 %) with the silo's ε after ``rounds`` rounds ≤ target."""
    lo, hi = 0.3, 100.0
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if dpsgd_epsilon(mid, n, rounds=rounds) <= target else (mid, hi)
    return hi


def central_noise_for(target: float, *, rounds: int) -> float:
    """Smallest z for silo-level central DP (PLD) after ``rounds`` rounds ≤ target."""
    def eps(z: float) -> float:
        acct = Accountant(DELTA, "pld")
        for _ in range(rounds):
            acct.compose_round(GaussianRound(z))
        return acct.epsilon()

    lo, hi = 0.05, 200.0
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target else (mid, hi)
    return hi


# ------------------------------------------------------------------------ runs
def _configs(silos: list, schema: dict, root: Path, dpsgd: dict[str, float] | None) -> list[Path]:
    paths = []
    for name, train, test, _ in silos:
        dp_sgd = ({"noise_multiplier": dpsgd[name], "max_grad_norm": MAX_GRAD_NORM,
                   "delta": DELTA} if dpsgd is not None else None)
        paths.append(write_silo_config(root / name / "silo.toml", name=name, train=train,
                                       test=test, schema=schema, model=MODEL, dp_sgd=dp_sgd))
    return paths


def run(silos: list, schema: dict, work: Path, *, rounds: int, lr: float,
        dpsgd: dict[str, float] | None = None,
        dp: DPConfig | None = None) -> tuple[float, float | None]:
    """One run; (final accuracy, the largest ε a silo reported or the run's ε)."""
    configs = _configs(silos, schema, work / "silos", dpsgd)
    config = RunConfig(num_rounds=rounds, min_silos=SILOS, local_epochs=EPOCHS,
                       learning_rate=lr, batch_size=BATCH, seed=0, dp=dp, name="bench")
    summary = run_in_process(work / "run", config, configs)
    assert summary["status"] == "completed" and not summary["rounds_failed"], summary
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    reported = [max(r.get("dpsgd_epsilon", {}).values(), default=0.0) for r in rows
                if r.get("event") == "round"]
    eps = max(reported) if dpsgd is not None else summary.get("epsilon")
    return float(summary["final_accuracy"]), eps


def measure(fed: str, tmp: Path, *, eps_list: tuple[float, ...], reps: int,
            rounds: int) -> dict:
    """Every mechanism on one federation; the rows of the table and the curves."""
    write, lr = FEDERATIONS[fed]
    silos, schema = write(tmp / fed / "data")
    base, _ = run(silos, schema, tmp / fed / "nodp", rounds=rounds, lr=lr)
    out = {"no_dp": base, "records": [n for *_, n in silos], "lr": lr, "rows": []}
    for eps in eps_list:
        z_rec = {name: dpsgd_noise_for(eps, n, rounds=rounds) for name, _, _, n in silos}
        z_silo = central_noise_for(eps, rounds=rounds)
        rec, rec_eps, silo_level = [], [], []
        for k in range(reps):
            acc, e = run(silos, schema, tmp / fed / f"rec-{eps}-{k}", rounds=rounds, lr=lr,
                         dpsgd=z_rec)
            rec.append(acc)
            rec_eps.append(e)
            dp = DPConfig(mechanism="central", noise_multiplier=z_silo,
                          clip_norm=CLIP_SILO_LEVEL, delta=DELTA)
            silo_level.append(run(silos, schema, tmp / fed / f"silo-{eps}-{k}", rounds=rounds,
                                  lr=lr, dp=dp)[0])
        zs = sorted(z_rec.values())
        out["rows"].append({"epsilon": eps, "z_dpsgd": [zs[0], zs[-1]], "z_silo": z_silo,
                            "eps_reported": max(rec_eps), "dpsgd": rec, "silo_level": silo_level})
        print(f"{fed} ε={eps}: DP-SGD {np.mean(rec):.3f} (z {zs[0]:.2f}–{zs[-1]:.2f}, reported "
              f"ε ≤ {max(rec_eps):.3f}), silo-level {np.mean(silo_level):.3f} (z={z_silo:.2f}), "
              f"no DP {base:.3f}", flush=True)
    return out


def plot(results: dict, out: Path, rounds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.9))
    for ax, (fed, res) in zip(np.atleast_1d(axes), results.items()):
        eps = [r["epsilon"] for r in res["rows"]]
        for key, style, label in (("dpsgd", "o-", "DP-SGD (record-level)"),
                                  ("silo_level", "s--", "central DP (silo-level)")):
            ax.errorbar(eps, [np.mean(r[key]) for r in res["rows"]],
                        yerr=[np.std(r[key]) for r in res["rows"]], fmt=style, capsize=3,
                        label=label)
        ax.axhline(res["no_dp"], color="grey", linestyle=":", label="no DP")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"ε after {rounds} rounds (δ = {DELTA:g})")
        ax.set_ylabel("test accuracy (global model)")
        ax.set_title(f"{fed}: {SILOS} silos, ~{int(np.median(res['records']))} records each")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(results: dict, reps: int, rounds: int, seconds: float) -> str:
    lines = ["| federation | ε (δ=1e-5) | z DP-SGD (per silo) | acc DP-SGD | silo ε reported "
             "(max) | z silo-level | acc silo-level | acc no DP |",
             "|---|---|---|---|---|---|---|---|"]
    for fed, res in results.items():
        for r in res["rows"]:
            lo, hi = r["z_dpsgd"]
            lines.append(
                f"| {fed} | {r['epsilon']:g} | {lo:.2f}–{hi:.2f} | {np.mean(r['dpsgd']):.3f} ± "
                f"{np.std(r['dpsgd']):.3f} | {r['eps_reported']:.3f} | {r['z_silo']:.2f} | "
                f"{np.mean(r['silo_level']):.3f} ± {np.std(r['silo_level']):.3f} | "
                f"{res['no_dp']:.3f} |")
    rates = ", ".join(f"{fed} {res['lr']:g}" for fed, res in results.items())
    lines.append(f"\n{SILOS} silos, {rounds} rounds × {EPOCHS} local epoch, batch {BATCH}, "
                 f"learning rate {rates}, {reps} repetition(s) per DP point, total "
                 f"{seconds:.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, 4 rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "dp_sgd_utility.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    reps, rounds = (1, 4) if args.quick else (REPS, ROUNDS)
    started, results = time.monotonic(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for fed in FEDERATIONS:
            results[fed] = measure(fed, Path(tmp), eps_list=EPSILONS, reps=reps, rounds=rounds)
    seconds = time.monotonic() - started
    plot(results, args.out, rounds)
    print(table(results, reps, rounds, seconds))
    raw = ROOT / "benchmarks" / "out" / "dp_sgd_utility.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps({"rounds": rounds, "reps": reps, "seconds": round(seconds),
                               "results": results}, indent=1))
    print(f"raw results: {raw}")


if __name__ == "__main__":
    main()

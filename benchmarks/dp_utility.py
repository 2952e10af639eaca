"""Accuracy vs ε: silo-level DP on three silos, then record-level DP-SGD on ten.

    .venv/bin/python benchmarks/dp_utility.py                  # both parts (~45 min, 2 cores)
    .venv/bin/python benchmarks/dp_utility.py --part silo      # silo-level only (~3 min)
    .venv/bin/python benchmarks/dp_utility.py --part record    # DP-SGD only (~40 min)
    .venv/bin/python benchmarks/dp_utility.py --quick          # one repetition, fewer points

The record-level part (DP-SGD in ten torch silos vs silo-level central DP vs no DP, at
ε ∈ {1, 3, 8}) is :mod:`benchmarks.dp_sgd_utility`; it writes benchmarks/dp_sgd_utility.png.
The silo-level part follows.

Everything runs in one process. Federations: the demo's three breast-cancer hospitals
(``federation.demo_data``) and scikit-learn's 8x8 digits split over three silos by
``examples/digits-torch/prepare_data.py`` (Dirichlet α = 1 label skew); both with the
built-in ``sklearn:LogisticRegression`` silo model, FedAvg, all silos every round.

* **no DP** and **central** run the real round loop (``federation.local.run_in_process``): the
  coordinator clips each update to C, sums, adds N(0, (z·C)²) and divides by the public n.
* **distributed** (KLS 2021) runs the real round loop **under secure aggregation**
  (``secure_aggregation = true``, threshold t = n = 3): each silo clips, rotates with the
  round's public seed, scales, rounds and adds its discrete-Gaussian share
  (``encode_update``, mod 2^32), the masking layer sums the pre-encoded vectors, and the
  coordinator only unmasks and decodes (``decode_sum``); ε is the run's reported ε.

For each target ε (δ = 1e-5, after ROUNDS rounds) z is the smallest multiplier whose
accounted ε (PLD for central; RDP of the calibrated zCDP ρ for distributed) stays ≤ target.
Accuracy: global model on every silo's test split, mean ± std over REPS repetitions.
Writes benchmarks/dp_utility.png and prints the Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "digits-torch")]

from coordinator.config import RunConfig  # noqa: E402
from silo_client.config import write_silo_config  # noqa: E402
from silo_client.silo import Silo  # noqa: E402
from strategies.dp import Accountant, DPConfig  # noqa: E402
from strategies.dp.accounting import GaussianRound, ZCDPRound  # noqa: E402
from federation.demo_data import demo_schema, write_demo_data  # noqa: E402
from federation.local import run_in_process  # noqa: E402

EPSILONS = (0.5, 1.0, 2.0, 5.0, 10.0)
DELTA = 1e-5
ROUNDS = 5
REPS = 3
MODEL = "sklearn:LogisticRegression"
CLIP = {"breast-cancer": 2.0, "digits": 2.0}  # about the median round-1 update norm


def _federation(name: str, root: Path) -> list[Path]:
    if name == "breast-cancer":
        silos, schema = write_demo_data(root), demo_schema()
    else:
        import prepare_data  # examples/digits-torch

        silos, schema = prepare_data.write_silos(root), prepare_data.schema()
    return [write_silo_config(root / s.name / "silo.toml", name=s.name, train=s.train,
                              test=s.test, schema=schema, model=MODEL) for s in silos]


def _rho(z: float, n: int, dim: int) -> float:
    dp = DPConfig(mechanism="distributed", noise_multiplier=z, clip_norm=1.0, delta=DELTA)
    return dp.ddg_params(num_silos=n, min_survivors=n, dimension=dim).calibrate().rho


def _epsilon(mechanism: str, z: float, n: int, dim: int) -> float:
    acct = Accountant(DELTA, "pld" if mechanism == "central" else "rdp")
    event = GaussianRound(z) if mechanism == "central" else ZCDPRound(_rho(z, n, dim))
    for _ in range(ROUNDS):
        acct.compose_round(event)
    return acct.epsilon()


def noise_for(target: float, mechanism: str, n: int, dim: int) -> float:
    """Smallest z (to 0.5 %) with ε after ROUNDS rounds ≤ target, by bisection."""
    lo, hi = 0.05, 200.0
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if _epsilon(mechanism, mid, n, dim) <= target else (mid, hi)
    return hi


def _config(dp: DPConfig | None) -> RunConfig:
    return RunConfig(num_rounds=ROUNDS, min_silos=3, strategy="fedavg",
                     strategy_params={"weighted": False}, seed=0, dp=dp)


def run_loop(configs: list[Path], work: Path, dp: DPConfig | None) -> tuple[float, float | None]:
    """No DP / central: the real round loop in-process; (final accuracy, reported ε)."""
    summary = run_in_process(work, _config(dp), configs)
    assert summary["status"] == "completed", summary
    return float(summary["final_accuracy"]), summary.get("epsilon")


def run_distributed(configs: list[Path], work: Path, z: float, clip: float
                    ) -> tuple[float, float | None]:
    """Distributed DP in a real secure run (masked pre-encoded shares); (accuracy, ε)."""
    dp = DPConfig(mechanism="distributed", noise_multiplier=z, clip_norm=clip, delta=DELTA)
    config = RunConfig(num_rounds=ROUNDS, min_silos=3, strategy="fedavg",
                       strategy_params={"weighted": False}, seed=0, dp=dp,
                       secure_aggregation=True, secagg_threshold=3)
    summary = run_in_process(work, config, configs)
    assert summary["status"] == "completed" and not summary["rounds_failed"], summary
    return float(summary["final_accuracy"]), summary.get("epsilon")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, ε in {0.5, 2, 10}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "dp_utility.png")
    ap.add_argument("--part", choices=("all", "silo", "record"), default="all",
                    help="silo-level curves (3 silos), record-level DP-SGD (10 silos), or both")
    args = ap.parse_args()
    if args.part in ("all", "silo"):
        silo_level(args)
    if args.part in ("all", "record"):
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import dp_sgd_utility

        dp_sgd_utility.main(["--quick"] if args.quick else [])


def silo_level(args: argparse.Namespace) -> None:
    """The silo-level curves: no DP, central and distributed DP on three silos."""
    logging.basicConfig(level=logging.WARNING)
    eps_list = (0.5, 2.0, 10.0) if args.quick else EPSILONS
    reps = 1 if args.quick else REPS
    started, results = time.monotonic(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for fed in ("breast-cancer", "digits"):
            configs = _federation(fed, Path(tmp) / fed)
            dim = sum(v.size for v in Silo.from_file(configs[0]).model(0).get_parameters().values())
            base = run_loop(configs, Path(tmp) / f"{fed}-nodp", None)[0]
            rows = []
            for eps in eps_list:
                zc, zd = noise_for(eps, "central", 3, dim), noise_for(eps, "distributed", 3, dim)
                central, dist, reported, reported_d = [], [], [], []
                for k in range(reps):
                    dp = DPConfig(mechanism="central", noise_multiplier=zc, clip_norm=CLIP[fed],
                                  delta=DELTA)
                    acc, e = run_loop(configs, Path(tmp) / f"{fed}-c{eps}-{k}", dp)
                    central.append(acc)
                    reported.append(e)
                    acc, e = run_distributed(configs, Path(tmp) / f"{fed}-d{eps}-{k}", zd,
                                             CLIP[fed])
                    dist.append(acc)
                    reported_d.append(e)
                rows.append({"epsilon": eps, "z_central": zc, "z_distributed": zd,
                             "eps_reported": max(reported), "eps_reported_d": max(reported_d),
                             "central": central, "distributed": dist})
                print(f"{fed} ε={eps}: central {np.mean(central):.3f} (z={zc:.2f}), "
                      f"distributed {np.mean(dist):.3f} (z={zd:.2f}), no DP {base:.3f}", flush=True)
            results[fed] = {"no_dp": base, "dim": dim, "rows": rows}
    seconds = time.monotonic() - started
    _plot(results, args.out)
    print(_table(results, reps, seconds))
    print(json.dumps(results))


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), sharey=False)
    for ax, (fed, res) in zip(np.atleast_1d(axes), results.items()):
        eps = [r["epsilon"] for r in res["rows"]]
        for key, style in (("central", "o-"), ("distributed", "s--")):
            mean = [np.mean(r[key]) for r in res["rows"]]
            std = [np.std(r[key]) for r in res["rows"]]
            ax.errorbar(eps, mean, yerr=std, fmt=style, capsize=3, label=f"{key} DP")
        ax.axhline(res["no_dp"], color="grey", linestyle=":", label="no DP")
        ax.set_xscale("log")
        ax.set_xlabel(f"ε after {ROUNDS} rounds (δ = {DELTA:g})")
        ax.set_ylabel("test accuracy (global model)")
        ax.set_title(f"{fed} (3 silos, silo-level DP)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _table(results: dict, reps: int, seconds: float) -> str:
    lines = ["| federation | ε (δ=1e-5) | z central | acc central | z distributed | "
             "acc distributed | acc no DP |", "|---|---|---|---|---|---|---|"]
    for fed, res in results.items():
        for r in res["rows"]:
            lines.append(
                f"| {fed} | {r['epsilon']:g} (reported {r['eps_reported']:.3f} / "
                f"{r['eps_reported_d']:.3f}) | "
                f"{r['z_central']:.2f} | {np.mean(r['central']):.3f} ± {np.std(r['central']):.3f} | "
                f"{r['z_distributed']:.2f} | {np.mean(r['distributed']):.3f} ± "
                f"{np.std(r['distributed']):.3f} | {res['no_dp']:.3f} |")
    lines.append(f"\n{reps} repetition(s) per point, {ROUNDS} rounds, total {seconds:.0f} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""xsilo's built-ins agree with flwr.serverapp.strategy on the same updates (to 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.aggregate import aggregate_updates
from strategies.api import NDArrays, Update
from strategies.builtin import (FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg,
                                FedYogi, Krum, MultiKrum)

ATOL = 1e-6


def _model() -> NDArrays:
    rng = np.random.default_rng(42)
    return {"conv": (0.5 * rng.normal(size=(6, 3, 2))).astype(np.float32),
            "bias": (0.5 * rng.normal(size=6)).astype(np.float32)}


def _updates(seed: int, n: int = 6, *, outlier: bool = False) -> list[Update]:
    rng = np.random.default_rng(seed)
    ref = _model()
    ups = [Update(f"s{i}", {k: (0.05 * rng.normal(size=v.shape)).astype(np.float32)
                            for k, v in ref.items()}, float(rng.integers(1, 100)))
           for i in range(n)]
    if outlier:  # a Byzantine silo far from the others
        ups[0] = Update("evil", {k: np.full_like(v, 3.0) for k, v in ups[0].delta.items()}, 90.0)
    return ups


def _agree(ours: object, theirs: object, flower: object, rounds: int, **kw: bool) -> None:
    driver = flower(theirs)  # type: ignore[operator]
    mine, flwr_model = _model(), _model()
    for rnd in range(1, rounds + 1):
        ups = _updates(100 + rnd, **kw)
        mine = aggregate_updates(ours, mine, ups, rnd)  # type: ignore[arg-type]
        flwr_model = driver.round(rnd, flwr_model, ups)
        for k in mine:
            np.testing.assert_allclose(mine[k], flwr_model[k], rtol=0, atol=ATOL,
                                       err_msg=f"round {rnd}, tensor {k}")


CASES = {
    "fedavg": (lambda: FedAvg(), lambda s: s.FedAvg(), 3),
    "fedavgm": (lambda: FedAvgM(FedAvgM.Params(server_learning_rate=0.7, server_momentum=0.9)),
                lambda s: s.FedAvgM(server_learning_rate=0.7, server_momentum=0.9), 3),
    "fedadam": (lambda: FedAdam(), lambda s: s.FedAdam(), 3),
    "fedadam-custom": (lambda: FedAdam(FedAdam.Params(eta=0.05, beta_1=0.8, beta_2=0.9, tau=1e-2)),
                       lambda s: s.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.9, tau=1e-2), 3),
    "fedyogi": (lambda: FedYogi(), lambda s: s.FedYogi(), 3),
    "fedadagrad": (lambda: FedAdagrad(), lambda s: s.FedAdagrad(), 3),
    "fedmedian": (lambda: FedMedian(), lambda s: s.FedMedian(), 2),
    "fedtrimmedavg": (lambda: FedTrimmedAvg(FedTrimmedAvg.Params(beta=0.2)),
                      lambda s: s.FedTrimmedAvg(beta=0.2), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_flower(case: str, flower: object) -> None:
    from flwr.serverapp import strategy as flwr_strategies
    ours, theirs, rounds = CASES[case]
    _agree(ours(), theirs(flwr_strategies), flower, rounds)


def test_krum_matches_flower_and_drops_outlier(flower: object) -> None:
    from flwr.serverapp.strategy import Krum as FlowerKrum
    _agree(Krum(Krum.Params(num_malicious_nodes=1)), FlowerKrum(num_malicious_nodes=1),
           flower, 2, outlier=True)
    new = aggregate_updates(Krum(Krum.Params(num_malicious_nodes=1)), _model(),
                            _updates(7, outlier=True), 1)
    assert np.abs(new["bias"] - _model()["bias"]).max() < 1.0  # the +3.0 silo was not chosen


def test_multikrum_matches_flower(flower: object) -> None:
    from flwr.serverapp.strategy import MultiKrum as FlowerMultiKrum
    _agree(MultiKrum(MultiKrum.Params(num_malicious_nodes=1, num_nodes_to_keep=3)),
           FlowerMultiKrum(num_malicious_nodes=1, num_nodes_to_select=3), flower, 2, outlier=True)

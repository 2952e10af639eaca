"""xsilo's built-ins agree with flwr.serverapp.strategy on the same updates (to 1e-6).

Both sides run on float64 models, where each computes the same formula in float64 and the
1e-6 bound is about the math alone. On float32 models Flower does its arithmetic in float32
while xsilo accumulates in float64, so the two differ by Flower's float32 rounding (about
1e-7 relative per operation, amplified by FedAdagrad's 1/sqrt(v) over rounds): there the
bound is 1e-6 absolute plus 1e-5 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from strategies.aggregate import aggregate_updates
from strategies.api import NDArrays, Update
from strategies.builtin import (FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg,
                                FedYogi, Krum, MultiKrum)

ATOL = 1e-6
RTOL = {np.float64: 0.0, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


def _model(dtype: type = np.float64) -> NDArrays:
    rng = np.random.default_rng(42)
    return {"conv": (0.5 * rng.normal(size=(6, 3, 2))).astype(dtype),
            "bias": (0.5 * rng.normal(size=6)).astype(dtype)}


def _updates(seed: int, n: int = 6, *, outlier: bool = False) -> list[Update]:
    rng = np.random.default_rng(seed)
    ref = _model()
    ups = [Update(f"s{i}", {k: (0.05 * rng.normal(size=v.shape)).astype(np.float32)
                            for k, v in ref.items()}, float(rng.integers(1, 100)))
           for i in range(n)]
    if outlier:  # a Byzantine silo far from the others
        ups[0] = Update("evil", {k: np.full_like(v, 3.0) for k, v in ups[0].delta.items()}, 90.0)
    return ups


def _agree(ours: object, theirs: object, flower: object, rounds: int, *,
           dtype: type = np.float64, **kw: bool) -> None:
    driver = flower(theirs)  # type: ignore[operator]
    mine, flwr_model = _model(dtype), _model(dtype)
    for rnd in range(1, rounds + 1):
        ups = _updates(100 + rnd, **kw)
        mine = aggregate_updates(ours, mine, ups, rnd)  # type: ignore[arg-type]
        flwr_model = driver.round(rnd, flwr_model, ups)
        for k in mine:
            assert mine[k].dtype == dtype  # xsilo keeps the model's dtype (Flower's FedAdam
            # returns float64 for a float32 model)
            np.testing.assert_allclose(mine[k], flwr_model[k], rtol=RTOL[dtype], atol=ATOL,
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


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_flower(case: str, dtype: type, flower: object) -> None:
    from flwr.serverapp import strategy as flwr_strategies
    ours, theirs, rounds = CASES[case]
    _agree(ours(), theirs(flwr_strategies), flower, rounds, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_krum_matches_flower_and_drops_outlier(dtype: type, flower: object) -> None:
    from flwr.serverapp.strategy import Krum as FlowerKrum
    _agree(Krum(Krum.Params(num_malicious_nodes=1)), FlowerKrum(num_malicious_nodes=1),
           flower, 2, dtype=dtype, outlier=True)
    new = aggregate_updates(Krum(Krum.Params(num_malicious_nodes=1)), _model(),
                            _updates(7, outlier=True), 1)
    assert np.abs(new["bias"] - _model()["bias"]).max() < 1.0  # the +3.0 silo was not chosen


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_multikrum_matches_flower(dtype: type, flower: object) -> None:
    from flwr.serverapp.strategy import MultiKrum as FlowerMultiKrum
    _agree(MultiKrum(MultiKrum.Params(num_malicious_nodes=1, num_nodes_to_keep=3)),
           FlowerMultiKrum(num_malicious_nodes=1, num_nodes_to_select=3), flower, 2,
           dtype=dtype, outlier=True)

"""PyTorch adapter: exact round trip, FedAvg improves, FedProx, determinism, errors."""

from __future__ import annotations

from dataclasses import replace

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

from silo_client.adapters import FitSettings, build_model, check_same_architecture, parameter_spec  # noqa: E402
from silo_client.adapters.torch import TorchAdapter  # noqa: E402
from silo_client.data import Column, DataSchema, LocalDataset  # noqa: E402
from xsilo.errors import ModelError  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits-torch"
DIGITS = load_digits()
SCHEMA = DataSchema(tuple(Column(f"px{i}", "int") for i in range(64)), "label", tuple(range(10)))
X, Y = DIGITS.data.astype(np.float32), DIGITS.target.astype(np.int64)
_perm = np.random.default_rng(0).permutation(len(X))
TEST = LocalDataset(X[_perm[:400]], Y[_perm[:400]], SCHEMA, "test")
SHARDS = [LocalDataset(X[p], Y[p], SCHEMA, f"shard{i}")
          for i, p in enumerate(np.array_split(_perm[400:1300], 3))]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core box: thread oversubscription costs more than it gains."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(hidden: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def scaled(model: nn.Module) -> nn.Module:
    return nn.Sequential(_Scale(), model)


class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 16.0


def fedavg(model: TorchAdapter, rounds: int, config: FitSettings, epochs: int = 1) -> dict[str, np.ndarray]:
    glob = model.get_parameters()
    for rnd in range(rounds):
        updates = []
        for shard in SHARDS:
            model.set_parameters(glob)
            model.fit(shard, epochs=epochs, config=replace(config, seed=rnd))
            updates.append((len(shard), model.get_parameters()))
        total = sum(n for n, _ in updates)
        glob = {k: sum(n * u[k] for n, u in updates) / total for k in glob}
    return glob


def test_parameters_round_trip_exactly() -> None:
    a, b = TorchAdapter(mlp(seed=1)), TorchAdapter(mlp(seed=2))
    params = a.get_parameters()
    assert list(params) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(v.dtype == np.float32 for v in params.values())
    b.set_parameters(params)
    back = b.get_parameters()
    assert all(np.array_equal(back[k], params[k]) for k in params)
    params["0.bias"] += 1.0  # copies, not views
    assert not np.array_equal(a.get_parameters()["0.bias"], params["0.bias"])


def test_fedavg_improves_the_example_cnn() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        model = build_model("digits_cnn:build", schema=SCHEMA, seed=0)
    finally:
        sys.path.remove(str(EXAMPLE))
    assert isinstance(model, TorchAdapter)
    before = model.evaluate(TEST)
    model.set_parameters(fedavg(model, rounds=3, config=FitSettings(learning_rate=0.1), epochs=2))
    after = model.evaluate(TEST)
    assert after["loss"] < 0.7 * before["loss"] and after["accuracy"] > before["accuracy"] + 0.3


def test_fedprox_stays_closer_to_the_global_model() -> None:
    model = TorchAdapter(scaled(mlp()))
    start = model.get_parameters()
    moved = {}
    for mu in (0.0, 1.0):
        model.set_parameters(start)
        model.fit(SHARDS[0], epochs=2, config=FitSettings(proximal_mu=mu, learning_rate=0.05))
        after = model.get_parameters()
        moved[mu] = float(np.sqrt(sum(np.sum((after[k] - start[k]) ** 2) for k in start)))
    assert moved[1.0] < 0.8 * moved[0.0]


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    runs = []
    for _ in range(2):
        model = TorchAdapter(scaled(mlp(seed=5)))
        state = torch.random.get_rng_state()
        model.fit(SHARDS[1], epochs=1, config=FitSettings(seed=9, learning_rate=0.05))
        assert torch.equal(state, torch.random.get_rng_state())
        runs.append(model.get_parameters())
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_build_model_seeds_identical_initial_weights(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "site_net.py").write_text(
        "from torch import nn\n"
        "def build(classes):\n"  # ignores the seed: xsilo still makes silos agree
        "    return nn.Linear(64, len(classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    a = build_model("site_net:build", schema=SCHEMA, seed=3).get_parameters()
    b = build_model("site_net:build", schema=SCHEMA, seed=3).get_parameters()
    c = build_model("site_net:build", schema=SCHEMA, seed=4).get_parameters()
    assert np.array_equal(a["weight"], b["weight"]) and not np.array_equal(a["weight"], c["weight"])


def test_mismatching_architecture_names_the_tensor() -> None:
    small, big = TorchAdapter(mlp(8)), TorchAdapter(mlp(16))
    with pytest.raises(ModelError, match=r"tensor '0.weight': expected shape \(8, 64\), received \(16, 64\)"):
        small.set_parameters(big.get_parameters())
    with pytest.raises(ModelError, match=r"at tensor '0.weight': expected shape \(16, 64\) float32, "
                                         r"this silo has \(8, 64\) float32"):
        check_same_architecture(parameter_spec(big.get_parameters()), parameter_spec(small.get_parameters()))


def test_user_train_and_eval_callables() -> None:
    calls = {}

    def train_fn(module, train, *, epochs, config, device, proximal):
        calls["train"] = (len(train), epochs, float(proximal().detach()))
        return 0.25

    def eval_fn(module, test, *, device):
        return {"loss": 1.0, "accuracy": 0.5, "f1": 0.4}

    model = TorchAdapter(mlp(), train_fn=train_fn, eval_fn=eval_fn)
    assert model.fit(SHARDS[0], epochs=3, config=FitSettings(proximal_mu=0.1)) == {"train_loss": 0.25}
    assert calls["train"] == (len(SHARDS[0]), 3, 0.0)
    assert model.evaluate(TEST)["f1"] == 0.4


def test_regression_task_and_bad_inputs() -> None:
    schema = DataSchema((Column("a", "float"), Column("b", "float")), "y", None, task="regression")
    rng = np.random.default_rng(0)
    Xr = rng.normal(size=(200, 2)).astype(np.float32)
    data = LocalDataset(Xr, (Xr @ np.array([1.0, -2.0]) + 0.5).astype(np.float32), schema, "r")
    torch.manual_seed(0)
    model = TorchAdapter(nn.Linear(2, 1), task="regression")
    before = model.evaluate(data)
    model.fit(data, epochs=5, config=FitSettings(learning_rate=0.05))
    after = model.evaluate(data)
    assert set(after) == {"loss", "mae"} and after["loss"] < 0.1 * before["loss"]
    with pytest.raises(ModelError, match="needs an nn.Module"):
        TorchAdapter(object())  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="no floating-point parameters"):
        TorchAdapter(nn.ReLU())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_round_trip_and_fit() -> None:
    model = TorchAdapter(scaled(mlp()), device="cuda")
    params = model.get_parameters()
    model.set_parameters(params)
    assert model.fit(SHARDS[0], epochs=1, config=FitSettings())["train_loss"] > 0
    assert next(model.module.parameters()).is_cuda

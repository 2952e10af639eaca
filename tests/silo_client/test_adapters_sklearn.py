"""scikit-learn adapter: exact round trip, a tiny FedAvg improves, FedProx, clear errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

import silo_client.adapters as adapters
from silo_client.adapters import FitSettings, build_model, check_same_architecture, parameter_spec
from silo_client.adapters.sklearn import SklearnAdapter
from silo_client.data import Column, DataSchema, LocalDataset
from xsilo.errors import ModelError

CLASSIFIERS = ["LogisticRegression", "SGDClassifier", "MLPClassifier"]
REGRESSORS = ["SGDRegressor", "Ridge", "LinearRegression", "MLPRegressor"]


def _federation(loader, task: str):
    """Three non-IID shards (sorted by the first feature) and a held-out test split."""
    data = loader()
    X = StandardScaler().fit_transform(data.data).astype(np.float32)
    if task == "classification":
        y = data.target.astype(np.int64)
        labels = tuple(int(v) for v in np.unique(y))
    else:
        y = ((data.target - data.target.mean()) / data.target.std()).astype(np.float32)
        labels = None
    schema = DataSchema(tuple(Column(f"f{i}", "float") for i in range(X.shape[1])), "y", labels, task)
    perm = np.random.default_rng(0).permutation(len(X))
    test, train = perm[: len(X) // 4], perm[len(X) // 4:]
    train = train[np.argsort(X[train, 0], kind="stable")]
    shards = [LocalDataset(X[p], y[p], schema, f"shard{i}") for i, p in enumerate(np.array_split(train, 3))]
    return schema, shards, LocalDataset(X[test], y[test], schema, "test")


BREAST = _federation(load_breast_cancer, "classification")
DIGITS = _federation(load_digits, "classification")
DIABETES = _federation(load_diabetes, "regression")


def fedavg(model, shards, rounds: int, config: FitSettings) -> dict[str, np.ndarray]:
    """Plain FedAvg in numpy: every shard trains from the global model, weighted average."""
    glob = model.get_parameters()
    for rnd in range(rounds):
        updates, weights = [], []
        for shard in shards:
            model.set_parameters(glob)
            model.fit(shard, epochs=1, config=replace(config, seed=rnd))
            updates.append(model.get_parameters())
            weights.append(len(shard))
        glob = {k: sum(w * u[k] for w, u in zip(weights, updates)) / sum(weights) for k in glob}
    return glob


@pytest.mark.parametrize(("name", "fed"), [(n, BREAST) for n in CLASSIFIERS]
                         + [("LogisticRegression", DIGITS), ("SGDClassifier", DIGITS)]
                         + [(n, DIABETES) for n in REGRESSORS])
def test_fedavg_improves_on_initial_model(name: str, fed) -> None:
    schema, shards, test = fed
    model = build_model(f"sklearn:{name}", schema=schema, seed=3)
    before = model.evaluate(test)
    model.set_parameters(fedavg(model, shards, rounds=3, config=FitSettings()))
    after = model.evaluate(test)
    assert after["loss"] < 0.8 * before["loss"]
    if schema.task == "classification":
        assert after["accuracy"] > before["accuracy"] + 0.2
    else:
        assert after["mae"] < before["mae"]


@pytest.mark.parametrize("name", CLASSIFIERS + REGRESSORS)
def test_parameters_round_trip_exactly_and_start_deterministic(name: str) -> None:
    schema, shards, _ = DIABETES if name in REGRESSORS else DIGITS
    a = build_model(f"sklearn:{name}", schema=schema, seed=7)
    b = build_model(f"sklearn:{name}", schema=schema, seed=7)
    pa, pb = a.get_parameters(), b.get_parameters()
    assert list(pa) == list(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)
    if name.startswith(("SGD", "Logistic", "Ridge", "Linear")):
        assert all(not v.any() for v in pa.values())  # linear models start at zero
    a.fit(shards[0], epochs=1, config=FitSettings())
    trained = a.get_parameters()
    b.set_parameters(trained)
    back = b.get_parameters()
    assert parameter_spec(back) == parameter_spec(trained)
    assert all(np.array_equal(back[k], trained[k]) for k in trained)
    trained[next(iter(trained))] += 1.0  # returned arrays are copies
    assert not np.array_equal(a.get_parameters()[next(iter(trained))], trained[next(iter(trained))])


def test_fit_keeps_all_classes_when_a_shard_lacks_some() -> None:
    schema, shards, test = DIGITS
    only_two = LocalDataset(shards[0].X[shards[0].y < 2], shards[0].y[shards[0].y < 2], schema, "two")
    for name in CLASSIFIERS:
        model = build_model(f"sklearn:{name}", schema=schema)
        spec = parameter_spec(model.get_parameters())
        model.fit(only_two, epochs=1, config=FitSettings())
        assert parameter_spec(model.get_parameters()) == spec
        assert model.evaluate(test)["loss"] > 0


def _distance(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


@pytest.mark.parametrize(("name", "fed"), [(n, BREAST) for n in CLASSIFIERS]
                         + [(n, DIABETES) for n in REGRESSORS])
def test_fedprox_stays_closer_to_the_global_model(name: str, fed) -> None:
    schema, shards, _ = fed
    model = build_model(f"sklearn:{name}", schema=schema, seed=1)
    start = fedavg(model, shards[1:], rounds=1, config=FitSettings())  # a non-trivial global model
    moved = {}
    for mu in (0.0, 1.0):
        model.set_parameters(start)
        model.fit(shards[0], epochs=2, config=FitSettings(proximal_mu=mu, seed=0))
        moved[mu] = _distance(model.get_parameters(), start)
    assert moved[1.0] < 0.8 * moved[0.0]


def test_mismatching_parameters_name_the_tensor() -> None:
    schema, _, _ = BREAST
    model = build_model("sklearn:SGDClassifier", schema=schema)
    params = model.get_parameters()
    with pytest.raises(ModelError, match=r"tensor 'coef': expected shape \(1, 30\), received \(1, 29\)"):
        model.set_parameters({**params, "coef": params["coef"][:, :29]})
    with pytest.raises(ModelError, match=r"missing \['intercept'\], unexpected \['bias'\]"):
        model.set_parameters({"coef": params["coef"], "bias": params["intercept"]})


def test_check_same_architecture_names_first_mismatch() -> None:
    schema, _, _ = DIGITS
    small = build_model("sklearn:MLPClassifier", schema=schema, config={"hidden-layer-sizes": [16]})
    big = build_model("sklearn:MLPClassifier", schema=schema, config={"hidden-layer-sizes": [32]})
    ref, mine = parameter_spec(big.get_parameters()), parameter_spec(small.get_parameters())
    check_same_architecture(ref, ref)
    with pytest.raises(ModelError, match=r"tensor 'coef\.0': expected shape \(64, 32\) float32, "
                                         r"this silo has \(64, 16\) float32"):
        check_same_architecture(ref, mine)
    with pytest.raises(ModelError, match=r"tensor 'coef\.2' .* is not in the reference"):
        check_same_architecture(ref, {**ref, "coef.2": ((1,), "float32")})
    with pytest.raises(ModelError, match=r"'intercept\.1' .* is missing here"):
        check_same_architecture(ref, {k: v for k, v in ref.items() if k != "intercept.1"})


@pytest.mark.parametrize(("estimator", "needle"), [
    (RandomForestClassifier(), "FedXgbBagging"), (DecisionTreeClassifier(), "tree model"),
    (KNeighborsClassifier(), "raw records"), (SVC(), "SGDClassifier(loss='hinge')"),
])
def test_unfederatable_estimator_names_the_alternative(estimator, needle: str) -> None:
    schema, _, _ = BREAST
    with pytest.raises(ModelError) as err:
        SklearnAdapter(estimator, schema=schema)
    assert type(estimator).__name__ in str(err.value) and needle in str(err.value)
    assert "SGDClassifier" in str(err.value)


def test_unknown_builtin_and_wrong_task() -> None:
    schema, _, _ = BREAST
    with pytest.raises(ModelError, match="sklearn:GradientBoostingClassifier is not a built-in.*FedXgbBagging"):
        build_model("sklearn:GradientBoostingClassifier", schema=schema)
    with pytest.raises(ModelError, match="does not fit task 'classification'"):
        build_model("sklearn:Ridge", schema=schema)


def test_import_path_spec_accepts_estimator_classes_and_factories(tmp_path, monkeypatch) -> None:
    schema, shards, _ = BREAST
    (tmp_path / "site_models.py").write_text(
        "from sklearn.linear_model import SGDClassifier\n"
        "def build(n_features, seed):\n"
        "    assert n_features == 30\n"
        "    return SGDClassifier(loss='log_loss', random_state=seed)\n"
        "def broken():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("site_models:build", schema=schema, seed=2)
    assert isinstance(model, SklearnAdapter) and model.fit(shards[0], epochs=1, config=FitSettings())["train_loss"] > 0
    assert isinstance(build_model("sklearn.linear_model:Ridge", schema=DIABETES[0]), SklearnAdapter)
    with pytest.raises(ModelError, match="produced a int"):
        build_model("site_models:broken", schema=schema)
    with pytest.raises(ModelError, match="cannot import .no_such_pkg.models. .No module named"):
        build_model("no_such_pkg.models:build", schema=schema)
    with pytest.raises(ModelError, match="neither a built-in"):
        build_model("justaname", schema=schema)


def test_public_api_is_pinned() -> None:
    assert sorted(adapters.__all__) == [
        "FitSettings", "ModelAdapter", "NDArrays", "ParameterSpec", "SklearnAdapter", "TorchAdapter",
        "assign_parameters", "build_model", "check_same_architecture", "parameter_spec"]


"""scikit-learn adapter: linear models and MLPs federated by parameter averaging.

Local training always continues from the current (global) parameters and keeps the class set
of the schema, even when a silo's shard lacks some classes:

* ``SGDClassifier`` / ``SGDRegressor`` / ``MLP*``: shuffled mini-batches through
  ``partial_fit``; FedProx applies the proximal operator of ``mu/2 ||w - w0||^2`` after each
  batch with the step that batch took (Li et al. 2020, "Federated Optimization in
  Heterogeneous Networks", eq. 2). Exact proximal SGD for plain SGD; an approximation under
  momentum or Adam (built-in MLPs use momentum SGD).
* ``LogisticRegression``: L-BFGS on sklearn's own objective (mean log-loss + ||W||^2/(2Cn)),
  plus the proximal term, warm-started from the current parameters; each epoch is up to
  ``max_iter`` iterations.
* ``Ridge`` / ``LinearRegression``: closed form; with FedProx the exact minimiser of the
  proximal objective (a ridge problem re-centred on the global model).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp, softmax
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.neural_network import MLPClassifier, MLPRegressor

from silo_client.adapters.base import FitSettings, NDArrays, assign_parameters
from xsilo.errors import ModelError

if TYPE_CHECKING:
    from silo_client.data import DataSchema, LocalDataset

__all__ = ["BUILTINS", "SklearnAdapter", "make_builtin", "unfederatable_reason"]

log = logging.getLogger(__name__)

BUILTINS = ("LogisticRegression", "SGDClassifier", "SGDRegressor", "Ridge",
            "LinearRegression", "MLPClassifier", "MLPRegressor")
_ALTERNATIVE = ("use a parameter-averaging model instead (sklearn:SGDClassifier, "
                "sklearn:LogisticRegression or sklearn:MLPClassifier; for regression "
                "sklearn:SGDRegressor, sklearn:Ridge or sklearn:MLPRegressor)")


def make_builtin(name: str, config: Mapping[str, object], *, seed: int = 0,
                 learning_rate: float | None = None) -> object:
    """A built-in estimator with federation-friendly defaults: ``config`` is the silo's
    ``[model] params``; ``seed`` and ``learning_rate`` are the run's."""
    lr = learning_rate
    hidden = tuple(config.get("hidden-layer-sizes", (32,)))  # type: ignore[arg-type]
    factories = {
        "LogisticRegression": lambda: LogisticRegression(C=float(config.get("C", 1.0)), max_iter=20),
        "SGDClassifier": lambda: SGDClassifier(loss="log_loss", learning_rate="constant",
                                               eta0=float(lr or 0.01), random_state=seed),
        "SGDRegressor": lambda: SGDRegressor(learning_rate="constant", eta0=float(lr or 0.01),
                                             random_state=seed),
        "Ridge": lambda: Ridge(alpha=float(config.get("alpha", 1.0))),
        "LinearRegression": LinearRegression,
        "MLPClassifier": lambda: MLPClassifier(hidden_layer_sizes=hidden, solver="sgd", momentum=0.9,
                                               learning_rate_init=float(lr or 0.1),
                                               random_state=seed),
        "MLPRegressor": lambda: MLPRegressor(hidden_layer_sizes=hidden, solver="sgd", momentum=0.9,
                                             learning_rate_init=float(lr or 0.1),
                                             random_state=seed),
    }
    if name not in factories:
        raise ModelError(
            f"sklearn:{name} is not a built-in model; built-ins are "
            f"{', '.join('sklearn:' + b for b in BUILTINS)}. Trees, forests, boosting, KNN and "
            f"kernel SVMs cannot be federated by parameter averaging: {_ALTERNATIVE}, or a "
            "tree-specific federated method such as Flower's FedXgbBagging."
        )
    return factories[name]()


def unfederatable_reason(estimator: object) -> str | None:
    """Why ``estimator`` cannot be federated by averaging (None when it can)."""
    if isinstance(estimator, (LogisticRegression, SGDClassifier, SGDRegressor, Ridge,
                              LinearRegression, MLPClassifier, MLPRegressor)):
        return None
    name, module = type(estimator).__name__, type(estimator).__module__
    if ".tree" in module or ".ensemble" in module:
        why = (f"{name} is a tree model: its structure differs per silo, so there are no "
               "fixed-shape parameters to average")
        return f"{why}; {_ALTERNATIVE}, or a tree-specific federated method such as Flower's FedXgbBagging (XGBoost)"
    if ".neighbors" in module:
        return (f"{name} stores the training rows themselves as its model; sharing it would send "
                f"raw records off-site; {_ALTERNATIVE}")
    if ".svm" in module:
        return (f"{name} keeps support vectors (raw training rows) as parameters; for a linear SVM "
                f"use SGDClassifier(loss='hinge'); otherwise {_ALTERNATIVE}")
    return f"{name} is not a supported federated estimator; {_ALTERNATIVE}"


def _kind(est: object) -> str:
    if isinstance(est, LogisticRegression):
        return "logreg"
    if isinstance(est, (SGDClassifier, SGDRegressor)):
        return "sgd"
    if isinstance(est, (MLPClassifier, MLPRegressor)):
        return "mlp"
    return "closed"


class SklearnAdapter:
    """Wrap a supported scikit-learn estimator; parameters start deterministic, data-free."""

    def __init__(self, estimator: object, *, schema: DataSchema, seed: int = 0) -> None:
        reason = unfederatable_reason(estimator)
        if reason:
            raise ModelError(reason)
        self.task = schema.task
        if is_classifier(estimator) != (schema.task == "classification"):
            raise ModelError(
                f"{type(estimator).__name__} does not fit task {schema.task!r} declared in "
                "data.schema.task; pick a classifier for classification, a regressor for regression"
            )
        if isinstance(estimator, LogisticRegression) and estimator.l1_ratio not in (0, 0.0, None):
            raise ModelError("LogisticRegression with l1_ratio > 0 is not supported; use "
                             "SGDClassifier(penalty='elasticnet')")
        self.estimator, self.seed, self._kind = estimator, seed, _kind(estimator)
        self.n_features = schema.n_features
        self.n_classes = len(schema.label_values) if schema.label_values else 0
        if self.task == "classification" and self.n_classes < 2:
            raise ModelError("classification needs at least two label_values in data.schema")
        self._initialise()

    def _initialise(self) -> None:
        est, n, k = self.estimator, self.n_features, self.n_classes
        classes = np.arange(k)
        if self._kind in ("logreg", "closed"):
            rows = 1 if k == 2 else k
            est.coef_ = np.zeros((rows, n)) if k else np.zeros(n)
            est.intercept_ = np.zeros(rows) if k else 0.0
            if k:
                est.classes_ = classes
            est.n_features_in_ = n
            return
        # partial_fit on a dummy batch sets sklearn's internal state; parameters are then reset
        # SGD parameters follow the data dtype: keep them float64; MLPs train in float32
        dummy_x = np.zeros((max(k, 2), n), dtype=np.float64 if self._kind == "sgd" else np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if k:
                est.partial_fit(dummy_x, np.resize(classes, len(dummy_x)), classes=classes)
            else:
                est.partial_fit(dummy_x, np.zeros(len(dummy_x)))
        rng = np.random.default_rng(self.seed)
        fresh = {name: self._init_value(name, a, rng) for name, a in self.get_parameters().items()}
        self.set_parameters(fresh)

    def _init_value(self, name: str, held: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._kind == "sgd" or name.startswith("intercept"):
            return np.zeros_like(held)
        fan_in, fan_out = held.shape  # Glorot-uniform bound, Glorot & Bengio 2010 eq. 16
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, size=held.shape).astype(held.dtype)

    def get_parameters(self) -> NDArrays:
        """Copies of the parameters: ``coef``/``intercept`` or ``coef.i``/``intercept.i``."""
        est = self.estimator
        if self._kind == "mlp":
            out: NDArrays = {}
            for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_)):
                out[f"coef.{i}"], out[f"intercept.{i}"] = w.copy(), b.copy()
            return out
        return {"coef": np.array(est.coef_, dtype=np.float64, copy=True),
                "intercept": np.atleast_1d(np.array(est.intercept_, dtype=np.float64, copy=True))}

    def set_parameters(self, params: NDArrays) -> None:
        """Load parameters exactly (cast to the held dtype); mismatches raise ModelError."""
        new = assign_parameters(self.get_parameters(), params)
        est = self.estimator
        if self._kind == "mlp":
            est.coefs_ = [new[f"coef.{i}"] for i in range(len(est.coefs_))]
            est.intercepts_ = [new[f"intercept.{i}"] for i in range(len(est.intercepts_))]
            return
        est.coef_ = new["coef"]
        est.intercept_ = new["intercept"] if np.ndim(est.intercept_) else float(new["intercept"][0])

    def fit(self, train: LocalDataset, *, epochs: int, config: FitSettings) -> dict[str, float]:
        """Train locally from the current parameters; see the module docstring per estimator."""
        X, y = self._check_data(train)
        mu, seed, lr = config.proximal_mu, config.seed, config.learning_rate
        if lr is not None and self._kind == "sgd":
            self.estimator.eta0 = float(lr)  # type: ignore[arg-type]
        if lr is not None and self._kind == "mlp":
            self.estimator.learning_rate_init = float(lr)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self._kind == "logreg":
                self._fit_logreg(X, y, epochs=epochs, mu=mu)
            elif self._kind == "closed":
                self._fit_closed(X, y, mu=mu)
            else:
                batch = config.batch_size or 32
                self._fit_incremental(X, y, epochs=epochs, mu=mu, batch=batch, seed=seed)
        return {"train_loss": self._metrics(X, y)["loss"]}

    def evaluate(self, test: LocalDataset) -> dict[str, float]:
        """Log-loss and accuracy (classification) or MSE and MAE (regression)."""
        return self._metrics(*self._check_data(test))

    def _check_data(self, data: LocalDataset) -> tuple[np.ndarray, np.ndarray]:
        if data.X.ndim != 2 or data.X.shape[1] != self.n_features:
            raise ModelError(f"{data.source}: data has {data.X.shape[-1]} features, "
                             f"the model expects {self.n_features}")
        if len(data.X) == 0:
            raise ModelError(f"{data.source}: no rows to train or evaluate on")
        return data.X, data.y

    def _metrics(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        est = self.estimator
        if self.task == "regression":
            err = est.predict(X) - y
            return {"loss": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}
        acc = float(np.mean(est.predict(X) == y))
        if not hasattr(est, "predict_proba"):  # e.g. hinge-loss SGD: no probabilities
            return {"loss": 1.0 - acc, "accuracy": acc}
        proba = np.clip(est.predict_proba(X), 1e-15, 1.0)
        return {"loss": float(-np.mean(np.log(proba[np.arange(len(y)), y]))), "accuracy": acc}

    def _fit_incremental(self, X, y, *, epochs: int, mu: float, batch: int, seed: int) -> None:
        est, start = self.estimator, self.get_parameters()
        X = X.astype(np.float64) if self._kind == "sgd" else X
        if hasattr(est, "_optimizer"):
            del est._optimizer  # a fresh local optimizer each round, as in FedAvg
        eta = float(est.eta0 if self._kind == "sgd" else est.learning_rate_init)
        if self._kind == "mlp" and est.solver == "sgd":
            eta /= 1.0 - float(est.momentum)  # steady-state step size under heavy-ball momentum
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(len(X))
            for lo in range(0, len(X), batch):
                idx = order[lo:lo + batch]
                est.partial_fit(X[idx], y[idx])
                if mu > 0:
                    # proximal operator of mu/2||w-w0||^2 with the step this batch took
                    step = eta * mu * (len(idx) if self._kind == "sgd" else 1)
                    now = self.get_parameters()
                    self.set_parameters({k: (now[k] + step * start[k]) / (1.0 + step) for k in now})

    def _fit_closed(self, X: np.ndarray, y: np.ndarray, *, mu: float) -> None:
        est, X = self.estimator, X.astype(np.float64)  # float64 parameters whatever the data
        if mu <= 0:
            est.fit(X, y)
            return
        # alpha||w||^2 + n*mu||w-w0||^2 = (alpha+n*mu)||w-c||^2 + const, c = n*mu*w0/(alpha+n*mu)
        alpha = float(getattr(est, "alpha", 0.0))
        total = alpha + len(X) * mu
        centre = (len(X) * mu / total) * np.ravel(est.coef_)
        inner = Ridge(alpha=total, fit_intercept=est.fit_intercept)
        inner.fit(X, y - X @ centre)
        est.coef_ = centre + inner.coef_
        est.intercept_ = inner.intercept_

    def _fit_logreg(self, X: np.ndarray, y: np.ndarray, *, epochs: int, mu: float) -> None:
        est = self.estimator
        X64, rows = X.astype(np.float64), est.coef_.shape[0]
        theta0 = np.concatenate([est.coef_.ravel(), est.intercept_])
        l2 = 0.0 if np.isinf(est.C) else 1.0 / (est.C * len(X))
        onehot = np.eye(self.n_classes)[y] if rows > 1 else None

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W = theta[: rows * X.shape[1]].reshape(rows, -1)
            b = theta[rows * X.shape[1]:] if est.fit_intercept else np.zeros(rows)
            Z = X64 @ W.T + b
            if rows == 1:
                z = Z[:, 0]
                loss = float(np.mean(-log_expit(z) + (1 - y) * z))
                dZ = ((expit(z) - y) / len(X))[:, None]
            else:
                loss = float(np.mean(logsumexp(Z, axis=1) - Z[np.arange(len(y)), y]))
                dZ = (softmax(Z, axis=1) - onehot) / len(X)
            grad = np.concatenate([(dZ.T @ X64 + l2 * W).ravel(),
                                   dZ.sum(axis=0) if est.fit_intercept else np.zeros(rows)])
            diff = theta - theta0
            return (loss + 0.5 * l2 * float(np.sum(W * W)) + 0.5 * mu * float(diff @ diff),
                    grad + mu * diff)

        res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": max(1, epochs) * int(est.max_iter)})
        est.coef_ = res.x[: rows * X.shape[1]].reshape(rows, -1)
        est.intercept_ = res.x[rows * X.shape[1]:].copy()
        est.n_iter_ = np.array([res.nit])

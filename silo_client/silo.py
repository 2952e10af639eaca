"""What a silo does for each coordinator message, over plain data (no Flower types).

``join`` validates the local data and the run terms before anything else and answers
with the schema fingerprint and the deterministic initial model; ``train`` evaluates the
incoming global model on the local test split, trains for the requested epochs and
returns the update (local − global); ``evaluate`` scores a global model. The Flower
ClientApp (``silo_client.client_app``) only translates records to and from these calls.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from silo_client.adapters.base import (FitSettings, ModelAdapter, check_same_architecture,
                                       parameter_spec)
from silo_client.adapters.build import build_model
from silo_client.config import SiloConfig, load_silo_config
from silo_client.data import LocalDataset, load_dataset, schema_fingerprint
from silo_client.dpsgd import attach_dpsgd, state_path as dpsgd_state_path
from silo_client.joins import Joined, check_joined
from silo_client.ledger import LEDGER_FILE, EgressLedger, payload_digest
from silo_client.policy import RunTerms, SitePolicy, check_run, check_run_rules
from silo_client.privacy import RoundPrivacy, SiloPrivacy, ledger_fields, parse_dp
from strategies.aggregate import squared_norm
from xsilo.errors import ModelError, ProtocolError
from xsilo.protocol import model_length
from xsilo.terms import TERM_KEYS, EvaluateTerms, JoinTerms, SiloInfo, SiloMetrics, TrainTerms

__all__ = ["Silo", "TrainResult"]

log = logging.getLogger(__name__)

# Validated datasets by (path, size, mtime): in-process federations (tests, one process
# for many silos) load each file once; in deployment every message is a fresh process.
_DATA_CACHE: dict[tuple[str, int, float], LocalDataset] = {}


@dataclass(frozen=True)
class TrainResult:
    """A silo's reply to one training round."""

    delta: dict[str, np.ndarray]
    metrics: SiloMetrics
    privacy: dict[str, float | None] | None = None  # clip norm, σ, this run's ε (ledger)
    pending: RoundPrivacy | None = None  # the round's ε, checked; Silo.release counts it


def _load_cached(path: Path, config: SiloConfig) -> LocalDataset:
    st = path.stat() if path.exists() else None
    key = (str(path), st.st_size, st.st_mtime) if st else None
    if key is not None and key in _DATA_CACHE:
        return _DATA_CACHE[key]
    data = load_dataset(path, config.schema)
    if key is not None:
        _DATA_CACHE[key] = data
    return data


class Silo:
    """One institution's side of a run.

    ``on_clipped`` (tests, audits) sees every DP clip this silo makes before masking.
    """

    def __init__(self, config: SiloConfig, *,
                 on_clipped: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self.on_clipped = on_clipped
        self.policy = (SitePolicy.load(config.policy_file) if config.policy_file
                       else SitePolicy())
        self.privacy = SiloPrivacy(config.workspace, self.policy)

    @property
    def ledger(self) -> EgressLedger:
        """The append-only record of everything this silo sends (``workspace/egress.jsonl``)."""
        return EgressLedger(self.config.workspace / LEDGER_FILE)

    def record_egress(self, *, run_id: str, server_round: int, message_type: str,
                      arrays: Mapping[str, np.ndarray], metrics: Mapping[str, Any],
                      extra: Mapping[str, Any] | None = None, masked: bool = False,
                      privacy: Mapping[str, float | None] | None = None) -> None:
        """Write the ledger entry for one outgoing message (before it is sent).

        ``masked`` marks a secure-aggregation masked vector (what left is not the update).
        """
        self.ledger.append(
            run_id=run_id, server_round=server_round, message_type=message_type,
            tensors=parameter_spec(dict(arrays)), payload_sha256=payload_digest(arrays, metrics),
            masked=masked, extra=extra, metrics=metrics,
            **(privacy or ledger_fields(None, None)))

    @classmethod
    def from_file(cls, path: str | Path, *,
                  on_clipped: Callable[[Any], None] | None = None) -> Silo:
        return cls(load_silo_config(path), on_clipped=on_clipped)

    @property
    def train_data(self) -> LocalDataset:
        return _load_cached(self.config.train, self.config)

    @property
    def test_data(self) -> LocalDataset | None:
        return None if self.config.test is None else _load_cached(self.config.test, self.config)

    def model(self, seed: int, fit: FitSettings | None = None) -> ModelAdapter:
        """The silo's model, initialised from the run's ``seed`` (identical at every silo)."""
        return build_model(self.config.model, schema=self.config.schema,
                           config=self.config.model_params, seed=seed,
                           learning_rate=fit.learning_rate if fit else None,
                           batch_size=(fit.batch_size if fit else None) or 32)

    def join(self, terms: JoinTerms) -> tuple[SiloInfo, dict[str, np.ndarray]]:
        """Check the run against the site policy, validate data, and return
        (identity + schema fingerprint, initial parameters).

        The coordinator's DP table is parsed first, then the site's rules that need no ε
        (rounds, silos, strategy, …), and only then is the run's ε projected (here, from the
        run's DP terms, never taken as a number) and checked against the site's budget.
        """
        dp = parse_dp(terms.dp)
        if dp is not None and dp.mechanism == "distributed" and not terms.secure_aggregation:
            raise ProtocolError("the run's DP table uses the distributed mechanism, whose noise "
                                "is each silo's share added under secure aggregation, but the "
                                "run is not secure: its updates would leave without any noise; "
                                "refusing to join")
        coordinator = self._coordinator_fingerprint()
        check_run_rules(self.policy, RunTerms.of_join(terms, coordinator_fingerprint=coordinator))
        dimension = (model_length(self.model(terms.seed).get_parameters())
                     if dp is not None and dp.mechanism == "distributed" else None)
        check_run(self.policy, self.privacy.run_terms(
            terms, dimension=dimension, coordinator_fingerprint=coordinator),
            epsilon_spent=self.privacy.tally.total())
        train = self.train_data  # raises DataValidationError naming file/column/row
        if self.test_data is not None:
            _ = self.test_data
        fingerprint = schema_fingerprint(self.config.schema, len(train))
        params = self.model(terms.seed).get_parameters()
        self.privacy.promise(terms)  # the projection took the run's max_epsilon on trust
        return SiloInfo(self.config.name, fingerprint), params

    def _coordinator_fingerprint(self) -> str | None:
        """SHA-256 of the coordinator's certificate, only when the policy pins one."""
        if self.policy.allowed_coordinator_fingerprints is None:
            return None
        from deploy.pki.identity import coordinator_fingerprint

        return coordinator_fingerprint(self.config.path.parent, self.config.superlink,
                                       self.config.root_certificates)

    def _evaluation(self, model: ModelAdapter) -> SiloMetrics:
        """The model's scores on the local test split (none without one)."""
        test = self.test_data
        if test is None or len(test) == 0:
            return SiloMetrics()
        scores = model.evaluate(test)
        accuracy = scores.get("accuracy")
        regression = self.config.schema.task == "regression"
        mae = scores.get("mae")
        # A regressor's loss is its MSE (ModelAdapter.evaluate); report it under its name too.
        return SiloMetrics(eval_loss=float(scores["loss"]),
                           eval_accuracy=None if accuracy is None else float(accuracy),
                           eval_examples=float(len(test)),
                           eval_mae=float(mae) if regression and mae is not None else None,
                           eval_mse=float(scores["loss"]) if regression else None)

    def train(self, global_params: Mapping[str, np.ndarray], terms: TrainTerms, *,
              secure: bool | None = None, joined: Joined | None = None) -> TrainResult:
        """Evaluate the incoming model, train locally, return the update and metrics.

        ``secure``: whether the update will be masked (the message carries a mask request);
        None reads it from the terms. Every site-policy rule that applies to a
        round is re-checked first (:func:`~silo_client.policy.check_round`); then the
        round against the run's ``joined`` record (:func:`~silo_client.joins.check_joined`:
        a clear round of a secure run, a DP run's round without its DP terms or with other
        ones, another run token: a ProtocolError), first, so that the round's accounting
        only ever runs on the DP table the silo joined under. The round's ε is checked, not
        counted: :meth:`release` counts it when the update is about to leave.
        """
        started = time.perf_counter()
        if joined is not None:  # the ClientApp always passes the record (library use: none)
            check_joined(joined, terms, secure=secure)
        # Site policy and this silo's own ε tally, before any work (PolicyRefusal).
        round_privacy = self.privacy.begin_round(terms, dimension=model_length(global_params),
                                                 secure=secure)
        settings = FitSettings.from_terms(terms)
        model = self.model(terms.seed, settings)
        dpsgd = None
        if self.config.dp_sgd is not None:
            dpsgd = attach_dpsgd(model, self.config.dp_sgd, state_path=dpsgd_state_path(
                self.config.workspace, terms.run_token))
        _check_like(model.get_parameters(), global_params)
        model.set_parameters(dict(global_params))
        evaluation = self._evaluation(model)
        train = self.train_data
        fit = dict(model.fit(train, epochs=terms.local_epochs, config=settings))
        local = model.get_parameters()
        delta = {k: (np.asarray(local[k], dtype=np.float64) - global_params[k]).astype(
            global_params[k].dtype) for k in global_params}
        loss = fit.pop("train_loss", None)  # the adapter's own name (ModelAdapter.fit)
        metrics = replace(
            evaluation, train_loss=None if loss is None else float(loss),
            num_examples=float(len(train)), fit_seconds=time.perf_counter() - started,
            **(dpsgd.metrics() if dpsgd is not None else {}),
            extra={k: float(v) for k, v in fit.items() if k not in TERM_KEYS})
        if terms.statistics:  # what the round's strategy asks of every silo (a fixed list)
            metrics = replace(metrics, **self._statistics(terms, delta, len(train)))
        return TrainResult(delta, metrics, pending=round_privacy)

    def release(self, result: TrainResult) -> TrainResult:
        """Count the update's ε as it is about to leave the site (every release, a round sent
        again included; PolicyRefusal or PrivacyBudgetExceeded if a release counted
        meanwhile leaves no room): the result with this run's ε tally in its metrics (the
        coordinator compares) and the ledger's DP fields."""
        if result.pending is None:
            return result
        spent = self.privacy.commit(result.pending)
        return replace(result, metrics=replace(result.metrics, dp_epsilon_tally=spent),
                       privacy=ledger_fields(result.pending, spent), pending=None)

    @staticmethod
    def _statistics(terms: TrainTerms, delta: Mapping[str, np.ndarray],
                    examples: int) -> dict[str, float]:
        """The silo-side statistics the round asks for (``xsilo.terms.SILO_STATISTICS``),
        refused under DP: they would leave outside the privacy guarantee."""
        if terms.dp is not None:
            raise ProtocolError(f"round {terms.server_round} asks for silo statistics "
                                f"{list(terms.statistics)} in a DP run; they are not covered by "
                                "its guarantee, so this silo sends none")
        values = {"update_sq_norm": squared_norm(delta),
                  "local_steps": float(terms.local_epochs
                                       * math.ceil(examples / max(terms.batch_size, 1)))}
        return {name: values[name] for name in terms.statistics}

    def evaluate(self, global_params: Mapping[str, np.ndarray],
                 terms: EvaluateTerms) -> SiloMetrics:
        """Score ``global_params`` on the local test split."""
        model = self.model(0)  # the initial parameters are replaced at once
        model.set_parameters(dict(global_params))
        return self._evaluation(model)


def _check_like(own: Mapping[str, np.ndarray], incoming: Mapping[str, np.ndarray]) -> None:
    """The global model has this silo's model's tensors, shapes and dtypes (ProtocolError
    otherwise): the update is computed and sent in them, so a tensor of another dtype (an
    unsigned one would wrap a negative update) is refused before any training."""
    try:
        check_same_architecture(parameter_spec(incoming), parameter_spec(own))
    except ModelError as exc:
        raise ProtocolError(f"the global model is not this silo's model: {exc}") from None

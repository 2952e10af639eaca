"""What a silo does for each coordinator message, over plain data (no Flower types).

``join`` validates the local data and the run terms before anything else and answers
with the schema fingerprint and the deterministic initial model; ``train`` evaluates the
incoming global model on the local test split, trains for the requested epochs and
returns the update (local − global); ``evaluate`` scores a global model. The Flower
ClientApp (``silo_client.client_app``) only translates records to and from these calls.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from silo_client.adapters.base import ModelAdapter, build_model, parameter_spec
from silo_client.config import SiloConfig, load_silo_config
from silo_client.data import LocalDataset, load_dataset, schema_fingerprint
from silo_client.ledger import LEDGER_FILE, EgressLedger, payload_digest
from silo_client.policy import SitePolicy, check_run
from silo_client.privacy import SiloPrivacy, attach_dpsgd, dp_terms, ledger_fields
from xsilo.errors import ProtocolError
from xsilo.protocol import model_length

__all__ = ["Silo", "TrainResult"]

log = logging.getLogger(__name__)

# Validated datasets by (path, size, mtime): in-process federations (tests, one process
# for many silos) load each file once; in deployment every message is a fresh process.
_DATA_CACHE: dict[tuple[str, int, float], LocalDataset] = {}


@dataclass(frozen=True)
class TrainResult:
    """A silo's reply to one training round."""

    delta: dict[str, np.ndarray]
    metrics: dict[str, float]
    privacy: dict[str, float | None] | None = None  # clip norm, σ, this run's ε (ledger)


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
    """One institution's side of a run."""

    def __init__(self, config: SiloConfig) -> None:
        self.config = config
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
            masked=masked, extra=extra, **(privacy or ledger_fields(None, None)))

    @classmethod
    def from_file(cls, path: str | Path) -> Silo:
        return cls(load_silo_config(path))

    @property
    def train_data(self) -> LocalDataset:
        return _load_cached(self.config.train, self.config)

    @property
    def test_data(self) -> LocalDataset | None:
        return None if self.config.test is None else _load_cached(self.config.test, self.config)

    def model(self, seed: int, extra: Mapping[str, Any] | None = None) -> ModelAdapter:
        cfg = {**self.config.model_params, **(extra or {}), "seed": seed}
        return build_model(self.config.model, schema=self.config.schema, config=cfg)

    def join(self, terms: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Check the run against the site policy, validate data, and return
        (identity + schema fingerprint, initial parameters)."""
        # The projected ε is computed here from the run's DP terms, never taken as a number.
        dp = dp_terms(terms)
        dimension = (model_length(self.model(int(terms.get("seed", 0))).get_parameters())
                     if dp is not None and dp.mechanism == "distributed" else None)
        check_run(self.policy, self.privacy.run_terms(
            terms, dimension=dimension, strategy=str(terms.get("strategy", "")),
            num_rounds=int(terms.get("num-rounds", 0)),
            secure_aggregation=bool(terms.get("secure-aggregation", False)),
            coordinator_fingerprint=self._coordinator_fingerprint(),
            num_silos=int(terms["num-silos"]) if "num-silos" in terms else None),
            epsilon_spent=self.privacy.tally.total())
        train = self.train_data  # raises DataValidationError naming file/column/row
        if self.test_data is not None:
            _ = self.test_data
        fingerprint = schema_fingerprint(self.config.schema, len(train))
        params = self.model(int(terms.get("seed", 0))).get_parameters()
        info = {"name": self.config.name, "fingerprint": json.dumps(fingerprint, sort_keys=True)}
        return info, params

    def _coordinator_fingerprint(self) -> str | None:
        """SHA-256 of the coordinator's certificate, only when the policy pins one."""
        if self.policy.allowed_coordinator_fingerprints is None:
            return None
        from deploy.pki.identity import coordinator_fingerprint

        return coordinator_fingerprint(self.config.path.parent, self.config.superlink,
                                       self.config.root_certificates)

    def _evaluate_into(self, model: ModelAdapter, metrics: dict[str, float]) -> None:
        test = self.test_data
        if test is None or len(test) == 0:
            return
        scores = model.evaluate(test)
        metrics["eval_loss"] = float(scores["loss"])
        if "accuracy" in scores:
            metrics["eval_accuracy"] = float(scores["accuracy"])
        metrics["eval-examples"] = float(len(test))

    def train(self, global_params: Mapping[str, np.ndarray], config: Mapping[str, Any], *,
              secure: bool | None = None, joined_secure: bool = False) -> TrainResult:
        """Evaluate the incoming model, train locally, return the update and metrics.

        ``secure``: whether the update will be masked (the message carries a mask request);
        None reads it from the round config. Every site-policy rule that applies to a
        round is re-checked first (:func:`~silo_client.policy.check_round`); then a silo
        that joined the run under secure aggregation (``joined_secure``) refuses a clear
        round with a ProtocolError.
        """
        started = time.perf_counter()
        # Site policy and this silo's own ε tally, before any work (PolicyRefusal).
        round_privacy = self.privacy.begin_round(config, dimension=model_length(global_params),
                                                 secure=secure)
        if joined_secure and secure is False:
            raise ProtocolError("this silo joined the run with secure aggregation but the "
                                "train message has no mask request; refusing to send the "
                                "update in the clear")
        model = self.model(int(config.get("seed", 0)), config)
        dpsgd = None
        if self.config.dp_sgd is not None:
            token = str(config.get("run-token") or "run")
            dpsgd = attach_dpsgd(model, self.config.dp_sgd, state_path=(
                self.config.workspace / "privacy" / f"dpsgd-{token[:32]}.json"))
        model.set_parameters(dict(global_params))
        metrics: dict[str, float] = {}
        self._evaluate_into(model, metrics)
        train = self.train_data
        fit = model.fit(train, epochs=int(config.get("local-epochs", 1)), config=config)
        local = model.get_parameters()
        delta = {k: (np.asarray(local[k], dtype=np.float64) - global_params[k]).astype(
            global_params[k].dtype) for k in global_params}
        metrics.update({k: float(v) for k, v in fit.items()})
        if dpsgd is not None:
            metrics.update(dpsgd.metrics())
        metrics["num-examples"] = float(len(train))
        metrics["fit-seconds"] = time.perf_counter() - started
        ledger = None
        if round_privacy is not None:  # counted before the update leaves the site
            ledger = ledger_fields(round_privacy, self.privacy.commit(round_privacy))
        return TrainResult(delta, metrics, ledger)

    def evaluate(self, global_params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, float]:
        """Score ``global_params`` on the local test split."""
        model = self.model(int(config.get("seed", 0)), config)
        model.set_parameters(dict(global_params))
        metrics: dict[str, float] = {}
        self._evaluate_into(model, metrics)
        return metrics

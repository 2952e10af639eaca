"""The join: the round trip that opens a run, and what it admits (no Flower types here).

The coordinator waits for ``wait_for`` nodes and sends each a ``query`` carrying the run's
:class:`~xsilo.terms.JoinTerms` (its name, strategy, rounds, seed, the silos it contacted,
under secure aggregation the threshold it will use for them, the DP table, compression and
the run token). Each silo validates its data and site policy and answers with its schema
fingerprint and initial model, or refuses. Once the silos the run waits for have answered,
a node still silent costs the grace period, not the round timeout.

The replies are sorted out by :func:`coordinator.admission.admit` (the coordinator's own
refusals); the run's ``join`` event names the admitted silos' fingerprints, the refusals,
the silent nodes and the run token. Fewer admitted silos than ``min_silos`` fail the run
(a ``DeploymentError`` naming the refusals), and so do admitted silos that disagree on the
data schema or the model (:func:`coordinator.admission.check_agreement`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.admission import Member, admit, check_agreement
from coordinator.config import RunConfig
from coordinator.messages import Patience, Payload, Transport
from coordinator.privacy import RunPrivacy
from coordinator.secure_settings import run_threshold
from xsilo.errors import DeploymentError
from xsilo.terms import JoinTerms

__all__ = ["Joined", "join_silos"]


@dataclass
class Joined:
    """What the join gave: the admitted silos by node, each one's initial model by name,
    the refused silos (name → why) and the nodes that never answered."""

    members: dict[int, Member]
    initial: dict[str, dict[str, np.ndarray]]
    refused: dict[str, str]
    silent: list[int]

    def event(self, run_token: str) -> dict[str, Any]:
        """The run's ``join`` event."""
        return {"event": "join",
                "silos": {m.name: m.fingerprint for m in self.members.values()},
                "refused": self.refused, "silent_nodes": self.silent, "run_token": run_token}

    def initial_model(self, min_silos: int) -> dict[str, np.ndarray]:
        """The run's initial global model; DeploymentError when fewer than ``min_silos``
        silos were admitted, ConfigError or ModelError when they disagree."""
        if len(self.members) < min_silos:
            detail = "; ".join(f"{k}: {v}" for k, v in self.refused.items()) or "no refusals"
            error = DeploymentError(
                f"only {len(self.members)} silo(s) joined but min_silos is {min_silos} "
                f"({detail}; {len(self.silent)} silent)")
            error.silo = ", ".join(sorted(self.refused)) or None
            raise error
        check_agreement(self.members, self.initial)
        first = sorted(self.initial)[0]
        return self.initial[first]


def join_silos(config: RunConfig, transport: Transport, enrolled: Mapping[str, int], *,
               privacy: RunPrivacy | None, run_token: str) -> Joined:
    """Ask the nodes to join ``config``'s run and admit those that may (``enrolled``: each
    enrolled silo's node id; a node that joins under another name than its own is refused)."""
    cfg = config
    nodes = transport.wait_for_nodes(cfg.wait_for, cfg.join_timeout)
    terms = JoinTerms(
        run_name=cfg.name, strategy=cfg.strategy, num_rounds=cfg.num_rounds, seed=cfg.seed,
        min_silos=cfg.min_silos, num_silos=len(nodes),
        secure_aggregation=cfg.secure_aggregation,
        secagg_threshold=run_threshold(cfg, len(nodes)) if cfg.secure_aggregation else None,
        dp=privacy.join_terms() if privacy is not None else None,
        compression=cfg.compression, compression_fraction=cfg.compression_fraction,
        run_token=run_token)
    # Once the silos the run waits for have answered, a node still silent (a stale
    # registration, a silo gone) costs the grace period, not the round timeout.
    replies = transport.exchange(
        "query", {n: Payload(terms) for n in nodes}, timeout=cfg.round_timeout,
        group="join", patience=Patience(lambda r: len(r) >= cfg.wait_for, cfg.grace))
    members, initial, refused = admit(replies, enrolled)
    return Joined(members, initial, refused, silent=sorted(set(nodes) - set(replies)))

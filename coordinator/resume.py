"""Continue a run from its last complete round (Flower-free).

After every successful round the loop checkpoints (``RunStore.save_checkpoint``) the global
model, the strategy's state, the DP accountant's state (``dp/…``, :mod:`coordinator.privacy`)
and its own bookkeeping as JSON (:func:`checkpoint_meta`): the round's row still waiting for
its evaluation, the rounds that failed so far and the run token that keys the silos' ε and
DP-SGD tallies. :func:`restore` puts all of that back into a freshly built strategy and
:class:`~coordinator.privacy.RunPrivacy`; the loop then joins the silos again (a resumed
run is a new Flower run: silos are admitted and, under secure aggregation, keyed afresh)
and runs the rounds after the checkpoint's. A round that was interrupted is run again under
the same number: a silo whose update for it had already left counts its ε again (a silo
cannot tell a restart from a replay, so it counts every update that leaves:
``silo_client.privacy``); the coordinator releases the round once and adopts the silos'
higher tallies, so the run's ε is what they spent.

A checkpoint that does not verify (its SHA-256) is skipped for the one before it; none at
all (a crash before the first round completed) resumes from round 0 with a fresh start of
the same run (same run token).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from coordinator.privacy import RunPrivacy
from coordinator.rows import PendingRow
from coordinator.run_store import Checkpoint
from strategies.api import Strategy, call_strategy
from xsilo.errors import ConfigError, ModelError

__all__ = ["Resumed", "checkpoint_meta", "check_same_model", "restore"]


def checkpoint_meta(pending: PendingRow, *, failed_rounds: list[int],
                    run_token: str) -> dict[str, Any]:
    """The loop's own state at a checkpoint (JSON)."""
    return {"pending": asdict(pending), "failed_rounds": list(failed_rounds),
            "run_token": run_token}


@dataclass
class Resumed:
    """Where a resumed run starts: after ``server_round``, with ``model`` and ``pending``
    (that round's row, evaluated with the next round's replies)."""

    server_round: int
    model: dict[str, np.ndarray]
    pending: PendingRow
    failed_rounds: list[int] = field(default_factory=list)
    run_token: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)


def restore(checkpoint: Checkpoint | None, strategy: Strategy,
            privacy: RunPrivacy | None) -> Resumed | None:
    """Load ``checkpoint`` into ``strategy`` and ``privacy``; None when there is none."""
    if checkpoint is None:
        return None
    state = dict(checkpoint.state)
    if privacy is not None:
        state = privacy.load_state_arrays(state)
    elif any(k.startswith("dp/") for k in state):
        raise ConfigError("the checkpoint holds DP state (dp/state) but the run's configuration "
                          "has no [run.dp]; a run resumes with the configuration it started with")
    call_strategy(strategy, "load_state_dict", lambda: strategy.load_state_dict(state))
    meta = checkpoint.meta
    pending = meta.get("pending")
    row = (PendingRow(**pending) if isinstance(pending, Mapping)
           else PendingRow(checkpoint.server_round, "ok", 0.0))
    return Resumed(checkpoint.server_round, dict(checkpoint.model), row,
                   [int(r) for r in meta.get("failed_rounds", [])], meta.get("run_token"),
                   dict(checkpoint.skipped))


def check_same_model(checkpoint: Mapping[str, np.ndarray],
                     silos: Mapping[str, np.ndarray]) -> None:
    """ModelError unless the checkpoint's model has the silos' tensors, shapes and dtypes."""
    if list(checkpoint) != list(silos) or any(
            np.shape(checkpoint[k]) != np.shape(silos[k])
            or np.asarray(checkpoint[k]).dtype != np.asarray(silos[k]).dtype for k in silos):
        raise ModelError(
            "the checkpoint's model does not match the model the silos build now "
            f"({ {k: np.shape(v) for k, v in checkpoint.items()} } vs "
            f"{ {k: np.shape(v) for k, v in silos.items()} }); a run resumes with the silos' "
            "model code and settings it started with")

"""Silo-level differential privacy at the silo: its own ε tally, its refusals, and the
update it masks under secure aggregation.

The coordinator states the run's ``[dp]`` table in the join and train terms
(:class:`xsilo.terms.DPTerms`). The silo validates it into a
:class:`~strategies.dp.DPConfig` itself, derives the round's accounting event *itself* (for
the distributed mechanism from the KLS calibration at the roster size and threshold the
coordinator states, which the silo checks against its own secure-aggregation state) and
composes it in its own :class:`~strategies.dp.Accountant` — a number the coordinator sends
is never used as ε. Per run, the accountant's history lives in
``workspace/privacy/<run>.json``; the site-lifetime total in ``workspace/privacy-tally.json``
(:class:`~silo_client.policy.PrivacyTally`, runs add up). A round whose ε would cross the
site policy's ``max_epsilon`` is refused with ``PolicyRefusal("max_epsilon")`` before
anything is sent, and one whose ε would cross the run's own ``max_epsilon`` (the cap the
silo's join projection took on trust) with ``PrivacyBudgetExceeded``. The silo counts every
update it releases, just before it leaves: a round the coordinator sends again (a re-run
after a restart, or a replay) is another release and is counted again (conservative: the
coordinator counts only rounds it released, and adopts a higher silo tally).
The coordinator's ``[dp]`` table is checked at the edge: a table :class:`DPConfig` refuses
(a value of the wrong type or out of range, an unknown key, a ``sampling_probability`` other
than 1: nothing samples silos), or arithmetic on it that fails or gives no ε, is a
``ProtocolError``; the silo never accounts with a number it cannot check.

Under secure aggregation :func:`secure_update` clips the update (and, for the distributed
mechanism, encodes it with this silo's discrete-Gaussian share) before
``silo_client.secure.mask`` masks it. Record-level DP-SGD is in :mod:`silo_client.dpsgd`.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from silo_client.policy import PrivacyTally, RunTerms, SitePolicy, check_round, check_silos
from strategies.dp import (Accountant, ClipResult, DPConfig, GaussianRound, ZCDPRound,
                           clip_update, default_source, encode_update)
from strategies.secagg import SecAggConfig
from xsilo.errors import ConfigError, PrivacyBudgetExceeded, ProtocolError
from xsilo.files import atomic_write
from xsilo.protocol import flatten_update, model_length
from xsilo.terms import DPTerms, JoinTerms, TrainTerms

__all__ = ["RoundPrivacy", "SecureDPUpdate", "SiloPrivacy", "ledger_fields", "parse_dp",
           "secure_update"]

TALLY_FILE = "privacy-tally.json"
_LOCK_FILE = "privacy/.lock"  # held while a release is counted (one writer at a time)


def parse_dp(terms: DPTerms | None) -> DPConfig | None:
    """The run's DP settings from its stated terms (None: the run uses no DP).

    Whatever :class:`DPConfig` refuses (a value of the wrong type or range, a missing or
    unknown key, a ``sampling_probability`` other than 1) is a ProtocolError quoting its
    message, which names the key.
    """
    if terms is None:
        return None
    with _stated("validation"):
        return DPConfig.from_mapping(dict(terms.table))


@contextmanager
def _stated(what: str) -> Iterator[None]:
    """Checks and accounting over the coordinator's numbers: a failure there (a refused
    setting, an overflow, 1/0, a math domain error) is the terms' fault."""
    try:
        yield
    except (ConfigError, ArithmeticError, ValueError) as exc:
        raise ProtocolError(f"DP terms: {what} failed on the stated [dp] table "
                            f"({type(exc).__name__}: {exc}); the coordinator must state "
                            "numbers its own accountant can use") from None


def _epsilon(value: float, what: str) -> float:
    if math.isnan(value) or value < 0:
        raise ProtocolError(f"DP terms: {what} gives epsilon {value!r}; the coordinator must "
                            "state numbers its own accountant can use")
    return value


def _event(dp: DPConfig, *, dimension: int | None, num_silos: int | None,
           min_survivors: int | None) -> GaussianRound | ZCDPRound:
    """The round's accounting event; the distributed mechanism is calibrated for the
    roster size and threshold the coordinator stated (checked by the caller)."""
    if dp.mechanism != "distributed":
        return dp.round_event()
    if dimension is None:  # a caller's mistake, not the terms': no ProtocolError
        raise TypeError("the distributed round event needs the model's parameter count")
    if num_silos is None or min_survivors is None:
        raise ProtocolError("a distributed-DP run's terms must state the number of silos and "
                            "the secure-aggregation threshold; the coordinator sent none")
    params = dp.ddg_params(num_silos=num_silos, min_survivors=min_survivors, dimension=dimension)
    return dp.round_event(params.calibrate())


@dataclass(frozen=True)
class SecureDPUpdate:
    """What a silo masks under secure aggregation with DP: ``silo_step`` keyword arguments
    (``update``/``weight`` for central, ``encoded`` for distributed)."""

    step_kwargs: dict[str, Any]
    clip_norm: float


def secure_update(dp: DPConfig, terms: DPTerms, *, delta: Mapping[str, np.ndarray],
                  template: Mapping[str, np.ndarray], num_examples: float, weighted: bool,
                  secagg: SecAggConfig,
                  on_clipped: Callable[[ClipResult], None] | None = None) -> SecureDPUpdate:
    """Clip (and, distributed, encode with the noise share) before the update is masked.

    The capped weight is folded into the update as ``min(w, w_max)/w_max`` (the coordinator
    multiplies the sum by ``w_max`` and divides by the public ``participants · w_max``).
    Central: clip to ``C − step·√d`` so that the quantizer's rounding (< one step per value)
    keeps the masked contribution within C; weight word 1. Distributed: KLS
    ``encode_update`` with the round's public rotation seed. Nothing about the clipping
    leaves the silo (adaptive clipping is refused under secure aggregation).
    ``on_clipped`` (tests, audits) sees the clipped update.

    Raises
    ------
    ProtocolError
        The round's n, t or seed disagree with this silo's secure-aggregation state (the ε
        it accounted would not be the ε of the round).
    """
    n, t = len(secagg.roster), secagg.threshold
    if (terms.num_silos, terms.min_survivors) != (n, t):
        raise ProtocolError(
            f"the round's DP terms name n={terms.num_silos}, t={terms.min_survivors} but this "
            f"silo's secure-aggregation run has n={n}, t={t}; refusing (its ε would be "
            "accounted for the wrong mechanism)")
    weight = float(num_examples) if weighted else 1.0
    fraction = min(weight, dp.max_weight) / dp.max_weight
    dimension = model_length(template)
    clip = float(dp.clip_norm)  # type: ignore[arg-type]
    if dp.mechanism == "central":
        clip -= secagg.quant.step * math.sqrt(dimension)
    clipped = clip_update(delta, clip_norm=clip)
    if on_clipped is not None:
        on_clipped(clipped)
    if dp.mechanism == "central":
        update = flatten_update(clipped.update, template) * fraction
        return SecureDPUpdate({"update": update, "weight": 1}, clip)
    params = dp.ddg_params(num_silos=n, min_survivors=t, dimension=dimension)
    if terms.rotation_seed is None:
        raise ProtocolError("the round carries no dp rotation seed (32 bytes); the "
                            "distributed mechanism needs the round's public rotation seed")
    if params.calibrate().padded_dim != secagg.length or not secagg.encoded or (
            params.modulus_bits != secagg.quant.modulus_bits):
        raise ProtocolError("the secure-aggregation run does not mask this mechanism's encoding "
                            f"(length {secagg.length}, 2^{secagg.quant.modulus_bits}); re-key")
    encoded, _, _ = encode_update(clipped.update, params=params, rotation_seed=terms.rotation_seed,
                                  rng=default_source(), weight_fraction=fraction)
    return SecureDPUpdate({"encoded": encoded}, clip)


@dataclass
class RoundPrivacy:
    """One round's silo-side accounting, checked but not yet committed."""

    run: str
    server_round: int
    event: GaussianRound | ZCDPRound
    epsilon_after: float
    clip_norm: float
    noise_sigma: float
    state_path: Path
    accountant: Accountant
    checks: dict[str, Any]  # the round's check_round terms, checked again when counted
    max_epsilon: float | None = None  # the run's own cap: the lowest its terms ever stated


class SiloPrivacy:
    """A silo's privacy bookkeeping over its workspace and site policy."""

    def __init__(self, workspace: Path, policy: SitePolicy) -> None:
        self.workspace = Path(workspace)
        self.policy = policy

    @property
    def tally(self) -> PrivacyTally:
        return PrivacyTally(self.workspace / TALLY_FILE, max_epsilon=self.policy.max_epsilon)

    def run_terms(self, join: JoinTerms, *, dimension: int | None = None,
                  coordinator_fingerprint: str | None = None) -> RunTerms:
        """:class:`RunTerms` with the run's projected total ε, computed here from its terms."""
        base = RunTerms.of_join(join, coordinator_fingerprint=coordinator_fingerprint)
        dp = parse_dp(join.dp)
        if dp is None:
            return base
        with _stated("the run's epsilon projection"):
            event = _event(dp, dimension=dimension, num_silos=join.num_silos,
                           min_survivors=join.secagg_threshold)
            projected = _epsilon(dp.accountant().epsilon_if(event, rounds=join.num_rounds),
                                 "the run's epsilon projection")
        if dp.max_epsilon is not None:  # kept: begin_round refuses a round past it
            projected = min(projected, dp.max_epsilon)
        return replace(base, dp_epsilon_total=projected, dp_delta=dp.delta)

    def _load(self, run: str, dp: DPConfig) -> tuple[Path, Accountant, list[int], float | None]:
        """The run's state file, accountant, releases (rounds) and the cap its joins stated."""
        path = self.workspace / "privacy" / f"{_safe(run)}.json"
        return (path, *self._read(path)) if path.exists() else (path, dp.accountant(), [], None)

    @staticmethod
    def _read(path: Path) -> tuple[Accountant, list[int], float | None]:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            promised = state.get("max_epsilon")
            return (Accountant.from_state_dict(state["accountant"]), list(state["rounds"]),
                    None if promised is None else float(promised))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                RecursionError, ConfigError) as exc:
            raise ConfigError(f"privacy state {path} is unreadable ({exc}); restore it from "
                              "backup: spent budget must not be forgotten") from exc

    @staticmethod
    def _write(path: Path, acct: Accountant, rounds: list[int], promised: float | None) -> None:
        atomic_write(path, json.dumps({"accountant": acct.state_dict(), "rounds": rounds,
                                       "max_epsilon": promised}, sort_keys=True))

    def promise(self, join: JoinTerms) -> None:
        """Remember the run's ``max_epsilon`` that the join's projection was capped at (call
        it once the join is accepted): every later round of the run is held to the lowest
        cap any of its joins stated, whatever the round's own table says."""
        dp = parse_dp(join.dp)
        if dp is None or join.dp is None or dp.max_epsilon is None:
            return
        with _exclusive(self.workspace / _LOCK_FILE):
            path, acct, rounds, promised = self._load(join.dp.run, dp)
            self._write(path, acct, rounds, _lowest(promised, dp.max_epsilon))

    def begin_round(self, terms: TrainTerms, *, dimension: int | None = None,
                    secure: bool | None = None) -> RoundPrivacy | None:
        """Check this round against the site policy and the run's own ``max_epsilon``;
        raise PolicyRefusal (or PrivacyBudgetExceeded) before any work.

        ``secure``: whether this round's update will be masked (the train message carries a
        mask request); None reads it from the terms (secure rounds state their weighting).
        Nothing is counted here: :meth:`commit` counts the release.
        """
        checks = dict(server_round=terms.server_round, participants=terms.participants,
                      strategy=terms.strategy, compression=terms.compression,
                      local_epochs=terms.local_epochs,
                      secure_aggregation=terms.secure if secure is None else bool(secure))
        dp = parse_dp(terms.dp)
        if dp is None or terms.dp is None:
            check_round(self.policy, **checks, epsilon_spent=None, epsilon_next=None)
            return None
        if dp.mechanism == "distributed" and not checks["secure_aggregation"]:
            raise ProtocolError(f"round {terms.server_round}: the distributed DP mechanism adds "
                                "each silo's noise share under secure aggregation, and this "
                                "round's update would leave in the clear, without noise")
        run = terms.dp.run
        path, acct, _, promised = self._load(run, dp)
        if acct.delta != dp.delta or acct.method != dp.accounting_method:
            raise ConfigError(f"run {run}: the coordinator changed delta or the accounting method "
                              "mid-run; the silo refuses mixed accounting")
        if terms.dp.num_silos is not None:  # before a calibration sized by it
            check_silos(self.policy, terms.dp.num_silos,
                        f"round {terms.server_round}'s DP calibration")
        with _stated(f"round {terms.server_round}'s accounting"):
            event = _event(dp, dimension=dimension, num_silos=terms.dp.num_silos,
                           min_survivors=terms.dp.min_survivors)
        clip = terms.dp.clip_norm if terms.dp.clip_norm is not None else dp.clip_norm
        rp = RoundPrivacy(run, terms.server_round, event, 0.0, float(clip or 0.0),
                          float(terms.dp.noise_stddev or 0.0), path, acct, checks,
                          _lowest(promised, dp.max_epsilon))
        rp.epsilon_after = self._check_spend(rp, acct)
        return rp

    def _check_spend(self, rp: RoundPrivacy, acct: Accountant) -> float:
        """ε of the run after one more release on ``acct``, within the site policy and the
        run's own cap (refused otherwise)."""
        what = f"round {rp.server_round}'s accounting"
        with _stated(what):
            eps_after = _epsilon(acct.epsilon_if(rp.event), what)
        tally = self.tally
        check_round(self.policy, **rp.checks, epsilon_spent=tally.total(),
                    epsilon_next=tally.total_after(rp.run, eps_after))
        if rp.max_epsilon is not None and eps_after > rp.max_epsilon:
            raise PrivacyBudgetExceeded(
                f"run {rp.run}: round {rp.server_round} would raise its epsilon from "
                f"{acct.epsilon():.4g} to {eps_after:.4g} > the run's own max_epsilon "
                f"{rp.max_epsilon:g} (the cap this silo's join projection took on trust); "
                "no update sent")
        return eps_after

    def commit(self, rp: RoundPrivacy) -> float:
        """Count one release of the round's update (just before it leaves the site) and
        return the run's ε. Every release counts, a round sent again included; the run's
        state is read again under a lock, so a release counted meanwhile (another message
        of the run) is composed with this one and the caps are checked again."""
        with _exclusive(self.workspace / _LOCK_FILE):
            acct, rounds, promised = (self._read(rp.state_path) if rp.state_path.exists()
                                      else (rp.accountant, [], None))
            eps = rp.epsilon_after
            if acct.state_dict() != rp.accountant.state_dict() or (
                    _lowest(promised, rp.max_epsilon) != rp.max_epsilon):  # changed meanwhile
                rp.max_epsilon = _lowest(promised, rp.max_epsilon)
                eps = self._check_spend(rp, acct)
            acct.compose_round(rp.event)
            self._write(rp.state_path, acct, [*rounds, rp.server_round], promised)
            self.tally.record(rp.run, rp.server_round, eps)
        return eps


def _lowest(*caps: float | None) -> float | None:
    stated = [c for c in caps if c is not None]
    return min(stated) if stated else None


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


def ledger_fields(rp: RoundPrivacy | None, epsilon: float | None) -> dict[str, float | None]:
    """``clip_norm``, ``noise_sigma`` and cumulative ``epsilon`` for the egress ledger."""
    if rp is None:
        return {"clip_norm": None, "noise_sigma": None, "epsilon": None}
    return {"clip_norm": rp.clip_norm, "noise_sigma": rp.noise_sigma, "epsilon": epsilon}


def _safe(run: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run)[:80] or "run"

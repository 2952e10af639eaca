"""Differential privacy in a run, coordinator side: terms, clipping, noise, accounting, stop.

One :class:`RunPrivacy` per run drives the Flower-free DP core (:mod:`strategies.dp`) from
the round loop, over plain numpy:

* **before a round** — :meth:`RunPrivacy.check_budget` raises
  :class:`~xsilo.errors.PrivacyBudgetExceeded` when the round would take ε above
  ``max_epsilon`` (the loop stops cleanly *before* that round); :meth:`round_terms` is the
  round's DP event (mechanism, z, C, δ, …) sent to every silo, which re-derives ε itself;
* **central mechanism** — :meth:`aggregate` clips each update to C, caps each weight at
  ``w_max``, sums, and adds ``N(0, (z_sum · w_max · C)² I)`` from the secure byte source
  (``os.urandom`` unless a test passes a seeded one); with adaptive clipping it also
  releases the noisy unclipped fraction and moves C (Andrew et al. 2021);
* **after the round** — :meth:`commit_round` composes the event into the accountant and
  returns the row fields (ε at δ, C used, σ on the sum).

Under secure aggregation (:meth:`bind_secure`, called by ``coordinator.secure_settings`` once the
roster and threshold are known) the coordinator never sees an update: each silo clips to C
and folds its capped weight ``min(w, w_max)/w_max`` into its update before masking
(``silo_client.privacy.secure_update``). *Central*: :meth:`release_secure` adds the same
Gaussian to the unmasked sum; the silos clip to ``C − step·√d`` so that quantization keeps
every masked contribution within C. *Distributed*: the silos mask their KLS encodings
(noise included) and :meth:`decode_distributed` only decodes; the round event is the DDG's
zCDP ρ, and every round gets a fresh public rotation seed in :meth:`round_terms`.

Sensitivity and the denominator: under add/remove-one-silo neighbouring the capped,
clipped sum changes by at most ``w_max · C`` (``weighted_sum_sensitivity``). The strategy
receives the noisy sum with the **public** total weight ``participants · w_max``
(``participants`` = silos the coordinator asked this round, fixed before any data is seen),
never the realised ``Σ min(w_i, w_max)``, which depends on the data and on who replied.

State (accountant history, adaptive C) is checkpointed next to the strategy's state under
the ``dp/`` keys of :meth:`state_arrays`.

The silos keep their own tallies (``silo_client.privacy``) and each train reply carries
the silo's ε for the run (``SiloMetrics.dp_epsilon_tally``). :meth:`adopt` takes the
highest one when it is above the coordinator's own ε (a round the silos counted but the
coordinator never released, e.g. one cut short by a crash or failed for too few updates):
from then on the run reports that ε (:meth:`epsilon`), the row records the difference, and
the budget check counts it.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from strategies.api import Strategy, Update
from strategies.dp import (
    Accountant,
    ClipAccumulator,
    ClippedSum,
    DDGCalibration,
    DDGParams,
    DPConfig,
    add_central_noise,
    decode_sum,
    default_source,
)
from strategies.dp.accounting import Event
from strategies.dp.adaptive import AdaptiveClipState
from strategies.dp.clipping import ClipResult
from strategies.randomness import ByteSource
from strategies.registry import check_compatible
from xsilo.errors import ConfigError, PrivacyBudgetExceeded
from xsilo.terms import DPTerms

__all__ = ["CentralResult", "RunPrivacy", "check_run_privacy", "parse_dp"]

log = logging.getLogger(__name__)

_STATE_KEY = "dp/state"

# Mechanisms the round loop runs under secure aggregation: central (silos clip before
# masking, the coordinator noises the unmasked sum) and distributed (silos mask their
# pre-encoded discrete-Gaussian shares). Adaptive clipping stays refused there.
SECURE_DP_MECHANISMS: frozenset[str] = frozenset({"central", "distributed"})
_MAX_QUANT_MARGIN = 0.1  # the quantizer may take at most 10 % of C (see bind_secure)
_TALLY_SLACK = 1e-9  # relative: the same events composed on two machines agree to this


def parse_dp(value: Any) -> DPConfig | None:
    """A run's ``dp`` setting: None, a :class:`DPConfig`, or a ``[run.dp]`` table."""
    if value is None or isinstance(value, DPConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"run setting dp must be a table ([run.dp]), got {value!r}")
    return DPConfig.from_mapping(value)


def check_run_privacy(dp: DPConfig | None, strategy: Strategy, *, secure_aggregation: bool) -> None:
    """Refuse, before any silo is contacted, a DP setup the round loop cannot honour.

    Raises
    ------
    StrategyError
        A per-update strategy with DP (it would need each un-noised update).
    ConfigError
        Distributed DP without secure aggregation, or adaptive clipping under secure
        aggregation (its per-silo clipped bit would leave each silo in the clear).
    """
    check_compatible(strategy, secure_aggregation=secure_aggregation,
                     differential_privacy=dp is not None)
    if dp is None:
        return
    if dp.mechanism == "distributed" and not secure_aggregation:
        raise ConfigError(
            "dp.mechanism = 'distributed' adds each silo's noise share under secure "
            "aggregation; set secure_aggregation = true, or use dp.mechanism = 'central'")
    if secure_aggregation and dp.clipping == "adaptive":
        raise ConfigError(
            "dp.clipping = 'adaptive' needs each silo's clipped/unclipped bit, which secure "
            "aggregation hides (a secure count is not implemented); use clipping = 'fixed' "
            "with secure aggregation, or adaptive clipping with secure_aggregation = false")
    if secure_aggregation and dp.mechanism not in SECURE_DP_MECHANISMS:
        missing = ("silo-side clipping before masking" if dp.mechanism == "central" else
                   "a masking entry point for pre-encoded discrete-Gaussian vectors")
        raise ConfigError(
            f"dp.mechanism = {dp.mechanism!r} with secure_aggregation = true is not available "
            f"in this xsilo version: the secure-aggregation round does not yet provide "
            f"{missing}; running it without noise would break the guarantee. Use "
            "dp.mechanism = 'central' with secure_aggregation = false")


@dataclass(frozen=True)
class CentralResult:
    """What :meth:`RunPrivacy.aggregate` hands the strategy, and what it used."""

    delta_sum: dict[str, np.ndarray]
    total_weight: float  # public: participants * w_max
    clip_norm: float
    noise_stddev: float
    unclipped_fraction: float | None  # noisy b_bar (adaptive clipping only)


class RunPrivacy:
    """Silo-level DP for one run at the coordinator (see the module docstring).

    Parameters
    ----------
    dp
        The run's validated DP settings.
    num_silos
        Silos admitted at join (sets the adaptive count noise ``max(n/20, z)``).
    rng
        Byte source for every noise draw; the operating system's CSPRNG by default.
    on_clipped
        Optional audit hook called with every :class:`ClipResult` (tests use it).
    """

    def __init__(self, dp: DPConfig, *, num_silos: int, rng: ByteSource | None = None,
                 on_clipped: Callable[[ClipResult], None] | None = None) -> None:
        self.dp = dp
        self.num_silos = int(num_silos)
        self.rng = rng or default_source()
        self.on_clipped = on_clipped
        self.accountant: Accountant = dp.accountant()
        self.adaptive: AdaptiveClipState | None = (
            dp.adaptive_state(self.num_silos) if dp.clipping == "adaptive" else None)
        self.run_token = secrets.token_hex(8)  # keys the silos' per-run tallies
        self.secure: dict[str, int] | None = None  # roster size n, threshold t, length d
        self.ddg: DDGParams | None = None
        self.calibration: DDGCalibration | None = None
        self.rotation_seed: bytes | None = None  # this round's public seed (distributed)
        self.adopted = 0.0  # the highest silo tally above this accountant's ε (see adopt)

    # -- terms and the budget ---------------------------------------------------------
    @property
    def clip_norm(self) -> float:
        """C for the next round (it moves after every round under adaptive clipping)."""
        return self.adaptive.clip_norm if self.adaptive else float(self.dp.clip_norm)  # type: ignore[arg-type]

    @property
    def noise_stddev(self) -> float:
        """Std of the noise on the capped, clipped sum in the next round (distributed: with
        exactly t survivors, the target; m > t survivors carry ``√(m/t)`` times it)."""
        if self.calibration is not None and self.secure is not None:
            return self.calibration.noise_stddev(self.secure["t"]) * self.dp.max_weight
        return self.dp.sum_noise_stddev(clip_norm=self.clip_norm, num_silos=self.num_silos)

    def event(self) -> Event:
        """The accounting event of one round (central: z, adaptive: the total z, Thm. 1;
        distributed: the DDG's zCDP ρ, worst case over t..n survivors)."""
        return self.dp.round_event(self.calibration)

    # -- under secure aggregation -----------------------------------------------------
    def bind_secure(self, *, num_silos: int, threshold: int, dimension: int,
                    quant_step: float | None = None) -> DDGParams | None:
        """Fix the roster size n, threshold t and model length d of a secure run.

        Returns the DDG parameters (distributed; the masking length is their padded
        dimension) or None (central). Raises ConfigError when the quantizer's worst-case
        rounding ``step·√d`` would take more than 10 % of C (central), naming the fix.
        """
        self.secure = {"n": int(num_silos), "t": int(threshold), "d": int(dimension)}
        if self.dp.mechanism == "distributed":
            self.ddg = self.dp.ddg_params(num_silos=num_silos, min_survivors=threshold,
                                          dimension=dimension)
            self.calibration = self.ddg.calibrate()
            return self.ddg
        margin = (quant_step or 0.0) * dimension ** 0.5
        if margin > _MAX_QUANT_MARGIN * self.clip_norm:
            raise ConfigError(
                f"secure aggregation's quantization (step {quant_step:.3g} over {dimension} "
                f"values: up to {margin:.3g} of L2 rounding) takes more than "
                f"{_MAX_QUANT_MARGIN:.0%} of dp.clip_norm={self.clip_norm}; raise secagg_bits "
                f"or lower secagg_clip (values never exceed C, so secagg_clip = dp.clip_norm "
                "loses nothing)")
        return None

    def release_secure(self, weighted_sum: Mapping[str, np.ndarray], *, participants: int,
                       contributors: int) -> CentralResult:
        """The unmasked ``Σ min(w_i, w_max)/w_max · clip(Δ_i)`` → noisy sum for the strategy.

        Central: times ``w_max``, plus ``N(0, (z·w_max·C)²)``. Distributed: times ``w_max``
        only (the noise came with the shares). The denominator is public:
        ``participants · w_max``.
        """
        w_max = self.dp.max_weight
        total = {k: np.asarray(v, dtype=np.float64) * w_max for k, v in weighted_sum.items()}
        if self.calibration is not None:
            sigma = self.calibration.noise_stddev(contributors) * w_max
            return CentralResult(total, participants * w_max, self.clip_norm, sigma, None)
        noisy = add_central_noise(total, stddev=self.noise_stddev, rng=self.rng)
        return CentralResult(noisy, participants * w_max, self.clip_norm, self.noise_stddev, None)

    def decode_distributed(self, modular_sum: np.ndarray, *,
                           template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """KLS decode of the unmasked modular sum with this round's rotation seed (float64)."""
        if self.ddg is None or self.rotation_seed is None:
            raise ConfigError("decode_distributed needs bind_secure and a round's round_terms")
        shapes = {k: np.empty(np.shape(v)) for k, v in template.items()}
        return decode_sum(modular_sum, params=self.ddg, rotation_seed=self.rotation_seed,
                          template=shapes)

    def join_terms(self) -> DPTerms:
        """What silos see at join: the DP table and this run's tally key."""
        return DPTerms(table=self.dp.to_mapping(), run=self.run_token)

    def projected_epsilon(self, num_rounds: int) -> float:
        """ε after ``num_rounds`` rounds, or ``max_epsilon`` if the run would stop earlier."""
        eps = self.dp.accountant().epsilon_if(self.event(), rounds=num_rounds)
        return min(eps, self.dp.max_epsilon) if self.dp.max_epsilon is not None else eps

    def check_budget(self, server_round: int) -> float | None:
        """ε the round would reach; raises PrivacyBudgetExceeded above ``max_epsilon``
        (an adopted silo tally counts: the round adds its increment on top of it)."""
        budget = self.dp.budget()
        if budget is None:
            return None
        eps_next = budget.check(self.accountant, self.event(), round_number=server_round)
        above = self.adopted - self.accountant.epsilon()
        if above > 0 and eps_next + above > budget.max_epsilon:
            raise PrivacyBudgetExceeded(
                f"max_epsilon={budget.max_epsilon:g}: round {server_round} would bring ε from "
                f"{self.epsilon():.4f} (the silos' own tally, adopted) to "
                f"{eps_next + above:.4f} (delta={budget.delta:g}); the run stops before it")
        return eps_next + max(above, 0.0)

    def epsilon(self) -> float:
        """The run's ε so far: the accountant's, or a higher silo tally it adopted."""
        return max(self.accountant.epsilon(), self.adopted)

    def adopt(self, tallies: Mapping[str, float]) -> dict[str, Any]:
        """Compare the silos' own ε tallies for the run with this accountant; adopt the
        highest when it is above. Returns the row's fields: ``silo_epsilon`` (each tally),
        and when one was adopted ``epsilon`` and ``epsilon_adopted`` (from which silo, by how
        much, and what the coordinator had accounted itself)."""
        if not tallies:
            return {}
        fields: dict[str, Any] = {"silo_epsilon": {k: float(v) for k, v in sorted(tallies.items())}}
        silo, top = max(tallies.items(), key=lambda kv: (kv[1], kv[0]))
        own = self.epsilon()
        if top > own * (1 + _TALLY_SLACK) + _TALLY_SLACK:
            self.adopted = float(top)
            fields["epsilon"] = float(top)
            fields["epsilon_adopted"] = {"silo": silo, "difference": float(top - own),
                                         "accounted": self.accountant.epsilon()}
            log.warning("silo %s has counted ε=%.4f for this run, above the coordinator's "
                        "%.4f; the run reports the silo's tally from now on", silo, top, own)
        return fields

    def round_terms(self) -> DPTerms:
        """The round's DP terms for every silo's train message.

        Under secure aggregation they add n and t (each silo checks them against its own
        protocol state) and, for the distributed mechanism, a fresh 32-byte public rotation
        seed (call it once per round).
        """
        n, t = (self.secure["n"], self.secure["t"]) if self.secure is not None else (None, None)
        if self.ddg is not None:
            self.rotation_seed = secrets.token_bytes(32)
        return replace(self.join_terms(), clip_norm=self.clip_norm,
                       noise_stddev=self.noise_stddev, num_silos=n, min_survivors=t,
                       rotation_seed=self.rotation_seed if self.ddg is not None else None)

    # -- the central mechanism --------------------------------------------------------
    def accumulator(self) -> ClipAccumulator:
        """A streaming clip-and-sum for this round's updates (at this round's C)."""
        return ClipAccumulator(clip_norm=self.clip_norm, max_weight=self.dp.max_weight,
                               on_clipped=self.on_clipped)

    def release(self, clipped: ClippedSum, *, participants: int) -> CentralResult:
        """Add noise to a clipped sum; adaptive C moves for the next round."""
        count = len(clipped.norms)
        if participants < count or not count:
            raise ConfigError(f"need 1..participants={participants} updates, got {count}")
        clip, sigma = self.clip_norm, self.noise_stddev
        noisy = add_central_noise(clipped.total, stddev=sigma, rng=self.rng)
        fraction = None
        if self.adaptive is not None:
            self.adaptive, fraction = self.adaptive.step(clipped.unclipped, rng=self.rng)
        return CentralResult(noisy, participants * self.dp.max_weight, clip, sigma, fraction)

    def aggregate(self, updates: Sequence[Update], *, participants: int) -> CentralResult:
        """Clip, cap weights, sum, add noise (:meth:`accumulator` + :meth:`release`)."""
        if participants < len(updates) or not updates:
            raise ConfigError(f"need 1..participants={participants} updates, got {len(updates)}")
        acc = self.accumulator()
        for u in updates:
            acc.add(u.delta, u.weight)
        return self.release(acc.result(), participants=participants)

    def commit_round(self, result: CentralResult | None = None) -> dict[str, Any]:
        """Compose the released round into the accountant; return the row's DP fields."""
        self.accountant.compose_round(self.event())
        fields = self.row_fields()
        if result is not None:
            fields.update({"clip_norm": result.clip_norm, "noise_stddev": result.noise_stddev})
            if result.unclipped_fraction is not None:
                fields["unclipped_fraction"] = result.unclipped_fraction
                fields["next_clip_norm"] = self.clip_norm
        return fields

    def row_fields(self) -> dict[str, Any]:
        """ε so far (at δ) and the mechanism; a round that released nothing keeps ε."""
        return {"epsilon": self.epsilon(), "delta": self.dp.delta,
                "dp_mechanism": self.dp.mechanism, "clip_norm": self.clip_norm,
                "noise_stddev": self.noise_stddev}

    def summary_fields(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon(), "delta": self.dp.delta,
                "dp_mechanism": self.dp.mechanism, "dp_rounds": self.accountant.rounds,
                "max_epsilon": self.dp.max_epsilon}

    # -- checkpoints ------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Accountant history and adaptive C as a 0-d string array (``dp/state``)."""
        state = {"accountant": self.accountant.state_dict(), "run_token": self.run_token,
                 "clip_norm": self.clip_norm, "adopted": self.adopted}
        return {_STATE_KEY: np.asarray(json.dumps(state, sort_keys=True))}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Restore from a checkpoint's state; return the remaining (strategy) entries."""
        rest = {k: v for k, v in arrays.items() if not k.startswith("dp/")}
        if _STATE_KEY not in arrays:
            raise ConfigError("the checkpoint holds no DP state (dp/state) but the run uses DP; "
                              "resume only from checkpoints of the same run")
        try:
            state = json.loads(str(np.asarray(arrays[_STATE_KEY])))
            accountant = Accountant.from_state_dict(state["accountant"])
            token, adopted = state["run_token"], float(state.get("adopted", 0.0))
            clip = float(state["clip_norm"]) if self.adaptive is not None else None
            if not isinstance(token, str):
                raise TypeError("run_token is not text")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError,
                ConfigError) as exc:
            raise ConfigError(f"the checkpoint's DP state (dp/state) is unreadable ({exc}); "
                              "resume from an earlier checkpoint (remove this one) or restore "
                              "it from a backup") from exc
        self.accountant, self.run_token, self.adopted = accountant, token, adopted
        if self.adaptive is not None:
            self.adaptive = replace(self.adaptive, clip_norm=clip)
        return rest

"""Site policy: what a silo's ethics board allows, checked before a run and on every round.

``policy.toml`` (in the member kit) holds flat keys, all optional::

    require_secure_aggregation = true
    max_epsilon = 8.0            # site-lifetime DP budget, summed over runs
    delta = 1e-5                 # largest delta a run may use
    allowed_strategies = ["fedavg", "fedprox"]
    min_silos_per_round = 3      # never send an update when fewer silos take part (counted
                                 # by the silo itself under secure aggregation)
    secagg_threshold_fraction = 0.67  # secure aggregation: t > this · n (default 0.5: a
                                      # strict majority, the least any silo accepts)
    max_rounds = 50
    max_local_epochs = 20        # the most local epochs a round may ask of this silo's data
    max_silos = 1000             # the largest federation (and secure-aggregation roster) this
                                 # silo joins; default 1000
    allowed_coordinator_fingerprints = ["sha256:AB:CD:..."]
    roster = { "hospital-b" = "sha256:AB:CD:...", "hospital-c" = "sha256:EF:..." }
    share_metrics = "aggregate"  # "all" (default), "aggregate" (only inside secure sums), "none"
    weight_bucket = 50           # example counts leave rounded up to a multiple of this
    allow_unapproved_code = false  # UNSAFE: lets `executor = "flower"` start, which runs any
                                   # app a run carries (silo_client.apps, docs/security.md)
    allowed_compression = ["none", "q8"]  # how this silo's clear updates may travel

Every refusal is a :class:`~xsilo.errors.PolicyRefusal` whose ``reason`` is the rule's key.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from strategies.secagg import SiloLimits
from xsilo.errors import ConfigError, PolicyRefusal
from xsilo.terms import (COMPRESSION_METHODS, SILO_STATISTICS, JoinTerms, SiloMetrics,
                         aggregate_slots)
from xsilo.files import atomic_write, read_toml

__all__ = ["SHARE_METRICS", "PrivacyTally", "RunTerms", "SitePolicy", "check_round",
           "check_run", "check_run_rules", "normalize_fingerprint"]

SHARE_METRICS = ("all", "aggregate", "none")
DEFAULT_MAX_SILOS = 1000
"""A silo deals secure-aggregation shares to every peer every round: with pair seeds about
90 s of a silo's CPU a round at 1,000 silos, ``n² · t`` beyond (docs/secure-aggregation.md,
*How far it scales*). A coordinator may not choose more for a site that did not ask."""

log = logging.getLogger(__name__)


def normalize_fingerprint(fp: str) -> str:
    """``"sha256:AB:cd.."`` / ``"abcd.."`` -> ``"abcd.."`` (lower-case hex, no separators)."""
    fp = fp.strip().lower()
    fp = fp.removeprefix("sha256:").removeprefix("sha256/")
    return fp.replace(":", "").replace(" ", "")


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not ok or value <= 0 or (not integer and not math.isfinite(value)):  # type: ignore[operator]
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"policy {name} = {value!r}: must be {kind}")


def _strings(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"policy {name} = {value!r}: must be a non-empty list of strings")
    return tuple(value)


@dataclass(frozen=True)
class SitePolicy:
    """A silo's site policy (the permissive default allows everything but sets no budget)."""

    require_secure_aggregation: bool = False
    max_epsilon: float | None = None
    delta: float | None = None
    allowed_strategies: tuple[str, ...] | None = None
    min_silos_per_round: int = 1
    secagg_threshold_fraction: float = 0.5
    max_rounds: int | None = None
    max_local_epochs: int | None = None
    max_silos: int = DEFAULT_MAX_SILOS
    allowed_coordinator_fingerprints: tuple[str, ...] | None = None
    # Secure aggregation: the consortium's members (name → key fingerprint, from `xsilo pki
    # list`, exchanged out of band); a round with any other peer is refused.
    roster: Mapping[str, str] | None = None
    # Which metrics leave: "all" (per silo, in the clear), "aggregate" (only as secure sums,
    # under secure aggregation), "none". weight_bucket rounds the example count up.
    share_metrics: str = "all"
    weight_bucket: int = 1
    # Approved code only (silo_client.apps): the warm executor always runs approved app
    # bundles only; Flower's own executor cannot check them, so a silo refuses to start with
    # it unless the site accepts, here, that any app a run carries runs on its machine.
    allow_unapproved_code: bool = False
    # How a clear update may leave (strategies.compression): None allows every method.
    allowed_compression: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for flag in ("require_secure_aggregation", "allow_unapproved_code"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"policy {flag} = {getattr(self, flag)!r}: must be true or "
                                  "false")
        if self.max_epsilon is not None:
            _positive("max_epsilon", self.max_epsilon)
        if self.delta is not None and not (isinstance(self.delta, float | int) and 0 < self.delta < 1):
            raise ConfigError(f"policy delta = {self.delta!r}: must be in (0, 1), e.g. 1e-5")
        _positive("min_silos_per_round", self.min_silos_per_round, integer=True)
        _positive("weight_bucket", self.weight_bucket, integer=True)
        if self.share_metrics not in SHARE_METRICS:
            raise ConfigError(f"policy share_metrics = {self.share_metrics!r}: must be one of "
                              f"{', '.join(map(repr, SHARE_METRICS))}")
        f = self.secagg_threshold_fraction
        if not isinstance(f, int | float) or isinstance(f, bool) or not 0.5 <= f < 1:
            raise ConfigError(f"policy secagg_threshold_fraction = {f!r}: must be a number in "
                              "[0.5, 1): the secure-aggregation threshold must exceed that "
                              "fraction of the silos (0.5 is a strict majority)")
        if self.max_rounds is not None:
            _positive("max_rounds", self.max_rounds, integer=True)
        if self.max_local_epochs is not None:
            _positive("max_local_epochs", self.max_local_epochs, integer=True)
        _positive("max_silos", self.max_silos, integer=True)
        if self.max_silos < max(2, self.min_silos_per_round):
            raise ConfigError(f"policy max_silos = {self.max_silos}: must be at least 2 and at "
                              f"least min_silos_per_round ({self.min_silos_per_round})")
        if self.allowed_strategies is not None:
            object.__setattr__(self, "allowed_strategies", tuple(
                s.lower() for s in _strings("allowed_strategies", self.allowed_strategies)))
        if self.allowed_compression is not None:
            methods = _strings("allowed_compression", self.allowed_compression)
            unknown = sorted(set(methods) - set(COMPRESSION_METHODS))
            if unknown:
                raise ConfigError(f"policy allowed_compression = {list(methods)}: unknown "
                                  f"{unknown}; methods are {', '.join(COMPRESSION_METHODS)}")
            object.__setattr__(self, "allowed_compression", tuple(methods))
        if self.allowed_coordinator_fingerprints is not None:
            fps = _strings("allowed_coordinator_fingerprints", self.allowed_coordinator_fingerprints)
            object.__setattr__(self, "allowed_coordinator_fingerprints",
                               tuple(normalize_fingerprint(f) for f in fps))
        if self.roster is not None:
            if not isinstance(self.roster, Mapping) or not self.roster or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in self.roster.items()):
                raise ConfigError(f"policy roster = {self.roster!r}: must be a table of member "
                                  'name = "sha256:<key fingerprint>" (from `xsilo pki list`)')
            object.__setattr__(self, "roster", {k: normalize_fingerprint(v)
                                                for k, v in self.roster.items()})

    @classmethod
    def from_mapping(cls, m: Mapping[str, object], *, source: str = "policy") -> SitePolicy:
        """Build from a parsed TOML table; unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**m)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> SitePolicy:
        """Read ``policy.toml``; a missing or malformed file is a :class:`ConfigError`."""
        p = Path(path)
        data = read_toml(p, what="site policy", missing=(
            f"site policy {p} not found; a silo never runs on a silently permissive default "
            "when a policy file is configured"))
        return cls.from_mapping(data, source=str(p))


    def reported_examples(self, count: float) -> float:
        """The example count as it may leave: rounded up to a multiple of ``weight_bucket``."""
        bucket = self.weight_bucket
        return float(math.ceil(count / bucket) * bucket) if bucket > 1 else float(count)

    def shared_metrics(self, metrics: SiloMetrics, *, secure: bool,
                       training: bool = True) -> SiloMetrics:
        """What of ``metrics`` leaves in the clear under ``share_metrics``.

        ``all``: everything (the count bucketed). ``aggregate`` and ``none``: nothing per
        silo, except the example count of a clear training round (its update's weight, which
        the update itself already reveals; bucketed) and this run's ε tally. Under secure aggregation
        :meth:`aggregated` carries them as sums instead.
        """
        count = metrics.num_examples
        bucketed = None if count is None else self.reported_examples(count)
        if self.share_metrics == "all":
            # the update's own statistics (its squared norm, its local steps) describe the
            # update, which secure aggregation hides: under it they leave only in the sums
            return replace(metrics, num_examples=bucketed, **(
                dict.fromkeys(SILO_STATISTICS) if secure else {}))
        # This run's ε tally always leaves: it comes from the run's public DP terms, not
        # the data, and the coordinator needs it to keep the run's ε honest.
        return SiloMetrics(num_examples=bucketed if training and not secure else None,
                           dp_epsilon_tally=metrics.dp_epsilon_tally)

    def aggregated(self, metrics: SiloMetrics) -> list[float]:
        """The secure round's auxiliary statistics: the metrics' sums, or zeros under
        ``share_metrics = "none"`` (counts included, so the others' averages stay right)."""
        slots = aggregate_slots(replace(metrics, num_examples=None if metrics.num_examples is None
                                        else self.reported_examples(metrics.num_examples)))
        return [0.0] * len(slots) if self.share_metrics == "none" else slots

    def secagg_limits(self) -> SiloLimits:
        """What this site demands of every secure-aggregation run and round."""
        return SiloLimits(threshold_fraction=float(self.secagg_threshold_fraction),
                          min_active=max(2, self.min_silos_per_round), max_roster=self.max_silos)


@dataclass(frozen=True)
class RunTerms:
    """What a run asks of this silo, taken from the run config before any training.

    ``dp_epsilon_total`` is the accountant's projection of the epsilon the whole run costs
    this silo (None when the run uses no DP); ``num_silos`` is the federation's size.
    """

    strategy: str
    num_rounds: int
    secure_aggregation: bool
    coordinator_fingerprint: str | None = None
    dp_epsilon_total: float | None = None
    dp_delta: float | None = None
    num_silos: int | None = None
    compression: str = "none"

    @classmethod
    def of_join(cls, join: JoinTerms, *, coordinator_fingerprint: str | None = None) -> RunTerms:
        """A join's terms, without ε (:meth:`SiloPrivacy.run_terms` projects it)."""
        return cls(strategy=join.strategy, num_rounds=join.num_rounds,
                   secure_aggregation=join.secure_aggregation,
                   coordinator_fingerprint=coordinator_fingerprint, num_silos=join.num_silos,
                   compression=join.compression)


def _refuse(reason: str, message: str) -> PolicyRefusal:
    log.warning("policy refusal %s: %s", reason, message)
    return PolicyRefusal(reason, message)


def _check_dp(policy: SitePolicy, terms: RunTerms, epsilon_spent: float) -> None:
    if policy.max_epsilon is not None:
        if terms.dp_epsilon_total is None:
            raise _refuse("max_epsilon", f"site policy caps epsilon at {policy.max_epsilon} but "
                          "the run uses no differential privacy; enable DP in the run config")
        after = epsilon_spent + terms.dp_epsilon_total
        if after > policy.max_epsilon:
            raise _refuse("max_epsilon", (
                f"the run would spend epsilon {terms.dp_epsilon_total:.4g} on top of "
                f"{epsilon_spent:.4g} already spent, total {after:.4g} > max_epsilon "
                f"{policy.max_epsilon}; use fewer rounds, more noise, or a smaller run"))
    if policy.delta is not None:
        if terms.dp_delta is None or terms.dp_delta > policy.delta:
            raise _refuse("delta", f"the run's delta {terms.dp_delta} exceeds the site policy's "
                          f"delta {policy.delta}; set the run's delta <= {policy.delta}")


def check_run(policy: SitePolicy, terms: RunTerms, *, epsilon_spent: float = 0.0) -> None:
    """Refuse a run whose terms are weaker than the site policy (before any training).

    ``epsilon_spent`` is the site's lifetime total so far (:meth:`PrivacyTally.total`).
    """
    check_run_rules(policy, terms)
    _check_dp(policy, terms, epsilon_spent)


def check_run_rules(policy: SitePolicy, terms: RunTerms) -> None:
    """The rules of :func:`check_run` that need no ε (secure aggregation, strategy, rounds,
    silos, compression, coordinator): a silo checks them before it projects a run's ε, so a
    run they refuse costs it nothing."""
    if policy.require_secure_aggregation and not terms.secure_aggregation:
        raise _refuse("require_secure_aggregation", "site policy requires secure aggregation "
                      "but the run does not use it; enable secure aggregation in the run config")
    if policy.allowed_strategies is not None and terms.strategy.lower() not in policy.allowed_strategies:
        raise _refuse("allowed_strategies", f"strategy {terms.strategy!r} is not allowed by the "
                      f"site policy; allowed: {list(policy.allowed_strategies)}")
    if policy.max_rounds is not None and terms.num_rounds > policy.max_rounds:
        raise _refuse("max_rounds", f"the run asks for {terms.num_rounds} rounds, the site "
                      f"policy allows at most {policy.max_rounds}; lower num-server-rounds")
    _check_compression(policy, terms.compression, "the run")
    if terms.num_silos is not None and terms.num_silos < policy.min_silos_per_round:
        raise _refuse("min_silos_per_round", f"the federation has {terms.num_silos} silos, the "
                      f"site policy requires at least {policy.min_silos_per_round} per round")
    if terms.num_silos is not None:
        check_silos(policy, terms.num_silos, "the federation")
    allowed = policy.allowed_coordinator_fingerprints
    if allowed is not None:
        fp = normalize_fingerprint(terms.coordinator_fingerprint or "")
        if fp not in allowed:
            raise _refuse("allowed_coordinator_fingerprints", (
                f"coordinator certificate fingerprint {terms.coordinator_fingerprint!r} is not "
                "in the site policy's allowed_coordinator_fingerprints; check you joined the "
                "right consortium, or add the fingerprint after verifying it out of band"))


def check_silos(policy: SitePolicy, count: int, what: str) -> None:
    """Refuse ``what`` (a federation, a round, a DP calibration) of more than the site's
    ``max_silos`` silos, before any work sized by it."""
    if count > policy.max_silos:
        raise _refuse("max_silos", f"{what} has {count} silos, the site policy allows at most "
                      f"{policy.max_silos}; raise max_silos in the site policy if the "
                      "consortium is that large")


def _check_compression(policy: SitePolicy, method: str, what: str) -> None:
    allowed = policy.allowed_compression
    if allowed is not None and method not in allowed:
        raise _refuse("allowed_compression", f"{what} sends updates as {method!r}, not allowed "
                      f"by the site policy (allowed: {list(allowed)}); no update sent")


def check_round(policy: SitePolicy, *, server_round: int, participants: int,
                epsilon_spent: float | None, epsilon_next: float | None,
                strategy: str | None = None, secure_aggregation: bool = False,
                compression: str = "none", local_epochs: int | None = None) -> None:
    """Refuse this round before anything is sent.

    ``epsilon_spent`` / ``epsilon_next`` are the site-lifetime totals before and after this
    round (:meth:`PrivacyTally.total` and :meth:`PrivacyTally.total_after`); None without DP.
    ``strategy`` and ``secure_aggregation`` are what *this round* says (its config's
    ``"strategy"``; whether its update is masked), re-checked because a round need not
    match the terms the silo joined under. Both fail closed: no strategy under
    ``allowed_strategies``, or no secure aggregation under ``require_secure_aggregation``,
    is a refusal.
    """
    _check_round_terms(policy, server_round, strategy, secure_aggregation)
    _check_compression(policy, compression, f"round {server_round}")
    check_silos(policy, participants, f"round {server_round}")
    if policy.max_rounds is not None and server_round > policy.max_rounds:
        raise _refuse("max_rounds", f"round {server_round} exceeds the site policy's "
                      f"max_rounds {policy.max_rounds}; no update sent")
    if (policy.max_local_epochs is not None and local_epochs is not None
            and local_epochs > policy.max_local_epochs):  # the site's compute, its choice
        raise _refuse("max_local_epochs", f"round {server_round} asks for {local_epochs} "
                      f"local epochs, the site policy allows at most "
                      f"{policy.max_local_epochs}; lower local_epochs")
    if participants < policy.min_silos_per_round:
        raise _refuse("min_silos_per_round", f"only {participants} silo(s) take part in round "
                      f"{server_round}; the site policy requires at least "
                      f"{policy.min_silos_per_round}, so no update is sent")
    if policy.max_epsilon is not None:
        if epsilon_next is None:
            raise _refuse("max_epsilon", f"round {server_round} carries no DP accounting but the "
                          f"site policy caps epsilon at {policy.max_epsilon}")
        if epsilon_next > policy.max_epsilon:
            raise _refuse("max_epsilon", (
                f"round {server_round} would raise this site's epsilon from "
                f"{(epsilon_spent or 0.0):.4g} to {epsilon_next:.4g} > max_epsilon "
                f"{policy.max_epsilon}; no update sent"))


def _check_round_terms(policy: SitePolicy, server_round: int, strategy: str | None,
                       secure_aggregation: bool) -> None:
    if policy.require_secure_aggregation and not secure_aggregation:
        raise _refuse("require_secure_aggregation", f"round {server_round} is not under secure "
                      "aggregation but the site policy requires it; no update sent in the clear")
    allowed = policy.allowed_strategies
    if allowed is not None and (strategy or "").lower() not in allowed:
        raise _refuse("allowed_strategies", f"round {server_round} runs strategy {strategy!r}, "
                      f"not allowed by the site policy (allowed: {list(allowed)}); no update sent")


class PrivacyTally:
    """The silo's own epsilon ledger across runs, persisted as JSON (atomic writes).

    Within a run epsilon is cumulative (the accountant composes rounds); across runs the
    per-run totals add up (basic sequential composition). ``max_epsilon`` is the policy cap.
    """

    def __init__(self, path: str | Path, *, max_epsilon: float | None = None) -> None:
        self.path, self.max_epsilon = Path(path), max_epsilon
        self.runs: dict[str, dict[str, float]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.runs = {str(k): {"round": int(v["round"]), "epsilon": float(v["epsilon"])}
                             for k, v in data["runs"].items()}
                bad = sorted(k for k, v in self.runs.items()
                             if not (math.isfinite(v["epsilon"]) and v["epsilon"] >= 0))
                if bad:  # a NaN total would pass every budget check
                    raise ValueError(f"run(s) {bad[:3]} have an epsilon that is not a finite "
                                     "number ≥ 0")
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                    RecursionError) as exc:
                raise ConfigError(f"privacy tally {self.path} is unreadable ({exc}); restore it "
                                  "from backup: the site's spent budget must not be forgotten") from exc

    def total(self) -> float:
        """Epsilon spent so far by this site, over every run."""
        return float(sum(r["epsilon"] for r in self.runs.values()))

    def total_after(self, run: str, eps_after: float) -> float:
        """Site total if ``run``'s cumulative epsilon became ``eps_after``."""
        current = self.runs.get(str(run), {}).get("epsilon", 0.0)
        return self.total() - current + max(float(eps_after), current)

    def would_exceed(self, eps_after: float, *, run: str = "") -> bool:
        """Whether reaching ``eps_after`` in ``run`` breaks ``max_epsilon`` (None: no cap)."""
        return self.max_epsilon is not None and self.total_after(run, eps_after) > self.max_epsilon

    def record(self, run: str, server_round: int, eps_after: float) -> None:
        """Store ``run``'s cumulative epsilon after ``server_round`` durably."""
        current = self.runs.get(str(run), {}).get("epsilon", 0.0)
        self.runs[str(run)] = {"round": int(server_round), "epsilon": max(float(eps_after), current)}
        self._write()

    def _write(self) -> None:
        body = json.dumps({"version": 1, "total_epsilon": self.total(), "runs": self.runs},
                          indent=2, sort_keys=True)
        atomic_write(self.path, body)

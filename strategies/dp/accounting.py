"""Privacy accounting over Google's ``dp_accounting``, and the budget stop.

Events (one per round, silo-level add/remove-one neighbouring):

* :class:`GaussianRound` ``(noise_multiplier z, sampling_probability q=1)`` — central DP with
  sensitivity C and noise z*C on the sum; adaptive clipping with the *total* z (the update
  and count releases together are exactly a Gaussian with z, Andrew et al. 2021, Thm. 1);
  DP-SGD steps. ``q < 1`` is Poisson sampling of records (DP-SGD); a silo-level round never
  samples (xsilo asks every silo every round; :class:`~strategies.dp.DPConfig` refuses it).
  -> ``GaussianDpEvent(z)`` or ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``.
* :class:`ZCDPRound` ``(rho)`` — the distributed discrete Gaussian, which satisfies
  rho-zCDP, i.e. (alpha, rho*alpha)-RDP for every alpha (Kairouz, Liu & Steinke 2021,
  Thm. 1 / Prop. 14; rho from :mod:`strategies.dp.distributed`). -> ``ZCDpEvent(rho)``.

Methods: ``"pld"`` (privacy loss distributions, ``PLDAccountant``; exact up to its
discretization for Gaussian rounds without sampling, and tightest in general) and ``"rdp"``
(``RdpAccountant`` with its default orders). A zCDP bound is an RDP curve, not a PLD, so
:class:`ZCDPRound` requires ``"rdp"``.

Cost. Rounds of one event compose as one ``SelfComposedDpEvent`` (a run of 10⁶ rounds is
one event, not 10⁶). Rounds of unsampled Gaussians compose exactly into one Gaussian with
``z_eff = (Σ_i z_i⁻²)^(−1/2)``; below ``z_eff = 0.25`` (ε above about 24 at δ = 10⁻⁵) the
PLD's discretization grows with ε to minutes and gigabytes, so ``"pld"`` takes the analytic
ε(δ) of that Gaussian there (Balle & Wang 2018, Thm. 8: the value the PLD approximates from
above, to 10⁻³), at the same cost whatever the number of rounds.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Union

from xsilo.errors import ConfigError, PolicyRefusal, PrivacyBudgetExceeded
from xsilo.terms import MAX_ROUNDS

__all__ = [
    "METHODS",
    "Accountant",
    "GaussianRound",
    "PrivacyBudget",
    "ZCDPRound",
    "check_silo_policy",
    "ledger_event",
]

METHODS = ("pld", "rdp")

if TYPE_CHECKING:
    import dp_accounting


def _is_finite_number(value: object) -> bool:
    """A real number (not a bool, not text) that is a finite float: an integer past float
    range is False here instead of an OverflowError later."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral):
        return abs(int(value)) <= sys.float_info.max  # exact: int against float, no conversion
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a Fraction past float range
        return False


def _dp():  # type: ignore[no-untyped-def]
    """``dp_accounting``, imported on first use: it pulls in scipy.stats (seconds), and every
    ClientApp process of a run without DP would otherwise pay for it on every message."""
    import dp_accounting

    return dp_accounting


@dataclass(frozen=True)
class GaussianRound:
    """One Gaussian release with noise multiplier ``z = sigma / sensitivity``."""

    noise_multiplier: float
    sampling_probability: float = 1.0

    def __post_init__(self) -> None:
        if not (_is_finite_number(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(f"noise_multiplier must be a finite number > 0, got "
                              f"{self.noise_multiplier!r:.40}; it is sigma / sensitivity "
                              "(dp.noise_multiplier, e.g. 1.0)")
        if not (_is_finite_number(self.sampling_probability)
                and 0.0 < self.sampling_probability <= 1.0):
            raise ConfigError(f"sampling_probability must be a number in (0, 1], got "
                              f"{self.sampling_probability!r:.40}; 1 unless records are "
                              "Poisson-sampled (DP-SGD)")

    def to_dp_event(self) -> dp_accounting.DpEvent:
        dp_accounting = _dp()
        g = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_probability < 1.0:
            return dp_accounting.PoissonSampledDpEvent(self.sampling_probability, g)
        return g


@dataclass(frozen=True)
class ZCDPRound:
    """One release satisfying ``rho``-zCDP (the distributed discrete Gaussian)."""

    rho: float

    def __post_init__(self) -> None:
        if not (_is_finite_number(self.rho) and self.rho > 0):
            raise ConfigError(f"zCDP rho must be a finite number > 0, got {self.rho!r:.40}; it "
                              "comes from the DDG calibration (dp.noise_multiplier, clip_norm)")

    def to_dp_event(self) -> dp_accounting.DpEvent:
        return _dp().ZCDpEvent(self.rho)


Event = Union[GaussianRound, ZCDPRound]
_KINDS = {"gaussian": GaussianRound, "zcdp": ZCDPRound}


def _event_to_dict(event: Event) -> dict[str, Any]:
    kind = "gaussian" if isinstance(event, GaussianRound) else "zcdp"
    return {"kind": kind, **asdict(event)}


def _event_from_dict(d: dict[str, Any]) -> Event:
    d = dict(d)
    return _KINDS[d.pop("kind")](**d)


PLD_MIN_Z = 0.25
"""Below this (effective) noise multiplier the PLD discretization explodes (z = 0.1: ~8 s;
0.001: hundreds of GiB); see the module docstring."""

_Groups = list[tuple[Event, int]]


def _grouped(events: list[Event] | tuple[Event, ...], *, then: Event | None = None,
             times: int = 0) -> _Groups:
    """Runs of equal events as ``(event, count)``; ``then`` repeated ``times`` more at the end."""
    groups: list[list[Any]] = []
    for e, n in [*((e, 1) for e in events), *([(then, times)] if times else [])]:
        if groups and groups[-1][0] == e:
            groups[-1][1] += n
        else:
            groups.append([e, n])
    return [(e, n) for e, n in groups]


def _composed(groups: _Groups) -> dp_accounting.DpEvent:
    dp_accounting = _dp()
    parts = [
        e.to_dp_event() if n == 1 else dp_accounting.SelfComposedDpEvent(e.to_dp_event(), n)
        for e, n in groups
    ]
    return dp_accounting.ComposedDpEvent(parts)


def ledger_event(events: list[Event] | tuple[Event, ...]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event for a round history: runs of equal rounds self-composed.

    Grouping matters for PLD: ``SelfComposedDpEvent(GaussianDpEvent(z), T)`` is the single
    Gaussian ``z / sqrt(T)`` (exact), and sampled rounds use one FFT self-composition instead
    of T sequential convolutions.
    """
    return _composed(_grouped(events))


def _gaussian_z(groups: _Groups) -> float | None:
    """``z_eff`` of the one Gaussian that unsampled Gaussian rounds compose into; None when
    the history holds any other event."""
    if not all(isinstance(e, GaussianRound) and e.sampling_probability == 1.0 for e, _ in groups):
        return None
    inverse = [1.0 / e.noise_multiplier for e, _ in groups]  # type: ignore[union-attr]
    precision = sum(n * i * i for (_, n), i in zip(groups, inverse))  # overflows to inf, no error
    return math.inf if precision == 0 else precision**-0.5


MIN_DELTA = 1e-100
"""The smallest delta accepted: far below any record count's 1/N; near the smallest floats
the accountants' epsilon becomes infinite."""


class Accountant:
    """ε at a fixed δ for a sequence of rounds, computed by ``dp_accounting``.

    The event history is the whole state: :meth:`state_dict` / :meth:`load_state_dict`
    replay it, so a checkpoint is a few numbers per round. ε is recomputed from the grouped
    history (:func:`ledger_event`), which keeps a 1000-round PLD query well under a second.
    """

    def __init__(self, delta: float, method: str = "pld") -> None:
        if isinstance(delta, bool) or not isinstance(delta, int | float) or \
                not MIN_DELTA <= delta < 1.0:
            raise ConfigError(f"delta must be a number in [{MIN_DELTA:g}, 1), got {delta!r:.40}; "
                              "1e-5 or 1/N_records is usual")
        if method not in METHODS:
            raise ConfigError(f"accounting method must be one of {METHODS}, got {method!r}")
        self.delta = float(delta)
        self.method = method
        self._events: list[Event] = []
        self._eps_cache: float | None = 0.0

    def _epsilon_of(self, groups: _Groups) -> float:
        if not groups:
            return 0.0
        if self.method == "pld":
            z = _gaussian_z(groups)
            if z is not None and z < PLD_MIN_Z:  # the PLD would take minutes (see above)
                return float(_dp().get_epsilon_gaussian(z, self.delta))
            from dp_accounting.pld.pld_privacy_accountant import PLDAccountant as Impl
        else:
            from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant as Impl
        acct = Impl()
        acct.compose(_composed(groups))
        return float(acct.get_epsilon(self.delta))

    def _check(self, event: Event) -> None:
        if not isinstance(event, (GaussianRound, ZCDPRound)):
            raise ConfigError(f"unknown privacy event {event!r}")
        if isinstance(event, ZCDPRound) and self.method == "pld":
            raise ConfigError(
                "the distributed discrete Gaussian is accounted by a zCDP bound, which PLD "
                'cannot compose; set dp.accounting = "rdp"'
            )

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    @property
    def rounds(self) -> int:
        return len(self._events)

    def ledger(self) -> dp_accounting.DpEvent:
        """The exact ``dp_accounting`` event this accountant evaluates (for audit and tests;
        under PLD with ``z_eff`` below :data:`PLD_MIN_Z`, as the one Gaussian it is)."""
        return ledger_event(self._events)

    def compose_round(self, event: Event) -> None:
        """Record one more round."""
        self._check(event)
        self._events.append(event)
        self._eps_cache = None

    def epsilon(self) -> float:
        """ε spent so far at ``self.delta`` (0.0 before any round)."""
        if self._eps_cache is None:
            self._eps_cache = self._epsilon_of(_grouped(self._events))
        return self._eps_cache

    def epsilon_if(self, event: Event, *, rounds: int = 1) -> float:
        """ε after ``rounds`` more ``event`` rounds, without recording them (the stop *before*
        a round; a run's projection): one self-composed event, whatever ``rounds`` is."""
        self._check(event)
        if not isinstance(rounds, int) or isinstance(rounds, bool) or not 0 <= rounds <= MAX_ROUNDS:
            raise ConfigError(f"rounds must be an integer >= 0 and <= {MAX_ROUNDS} (the most "
                              f"rounds a run may state, xsilo.terms.MAX_ROUNDS), got "
                              f"{rounds!r:.40}; lower num_rounds")
        return self._epsilon_of(_grouped(self._events, then=event, times=rounds))

    def state_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "method": self.method,
            "events": [_event_to_dict(e) for e in self._events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this accountant's state by a checkpoint's (replays the events); a state
        that is not one :meth:`state_dict` wrote is a ConfigError."""
        try:
            fresh = Accountant(state["delta"], state["method"])
            for d in state["events"]:
                fresh.compose_round(_event_from_dict(d))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"an accountant's saved state is damaged ({type(exc).__name__}: "
                              f"{exc}); restore it from a backup: spent budget must not be "
                              "forgotten") from exc
        self.__dict__.update(fresh.__dict__)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Accountant:
        acct = cls.__new__(cls)
        acct.load_state_dict(state)
        return acct


@dataclass(frozen=True)
class PrivacyBudget:
    """A hard ε cap at ``delta``; :meth:`check` is called before each round."""

    max_epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (_is_finite_number(self.max_epsilon) and self.max_epsilon > 0):
            raise ConfigError(f"max_epsilon must be a finite number > 0, got "
                              f"{self.max_epsilon!r:.40}; set dp.max_epsilon (e.g. 8.0) or "
                              "leave it out for no cap")
        if not (_is_finite_number(self.delta) and MIN_DELTA <= self.delta < 1.0):
            raise ConfigError(f"the budget's delta must be a number in [{MIN_DELTA:g}, 1), got "
                              f"{self.delta!r:.40}; set dp.delta (1e-5 or 1/N_records is usual)")

    def check(self, accountant: Accountant, event: Event, *, round_number: int) -> float:
        """Return ε after the round if it stays within budget; else raise.

        Raises
        ------
        PrivacyBudgetExceeded
            With the round number, ε so far, ε the round would reach, and the cap.
        """
        if accountant.delta != self.delta:
            raise ConfigError(
                f"accountant delta {accountant.delta} differs from budget delta {self.delta}"
            )
        eps_next = accountant.epsilon_if(event)
        if eps_next > self.max_epsilon:
            raise PrivacyBudgetExceeded(
                f"round {round_number} would raise epsilon from {accountant.epsilon():.4f} to "
                f"{eps_next:.4f} at delta={self.delta:g}, above max_epsilon={self.max_epsilon:g}; "
                "the run stops before this round (raise max_epsilon or the noise multiplier "
                "to train longer)"
            )
        return eps_next


def check_silo_policy(
    accountant: Accountant, event: Event, *, max_epsilon: float, round_number: int
) -> float:
    """The silo's own stop: its tally (same events, kept locally) against its site policy.

    Returns ε after the round; raises :class:`PolicyRefusal` with reason ``"max_epsilon"``
    when the round would cross the silo's cap, whatever the coordinator's budget says.
    """
    eps_next = accountant.epsilon_if(event)
    if eps_next > max_epsilon:
        raise PolicyRefusal(
            "max_epsilon",
            f"site policy max_epsilon={max_epsilon:g}: round {round_number} would bring this "
            f"silo's epsilon from {accountant.epsilon():.4f} to {eps_next:.4f} "
            f"(delta={accountant.delta:g}); the silo refuses the round",
        )
    return eps_next

"""The run's DP settings: one frozen, validated object built once at the config edge.

TOML (``[dp]`` table of the run config)::

    [dp]
    mechanism = "central"        # or "distributed" (needs secure aggregation)
    noise_multiplier = 1.0       # z: noise std = z * sensitivity
    clip_norm = 1.0              # C (initial C for adaptive clipping); required
    clipping = "fixed"           # or "adaptive" (central only)
    delta = 1e-5
    max_epsilon = 8.0            # optional hard stop
    accounting = "auto"          # "pld" | "rdp" | "auto" (pld; rdp for distributed)
    max_weight = 1.0             # cap on aggregation weights (see weighted_sum_sensitivity)
    modulus_bits = 32            # distributed: the masking modulus 2^b (8..64)
    k_stddevs = 6.0              # distributed: the wrap margin (2..40)

``sampling_probability`` must stay 1: xsilo asks every silo every round, so a round is never
a Poisson sample of silos (the key stays so that older run records and terms still parse).

Float range, checked here rather than met as an inf mid-run: numbers are finite floats (an
integer past 2^53 is refused before any arithmetic); the noise std ``z · max_weight ·
clip_norm`` lies in [1e-300, 1e300] (:data:`~strategies.dp.noise.MAX_NOISE_STDDEV`); one
adaptive clipping step stays within ``exp``'s range
(:func:`~strategies.dp.adaptive.check_clip_step`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from strategies.dp.accounting import (PLD_MIN_Z, Accountant, GaussianRound, PrivacyBudget,
                                      ZCDPRound)
from strategies.dp.adaptive import AdaptiveClipState, check_clip_step, split_noise_multiplier
from strategies.dp.clipping import weighted_sum_sensitivity
from strategies.dp.distributed import DDGCalibration, DDGParams, check_encoding
from strategies.dp.noise import MAX_NOISE_STDDEV, MIN_NOISE_STDDEV
from xsilo.errors import ConfigError

__all__ = ["DPConfig", "MECHANISMS"]

MECHANISMS = ("central", "distributed")
MAX_NOISE_MULTIPLIER = 1e6
"""z beyond this is no model and, squared, past what the accountants compute in floats."""


_TYPES = {"str": "a string", "int": "an integer", "float": "a finite number"}


def _is(value: object, expected: str) -> bool:
    if expected == "a string":
        return isinstance(value, str)
    integer = isinstance(value, int) and not isinstance(value, bool)
    if expected == "an integer":
        return integer
    return (isinstance(value, float) and math.isfinite(value)
            or integer and abs(value) <= 2**53)  # type: ignore[operator]  # exact as a float


@dataclass(frozen=True)
class DPConfig:
    """Silo-level differential privacy for a run (see docs/privacy.md)."""

    mechanism: str
    noise_multiplier: float
    clip_norm: float | None
    clipping: str = "fixed"
    delta: float = 1e-5
    max_epsilon: float | None = None
    accounting: str = "auto"
    max_weight: float = 1.0
    sampling_probability: float = 1.0
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_stddev: float | None = None
    modulus_bits: int = 32
    k_stddevs: float = 6.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key, the value and the fix."""
        clip = self.clip_norm
        if not (_is(clip, "a finite number") and clip > 0):  # type: ignore[operator]
            raise ConfigError(
                f"dp.clip_norm={clip!r:.40}: differential privacy without clipping has "
                "unbounded sensitivity and no guarantee; set dp.clip_norm to a positive number "
                "a float holds exactly (e.g. the median update norm of a non-private run)"
            )
        self._check_types()
        if self.mechanism not in MECHANISMS:
            raise ConfigError(f"dp.mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if not (0 < self.noise_multiplier <= MAX_NOISE_MULTIPLIER):
            raise ConfigError(f"dp.noise_multiplier must be > 0 and ≤ {MAX_NOISE_MULTIPLIER:g} "
                              f"(more noise drowns any model: a typo?), got "
                              f"{self.noise_multiplier!r}")
        if self.clipping not in ("fixed", "adaptive"):
            raise ConfigError(f"dp.clipping must be 'fixed' or 'adaptive', got {self.clipping!r}")
        if self.clipping == "adaptive" and self.mechanism == "distributed":
            raise ConfigError(
                "dp.clipping='adaptive' needs the coordinator to release a noisy count and is "
                "only supported with dp.mechanism='central'; use clipping='fixed'"
            )
        if self.accounting not in ("auto", "pld", "rdp"):
            raise ConfigError(f"dp.accounting must be auto, pld or rdp, got {self.accounting!r}")
        if self.mechanism == "distributed" and self.accounting == "pld":
            raise ConfigError(
                "dp.accounting='pld' cannot compose the distributed discrete Gaussian's zCDP "
                "bound; use 'rdp' or 'auto'"
            )
        if self.accounting_method == "pld" and self.noise_multiplier < PLD_MIN_Z:
            raise ConfigError(
                f"dp.noise_multiplier={self.noise_multiplier!r} is below {PLD_MIN_Z} with PLD "
                "accounting: epsilon is already above 24 per round there (at delta 1e-5), "
                "where the PLD discretisation needs seconds to hours; raise the noise "
                'multiplier or set dp.accounting = "rdp"'
            )
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"dp.max_epsilon must be > 0, got {self.max_epsilon!r}")
        if not self.max_weight > 0:
            raise ConfigError(f"dp.max_weight must be > 0, got {self.max_weight!r}")
        self._check_nested()

    def _check_types(self) -> None:
        """Each key's type before any arithmetic on it (its annotation: text, an integer, or
        a finite number a float holds exactly; ``| None``: or unset)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = kind.endswith(" | None")
            if value is None and optional:
                continue
            expected = _TYPES[kind.removesuffix(" | None")]
            if not _is(value, expected):
                raise ConfigError(f"dp.{f.name} = {value!r:.40} ({type(value).__name__}); "
                                  f"expected {expected}{' or nothing' if optional else ''}")

    def _check_nested(self) -> None:
        if self.sampling_probability != 1:
            raise ConfigError(
                f"dp.sampling_probability = {self.sampling_probability!r}: xsilo asks every silo "
                "every round, so nothing samples silos and a round accounted as a Poisson sample "
                "would understate epsilon; leave dp.sampling_probability at 1 (or remove it)")
        Accountant(self.delta, self.accounting_method)  # checks delta
        check_encoding(modulus_bits=self.modulus_bits, k_stddevs=self.k_stddevs)
        if self.clipping == "adaptive":
            AdaptiveClipState(
                clip_norm=float(self.clip_norm),  # type: ignore[arg-type]
                target_quantile=self.target_quantile,
                learning_rate=self.clip_learning_rate,
            )
            if self.clip_count_stddev is not None:
                split_noise_multiplier(
                    noise_multiplier=self.noise_multiplier, count_stddev=self.clip_count_stddev
                )
            check_clip_step(learning_rate=self.clip_learning_rate,
                            fraction_stddev=self._max_fraction_stddev())
        self._check_noise_scale()

    def _max_fraction_stddev(self) -> float:
        """The largest ``sigma_b / m`` (noise on the adaptive count's fraction) over m >= 1:
        a configured sigma_b itself; the default ``max(m/20, z)`` over m is max(1/20, z)."""
        if self.clip_count_stddev is not None:
            return self.clip_count_stddev
        return max(1.0 / 20.0, self.noise_multiplier)

    def _sum_multiplier_range(self) -> tuple[float, float]:
        """Smallest and largest ``z_sum`` over federation sizes: z for fixed clipping; for
        adaptive, ``z_Delta`` (the default ``sigma_b >= z`` puts it in (z, z sqrt(4/3)])."""
        z = self.noise_multiplier
        if self.clipping != "adaptive":
            return z, z
        if self.clip_count_stddev is not None:
            z_delta = split_noise_multiplier(noise_multiplier=z,
                                             count_stddev=self.clip_count_stddev)
            return z_delta, z_delta
        return z, split_noise_multiplier(noise_multiplier=z, count_stddev=z)

    def _check_noise_scale(self) -> None:
        """The sensitivity ``w_max C`` and the noise std ``z_sum w_max C`` (the distributed
        mechanism's target in model units too) must be floats a round can use: refused here,
        not as an inf (or a zero grid) at noise time mid-run."""
        sensitivity = float(self.max_weight) * float(self.clip_norm)  # type: ignore[arg-type]
        z_low, z_high = self._sum_multiplier_range()
        low, high = z_low * sensitivity, z_high * sensitivity
        if not (sensitivity <= MAX_NOISE_STDDEV and MIN_NOISE_STDDEV <= low
                and high <= MAX_NOISE_STDDEV):
            raise ConfigError(
                f"dp.noise_multiplier={self.noise_multiplier!r} × dp.max_weight="
                f"{self.max_weight!r} × dp.clip_norm={self.clip_norm!r} gives a noise standard "
                f"deviation of {low:.4g}..{high:.4g} (sensitivity {sensitivity:.4g}), outside "
                f"[{MIN_NOISE_STDDEV:g}, {MAX_NOISE_STDDEV:g}] where a round's noise stays a "
                "usable float; bring dp.clip_norm (or dp.max_weight) to the scale of the "
                "model's update norms")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> DPConfig:
        """Build from a parsed TOML ``[dp]`` table; unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) in [dp]: {unknown}; known keys: {sorted(names)}")
        if "mechanism" not in table or "noise_multiplier" not in table:
            raise ConfigError("[dp] needs 'mechanism' and 'noise_multiplier'")
        return cls(**{"clip_norm": None, **dict(table)})

    def to_mapping(self) -> dict[str, Any]:
        """The ``[dp]`` table that rebuilds this config (unset optional keys left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def accounting_method(self) -> str:
        if self.accounting != "auto":
            return self.accounting
        return "rdp" if self.mechanism == "distributed" else "pld"

    def accountant(self) -> Accountant:
        return Accountant(self.delta, self.accounting_method)

    def budget(self) -> PrivacyBudget | None:
        return None if self.max_epsilon is None else PrivacyBudget(self.max_epsilon, self.delta)

    def count_stddev(self, num_silos: int) -> float:
        """sigma_b for adaptive clipping: configured, else ``max(num_silos/20, z)``.

        Andrew et al. suggest m/20 for thousands of clients; with few silos that is below the
        minimum z/2, so the default never goes under z (the update then keeps
        ``z_Delta = z * sqrt(4/3)``, about 15 % more noise than with fixed clipping).
        """
        if self.clip_count_stddev is not None:
            return self.clip_count_stddev
        return max(num_silos / 20.0, self.noise_multiplier)

    def adaptive_state(self, num_silos: int) -> AdaptiveClipState:
        """The run's adaptive clip, its C kept where ``z_Delta w_max C`` stays within the noise
        limits (and ``w_max C`` below the top one) whatever the noisy counts do."""
        c = float(self.clip_norm)  # type: ignore[arg-type]
        count_stddev = self.count_stddev(num_silos)
        z_delta = split_noise_multiplier(noise_multiplier=self.noise_multiplier,
                                         count_stddev=count_stddev)
        w = float(self.max_weight)
        high = min(MAX_NOISE_STDDEV / w / z_delta, MAX_NOISE_STDDEV / w, sys.float_info.max)
        low = max(MIN_NOISE_STDDEV / w / z_delta, sys.float_info.min)
        return AdaptiveClipState(
            clip_norm=c,
            target_quantile=self.target_quantile,
            learning_rate=self.clip_learning_rate,
            count_stddev=count_stddev,
            min_clip_norm=min(low, c),  # validation put C there already: rounding aside
            max_clip_norm=max(high, c),
        )

    def sum_noise_stddev(self, *, clip_norm: float, num_silos: int) -> float:
        """Central: std of the Gaussian added to the weighted sum, ``z_sum * w_max * C``.

        ``z_sum`` is z for fixed clipping and ``z_Delta`` (the update's share) for adaptive.
        """
        z = self.noise_multiplier
        if self.clipping == "adaptive":
            z = split_noise_multiplier(noise_multiplier=z, count_stddev=self.count_stddev(num_silos))
        return z * weighted_sum_sensitivity(clip_norm=clip_norm, max_weight=self.max_weight)

    def ddg_params(self, *, num_silos: int, min_survivors: int, dimension: int) -> DDGParams:
        """Distributed mechanism parameters (t = the secure-aggregation threshold); the sum
        the coordinator multiplies by ``w_max`` must stay within the noise limit too."""
        params = DDGParams(
            clip_norm=float(self.clip_norm),  # type: ignore[arg-type]
            noise_multiplier=self.noise_multiplier,
            num_silos=num_silos,
            min_survivors=min_survivors,
            dimension=dimension,
            modulus_bits=self.modulus_bits,
            k_stddevs=self.k_stddevs,
        )
        span = params.decoded_span(params.calibrate()) * self.max_weight
        if not span <= MAX_NOISE_STDDEV:
            raise ConfigError(
                f"dp.max_weight={self.max_weight!r} × the decoded DDG sum (up to {span:.4g} "
                f"model units with {num_silos} silos and {dimension} coordinates) exceeds "
                f"{MAX_NOISE_STDDEV:g}, past the float range a round can use; lower "
                "dp.max_weight or dp.clip_norm")
        return params

    def round_event(self, calibration: DDGCalibration | None = None) -> GaussianRound | ZCDPRound:
        """The accounting event of one round of this mechanism."""
        if self.mechanism == "distributed":
            if calibration is None:
                raise ConfigError("the distributed round event needs the DDG calibration")
            return ZCDPRound(calibration.rho)
        return GaussianRound(self.noise_multiplier)

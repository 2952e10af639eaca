"""The distributed discrete Gaussian (DDG) under secure aggregation.

Kairouz, Liu & Steinke (2021), "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation" (KLS). Each silo, before masking:

1. clips its update to L2 norm C and flattens it (arrays in sorted-name order), pads it with
   zeros to d = next power of two;
2. rotates it: ``y = H D x / sqrt(d)`` with H the Walsh–Hadamard matrix and D = diag of
   random signs from a *shared, public* per-round seed (the rotation spreads mass evenly so
   no coordinate dominates the modulus; KLS §4);
3. scales by 1/gamma (``gamma`` = granularity, chosen here from the modulus);
4. rounds to integers by *conditional* stochastic rounding: unbiased rounding, redrawn
   until ``||x~||_2 <= Delta_2``, where (KLS eq. for the rounded norm, beta = exp(-1/2))

       Delta_2^2 = min{ (C/g + sqrt(d))^2,
                        (C/g)^2 + d/4 + sqrt(2 ln(1/beta)) (C/g + sqrt(d)/2) };

5. adds its share of discrete Gaussian noise ``N_Z(0, sigma_loc^2)`` per coordinate with
   ``sigma_loc^2 = (z C/g)^2 / t``: any t survivors together carry the target variance
   ``(z C/g)^2``; m > t survivors carry m/t times it (more noise, still private);
6. reduces mod 2^b into ``uint64`` for the masking layer.

The coordinator gets only ``sum_i x_i mod 2^b``; :func:`decode_sum` centres it, multiplies
by gamma and un-rotates, giving ``sum_i clip(Delta_i) + noise`` in model units.

Privacy (KLS Prop. 14 with Thm. 1): with m survivors, ``a = Delta_2/(sqrt(m) sigma_loc)``,
``b = Delta_1/(sqrt(m) sigma_loc)``, ``Delta_1 = min(sqrt(d) Delta_2, Delta_2^2)`` and
``tau = 10 sum_{k=1}^{m-1} exp(-2 pi^2 sigma_loc^2 k/(k+1))``, the sum is rho-zCDP with
``rho = min{ (a^2 + 2 b tau + tau^2 d)/2, (a + sqrt(d) tau)^2 / 2 }``. We take the worst
case over m in [t, n]. This counts rounding honestly (Delta_2 > C/g).

Modulus and wrap-around: gamma is chosen so that ``k sqrt(v) + n <= 2^(b-1)`` with the
sub-Gaussian variance proxy ``v = (n C/g)^2 / d + n sigma_loc^2`` (Hoeffding over the random
signs for the signal, CKS 2020 for the discrete Gaussian, |rounding error| < 1 per silo).
Hence ``P[a coordinate wraps] <= 2 exp(-k^2/2)`` (union bound over d coordinates reported).
Wrap-around is post-processing of the private sum: it hurts accuracy, never privacy.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from strategies.dp.clipping import clip_update
from strategies.dp.noise import MAX_NOISE_STDDEV, discrete_gaussian_var
from strategies.randomness import KEY_BYTES, ByteSource, uniform01_open
from xsilo.errors import ConfigError, ProtocolError, UpdateRejected

__all__ = [
    "DDGCalibration",
    "DDGParams",
    "check_encoding",
    "decode_sum",
    "encode_update",
    "fwht",
    "rotation_signs",
]

_VAR_DENOMINATOR = 1 << 10  # sigma_loc^2 is rounded *up* to a multiple of 1/1024
_MAX_INFLATION = 1.25  # refuse configs where rounding inflates the sensitivity by > 25 %
_MAX_K = 40.0  # 2 exp(-k^2/2) is 0.0 in float64 from k ~ 39: a larger k only coarsens the grid


def check_encoding(*, modulus_bits: object, k_stddevs: object) -> None:
    """``dp.modulus_bits`` an integer in 8..64, ``dp.k_stddevs`` a number in [2, 40]
    (ConfigError naming the key, the value and the fix)."""
    if type(modulus_bits) is not int or not 8 <= modulus_bits <= 64:
        raise ConfigError(f"dp.modulus_bits = {modulus_bits!r}: must be an integer in 8..64 "
                          "(the masking modulus 2^b; 32 is the default)")
    if (not isinstance(k_stddevs, int | float) or isinstance(k_stddevs, bool)
            or not 2 <= k_stddevs <= _MAX_K):
        raise ConfigError(f"dp.k_stddevs = {k_stddevs!r}: must be a number in [2, {_MAX_K:g}] "
                          "(the wrap margin in standard deviations; 6 is the default)")


def _next_pow2(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


@dataclass(frozen=True)
class DDGCalibration:
    """Derived DDG quantities (integer units unless noted)."""

    padded_dim: int
    granularity: float  # gamma, model units per integer step
    scaled_clip: float  # C / gamma
    local_variance: Fraction  # sigma_loc^2 per silo
    l2_bound: float  # Delta_2 after conditional rounding
    l1_bound: float
    rho: float  # zCDP per round, worst case over t..n survivors
    wrap_probability_per_coordinate: float
    wrap_probability_union: float

    @property
    def effective_noise_multiplier(self) -> float:
        """The Gaussian z with the same zCDP: ``1/sqrt(2 rho)`` (below the configured z)."""
        return 1.0 / math.sqrt(2.0 * self.rho)

    def noise_stddev(self, survivors: int) -> float:
        """Standard deviation of the aggregate noise, model units, with ``survivors`` shares."""
        return math.sqrt(survivors * float(self.local_variance)) * self.granularity


@dataclass(frozen=True)
class DDGParams:
    """Configuration of the distributed discrete Gaussian; validated on construction."""

    clip_norm: float
    noise_multiplier: float
    num_silos: int
    min_survivors: int
    dimension: int
    modulus_bits: int = 32
    k_stddevs: float = 6.0
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the parameter, the value and the fix."""
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ConfigError(f"dp.clip_norm must be > 0 for distributed DP, got {self.clip_norm!r}")
        if not self.noise_multiplier > 0:
            raise ConfigError(f"dp.noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if not 1 <= self.min_survivors <= self.num_silos:
            raise ConfigError(
                f"min_survivors={self.min_survivors!r} must be in [1, num_silos={self.num_silos}]; "
                "use the secure-aggregation threshold t"
            )
        if self.dimension < 1:
            raise ConfigError(f"dimension must be >= 1, got {self.dimension!r}")
        check_encoding(modulus_bits=self.modulus_bits, k_stddevs=self.k_stddevs)
        if not 0 < self.beta < 1:
            raise ConfigError(f"beta must be in (0, 1), got {self.beta!r}")
        half = 2.0 ** (self.modulus_bits - 1)
        if half - self.num_silos <= 0:
            raise ConfigError(f"modulus 2^{self.modulus_bits} is too small for {self.num_silos} silos")
        cal = self.calibrate()
        self._check_float_range(cal)
        inflation = cal.l2_bound / cal.scaled_clip
        if inflation > _MAX_INFLATION:
            raise ConfigError(
                f"modulus_bits={self.modulus_bits} leaves too coarse a grid: rounding inflates "
                f"the sensitivity by {100 * (inflation - 1):.0f}% (limit "
                f"{100 * (_MAX_INFLATION - 1):.0f}%); raise modulus_bits (e.g. to "
                f"{min(64, self.modulus_bits + 8)}) or lower k_stddevs"
            )

    def decoded_span(self, cal: DDGCalibration) -> float:
        """The largest magnitude :func:`decode_sum` can return, model units: a centred sum
        of up to ``2^(b-1)`` grid steps, un-rotated (at most ``sqrt(d)`` times larger)."""
        return 2.0 ** (self.modulus_bits - 1) * cal.granularity * math.sqrt(cal.padded_dim)

    def _check_float_range(self, cal: DDGCalibration) -> None:
        """The decoded sum (and so its noise) within :data:`MAX_NOISE_STDDEV`, and a grid
        step gamma a normal float (the decode keeps its 53 bits): refused here, not as an inf
        or a lost sum mid-run."""
        span = self.decoded_span(cal)
        if not (span <= MAX_NOISE_STDDEV and cal.granularity >= sys.float_info.min):
            raise ConfigError(
                f"dp.clip_norm={self.clip_norm!r} with {self.num_silos} silos, threshold "
                f"{self.min_survivors} and {cal.padded_dim} coordinates makes the decoded sum "
                f"span up to {span:.4g} model units in steps of {cal.granularity:.4g}, outside "
                f"the float range a round can use (span <= {MAX_NOISE_STDDEV:g}, a normal "
                "step); bring dp.clip_norm to the scale of the model's update norms")

    def calibrate(self) -> DDGCalibration:
        """Granularity, local noise, rounded sensitivity, zCDP rho and wrap bounds (computed
        once per distinct parameters: validation, the round event and the encoder share it)."""
        return _calibration(self)


@functools.lru_cache(maxsize=32)
def _calibration(p: DDGParams) -> DDGCalibration:
    n, t, z = p.num_silos, p.min_survivors, p.noise_multiplier
    d = _next_pow2(p.dimension)
    half = 2.0 ** (p.modulus_bits - 1)
    scaled_clip = (half - n) / (p.k_stddevs * math.sqrt(n * n / d + n * z * z / t))
    target_var = (z * scaled_clip) ** 2
    if not (0 < target_var < math.inf and scaled_clip > 0):
        raise ConfigError(
            f"dp.noise_multiplier={z!r} with {n} silos, threshold {t} and {d} coordinates "
            f"leaves no usable grid in 2^{p.modulus_bits} (C/gamma = {scaled_clip:.3g}, "
            f"target variance {target_var:.3g}); use a noise multiplier nearer 1")
    local_var = Fraction(math.ceil(target_var / t * _VAR_DENOMINATOR), _VAR_DENOMINATOR)
    l2 = _rounded_l2_bound(scaled_clip, dim=d, beta=p.beta)
    l1 = min(math.sqrt(d) * l2, l2 * l2)
    rho = _worst_rho(l2=l2, l1=l1, local_var=float(local_var), survivors=range(t, n + 1), dim=d)
    per_coord = min(1.0, 2.0 * math.exp(-p.k_stddevs**2 / 2.0))
    return DDGCalibration(
        padded_dim=d,
        granularity=p.clip_norm / scaled_clip,
        scaled_clip=scaled_clip,
        local_variance=local_var,
        l2_bound=l2,
        l1_bound=l1,
        rho=rho,
        wrap_probability_per_coordinate=per_coord,
        wrap_probability_union=min(1.0, d * per_coord),
    )


def _rounded_l2_bound(scaled_clip: float, *, dim: int, beta: float) -> float:
    """Delta_2 after conditional stochastic rounding (KLS §4, the norm-bound lemma)."""
    deterministic = scaled_clip + math.sqrt(dim)
    sq = scaled_clip**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (
        scaled_clip + math.sqrt(dim) / 2.0
    )
    return min(deterministic, math.sqrt(sq))


def _ddg_rho(*, l2: float, l1: float, local_var: float, m: int, tau: float, dim: int) -> float:
    """zCDP rho of the sum of m discrete Gaussian shares (KLS Thm. 1 / Prop. 14), with
    ``tau = 10 sum_{k=1}^{m-1} exp(-2 pi^2 sigma_loc^2 k/(k+1))``."""
    s = math.sqrt(m * local_var)
    a, b = l2 / s, l1 / s
    return min((a * a + 2 * b * tau + tau * tau * dim) / 2.0, (a + math.sqrt(dim) * tau) ** 2 / 2.0)


def _worst_rho(*, l2: float, l1: float, local_var: float, survivors: range, dim: int) -> float:
    """The largest :func:`_ddg_rho` over m in ``survivors`` (t..n), in O(n): tau's sum for m
    is the sum for m - 1 plus one term, added in the same order as summing it afresh."""
    partial, worst = 0.0, -math.inf
    for m in range(1, survivors.stop):
        if m >= survivors.start:
            rho = _ddg_rho(l2=l2, l1=l1, local_var=local_var, m=m, tau=10.0 * partial, dim=dim)
            worst = max(worst, rho)
        partial += math.exp(-2.0 * math.pi**2 * local_var * m / (m + 1))
    return worst


def fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh–Hadamard transform ``H x / sqrt(d)`` (its own inverse)."""
    d = x.shape[0]
    if d & (d - 1):  # callers pass the padded dimension; only a programming error lands here
        raise ValueError(f"length must be a power of two, got {d}")
    y = np.array(x, dtype=np.float64, copy=True)
    h = 1
    while h < d:
        v = y.reshape(-1, 2, h)
        a, b = v[:, 0, :].copy(), v[:, 1, :]
        v[:, 0, :] += b
        v[:, 1, :] = a - b
        h *= 2
    return y / math.sqrt(d)


def rotation_signs(seed: bytes, dim: int) -> np.ndarray:
    """Rademacher signs for the rotation from a 32-byte public per-round seed.

    The bits of the AES-256-CTR keystream under ``seed`` from the all-zero counter block, most
    significant bit of each byte first. Silos and the coordinator must derive the same signs,
    so this derivation is part of the protocol: it is not a random draw and must not change.
    """
    if len(seed) != KEY_BYTES:
        raise ProtocolError(f"the DDG rotation seed must be {KEY_BYTES} bytes, got {len(seed)}; "
                            "it is the round's public dp-rotation-seed set by the coordinator")
    ctr = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    raw = ctr.update(bytes((dim + 7) // 8))
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:dim]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _flatten(update: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(update[k], dtype=np.float64).ravel() for k in sorted(update)])


def _conditional_round(y: np.ndarray, *, l2_bound: float, rng: ByteSource) -> np.ndarray:
    floor = np.floor(y)
    frac = y - floor
    for _ in range(1000):
        r = floor + (uniform01_open(y.shape, rng=rng) < frac)
        if math.sqrt(float(np.dot(r, r))) <= l2_bound:
            return r.astype(np.int64)
    raise UpdateRejected("conditional stochastic rounding failed 1000 times; check the calibration")


def encode_update(
    update: Mapping[str, np.ndarray],
    *,
    params: DDGParams,
    rotation_seed: bytes,
    rng: ByteSource,
    weight_fraction: float = 1.0,
) -> tuple[np.ndarray, float, bool]:
    """Silo side: clip, rotate, scale, round, add the noise share; return ``uint64`` mod 2^b.

    ``weight_fraction`` in [0, 1] (``min(w, w_max)/w_max``) scales the clipped update for
    weighted sums; the sensitivity stays C. Returns ``(vector, original_norm, was_clipped)``.
    """
    cal = params.calibrate()
    if sum(np.asarray(v).size for v in update.values()) != params.dimension:
        raise UpdateRejected(f"update has the wrong number of parameters (want {params.dimension})")
    if not 0.0 <= weight_fraction <= 1.0:
        raise ConfigError(f"weight_fraction must be in [0, 1], got {weight_fraction!r}")
    clipped = clip_update(update, clip_norm=params.clip_norm)
    x = np.zeros(cal.padded_dim)
    x[: params.dimension] = _flatten(clipped.update) * weight_fraction
    y = fwht(x * rotation_signs(rotation_seed, cal.padded_dim)) / cal.granularity
    ints = _conditional_round(y, l2_bound=cal.l2_bound, rng=rng)
    ints += discrete_gaussian_var(cal.padded_dim, cal.local_variance, rng=rng)
    return _to_modular(ints, params.modulus_bits), clipped.norm, clipped.clipped


def _to_modular(ints: np.ndarray, bits: int) -> np.ndarray:
    u = ints.astype(np.int64).view(np.uint64)  # two's complement == value mod 2^64
    return u if bits == 64 else u & np.uint64((1 << bits) - 1)


def decode_sum(
    modular_sum: np.ndarray,
    *,
    params: DDGParams,
    rotation_seed: bytes,
    template: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Coordinator side: centre mod 2^b, multiply by gamma, un-rotate, unpad, unflatten.

    ``template`` gives names, shapes and dtypes (e.g. the current global model).
    """
    cal = params.calibrate()
    bits = params.modulus_bits
    s = np.asarray(modular_sum, dtype=np.uint64)
    if s.shape != (cal.padded_dim,):
        raise ProtocolError(f"the unmasked DDG sum has shape {list(s.shape)}, expected "
                            f"[{cal.padded_dim}] (dimension {params.dimension} padded to a power "
                            "of two); the secure-aggregation run must mask vectors of that "
                            "length: re-key it with the DDG's padded dimension")
    if bits < 64:
        s = s & np.uint64((1 << bits) - 1)
        signed = s.astype(np.int64) - ((s >> np.uint64(bits - 1)).astype(np.int64) << bits)
    else:
        signed = s.view(np.int64)
    y = signed.astype(np.float64) * cal.granularity
    x = fwht(y) * rotation_signs(rotation_seed, cal.padded_dim)
    out: dict[str, np.ndarray] = {}
    pos = 0
    for name in sorted(template):
        ref = np.asarray(template[name])
        out[name] = x[pos : pos + ref.size].reshape(ref.shape).astype(ref.dtype)
        pos += ref.size
    return out

"""Clip, quantize with unbiased stochastic rounding, weight, and size the modulus so sums never wrap.

Encoding (one silo, update ``x ∈ R^d``, integer weight ``0 ≤ w ≤ W``, range ``c``, ``b`` bits,
``L = 2^b − 1`` levels, step ``Δ = 2c / L``)::

    v_k = (clip(x_k, −c, c) + c) / Δ            ∈ [0, L]
    q_k = ⌊v_k⌋ + Bernoulli(v_k − ⌊v_k⌋)         E[q_k] = v_k   (unbiased stochastic rounding;
                                                  32 coin bits up to b = 30: bias ≤ 2^-32)
    encode(x, w) = [w, w·q_1, …, w·q_d]         (uint words, the vector that gets masked)

Decoding the sum over silos ``S`` (``T_0 = Σ w_i``, ``T_k = Σ w_i q_ik``)::

    Σ_i w_i x_ik  ≈  Δ · T_k − c · T_0          E[Δ·T_k − c·T_0] = Σ_i w_i clip(x_ik)

No wrap: every coordinate of the sum is at most ``n · W · L``, so the modulus ``M = 2^k`` with
``k = bit_length(n · W · L)`` (i.e. the smallest power of two above the largest sum) makes the
modular sum equal the integer sum. ``k ≤ 64`` keeps all arithmetic in ``uint64``; ``k ≤ 32``
halves the traffic with ``uint32``. Error: each ``q_k`` is within one level of ``v_k``, so
``|error of Σ w x| < Δ · Σ w`` per coordinate (plus clipping), and its standard deviation is
at most ``(Δ/2) · sqrt(Σ w²)`` (each rounding is a Bernoulli scaled by Δ, variance ≤ Δ²/4).
Quantization for secure aggregation follows Bonawitz et al. 2017 (§7) and Kairouz et al. 2021.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np

from strategies.randomness import ByteSource, default_source
from strategies.secagg.prg import dtype_for_bits
from xsilo.errors import ConfigError, SecureAggregationError, UpdateRejected

__all__ = [
    "ErrorReport",
    "QuantParams",
    "coin_bits",
    "count_clipped",
    "decode_sum",
    "encode",
    "error_report",
    "make_quant_params",
    "required_modulus_bits",
    "validate_params",
]

MAX_MODULUS_BITS = 64
MAX_BITS = 32


@dataclass(frozen=True)
class QuantParams:
    """Validated quantization settings of one run (build with :func:`make_quant_params`)."""

    num_silos: int
    clip: float
    bits: int
    max_weight: int
    modulus_bits: int

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        return 2.0 * self.clip / self.levels

    @property
    def dtype(self) -> np.dtype:
        return dtype_for_bits(self.modulus_bits)

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def required_modulus_bits(*, num_silos: int, bits: int, max_weight: int) -> int:
    """``k`` such that ``2^k`` is the smallest power of two above ``n · W · (2^b − 1)``."""
    return max(1, (num_silos * max_weight * ((1 << bits) - 1)).bit_length())


def _overflow_fix(num_silos: int, bits: int, max_weight: int) -> str:
    limit = (1 << MAX_MODULUS_BITS) - 1
    best_bits = max((b for b in range(1, bits) if num_silos * max_weight * ((1 << b) - 1) <= limit),
                    default=0)
    best_weight = limit // (num_silos * ((1 << bits) - 1))
    fixes = [f"lower max_weight to ≤ {best_weight}"] if best_weight >= 1 else []
    if best_bits:
        fixes.append(f"lower bits to ≤ {best_bits}")
    return " or ".join(fixes) or "use fewer silos per aggregation"


def validate_params(*, num_silos: int, clip: float, bits: int, max_weight: int,
                    modulus_bits: int | None = None) -> None:
    """Refuse a configuration that is meaningless or whose sum could wrap (ConfigError).

    Every message names the parameter, the value, the rule, and numbers that would fix it.
    """
    if not isinstance(num_silos, int) or num_silos < 2:
        raise ConfigError(f"secure aggregation needs num_silos ≥ 2, got {num_silos!r}")
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ConfigError(f"clip range must be a finite number > 0 (values are clipped to "
                          f"[-clip, clip]), got {clip!r}; set it to the largest |update| you expect")
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}; 16 is typical")
    if not isinstance(max_weight, int) or max_weight < 1:
        raise ConfigError(f"max_weight must be an integer ≥ 1 (weights are integers such as "
                          f"example counts, capped at max_weight), got {max_weight!r}")
    need = required_modulus_bits(num_silos=num_silos, bits=bits, max_weight=max_weight)
    largest = num_silos * max_weight * ((1 << bits) - 1)
    if need > MAX_MODULUS_BITS:
        raise ConfigError(
            f"num_silos·max_weight·(2^bits−1) = {num_silos}·{max_weight}·{(1 << bits) - 1} = "
            f"{largest} does not fit a 2^{MAX_MODULUS_BITS} modulus (the masked sum would wrap); "
            + _overflow_fix(num_silos, bits, max_weight))
    _check_representable(num_silos=num_silos, clip=float(clip), bits=bits,
                         max_weight=max_weight)
    if modulus_bits is not None and not need <= modulus_bits <= MAX_MODULUS_BITS:
        raise ConfigError(
            f"modulus_bits={modulus_bits} cannot hold sums up to {largest}: it must be in "
            f"{need}..{MAX_MODULUS_BITS} (or omit it to get {need})")


_MAX_SCALE = 2.0**1000  # headroom below float64's 1.8e308 for every product encode forms


def _check_representable(*, num_silos: int, clip: float, bits: int, max_weight: int) -> None:
    """The float arithmetic of encode/decode must be exact enough for the reported bounds.

    The step ``Δ = 2c/L`` must be a normal float64 (a subnormal step loses the precision the
    error bound assumes), encode's scale ``2^s/Δ`` finite with headroom, and the largest sum
    ``c · n · W`` (decode subtracts it) finite. Outside that a run would divide by zero,
    return NaN or a sum far off its bound; the message says which range of ``clip`` works.
    """
    levels = (1 << bits) - 1
    step = 2.0 * clip / levels
    scale = float(1 << coin_bits(bits)) / step if step > 0 else math.inf
    largest = clip * num_silos * max_weight
    low = 2.0 ** coin_bits(bits) / _MAX_SCALE * levels / 2
    high = sys.float_info.max / (4.0 * num_silos * max_weight)
    if not (math.isfinite(step) and step >= sys.float_info.min and math.isfinite(scale)
            and scale <= _MAX_SCALE and math.isfinite(largest) and clip <= high):
        raise ConfigError(
            f"clip = {clip!r} with bits = {bits}, {num_silos} silos and max_weight = "
            f"{max_weight} cannot be represented: the quantization step 2·clip/(2^bits−1) = "
            f"{step!r} and the sums it forms must be finite, normal float64 numbers; use a "
            f"clip between {low:.3g} and {high:.3g}")


def make_quant_params(*, num_silos: int, clip: float, bits: int, max_weight: int,
                      modulus_bits: int | None = None) -> QuantParams:
    """Validate and build :class:`QuantParams`; the modulus defaults to the smallest safe one."""
    validate_params(num_silos=num_silos, clip=clip, bits=bits, max_weight=max_weight,
                    modulus_bits=modulus_bits)
    need = required_modulus_bits(num_silos=num_silos, bits=bits, max_weight=max_weight)
    return QuantParams(num_silos=num_silos, clip=float(clip), bits=bits, max_weight=max_weight,
                       modulus_bits=modulus_bits or need)


def _check_weight(weight: int, params: QuantParams) -> int:
    if isinstance(weight, (bool, float)) or not isinstance(weight, (int, np.integer)):
        raise UpdateRejected(f"weight must be an integer (e.g. the example count), got {weight!r}")
    if not 0 <= int(weight) <= params.max_weight:
        raise UpdateRejected(f"weight {weight} is outside 0..max_weight={params.max_weight}; "
                             "cap it at max_weight before encoding")
    return int(weight)


_CHUNK = 1 << 16  # coordinates per pass of encode (256 KiB float64 / int64 buffers)


def coin_bits(bits: int) -> int:
    """``s``, the random bits of each rounding coin: 32, fewer only above 30-bit levels so that
    ``L · 2^s < 2^62`` keeps the fixed-point arithmetic of :func:`encode` in ``int64``."""
    return min(32, 62 - bits)


def encode(update: np.ndarray, *, weight: int, params: QuantParams,
           rng: ByteSource | None = None) -> np.ndarray:
    """``[w, w·q_1, …, w·q_d]`` as ``params.dtype`` (see the module docstring for ``q``).

    Stochastic rounding in fixed point: with ``s = coin_bits(b)`` and ``U`` uniform on
    ``s``-bit words, ``q = (⌊v·2^s⌋ + U) >> s`` is ``⌊v⌋ + 1`` with probability
    ``⌊f·2^s⌋·2^-s`` (``f = v − ⌊v⌋``), so ``E[q] = v`` to within ``2^-s``; ``v·2^s`` is
    computed in float64, which holds ``53 − b`` fraction bits of ``v`` (all 32 coin bits up
    to 21-bit levels). The weight is applied in the integer dtype, exactly. The vector is
    processed a chunk at a time through small buffers, so every pass stays in cache and no
    model-sized float64 temporaries are allocated (their page faults cost more than the
    arithmetic).
    """
    w = _check_weight(weight, params)
    x = np.asarray(update).ravel()
    if x.dtype.kind not in "fiu":
        raise UpdateRejected(f"update must be numeric, got dtype {x.dtype}")
    # Integers are finite. A float sum (in the input's own dtype: one fast pass) is finite
    # when no entry is NaN/Inf; only when it is not (an Inf or NaN, or huge finite values
    # whose sum overflows) is every entry checked.
    if x.dtype.kind == "f" and x.size:
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(np.add.reduce(x))
        if not math.isfinite(total) and not np.isfinite(x).all():
            raise UpdateRejected("update contains NaN or Inf; it cannot be quantized")
    source = rng or default_source()
    s = coin_bits(params.bits)
    scale = float(1 << s) / params.step  # v·2^s = (x + c)·2^s/Δ: one multiply and one add
    offset, top = params.clip * scale, float(params.levels << s)
    out = np.empty(x.size + 1, dtype=params.dtype)
    out[0] = w
    size = min(x.size, _CHUNK)
    y, q = np.empty(size, dtype=np.float64), np.empty(size, dtype=np.int64)
    for start in range(0, x.size, _CHUNK):
        n = min(_CHUNK, x.size - start)
        yn, qn = y[:n], q[:n]
        np.multiply(x[start:start + n], scale, out=yn, dtype=np.float64)
        yn += offset
        np.clip(yn, 0.0, top, out=yn)  # clipping x to [−c, c] is clipping v to [0, L]
        qn[...] = yn  # truncation is ⌊·⌋ here: yn ≥ 0
        coins = np.frombuffer(source.read(4 * n), dtype="<u4")
        qn += coins >> np.uint32(32 - s) if s < 32 else coins
        qn >>= s
        body = out[1 + start:1 + start + n]
        body[...] = qn  # exact: integers in [0, L], L < 2^32
        if w != 1:
            body *= params.dtype.type(w)  # exact in the integer dtype: w·q ≤ W·L < 2^k
    return out


def count_clipped(update: np.ndarray, clip: float) -> int:
    """How many coordinates of ``update`` lie outside ``[−clip, clip]`` (chunked: no
    model-sized temporaries)."""
    x = np.asarray(update).ravel()
    return sum(int(np.count_nonzero(np.abs(x[i:i + _CHUNK]) > clip))
               for i in range(0, x.size, _CHUNK))


def decode_sum(total: np.ndarray, *, params: QuantParams) -> tuple[np.ndarray, int]:
    """``(Σ w_i x_i, Σ w_i)`` from the unmasked modular sum ``[T_0, T_1, …]`` (any uint
    dtype, reduced here; a chunk at a time, so the only model-sized array is the result)."""
    t = np.asarray(total)
    if t.dtype.kind != "u" or t.ndim != 1 or t.size < 1:
        raise SecureAggregationError(f"an unmasked sum must be a non-empty 1-D uint vector, "
                                     f"got {t.dtype}{list(t.shape)}")
    reduce = t.dtype.type((1 << min(params.modulus_bits, 8 * t.dtype.itemsize)) - 1)
    total_weight = int(t[0] & reduce)
    if total_weight > params.num_silos * params.max_weight:
        raise SecureAggregationError(
            f"unmasked total weight {total_weight} exceeds num_silos·max_weight = "
            f"{params.num_silos * params.max_weight}: the masks did not cancel")
    out = np.empty(t.size - 1, dtype=np.float64)
    body, words = t[1:], np.empty(min(out.size, _CHUNK), dtype=t.dtype)
    # Every coordinate is Σ w_i·q_ik ≤ Σ w_i · L: a larger word means a mask was left in
    # the sum (a wrong seed was reconstructed), whose words are uniform over the modulus.
    ceiling = total_weight * params.levels
    for start in range(0, out.size, _CHUNK):
        n = min(_CHUNK, out.size - start)
        np.bitwise_and(body[start:start + n], reduce, out=words[:n])
        if n and int(words[:n].max()) > ceiling:
            raise SecureAggregationError(
                f"an unmasked coordinate exceeds total weight × levels = {ceiling}: the masks "
                "did not cancel (a wrong share or seed); the round fails, the model is kept")
        part = out[start:start + n]
        np.multiply(words[:n], params.step, out=part, dtype=np.float64)
        part -= params.clip * total_weight
    return out, total_weight


@dataclass(frozen=True)
class ErrorReport:
    """Quantization error of a decoded ``Σ w x`` (per coordinate; clipping not included).

    ``max_abs_bound = Δ · Σw`` is a hard bound; ``std_bound = (Δ/2)·sqrt(Σw · W)`` bounds the
    standard deviation. ``max_abs`` / ``rms`` are measured against an exact sum when given.
    """

    step: float
    max_abs_bound: float
    std_bound: float
    max_abs: float | None = None
    rms: float | None = None


def error_report(params: QuantParams, *, total_weight: int,
                 estimate: np.ndarray | None = None, exact: np.ndarray | None = None) -> ErrorReport:
    """The error bounds of a sum with ``total_weight``, and the measured error if ``exact`` is given."""
    max_abs = rms = None
    if estimate is not None and exact is not None:
        diff = np.asarray(estimate, dtype=np.float64) - np.asarray(exact, dtype=np.float64)
        max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
        rms = float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0
    return ErrorReport(step=params.step, max_abs_bound=params.step * total_weight,
                       std_bound=params.step / 2 * math.sqrt(total_weight * params.max_weight),
                       max_abs=max_abs, rms=rms)

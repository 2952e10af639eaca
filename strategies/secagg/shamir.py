"""Shamir t-of-n secret sharing over the prime field GF(p), p = 2^256 + 297.

Shamir, "How to share a secret", CACM 22(11), 1979: a secret ``s`` is the constant term of a
random polynomial ``f(X) = s + a_1 X + … + a_{t-1} X^{t-1}`` over GF(p); share ``k`` is
``(x_k, f(x_k))`` for a distinct non-zero ``x_k``. Any ``t`` shares give ``s = f(0)`` by
Lagrange interpolation, ``f(0) = Σ_k y_k λ_k`` with ``λ_k = Π_{m≠k} x_m / (x_m − x_k)``; fewer
than ``t`` reveal nothing about ``s``.

p is the smallest prime above 2^256, so a 32-byte seed is one field element (no chunking)
and a share value is 33 bytes. Coefficients are drawn uniformly by rejection sampling from
a :class:`~strategies.randomness.ByteSource`. With more than ``t`` shares, every extra
share is checked against the polynomial through the first ``t`` (inconsistency → error).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import lru_cache

from strategies.randomness import ByteSource, SystemSource
from xsilo.errors import ConfigError, ProtocolError

__all__ = [
    "PRIME",
    "SHARE_BYTES",
    "int_to_secret",
    "lagrange_coefficients",
    "reconstruct",
    "secret_to_int",
    "share_from_bytes",
    "share_to_bytes",
    "split",
    "split_many",
]

PRIME = (1 << 256) + 297
SHARE_BYTES = 33
SECRET_BYTES = 32


def secret_to_int(secret: bytes) -> int:
    """A 32-byte secret as a field element (big-endian; always < p)."""
    if len(secret) != SECRET_BYTES:
        raise ProtocolError(f"Shamir secrets are {SECRET_BYTES} bytes (a mask seed or key), got "
                            f"{len(secret)}: the secret is truncated or malformed; share only "
                            f"{SECRET_BYTES}-byte seeds")
    return int.from_bytes(secret, "big")


def int_to_secret(value: int) -> bytes:
    """Inverse of :func:`secret_to_int`; a value ≥ 2^256 means the shares were wrong."""
    if not 0 <= value < 1 << 256:
        raise ProtocolError("reconstructed secret is out of range: the shares are inconsistent")
    return value.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    y = int.from_bytes(data, "big")
    if len(data) != SHARE_BYTES or y >= PRIME:
        raise ProtocolError(f"malformed Shamir share ({len(data)} bytes)")
    return y


def _check_xs(xs: Sequence[int], threshold: int) -> None:
    # Share points are the roster positions + 1 and the threshold is the run's t, both from
    # the run's configuration.
    if threshold < 1:
        raise ConfigError(f"Shamir threshold must be ≥ 1, got {threshold}; use the run's "
                          "secure-aggregation threshold t")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ConfigError(f"Shamir share points must be distinct and in 1..p-1, got {list(xs)}; "
                          "use each silo's roster position + 1")
    if threshold > len(xs):
        raise ConfigError(f"Shamir threshold {threshold} exceeds the number of shares {len(xs)}; "
                          "a t-of-n sharing needs t ≤ n silos")


_MASK_257 = (1 << 257) - 1


def _random_elements(count: int, rng: ByteSource) -> list[int]:
    """``count`` uniform field elements: rejection sampling of 257-bit candidates (each
    accepted with probability ≈ 1/2), drawn from ``rng`` in batches."""
    out: list[int] = []
    while len(out) < count:
        want = 2 * (count - len(out)) + 8
        data = rng.read(SHARE_BYTES * want)
        for k in range(0, len(data), SHARE_BYTES):
            candidate = int.from_bytes(data[k:k + SHARE_BYTES], "big") & _MASK_257
            if candidate < PRIME:
                out.append(candidate)
                if len(out) == count:
                    break
    return out


@lru_cache(maxsize=64)
def _powers(xs: tuple[int, ...], degree: int) -> tuple[tuple[int, ...], ...]:
    """``(x^0, …, x^degree) mod p`` for each share point (a run's points and threshold are
    fixed, so this is computed once per round's active set)."""
    table = []
    for x in xs:
        row, v = [], 1
        for _ in range(degree + 1):
            row.append(v)
            v = v * x % PRIME
        table.append(tuple(row))
    return tuple(table)


def _check_secret(secret: int) -> None:
    if not 0 <= secret < PRIME:
        raise ProtocolError(f"a Shamir secret must be a field element in 0..p-1, got a "
                            f"{secret.bit_length()}-bit value; share 32-byte secrets through "
                            "secret_to_int")


def split_many(secrets: Sequence[int], *, threshold: int, xs: Sequence[int],
               rng: ByteSource | None = None) -> list[list[int]]:
    """:func:`split` for several secrets over the same points, one list of shares each.

    Each secret gets its own independent uniformly random coefficients; the polynomials are
    evaluated as dot products with the cached powers of the points (one reduction per share
    instead of one per Horner step), which is what a silo dealing one secret per peer needs.
    """
    _check_xs(xs, threshold)
    for secret in secrets:
        _check_secret(secret)
    rng = rng or SystemSource()
    m, t = len(secrets), threshold
    randoms = _random_elements(m * (t - 1), rng)
    coeffs = [[secret, *randoms[i * (t - 1):(i + 1) * (t - 1)]] for i, secret in enumerate(secrets)]
    # Kronecker packing: coefficient j of every polynomial in one integer, one slot per
    # secret, wide enough that Σ_j c_ij · (x^j mod p) never carries into the next slot; one
    # multiply per (point, degree) then evaluates all m polynomials at that point.
    slot = (2 * 257 + t.bit_length() + 8) // 8 + 1
    packed = [int.from_bytes(b"".join(c[j].to_bytes(slot, "little") for c in coeffs), "little")
              for j in range(t)]
    out: list[list[int]] = [[] for _ in range(m)]
    for row in _powers(tuple(xs), t - 1):
        total = sum(map(operator.mul, packed, row)).to_bytes(m * slot, "little")
        for i in range(m):
            out[i].append(int.from_bytes(total[i * slot:(i + 1) * slot], "little") % PRIME)
    return out


def split(secret: int, *, threshold: int, xs: Sequence[int],
          rng: ByteSource | None = None) -> list[int]:
    """Share values ``f(x)`` for each ``x`` in ``xs``.

    ``f`` has degree ``threshold − 1``, ``f(0) = secret`` and uniformly random other coefficients.
    """
    return split_many([secret], threshold=threshold, xs=xs, rng=rng)[0]


def lagrange_coefficients(xs: Sequence[int], *, at: int = 0) -> list[int]:
    """``λ_k = Π_{m≠k} (at − x_m) / (x_k − x_m)`` mod p, so that ``f(at) = Σ λ_k f(x_k)``."""
    _check_xs(xs, len(xs))
    return list(_lagrange(tuple(xs), at))


@lru_cache(maxsize=256)  # the coordinator reconstructs many secrets from one responder set
def _lagrange(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    lams = []
    for k, xk in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != k:
                num = num * (at - xm) % PRIME
                den = den * (xk - xm) % PRIME
        lams.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(lams)


def reconstruct(points: Sequence[tuple[int, int]], *, threshold: int) -> int:
    """``f(0)`` from at least ``threshold`` points ``(x, y)``; extra points are checked.

    Raises
    ------
    ProtocolError
        fewer than ``threshold`` points, repeated ``x``, or points not on one polynomial of
        degree ``threshold − 1`` (a tampered or corrupted share).
    """
    if len(points) < threshold:
        raise ProtocolError(f"need {threshold} shares to reconstruct, got {len(points)}")
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise ProtocolError(f"repeated share points {sorted(xs)}")
    if any(not 0 < x < PRIME for x in xs):  # 0 is the secret's own point; x and x + p collide
        raise ProtocolError(f"share points must be in 1..p-1, got {sorted(xs)}")
    base = points[:threshold]
    base_xs = [x for x, _ in base]
    for x, y in points[threshold:]:
        lam = _lagrange(tuple(base_xs), x)
        if sum(lk * yk for lk, (_, yk) in zip(lam, base)) % PRIME != y:
            raise ProtocolError(f"Shamir share at x={x} is inconsistent with the others")
    lam0 = _lagrange(tuple(base_xs), 0)
    return sum(lk * yk for lk, (_, yk) in zip(lam0, base)) % PRIME

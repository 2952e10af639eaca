"""Shamir t-of-n sharing: the field, known answers, every subset, and the edge cases."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from secagg_helpers import prop_settings, seeded

from strategies.secagg import shamir
from xsilo.errors import ConfigError, ProtocolError

P = shamir.PRIME


def _miller_rabin(n: int, rounds: int = 40) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rnd = random.Random(0)  # bases for a primality check, not secrets
    for _ in range(rounds):
        x = pow(rnd.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_smallest_prime_above_2_256():
    assert P == 2**256 + 297 and _miller_rabin(P)
    assert not any(_miller_rabin(2**256 + c) for c in range(1, 297, 2))


def test_known_polynomial():
    # f(x) = 7 + 3x + 2x^2: f(1)=12, f(2)=21, f(3)=34
    assert shamir.reconstruct([(1, 12), (2, 21), (3, 34)], threshold=3) == 7
    assert shamir.reconstruct([(3, 34), (1, 12), (2, 21)], threshold=3) == 7
    assert shamir.lagrange_coefficients([1, 2, 3]) == [3, P - 3, 1]


def test_every_t_subset_reconstructs():
    secret = shamir.secret_to_int(b"\xab" * 32)
    xs = [1, 2, 3, 4, 5]
    ys = shamir.split(secret, threshold=3, xs=xs, rng=seeded("shamir"))
    for subset in itertools.combinations(zip(xs, ys), 3):
        assert shamir.reconstruct(list(subset), threshold=3) == secret
    for subset in itertools.combinations(zip(xs, ys), 4):  # extra shares are checked, then agree
        assert shamir.reconstruct(list(subset), threshold=3) == secret


@prop_settings(60)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(1, 12), data=st.data())
def test_split_reconstruct_property(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**64), min_size=n, max_size=n, unique=True))
    ys = shamir.split(shamir.secret_to_int(secret), threshold=t, xs=xs, rng=seeded(secret.hex()))
    pts = data.draw(st.permutations(list(zip(xs, ys))))[:t]
    assert shamir.int_to_secret(shamir.reconstruct(pts, threshold=t)) == secret


def test_threshold_one_shares_are_the_secret_and_edge_secrets_survive():
    assert shamir.split(42, threshold=1, xs=[1, 2], rng=seeded("t1")) == [42, 42]
    for secret in (bytes(32), b"\xff" * 32):
        value = shamir.secret_to_int(secret)
        ys = shamir.split(value, threshold=2, xs=[1, 2], rng=seeded("edge"))
        assert shamir.int_to_secret(shamir.reconstruct(list(zip([1, 2], ys)), threshold=2)) == secret


def test_too_few_repeated_or_inconsistent_shares():
    ys = shamir.split(5, threshold=3, xs=[1, 2, 3, 4], rng=seeded("bad"))
    with pytest.raises(ProtocolError, match="need 3 shares"):
        shamir.reconstruct([(1, ys[0]), (2, ys[1])], threshold=3)
    with pytest.raises(ProtocolError, match="repeated"):
        shamir.reconstruct([(1, ys[0]), (1, ys[0]), (2, ys[1])], threshold=3)
    with pytest.raises(ProtocolError, match="inconsistent"):
        shamir.reconstruct([(1, ys[0]), (2, ys[1]), (3, ys[2]), (4, (ys[3] + 1) % P)], threshold=3)
    for points in ([(1, ys[0]), (2, ys[1]), (3 + P, ys[2])],  # 3 + p: the same point as 3
                   [(0, ys[0]), (2, ys[1]), (3, ys[2])]):  # 0: the secret's own point
        with pytest.raises(ProtocolError, match="share points must be in 1..p-1"):
            shamir.reconstruct(points, threshold=3)


@pytest.mark.parametrize("xs,t,match", [([1, 1], 2, "distinct"), ([0, 1], 2, "1..p-1"),
                                        ([1, 2], 3, "exceeds"), ([1, 2], 0, "≥ 1")])
def test_split_validation(xs, t, match):
    with pytest.raises(ConfigError, match=match):
        shamir.split(1, threshold=t, xs=xs)


def test_byte_encodings():
    assert shamir.share_from_bytes(shamir.share_to_bytes(P - 1)) == P - 1
    with pytest.raises(ProtocolError, match="malformed"):
        shamir.share_from_bytes(P.to_bytes(33, "big"))
    with pytest.raises(ProtocolError, match="out of range"):
        shamir.int_to_secret(2**256)
    with pytest.raises(ProtocolError, match="32 bytes"):
        shamir.secret_to_int(b"x")


@pytest.mark.parametrize("n, t, m", [(2, 1, 1), (3, 2, 3), (12, 7, 11), (60, 40, 59)])
def test_split_many_evaluates_each_polynomial_exactly(n: int, t: int, m: int) -> None:
    """The packed evaluation (one multiply per point and degree for all secrets) gives
    exactly f_i(x) = Σ_j c_ij x^j mod p for each secret's own random coefficients, the
    extreme field values included, and any t shares give the secret back."""
    xs = list(range(1, n + 1))
    rnd = random.Random(n)  # test secrets, not secrets
    secrets = [rnd.randrange(P) for _ in range(m)] + [0, P - 1]
    got = shamir.split_many(secrets, threshold=t, xs=xs, rng=seeded(f"many{n}"))
    coeffs = shamir._random_elements(len(secrets) * (t - 1), seeded(f"many{n}"))
    for i, secret in enumerate(secrets):
        c = [secret, *coeffs[i * (t - 1):(i + 1) * (t - 1)]]
        assert got[i] == [sum(cj * pow(x, j, P) for j, cj in enumerate(c)) % P for x in xs]
        subset = rnd.sample(list(zip(xs, got[i])), t)
        assert shamir.reconstruct(subset, threshold=t) == secret
    assert len(set(map(tuple, got))) == len(got)  # independent polynomials


def test_bundle_commitments_are_the_share_commitments() -> None:
    from strategies.secagg.masking import bundle_commitments, share_commitment

    shares = [bytes([k]) * shamir.SHARE_BYTES for k in range(5)]
    joined = bundle_commitments(shares, run_id="run-ü", round_=7, dealer=3, holder=9)
    assert joined == b"".join(share_commitment(s, run_id="run-ü", round_=7, dealer=3, holder=9,
                                               position=p) for p, s in enumerate(shares))

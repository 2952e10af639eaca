"""What silo and coordinator must agree on: mask signs, PRG labels, share-bundle layout.

Masked input of silo ``i`` in round ``r`` over the active set ``U_r`` (Bonawitz et al. 2017,
§4, with per-round seeds)::

    y_i = encode(x_i, w_i) + PRG(b_i,r, "self") + Σ_{j ∈ U_r, j ≠ i} sign(i, j) · PRG(s_ij,r, "pair")
    sign(i, j) = +1 if i < j else −1                               (so pairs cancel in Σ y_i)

Share bundle from ``k`` to ``i`` (AES-GCM plaintext): ``f_b(x_i) ‖ f_{s_k,j1}(x_i) ‖ …`` — the
share of ``k``'s self-mask seed, then the shares of ``k``'s pair seeds in increasing order of
the peer id ``j ∈ U_r \\ {k}``; 33 bytes each.

Share commitments: with the bundles, ``k`` sends in the clear, for each recipient ``i`` and
each share ``σ`` at position ``p`` of ``i``'s bundle, ``H(run ‖ r ‖ k ‖ i ‖ p ‖ σ)``
(SHA-256, first 16 bytes). When ``i`` reveals a share at unmasking, the coordinator checks it
against ``k``'s commitment, so a corrupted share is caught (and ``i`` named) even when only
``t`` silos answer — with exactly ``t`` shares, Shamir reconstruction has nothing left to
cross-check, and a wrong share would silently give a wrong seed, mask and sum. Shares are
uniform 256-bit field elements, so a commitment reveals nothing a brute force could use.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from strategies.secagg.crypto import NONCE_BYTES, associated_data, set_digest
from strategies.secagg.messages import COMMITMENT_BYTES
from strategies.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes
from xsilo.errors import ProtocolError

SEAL_OVERHEAD = NONCE_BYTES + 16  # AES-GCM: the nonce and the tag around a sealed bundle
SELF_LABEL = b"self"
PAIR_LABEL = b"pair"
BUNDLE_KIND = "round-shares"


def pair_sign(me: int, peer: int) -> int:
    """``+1`` if ``me < peer`` else ``−1``: the sign ``me`` gives ``PRG(s_me,peer,r)``."""
    return 1 if me < peer else -1


def peers_of(owner: int, active: Sequence[int]) -> list[int]:
    """``U_r \\ {owner}`` in increasing order: the order of pair shares in ``owner``'s bundles."""
    return sorted(s for s in active if s != owner)


def bundle_ad(*, run_id: str, round_: int, sender: int, recipient: int,
              active: Sequence[int]) -> bytes:
    return associated_data(kind=BUNDLE_KIND, run_id=run_id, round_=round_, sender=sender,
                           recipient=recipient, active_digest=set_digest(active))


def pack_bundle(self_share: int, pair_shares: Sequence[int]) -> bytes:
    return share_to_bytes(self_share) + b"".join(share_to_bytes(s) for s in pair_shares)


def unpack_bundle(data: bytes, *, num_peers: int, sender: int) -> tuple[int, list[int]]:
    if len(data) != SHARE_BYTES * (1 + num_peers):
        raise ProtocolError(f"share bundle from silo {sender} has {len(data)} bytes, expected "
                            f"{SHARE_BYTES * (1 + num_peers)}")
    values = [share_from_bytes(data[k:k + SHARE_BYTES]) for k in range(0, len(data), SHARE_BYTES)]
    return values[0], values[1:]


def share_bytes(active: int, *, round_keys: bool = False) -> tuple[int, int]:
    """``(bytes of one silo's sealed bundles and commitments a round, bytes the coordinator
    holds for a round)`` with ``active`` silos: ``active`` bundles, each sealed (nonce and
    tag) and with a commitment per share, of ``active`` shares (pair seeds, in its masked
    input) or of 2 (round keys, in its dealing); the coordinator keeps every silo's until
    unmasking. It grows as ``active²`` and ``active³``, or as ``active`` and ``active²``
    with round keys (docs/secure-aggregation.md, *How far it scales*)."""
    shares = 2 if round_keys else active
    per_input = active * (shares * (SHARE_BYTES + COMMITMENT_BYTES) + SEAL_OVERHEAD)
    return per_input, active * per_input


def share_commitment(share: bytes, *, run_id: str, round_: int, dealer: int, holder: int,
                     position: int) -> bytes:
    """``H(label ‖ run ‖ r ‖ dealer ‖ holder ‖ position ‖ share)[:16]`` (see the docstring)."""
    run = run_id.encode()
    header = struct.pack(">I", len(run)) + run + struct.pack(">QQQQ", round_, dealer, holder,
                                                             position)
    return hashlib.sha256(b"xsilo-secagg/share-commitment/v1" + header + share).digest()[
        :COMMITMENT_BYTES]


def bundle_commitments(shares: Sequence[bytes], *, run_id: str, round_: int, dealer: int,
                       holder: int) -> bytes:
    """The commitments to one bundle's shares, in the bundle's order, concatenated (each
    exactly :func:`share_commitment`; the common prefix is hashed once)."""
    run = run_id.encode()
    prefix = hashlib.sha256(b"xsilo-secagg/share-commitment/v1" + struct.pack(">I", len(run))
                            + run + struct.pack(">QQQ", round_, dealer, holder))
    out = []
    for p, share in enumerate(shares):
        h = prefix.copy()
        h.update(struct.pack(">Q", p) + share)
        out.append(h.digest()[:COMMITMENT_BYTES])
    return b"".join(out)


def committed(commitments: bytes, position: int) -> bytes:
    """The commitment at ``position`` of a bundle's concatenated commitments."""
    return commitments[position * COMMITMENT_BYTES:(position + 1) * COMMITMENT_BYTES]

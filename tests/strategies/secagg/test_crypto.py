"""X25519 + HKDF key derivation and AES-GCM share sealing: known answers and tamper/replay."""

from __future__ import annotations

import pytest

from strategies.secagg import crypto
from xsilo.errors import ProtocolError

# RFC 7748 §6.1 (X25519 Diffie-Hellman test vector)
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")


class _Fixed:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_rfc7748_public_keys():
    assert crypto.generate_keypair(rng=_Fixed(ALICE_SK)).public == ALICE_PK
    assert crypto.generate_keypair(rng=_Fixed(BOB_SK)).public == BOB_PK


def test_pair_keys_agree_and_are_separated_by_purpose_and_run():
    k_ab = crypto.derive_pair_key(private=ALICE_SK, peer_public=BOB_PK, purpose="mask",
                                  run_id="r", me=1, peer=2)
    k_ba = crypto.derive_pair_key(private=BOB_SK, peer_public=ALICE_PK, purpose="mask",
                                  run_id="r", me=2, peer=1)
    assert k_ab == k_ba and len(k_ab) == 32
    assert k_ab != crypto.derive_pair_key(private=ALICE_SK, peer_public=BOB_PK, purpose="enc",
                                          run_id="r", me=1, peer=2)
    assert k_ab != crypto.derive_pair_key(private=ALICE_SK, peer_public=BOB_PK, purpose="mask",
                                          run_id="r2", me=1, peer=2)


def test_round_seeds_are_symmetric_and_differ_per_round():
    key = bytes(32)
    s1 = crypto.derive_round_seed(key, run_id="r", round_=1, a=3, b=7)
    assert s1 == crypto.derive_round_seed(key, run_id="r", round_=1, a=7, b=3)
    assert s1 != crypto.derive_round_seed(key, run_id="r", round_=2, a=3, b=7)


def test_low_order_public_key_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="invalid"):
        crypto.derive_pair_key(private=ALICE_SK, peer_public=bytes(32), purpose="enc",
                               run_id="r", me=1, peer=2)


def _ad(**over):
    base = dict(kind="round-shares", run_id="run", round_=3, sender=1, recipient=2,
                active_digest=crypto.set_digest([1, 2, 3]))
    return crypto.associated_data(**{**base, **over})


def test_seal_open_roundtrip_with_fresh_nonces():
    key = bytes(range(32))
    a, b = crypto.seal(key, b"share", ad=_ad()), crypto.seal(key, b"share", ad=_ad())
    assert a[:12] != b[:12]
    assert crypto.open_sealed(key, a, ad=_ad(), sender=1, recipient=2) == b"share"


@pytest.mark.parametrize("over", [{"round_": 4}, {"recipient": 3}, {"sender": 3}, {"run_id": "x"},
                                  {"active_digest": crypto.set_digest([1, 2])}, {"kind": "other"}])
def test_replay_into_another_context_is_rejected(over):
    key = bytes(range(32))
    blob = crypto.seal(key, b"share", ad=_ad())
    with pytest.raises(ProtocolError, match="tampered or replayed share message from silo 1 to silo 2"):
        crypto.open_sealed(key, blob, ad=_ad(**over), sender=1, recipient=2)


def test_flipped_bit_and_truncation_are_rejected():
    key = bytes(range(32))
    blob = bytearray(crypto.seal(key, b"share", ad=_ad()))
    blob[20] ^= 1
    with pytest.raises(ProtocolError, match="tampered"):
        crypto.open_sealed(key, bytes(blob), ad=_ad(), sender=1, recipient=2)
    with pytest.raises(ProtocolError, match="truncated"):
        crypto.open_sealed(key, bytes(blob[:10]), ad=_ad(), sender=1, recipient=2)


def test_keypair_repr_hides_the_private_key():
    kp = crypto.generate_keypair(rng=_Fixed(ALICE_SK))
    assert ALICE_SK.hex()[:16] not in repr(kp)

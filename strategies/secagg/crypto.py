"""Key agreement, key derivation and authenticated share encryption, all from ``cryptography``.

* X25519 (RFC 7748) key pairs; the raw shared secret never leaves :func:`derive_pair_key`,
  which passes it through HKDF-SHA256 (RFC 5869) with an ``info`` label naming the purpose,
  the run and the (unordered) pair. One HKDF object per derivation (they are single-use).
* Per-round seeds: ``HKDF(K_ij, info = "round-seed" ‖ run ‖ round ‖ min(i,j) ‖ max(i,j))``
  (Bonawitz et al. 2017 agree one key per pair; deriving per round from it is what lets keys
  be agreed once per run).
* AES-256-GCM (NIST SP 800-38D) with a fresh random 12-byte nonce per message and associated
  data binding kind, run, round, sender, recipient and a digest of the round's active set.
  Any mismatch — a flipped bit, another round, another recipient — fails the tag, and
  :func:`open_sealed` turns ``InvalidTag`` into :class:`~xsilo.errors.ProtocolError`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from strategies.randomness import ByteSource, SystemSource
from xsilo.errors import ProtocolError

__all__ = [
    "KeyPair",
    "associated_data",
    "check_public_key",
    "derive_pair_key",
    "derive_round_seed",
    "round_key_seed",
    "generate_keypair",
    "open_sealed",
    "seal",
    "set_digest",
]

PROTOCOL_LABEL = b"xsilo-secagg/v1"
KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class KeyPair:
    """A raw X25519 key pair (32-byte private scalar, 32-byte public point)."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"KeyPair(public={self.public.hex()[:16]}…)"


def generate_keypair(*, rng: ByteSource | None = None) -> KeyPair:
    """A fresh X25519 key pair from ``rng`` (default ``os.urandom``); clamping is X25519's."""
    raw = (rng or SystemSource()).read(KEY_BYTES)
    private = X25519PrivateKey.from_private_bytes(raw)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(private=raw, public=public)


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _info(purpose: str, run_id: str, *numbers: int) -> bytes:
    bad = [n for n in numbers if not 0 <= n < 1 << 64]
    if bad:  # ids and rounds are parsed as 0..2^63−1; anything else never reaches a key
        raise ProtocolError(f"{purpose}: {bad[0]} is not a 64-bit unsigned id or round number")
    return (PROTOCOL_LABEL + _field(purpose.encode()) + _field(run_id.encode())
            + b"".join(struct.pack(">Q", n) for n in numbers))


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def check_public_key(public: bytes, *, owner: str) -> None:
    """ProtocolError unless ``public`` is a 32-byte X25519 key of large order.

    A low-order point (the all-zero key among them) makes every exchange with it give the
    all-zero secret; OpenSSL refuses such an exchange, so the test exchange with a fresh
    key fails exactly for those points (RFC 7748, §6.1).
    """
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise ProtocolError(f"{owner}'s X25519 public key {public.hex()[:16]}… is not a valid "
                            "key of large order (all-zero or low-order point); it must "
                            "re-advertise a freshly generated key") from None


def _exchange(private: bytes, peer_public: bytes, what: str, fix: str) -> bytes:
    """``X25519(private, peer_public)``; a malformed or low-order key is a ProtocolError."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # wrong length or a low-order point (all-zero shared secret)
        raise ProtocolError(f"{what} is invalid ({exc}); {fix}") from exc


def derive_pair_key(*, private: bytes, peer_public: bytes, purpose: str, run_id: str,
                    me: int, peer: int) -> bytes:
    """``HKDF(X25519(sk_me, pk_peer), info = purpose ‖ run ‖ min ‖ max)`` — the same on both ends.

    ``purpose`` is ``"mask"`` (pairwise mask key) or ``"enc"`` (share-encryption key).
    """
    shared = _exchange(private, peer_public, f"silo {peer}'s {purpose} public key",
                       "it must re-advertise a fresh X25519 key")
    return _hkdf(shared, _info(purpose, run_id, min(me, peer), max(me, peer)))


def derive_round_seed(pair_key: bytes, *, run_id: str, round_: int, a: int, b: int) -> bytes:
    """The per-round pairwise mask seed ``s_ab,r = HKDF(K_ab, info = run ‖ r ‖ min ‖ max)``.

    One-way: revealing ``s_ab,r`` discloses neither ``K_ab`` nor any other round's seed.
    """
    return _hkdf(pair_key, _info("round-seed", run_id, round_, min(a, b), max(a, b)))


def round_key_seed(*, private: bytes, peer_public: bytes, run_id: str, round_: int, me: int,
                   peer: int) -> bytes:
    """Round-keys mode: the pair seed ``s_ij,r = HKDF(X25519(rk_i,r, rpk_j,r), info =
    "round-key-seed" ‖ run ‖ r ‖ min ‖ max)`` from this round's fresh key pairs. Either end's
    private round key gives it: the silos compute it with their own, the coordinator with a
    dropped silo's reconstructed one (that key was used for this round only)."""
    shared = _exchange(private, peer_public, f"silo {peer}'s round key",
                       "it must deal again with a fresh X25519 key")
    return _hkdf(shared, _info("round-key-seed", run_id, round_, min(me, peer), max(me, peer)))


def set_digest(silos: Sequence[int]) -> bytes:
    """SHA-256 of the sorted silo ids: binds a share message to the round's active set."""
    return hashlib.sha256(b"".join(struct.pack(">Q", s) for s in sorted(silos))).digest()


def associated_data(*, kind: str, run_id: str, round_: int, sender: int, recipient: int,
                    active_digest: bytes) -> bytes:
    """Canonical AES-GCM associated data.

    ``label ‖ kind ‖ run ‖ round ‖ sender ‖ recipient ‖ H(U_r)``, every field length-prefixed
    or fixed-width, so no two contexts encode to the same bytes.
    """
    return (_info(kind, run_id, round_, sender, recipient) + _field(active_digest))


def seal(key: bytes, plaintext: bytes, *, ad: bytes, rng: ByteSource | None = None) -> bytes:
    """AES-256-GCM: ``nonce (12 bytes, fresh) ‖ ciphertext ‖ tag``."""
    nonce = (rng or SystemSource()).read(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, blob: bytes, *, ad: bytes, sender: int, recipient: int) -> bytes:
    """Inverse of :func:`seal`; a bad tag raises :class:`ProtocolError` naming the pair."""
    if len(blob) < NONCE_BYTES + 16:
        raise ProtocolError(f"share message from silo {sender} to silo {recipient} is truncated "
                            f"({len(blob)} bytes)")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
    except InvalidTag:
        raise ProtocolError(
            f"tampered or replayed share message from silo {sender} to silo {recipient}: "
            "its AES-GCM tag does not verify for this run, round and recipient; "
            "the message is dropped") from None

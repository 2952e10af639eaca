"""The silo's state in Flower's ``context.state``, sealed under a key only the silo's account
can read.

Flower keeps a ClientApp's ``context.state`` in the SuperNode and hands it, with every task,
to whichever process acquires the task on the SuperNode's local Runtime API — an API that
asks for no credential. What xsilo keeps there (the secure-aggregation protocol state: the
silo's private keys and the shares it holds of its peers' secrets; how it joined the run)
therefore travels sealed: AES-256-GCM under ``<workspace>/state.key`` (32 random bytes,
0600, made on first use), with the record's name as associated data. Another process that
takes a task reads ciphertext only, and a state it pushes back does not authenticate: the
silo logs that loudly and starts over as after a restart (fresh keys at the next key
request), never on a state it did not write itself.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xsilo.errors import ConfigError

__all__ = ["KEY_FILE", "SealBroken", "seal", "state_key", "unseal"]

log = logging.getLogger(__name__)

KEY_FILE = "state.key"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION = b"xsilo-sealed-state-v1\0"


class SealBroken(Exception):
    """A sealed state that does not authenticate under this silo's key."""


def state_key(workspace: Path) -> bytes:
    """This silo's sealing key (``<workspace>/state.key``), created 0600 on first use.

    A key file that another account could read or write, or of the wrong size, is a
    :class:`ConfigError` naming the fix; it is never silently replaced.
    """
    path = Path(workspace) / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _create(path)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.geteuid():
            raise ConfigError(
                f"{path} is readable or writable by other accounts (mode "
                f"{stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}); it seals this silo's "
                f"secure-aggregation keys. Fix: chmod 600 {path} (owned by the silo's account)")
        key = fh.read(_KEY_BYTES + 1)
    if len(key) != _KEY_BYTES:
        raise ConfigError(f"{path} holds {len(key)} bytes, not {_KEY_BYTES}; remove it (the silo "
                          "makes a new one and re-keys at the next secure-aggregation run)")
    return key


def _create(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(_KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            return state_key(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {"m": {str(k): _encode(v) for k, v in value.items()}}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "b" in value:
            return bytes.fromhex(value["b"])
        return {k: _decode(v) for k, v in value["m"].items()}
    return value


def seal(record: Mapping[str, Any], key: bytes, *, label: str) -> bytes:
    """``record`` (ints, floats, str, bool, bytes and lists of them) as one sealed blob."""
    plain = json.dumps(_encode(dict(record)), sort_keys=True, separators=(",", ":")).encode()
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plain, _VERSION + label.encode())


def unseal(blob: Any, key: bytes, *, label: str) -> dict[str, Any]:
    """The record :func:`seal` sealed under ``key`` and ``label``; :class:`SealBroken` for
    anything else (another key, another label, a changed byte, not a sealed blob)."""
    if not isinstance(blob, bytes) or len(blob) < _NONCE_BYTES + 16:
        raise SealBroken(f"{label}: not a sealed state")
    try:
        plain = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                    _VERSION + label.encode())
    except InvalidTag:
        raise SealBroken(f"{label}: the sealed state does not authenticate under this "
                         "silo's key") from None
    record = _decode(json.loads(plain))
    if not isinstance(record, dict):
        raise SealBroken(f"{label}: the sealed state is not a record")
    return record

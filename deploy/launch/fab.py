"""Flower app bundles (FABs): the xsilo run stub, and the hash that names a bundle.

``flwr run`` zips an app directory into a FAB with Flower's own builder, which is
deterministic (sorted files, a fixed date on every zip entry, ``pyproject.toml``
re-serialised), and names the bundle by the SHA-256 of its bytes. So anyone holding the same
directory builds the same bytes: the coordinator submits :data:`XSILO_APP`, and each silo
builds it too and gets the hash its SuperNode will see for an xsilo run
(:func:`xsilo_app_hash`), without asking anyone.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from xsilo.errors import ConfigError

__all__ = ["XSILO_APP", "build_fab", "fab_app_id", "fab_digest", "normalize_fab_hash",
           "xsilo_app_hash"]

# The thin app `xsilo coordinator run` ships: no code, its components are the installed
# coordinator (ServerApp) and silo (ClientApp).
XSILO_APP = Path(__file__).parent / "flower_app"

_HEX64 = re.compile(r"[0-9a-f]{64}")  # fullmatch: `$` allows a final "\n"


def fab_digest(content: bytes) -> str:
    """SHA-256 hex of a FAB's bytes: Flower's ``fab_hash`` for it."""
    return hashlib.sha256(content).hexdigest()


def normalize_fab_hash(value: str) -> str:
    """``"sha256:AB…"`` / ``"ab…"`` → 64 lower-case hex digits; ConfigError otherwise."""
    text = value.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(text):
        raise ConfigError(f"app hash {value!r} is not a SHA-256 hash (64 hex digits, as "
                          "`xsilo silo apps` and `flwr build` show it)")
    return text


def build_fab(app_dir: Path) -> bytes:
    """The FAB ``flwr run`` would upload for ``app_dir`` (the same builder, the same bytes)."""
    from flwr.cli.build import build_fab_from_disk

    app_dir = Path(app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} is not a Flower app directory (no pyproject.toml)")
    try:
        return build_fab_from_disk(app_dir)
    except Exception as exc:  # ValueError, OSError, click exceptions for over-deep paths
        raise ConfigError(f"cannot build a FAB from {app_dir}: {exc}") from exc


def fab_app_id(content: bytes) -> str:
    """``@publisher/name==version`` from a FAB's ``pyproject.toml`` (read, never run)."""
    from flwr.common.config import get_fab_config, get_metadata_from_config

    try:
        fab_id, version = get_metadata_from_config(get_fab_config(content))
    except Exception as exc:  # not a zip, no pyproject.toml, missing keys: not a FAB
        raise ConfigError(f"not a Flower app bundle (FAB): {type(exc).__name__}: {exc}; "
                          "build one with `flwr build --app APP_DIR`") from exc
    return f"@{fab_id}=={version}"


@functools.cache
def xsilo_app_hash() -> str:
    """The hash of the bundle this xsilo release's ``xsilo coordinator run`` submits."""
    return fab_digest(build_fab(XSILO_APP))

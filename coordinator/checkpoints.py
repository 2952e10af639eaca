"""A checkpoint file (``checkpoints/round-NNNN.npz``), written and read back as hostile.

One ``.npz`` holds the global model after a round, the strategy's state (``strategy/…``),
the round (``__round__``), the round loop's own state as JSON (``__meta__``:
``coordinator.resume.checkpoint_meta``) and the SHA-256 of all its arrays (``__sha256__``).
:func:`read_checkpoint` refuses (ValueError naming it) any file no run writes: unreadable, an
array digest that does not match, another round than its name says, a model tensor that is
not numeric and finite, loop state of the wrong shape. The run store
(:class:`coordinator.run_store.RunStore`) names the files and writes them atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Checkpoint", "arrays_digest", "checkpoint_bytes", "checkpoint_files", "load_npz",
           "npz_bytes", "read_checkpoint"]

_STATE_PREFIX = "strategy/"
_ROUND, _META, _DIGEST = "__round__", "__meta__", "__sha256__"


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load an ``.npz`` written by the run store into an ordered dict."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        for part in (name, a.dtype.str, repr(a.shape)):
            blob = part.encode()
            h.update(len(blob).to_bytes(8, "big") + blob)
        h.update(a.nbytes.to_bytes(8, "big"))
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """One verified checkpoint: the model and state after ``server_round``, the round
    loop's own ``meta`` (its pending row, failed rounds, run token), and the newer files
    that were skipped because they did not verify (``skipped``: file name → why)."""

    server_round: int
    model: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


_CHECKPOINT_NAME = re.compile(r"round-(\d+)\.npz")


def checkpoint_files(folder: Path) -> list[tuple[int, Path]]:
    """(round, path) of each ``round-<n>.npz`` in ``folder``, oldest round first: by the
    number, not the name (``round-10000`` is newer than ``round-9999``)."""
    found = []
    for path in folder.glob("round-*.npz"):
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_checkpoint(path: Path, named_round: int) -> Checkpoint:
    """A checkpoint file, verified; ValueError saying what is wrong with it."""
    try:
        arrays = load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    strays = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if strays:  # np.load gives raw bytes for a member that is not an .npy array
        raise ValueError(f"member(s) {strays[:5]} are not arrays")
    digest = arrays.pop(_DIGEST, None)
    if digest is None:  # every checkpoint the run store writes carries one
        raise ValueError("it carries no SHA-256 (__sha256__ is missing)")
    if str(digest) != arrays_digest(arrays):
        raise ValueError("its SHA-256 does not match its arrays (damaged after it was written)")
    if _ROUND not in arrays:
        raise ValueError("it names no round (__round__ is missing)")
    server_round = arrays.pop(_ROUND)
    if server_round.shape != () or server_round.dtype.kind not in "iu" or server_round < 0:
        raise ValueError(f"__round__ is {server_round.dtype} of shape {server_round.shape}, "
                         "not a round number")
    if int(server_round) != named_round:
        raise ValueError(f"it holds round {int(server_round)}, not the round its name says")
    meta = _read_meta(arrays.pop(_META)) if _META in arrays else {}
    state = {k[len(_STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(_STATE_PREFIX)}
    model = {k: v for k, v in arrays.items() if not k.startswith(_STATE_PREFIX)}
    for key, value in model.items():
        if value.dtype.kind not in "iuf" or (value.dtype.kind == "f"
                                             and not np.isfinite(value).all()):
            raise ValueError(f"model tensor {key!r} is not numeric and finite")
    return Checkpoint(int(server_round), model, state, meta)


_PENDING_FIELDS: dict[str, Callable[[Any], bool]] = {  # coordinator.rows.PendingRow, as JSON
    "server_round": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "status": lambda v: isinstance(v, str),
    "seconds": lambda v: _is_number(v),
    "train_loss": lambda v: v is None or _is_number(v),
    "contributors": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "rejected": lambda v: isinstance(v, dict),
    "reason": lambda v: v is None or isinstance(v, str),
    "extra": lambda v: isinstance(v, dict),
    "tallies": lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_meta(raw: np.ndarray) -> dict[str, Any]:
    """The round loop's state in a checkpoint (``coordinator.resume.checkpoint_meta``),
    checked field by field; ValueError naming the first field that is wrong."""
    try:
        meta = json.loads(str(raw)) if raw.shape == () else None
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise ValueError("__meta__ is not a JSON object")
    failed = meta.get("failed_rounds", [])
    if not isinstance(failed, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in failed):
        raise ValueError("__meta__ failed_rounds is not a list of round numbers")
    if not isinstance(meta.get("run_token"), str | None):
        raise ValueError("__meta__ run_token is not text")
    pending = meta.get("pending")
    if pending is not None:
        if not isinstance(pending, dict) or set(pending) - set(_PENDING_FIELDS) or any(
                key not in pending for key in ("server_round", "status", "seconds")):
            raise ValueError("__meta__ pending is not a round row (unknown or missing fields)")
        wrong = [key for key, value in pending.items() if not _PENDING_FIELDS[key](value)]
        if wrong:
            raise ValueError(f"__meta__ pending.{wrong[0]} = {pending[wrong[0]]!r:.60} has the "
                             "wrong type")
    return meta


def checkpoint_bytes(server_round: int, model: Mapping[str, np.ndarray],
                     strategy_state: Mapping[str, np.ndarray],
                     meta: Mapping[str, Any] | None = None) -> bytes:
    """A checkpoint file's bytes: the model, the strategy's state (``strategy/…``), the
    round, the round loop's ``meta`` as JSON, and the SHA-256 of all of them."""
    arrays = {k: np.asarray(v) for k, v in model.items()}
    arrays.update({_STATE_PREFIX + k: np.asarray(v) for k, v in strategy_state.items()})
    arrays[_ROUND] = np.asarray(server_round)
    arrays[_META] = np.asarray(json.dumps(dict(meta or {}), sort_keys=True, default=_plain))
    arrays[_DIGEST] = np.asarray(arrays_digest(arrays))
    return npz_bytes(arrays)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays in a checkpoint's meta."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

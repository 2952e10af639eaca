"""The silo's half of update compression (clear rounds): encode the update as the run asks,
and keep top-k's error-feedback residual in the silo's workspace.

The residual (what top-k did not send yet) is part of the silo's update, so it stays at the
silo: ``<workspace>/residuals/<run>.npy``, owner-only, written atomically, one per run.
Nothing of it leaves except through later rounds' top-k values.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from strategies.compression import Compressed, decode, encode
from xsilo.files import atomic_write, hashed_name
from xsilo.protocol import flatten_update
from xsilo.terms import TrainTerms

__all__ = ["RESIDUALS", "compress_update", "residual_path"]

RESIDUALS = "residuals"  # <workspace>/residuals/: top-k's error feedback, one file per run


def residual_path(workspace: Path, run_token: str) -> Path:
    """Where top-k's residual of the run ``run_token`` is kept."""
    return Path(workspace) / RESIDUALS / f"{hashed_name(run_token)}.npy"


def _load_residual(path: Path, length: int) -> np.ndarray:
    try:
        residual = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return np.zeros(length, dtype=np.float32)
    if residual.shape != (length,) or residual.dtype != np.float32:
        return np.zeros(length, dtype=np.float32)  # another model: start without one
    return residual


def compress_update(delta: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray],
                    terms: TrainTerms, *, workspace: Path) -> Compressed:
    """``delta`` (the round's update of ``model``) compressed as ``terms`` ask."""
    vector = flatten_update(delta, model, dtype=np.float32)
    method, fraction = terms.compression, terms.compression_fraction
    if method == "topk":
        path = residual_path(workspace, terms.run_token)
        corrected = vector + _load_residual(path, vector.size)
        compressed = encode(corrected, method, fraction=fraction)
        residual = corrected - decode(compressed, length=vector.size, fraction=fraction)
        buffer = io.BytesIO()
        np.save(buffer, residual.astype(np.float32), allow_pickle=False)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, buffer.getvalue(), mode=0o600)
        return compressed
    flat_model = (flatten_update(model, model, dtype=np.float32) if method == "prune" else None)
    return encode(vector, method, fraction=fraction, model=flat_model)


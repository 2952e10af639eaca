"""A secure run's settings: its threshold, whether it deals round keys, and the protocol
configuration the coordinator and the silos share (Flower-free).

* **threshold** ``t`` (:func:`run_threshold`, the one place it is derived; silos are told
  it at join): ``secagg_threshold``, else :func:`default_threshold`. Checked against the
  silos that joined (:func:`protocol_config`): above them every round would fail, and one
  that is not a strict majority every silo refuses (it permits split-view recovery);
* **round keys** (``secagg_round_keys``, :func:`use_round_keys`): ``"on"``, ``"off"`` or
  ``"auto"`` (from :data:`ROUND_KEYS_FROM` silos);
* **the protocol's configuration** (:func:`protocol_config`): quantized updates masked mod
  2^b, or with the distributed DP mechanism the silos' own pre-encoded vectors
  (:mod:`strategies.secagg.encoded`); either way each silo's metrics ride along in
  :data:`AUX_LENGTH` auxiliary slots. With DP the run's privacy is bound to the roster and
  threshold here;
* **the settings event** (:func:`describe`): what the run's event log records of them.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from coordinator.config import RunConfig
from coordinator.privacy import RunPrivacy
from strategies.secagg import CoordinatorState, make_config
from strategies.secagg.config import SecAggConfig, make_encoded_config
from xsilo.errors import SecureAggregationError
from xsilo.protocol import model_length
from xsilo.terms import AGGREGATED_METRICS

__all__ = ["AUX_LENGTH", "ROUND_KEYS_FROM", "SHARE_WARNING_BYTES", "default_threshold",
           "describe", "protocol_config", "run_threshold", "use_round_keys"]

AUX_LENGTH = 2 * len(AGGREGATED_METRICS)
"""Auxiliary slots of every secure run: each silo's metrics, summed (xsilo.terms)."""

SHARE_WARNING_BYTES = 1 << 30
"""Above this many bytes of share bundles held per round (about 275 silos) the coordinator
warns at the start of a secure run: the protocol's dealing grows as n³."""

ROUND_KEYS_FROM = 200
"""``secagg_round_keys = "auto"`` deals round keys from this many silos on. At 200 silos a
silo's pair-seed dealing (O(n²·t)) takes about 0.7 s on the benchmark machine, and 0.57 GB of
shares cross the coordinator a round. The dealing trip round keys add measured 1.8 s on real
processes (docs/secure-aggregation.md, *Round keys*)."""


def use_round_keys(setting: str, num_silos: int) -> bool:
    """Whether a secure run with ``num_silos`` silos deals round keys: ``"on"``, ``"off"``,
    or ``"auto"`` (from :data:`ROUND_KEYS_FROM` silos)."""
    return setting == "on" or (setting == "auto" and num_silos >= ROUND_KEYS_FROM)


def default_threshold(num_silos: int, min_silos: int) -> int:
    """``max(2, min_silos, ⌈2n/3⌉)``: tolerates a third of the silos dropping out in a round,
    and a sum over at least two thirds of them reveals little about any one."""
    return max(2, min_silos, math.ceil(2 * num_silos / 3))


def run_threshold(config: RunConfig, num_silos: int) -> int:
    """The threshold a secure run uses with ``num_silos`` silos: ``secagg_threshold`` when
    set, else :func:`default_threshold` (the one place it is derived; silos are told it)."""
    return config.secagg_threshold or default_threshold(num_silos, config.min_silos)


def _check_threshold(threshold: int, n: int) -> None:
    if threshold > n:
        raise SecureAggregationError(
            f"secagg_threshold {threshold} is above the {n} silo(s) that joined; lower "
            f"secagg_threshold to ≤ {n} or wait for more silos (expected_silos)")
    if 2 * threshold <= n:  # every silo refuses it: it permits split-view recovery
        raise SecureAggregationError(
            f"secagg_threshold {threshold} is not a strict majority of the {n} silos that "
            f"joined; silos refuse it (a coordinator showing different survivor sets to "
            f"different silos could unmask one update); set secagg_threshold ≥ {n // 2 + 1} "
            "or leave it 0 (automatic)")


def protocol_config(config: RunConfig, num_silos: int, template: Mapping[str, np.ndarray],
                    privacy: RunPrivacy | None) -> SecAggConfig:
    """The protocol's configuration for ``num_silos`` joined silos (roster ``0..n−1``) and a
    model shaped like ``template``; binds ``privacy`` (if any) to the roster and threshold.
    SecureAggregationError when the threshold does not fit the silos that joined."""
    n = num_silos
    threshold = run_threshold(config, n)
    _check_threshold(threshold, n)
    run_id, length = f"{config.name}-{secrets.token_hex(8)}", model_length(template)
    ddg = (privacy.bind_secure(num_silos=n, threshold=threshold, dimension=length)
           if privacy is not None and privacy.dp.mechanism == "distributed" else None)
    round_keys = use_round_keys(config.secagg_round_keys, n)
    if ddg is not None:  # silos mask their own KLS encodings (noise included), mod 2^b
        return make_encoded_config(
            run_id=run_id, roster=list(range(n)), threshold=threshold,
            length=ddg.calibrate().padded_dim, modulus_bits=ddg.modulus_bits,
            aux_length=AUX_LENGTH, round_keys=round_keys)
    secagg = make_config(
        run_id=run_id, roster=list(range(n)), threshold=threshold, length=length,
        clip=config.secagg_clip, bits=config.secagg_bits,
        max_weight=config.secagg_max_weight, aux_length=AUX_LENGTH,
        round_keys=round_keys)
    if privacy is not None:  # central: silos clip before masking
        privacy.bind_secure(num_silos=n, threshold=threshold, dimension=length,
                            quant_step=secagg.quant.step)
    return secagg


def describe(secagg: SecAggConfig, state: CoordinatorState | None, privacy: RunPrivacy | None,
             *, silos: int, share_bytes_held: int) -> dict[str, Any]:
    """The run's secure-aggregation parameters (for the run's event log)."""
    q = secagg.quant
    signed = sum(1 for advert in (state.directory.values() if state else ())
                 if advert.certificate)
    out: dict[str, Any] = {
        "threshold": secagg.threshold, "silos": silos, "signed_adverts": signed,
        "round_keys": secagg.round_keys,
        "share_bytes_held_per_round": share_bytes_held,
        "length": secagg.length, "clip": q.clip, "bits": q.bits,
        "max_weight": q.max_weight, "modulus_bits": q.modulus_bits, "step": q.step}
    if privacy is not None and privacy.calibration is not None:
        cal = privacy.calibration
        out.update({"pre_encoded": "distributed discrete Gaussian", "clip": None,
                    "bits": None, "max_weight": None, "step": None,
                    "granularity": cal.granularity, "rho": cal.rho,
                    "local_variance": float(cal.local_variance),
                    "wrap_probability_union": cal.wrap_probability_union})
    return out

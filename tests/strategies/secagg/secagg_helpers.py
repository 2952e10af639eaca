"""Shared helpers for the secure-aggregation tests (imported by name via conftest's sys.path)."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings

from strategies.secagg import make_config
from strategies.randomness import KeystreamSource
from strategies.secagg.simulate import LocalFederation

# XSILO_SECAGG_SLOW=1 runs many more hypothesis cases (minutes instead of seconds).
SLOW = os.environ.get("XSILO_SECAGG_SLOW") == "1"


def prop_settings(fast: int, slow: int = 1000) -> settings:
    """Hypothesis settings: ``fast`` derandomized cases by default, ``slow`` random ones when slow."""
    return settings(max_examples=slow if SLOW else fast, deadline=None, derandomize=not SLOW,
                    suppress_health_check=[HealthCheck.too_slow])


def seeded(tag: str) -> KeystreamSource:
    """A deterministic cryptographic byte source (AES-CTR under a key derived from ``tag``)."""
    return KeystreamSource(tag.encode().ljust(32, b"\0")[:32])


def lax_limits():
    """Silo limits without the majority rule: only to show an equivocation attack is real
    when the rule is missing."""
    from strategies.secagg.silo import SiloLimits

    limits = SiloLimits()
    object.__setattr__(limits, "threshold_fraction", 0.0)
    return limits


def small_federation(n: int = 5, *, threshold: int = 3, length: int = 6, seed: bytes = b"fed",
                     run_id: str = "run-1", round_keys: bool = False) -> LocalFederation:
    config = make_config(run_id=run_id, roster=list(range(10, 10 + n)), threshold=threshold,
                         length=length, clip=1.0, bits=16, max_weight=50, round_keys=round_keys)
    fed = LocalFederation(config, seed=seed)
    fed.setup()
    return fed


def random_inputs(fed: LocalFederation, seed: int) -> tuple[dict, dict]:
    # numpy.random only makes up test *data* here, never secrets or masks.
    gen = np.random.default_rng(seed)
    updates = {s: gen.uniform(-1.2, 1.2, fed.config.length) for s in fed.config.roster}
    weights = {s: int(gen.integers(0, fed.config.quant.max_weight + 1)) for s in fed.config.roster}
    return updates, weights

"""Fixtures for the secure-aggregation tests; puts ``secagg_helpers`` on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from secagg_helpers import small_federation  # noqa: E402

from strategies.secagg.simulate import LocalFederation  # noqa: E402


@pytest.fixture
def fed() -> LocalFederation:
    """Five keyed silos (ids 10–14), threshold 3, six parameters, deterministic secrets."""
    return small_federation()

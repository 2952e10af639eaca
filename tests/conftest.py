"""Shared fixtures: a small non-IID federation on disk (the demo's breast-cancer split)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from silo_client.config import write_silo_config
from xsilo.demo_data import demo_schema, write_demo_data

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def make_federation(root: Path, *, model: str = "sklearn:LogisticRegression",
                    seed: int = 0) -> list[Path]:
    """Write the three demo hospitals with silo.toml files; return the config paths."""
    configs = []
    for silo in write_demo_data(root, seed=seed):
        configs.append(write_silo_config(
            root / silo.name / "silo.toml", name=silo.name, train=silo.train, test=silo.test,
            schema=demo_schema(), model=model))
    return configs


@pytest.fixture
def federation(tmp_path: Path) -> list[Path]:
    """Three demo hospital silos (LogisticRegression) under ``tmp_path``."""
    return make_federation(tmp_path / "silos")


@pytest.fixture
def make_silos():
    """Factory: ``make_silos(root, model=...)`` writes the demo hospitals under ``root``."""
    return make_federation

"""Shared fixtures: a small non-IID federation on disk (the demo's breast-cancer split)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from silo_client.config import write_silo_config
from federation.demo_data import demo_schema, write_demo_data

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
def task_identity() -> Iterator[None]:
    """Messages built outside a Flower runtime take their ids from TaskIdentity: run 7,
    node 1 while the test runs, and as they were afterwards (``usefixtures`` it)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = {a: getattr(TaskIdentity, f"_{a}") for a in ("run_id", "node_id", "task_id")}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    for attr, value in saved.items():
        setattr(TaskIdentity, attr, value)


@pytest.fixture
def federation(tmp_path: Path) -> list[Path]:
    """Three demo hospital silos (LogisticRegression) under ``tmp_path``."""
    return make_federation(tmp_path / "silos")


@pytest.fixture
def make_silos():
    """Factory: ``make_silos(root, model=...)`` writes the demo hospitals under ``root``."""
    return make_federation


def _processes_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if state != "Z" and (marker in cmdline or marker in environ):
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process started by a test (SuperLink, SuperNode, ServerApp,
    ClientApp, nginx …) outlived the suite: every such process carries the session's
    temporary directory in its command line or environment (FLWR_HOME, prefix, paths)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(session.config, "workerinput", None) is not None:
        return
    try:
        base = str(factory.getbasetemp())
    except Exception:
        return
    leftovers = _processes_mentioning(base)
    if leftovers:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "LEFTOVER PROCESSES after the test session (a test did not stop what it started):\n  "
            + "\n  ".join(leftovers), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

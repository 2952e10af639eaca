"""Every TOML block in the docs parses, and every run configuration among them is one
`xsilo coordinator run --config` accepts: loaded and checked as a run's start checks it
(strategy and its parameters, secure aggregation with DP), so a documented snippet can be
copied as it stands."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from coordinator.config import RunConfig, load_run_config
from coordinator.preflight import check_run

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                *(ROOT / "examples").glob("*/README.md")])


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.finditer(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            line = text[:block.start()].count("\n") + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", block.group(1)))
    return found


BLOCKS = _blocks()
RUN_KEYS = {f.name for f in fields(RunConfig)}


def test_the_docs_show_run_configurations() -> None:
    assert sum("[run" in text for _, text in BLOCKS) >= 5, [where for where, _ in BLOCKS]


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_a_documented_toml_block_is_valid(where: str, text: str, tmp_path: Path) -> None:
    data = tomllib.loads(text)  # every block is TOML
    stray = sorted(k for k in data if k.replace("-", "_") in RUN_KEYS)
    assert not stray, f"{where}: run settings {stray} outside a [run] table are refused"
    if "run" not in data:
        return
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    check_run(load_run_config(path), evaluator=False)

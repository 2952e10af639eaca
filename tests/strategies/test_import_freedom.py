"""Every module of ``strategies`` imports, in a fresh interpreter, without Flower, torch,
Opacus or Ray.

The modules are found by walking the package, so a new module is covered without editing this
test. Each is imported in its own interpreter: a module that loads Flower is caught even when
the modules imported before it were clean. The interpreters run concurrently.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import strategies

FORBIDDEN = ("flwr", "opacus", "ray", "torch")
# The only module allowed to load them: record-level DP-SGD is torch + Opacus by design.
EXEMPT = {"strategies.dp.dpsgd"}
MIN_MODULES = 30  # a walk that finds fewer is broken, and must not pass vacuously

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))))
"""
_ROOT = Path(strategies.__file__).resolve().parent.parent


def _walk() -> list[str]:
    def fail(name: str) -> None:
        raise ImportError(f"walking strategies: cannot import package {name}")

    found = pkgutil.walk_packages(strategies.__path__, prefix="strategies.", onerror=fail)
    return sorted({"strategies", *(info.name for info in found)})


ALL_MODULES = _walk()
CHECKED = [name for name in ALL_MODULES if name not in EXEMPT]


def _probe(module: str, *, extra_path: Path | None = None) -> tuple[list[str] | None, str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _PROBE, module, *FORBIDDEN], cwd=_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[list[str] | None, str]]:
    """module → (forbidden top-level packages it loaded, or None when the import failed; error)."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(CHECKED, pool.map(_probe, CHECKED)))


def test_the_walk_finds_every_module() -> None:
    assert len(ALL_MODULES) >= MIN_MODULES, ALL_MODULES
    assert {"strategies.randomness", "strategies.secagg.prg", "strategies.dp.noise"} <= set(
        ALL_MODULES)
    assert EXEMPT <= set(ALL_MODULES), f"stale exemption: {sorted(EXEMPT - set(ALL_MODULES))}"


def test_the_probe_sees_a_forbidden_import(tmp_path: Path) -> None:
    # A stand-in "flwr" (importing the real one takes seconds) behind an innocent module.
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "__init__.py").write_text("")
    (tmp_path / "innocent.py").write_text("import json\nimport flwr\n")
    assert _probe("innocent", extra_path=tmp_path) == (["flwr"], "")
    assert _probe("json") == ([], "")


@pytest.mark.parametrize("module", CHECKED)
def test_module_imports_without_flower_or_torch(module: str, loaded) -> None:
    bad, error = loaded[module]
    assert bad is not None, f"{module} does not import in a fresh interpreter: {error}"
    assert not bad, (f"importing {module} in a fresh interpreter loaded {', '.join(bad)}; "
                     f"strategies must stay free of {', '.join(FORBIDDEN)} (only "
                     f"{', '.join(sorted(EXEMPT))} may use torch)")

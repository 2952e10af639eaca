"""The layout is the architecture: imports flow one way, the ground imports nothing of the
project, no two files import each other (directly or round about), and shared helpers have
one home each."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from xsilo.terms import TERM_KEYS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xsilo", "strategies", "deploy", "silo_client", "coordinator", "federation")
# What each package may import of the project (besides itself). The ground (xsilo) imports
# nothing; strategies and deploy stand on it; the silo and the coordinator use both; the roof
# (federation: CLI root, demo, local federations) may use everything and nothing uses it.
ALLOWED = {
    "xsilo": set(),
    "strategies": {"xsilo"},
    "deploy": {"xsilo"},
    "silo_client": {"xsilo", "strategies", "deploy"},
    "coordinator": {"xsilo", "strategies", "deploy"},
    "federation": {"xsilo", "strategies", "deploy", "silo_client", "coordinator"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """Every project module ``path`` imports, at any depth (lazy imports count too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                yield name


GRAPH = {mod: set(_imports(path)) - {mod} for mod, path in MODULES.items()}


def test_the_walk_sees_the_whole_tree() -> None:
    expected = {"xsilo.terms", "federation.cli", "deploy.pki.authority", "deploy.gateway.nginx",
                "deploy.launch.processes"}
    assert len(MODULES) > 100 and expected <= set(MODULES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package: str) -> None:
    wrong = sorted((mod, dep) for mod, deps in GRAPH.items() if mod.split(".")[0] == package
                   for dep in deps
                   if dep.split(".")[0] not in ALLOWED[package] | {package})
    assert wrong == [], f"{package} may import only {sorted(ALLOWED[package])} of the project"


def test_no_import_cycles_between_files() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def _python_files() -> Iterator[Path]:
    for top in (*PACKAGES, "tests", "examples"):
        yield from sorted((ROOT / top).rglob("*.py"))


def test_no_term_key_is_spelled_out_outside_the_terms_module() -> None:
    """Both sides import the keys from xsilo.terms; a literal elsewhere could drift."""
    found = []
    for path in _python_files():
        if path == ROOT / "xsilo" / "terms.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in TERM_KEYS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []


def _definitions(kind: type, name: str) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _python_files() if "tests" not in p.parts
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(n, kind) and getattr(n, "name", None) == name]


@pytest.mark.parametrize("kind, name", [(ast.ClassDef, "ByteSource"),
                                        (ast.ClassDef, "SystemSource"),
                                        (ast.FunctionDef, "default_source"),
                                        (ast.FunctionDef, "atomic_write"),
                                        (ast.FunctionDef, "read_toml")])
def test_shared_helpers_have_one_home(kind: type, name: str) -> None:
    assert len(_definitions(kind, name)) == 1, _definitions(kind, name)


def test_files_are_replaced_and_toml_read_only_through_xsilo_files() -> None:
    """``os.replace`` (an atomic write) and ``tomllib`` (a TOML read) live in one module."""
    found = []
    for path in _python_files():
        if "tests" in path.parts or path == ROOT / "xsilo" / "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "replace" and isinstance(
                    node.value, ast.Name) and node.value.id == "os":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: os.replace")
            if isinstance(node, ast.Import | ast.ImportFrom) and any(
                    "tomllib" in (a.name, getattr(node, "module", None)) for a in node.names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: tomllib")
    assert found == []

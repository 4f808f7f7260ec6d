"""The house rules, measured on the source tree: modules of at most 400 lines, functions of at
most 80, imports that flow one way through the layers, no import circle and no private name
imported from another module (tests included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TESTS = ROOT / "tests"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LAYERS = {
    "data": 1,
    "models": 2,
    "tamper": 3,
    "fingerprint": 4,
    "verify": 5,
    "serve": 5,
    "bench": 6,
    "cli": 7,
}
"""Each package's layer: a module may import its own layer and those below, never above."""


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module's dotted name."""
    target: str
    """The imported module's dotted name."""
    names: tuple[str, ...]
    line: int


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.py") if ".venv" not in p.parts)


def imports_of(path: Path, base: Path) -> Iterator[Import]:
    module = module_name(path, base)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(alias.name for alias in node.names)
            yield Import(module, node.module, names, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if parts[0] == "misentry" and len(parts) > 1 else None


SOURCES = python_files(SRC)
ALL_FILES = SOURCES + python_files(TESTS)
SOURCE_MODULES = {module_name(p, SRC) for p in SOURCES}


def test_the_tree_is_found() -> None:
    assert len(SOURCES) > 50
    assert "misentry.cli" in SOURCE_MODULES


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{lines} lines: split it by what it does"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_function_size(path: Path) -> None:
    long = [
        f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_from_another_module(path: Path) -> None:
    base = SRC if path.is_relative_to(SRC) else TESTS
    private = [
        f"line {imp.line}: {name} from {imp.target}"
        for imp in imports_of(path, base)
        if imp.target.startswith("misentry")
        for name in imp.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_from_a_higher_layer(path: Path) -> None:
    own = layer(module_name(path, SRC))
    upward = [
        f"line {imp.line}: {imp.target}"
        for imp in imports_of(path, SRC)
        if own is not None and (other := layer(imp.target)) is not None and other > own
    ]
    assert not upward


def resolve(target: str) -> str | None:
    """The source module a dotted import name lands in (a name imported from a package is the
    package's ``__init__`` unless it is a submodule)."""
    while target and target not in SOURCE_MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in SOURCE_MODULES}
    for path in SOURCES:
        for imp in imports_of(path, SRC):
            targets = [imp.target, *(f"{imp.target}.{name}" for name in imp.names)]
            for found in filter(None, map(resolve, targets)):
                if found != imp.module:
                    graph[imp.module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    assert cycles(import_graph()) == []

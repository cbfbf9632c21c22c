"""The shape of the house, kept by tests: no import circle, small modules and functions, and
each layer importing only what lies below it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "avatar_service"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# What each package may not import (its own layer or below only): the engine knows nothing of
# HTTP, Flask stays in http/ and the factory, and nothing below the factory reaches up to it.
FORBIDDEN = {
    "avatar_service.jobs": ("avatar_service.http", "avatar_service.services", "flask"),
    "avatar_service.comfyui": (
        "avatar_service.jobs",
        "avatar_service.http",
        "avatar_service.photos",
        "avatar_service.delivery",
        "avatar_service.services",
        "flask",
    ),
    "avatar_service.photos": ("avatar_service.jobs", "avatar_service.http", "flask"),
    "avatar_service.persistence": ("avatar_service.jobs", "avatar_service.http", "flask"),
    "avatar_service.delivery": ("avatar_service.jobs", "avatar_service.http", "flask"),
    "avatar_service.storage": ("avatar_service.jobs", "avatar_service.http", "flask"),
    "avatar_service.errors": ("flask", "werkzeug"),
    "avatar_service.config": ("flask",),
    # A worker agent runs the engine with no database, no HTTP face and no service registry.
    "avatar_service.agent": (
        "avatar_service.http",
        "avatar_service.services",
        "avatar_service.delivery",
        "flask",
    ),
}


def modules(package: Path = PACKAGE) -> Iterator[tuple[str, Path]]:
    """Every module of a package (the service's by default), by dotted name."""
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def top_level_imports(name: str, path: Path) -> set[str]:
    """The modules imported when ``name`` is imported (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, ast.FunctionDef) else ():
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                break
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                if child.level:
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in child.names)
    return found


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time."""
    known = dict(modules(package))
    return {
        name: {target for target in top_level_imports(name, path) if target in known}
        for name, path in known.items()
    }


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """An import circle of the graph (the modules around it), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges[name]):
            # A package importing its own submodules (its public face) is not a circle.
            if target.startswith(name + ".") or name.startswith(target + "."):
                continue
            if state.get(target) == 1:
                raise _Circle([*stack[stack.index(target) :], target])
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    try:
        for name in sorted(edges):
            if name not in state:
                visit(name)
    except _Circle as circle:
        return circle.modules
    return None


class _Circle(Exception):
    def __init__(self, modules: list[str]) -> None:
        self.modules = modules


def test_no_import_circle():
    """No module of the service imports itself back through others (at import time)."""
    circle = find_circle(graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_a_circle_is_found(tmp_path):
    """The check finds a circle through three modules, and none behind TYPE_CHECKING."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("from .c import thing\n")
    (package / "c.py").write_text("from .a import other\n")
    assert find_circle(graph(package)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import other\n"
    )
    assert find_circle(graph(package)) is None


@pytest.mark.parametrize(("name", "path"), list(modules()), ids=lambda v: str(v))
def test_module_and_functions_are_small(name, path):
    """No module over 500 lines, no function over 80."""
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES, f"{name} has {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name} has {length} lines"


def test_layers_import_only_downwards():
    """The engine knows nothing of HTTP, Flask stays in http/ and the factory, and the ComfyUI
    package depends on nothing of the service but its base."""
    everything = {name: top_level_imports(name, path) for name, path in modules()}
    for name, imported in everything.items():
        for package, forbidden in FORBIDDEN.items():
            if name != package and not name.startswith(package + "."):
                continue
            wrong = sorted(
                target
                for target in imported
                for bad in forbidden
                if target == bad or target.startswith(bad + ".")
            )
            assert not wrong, f"{name} imports {wrong}"

"""The package's layering rule and the absence of import circles, checked from the source.

Every import is counted, also those inside functions and under ``TYPE_CHECKING``: a lazy
import is still a dependency, and a circle through one breaks as soon as someone hoists it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mergekit_cycleqd"
ROOT = "mergekit_cycleqd"
EVALUATORS = REPO / "evaluators" / "cycleqd_evaluators"
PUBLIC_EVALUATOR_API = "mergekit_cycleqd.evaluate"
"""The one core module an evaluator may import (its ``__init__`` re-exports the contract)."""

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS = [
    ("errors", "process_lifetime"),
    ("merge",),
    ("evaluate",),
    ("toy",),
    ("recipe",),
    ("filing",),
    ("search",),
    ("results",),
    ("cli", "scripts", "__init__", "__main__"),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Internal modules imported anywhere in the file (``from pkg import sub`` counts sub)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module}: its top-level part {top!r} has no layer in LAYERS")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (iterative DFS with colours)."""
    colour = dict.fromkeys(edges, 0)
    for start in sorted(edges):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child) :] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges[child]))))
    return None


def package_of(module: str) -> str:
    return (
        module
        if (PACKAGE.parent / module.replace(".", "/")).is_dir()
        else module.rpartition(".")[0]
    )


def test_no_import_circle_between_modules():
    # A package's __init__ re-exporting its own submodules is not a circle between
    # modules: drop the edges from a submodule to its own package(s).
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph().items()}
    assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_higher_ones():
    violations = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph().items()
        for t in targets
        if layer_of(t) > layer_of(m)
    ]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("limit", [400])
def test_modules_stay_small(limit):
    big = {
        name: n
        for name, path in all_modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > limit
    }
    assert not big, f"modules over {limit} lines: {big}"


def evaluator_modules() -> dict[str, Path]:
    return {module_name(p, EVALUATORS): p for p in EVALUATORS.rglob("*.py")}


def _imported_names(path: Path) -> set[str]:
    """Every absolute module name a file imports (``from a.b import c`` gives a.b and a.b.c)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def test_the_core_imports_no_evaluator_implementation():
    offenders = {
        name: sorted(i for i in _imported_names(path) if i.split(".")[0] == "cycleqd_evaluators")
        for name, path in all_modules().items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"core modules importing cycleqd_evaluators: {offenders}"


def test_evaluators_import_only_the_public_evaluator_api():
    offenders = {
        name: sorted(
            i
            for i in _imported_names(path)
            if i.split(".")[0] == ROOT and i != PUBLIC_EVALUATOR_API
        )
        for name, path in evaluator_modules().items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"evaluator modules importing core internals: {offenders}"


def test_the_import_checks_see_a_planted_violation(tmp_path):
    planted = tmp_path / "bad.py"
    planted.write_text(
        "from mergekit_cycleqd.merge.genome import Genome\nimport cycleqd_evaluators.code\n"
    )
    assert _imported_names(planted) == {"mergekit_cycleqd.merge.genome", "cycleqd_evaluators.code"}


def test_evaluator_modules_have_no_import_circle_and_stay_small():
    modules = evaluator_modules()
    known = set(modules)
    edges = {
        name: {t for t in imports_of(path, name, known) if not name.startswith(t + ".")}
        for name, path in modules.items()
    }
    assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"
    big = {n: c for n, p in modules.items() if (c := len(p.read_text().splitlines())) > 400}
    assert not big, f"modules over 400 lines: {big}"

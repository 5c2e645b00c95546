"""Print the package's import cycles and back-edges; exit 1 if there is a cycle.

    python scripts/import_graph.py [--package gateway] [--quiet]

Only imports that run when a module is first imported count as edges: module-level
statements, including those under `try`/`if`, but not under `if TYPE_CHECKING:`
(never run) nor inside a function (run later, once every module is loaded).
Importing `a.b.c` also runs `a.b`'s `__init__`, so that is an edge too (except to the
importer's own packages, which are already being imported).

A cycle is a strongly connected group of modules. A back-edge is a deferred import (in
a function body or under `TYPE_CHECKING`) that points back up the module-level graph:
at module level it would close a cycle, so it marks a seam worth a second look.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    line: int
    deferred: bool  # in a function body or under TYPE_CHECKING


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (`pkg.sub` for `pkg/sub/__init__.py`)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: list[ast.stmt], deferred: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Import statements in `body`, with whether they run later than the module's import."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, deferred
        elif isinstance(node, ast.If):
            yield from _imports(node.body, deferred or _is_type_checking(node.test))
            yield from _imports(node.orelse, deferred)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _imports(node.body, True)
        elif isinstance(node, ast.ClassDef):
            yield from _imports(node.body, deferred)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, []):
                    nested = isinstance(child, ast.excepthandler | ast.match_case)
                    yield from _imports(child.body if nested else [child], deferred)


def _targets(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The package's modules an import statement loads (absolute names)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name
        return
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join([*base, *([node.module] if node.module else [])])
    else:
        origin = node.module or ""
    submodules = [f"{origin}.{a.name}" for a in node.names if f"{origin}.{a.name}" in known]
    if origin in known and len(submodules) < len(node.names):  # names from `origin` itself
        yield origin
    yield from submodules  # `from pkg import submodule`


def edges(package_dir: Path) -> list[Edge]:
    """Every import edge between the package's modules, implicit parent packages included."""
    modules = module_names(package_dir)
    known = set(modules)
    root = package_dir.name
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        for node, deferred in _imports(tree.body, False):
            for target in _targets(node, module, is_package, known):
                parts = target.split(".")
                parents = {".".join(parts[:i]) for i in range(2, len(parts))}
                for name in {target} | (parents - own - {root}):
                    if name != module:
                        found.append(Edge(module, name, node.lineno, deferred))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def report(package_dir: Path) -> tuple[list[list[str]], list[Edge]]:
    """(cycles among module-level imports, deferred imports that point back up)."""
    all_edges = edges(package_dir)
    graph: dict[str, set[str]] = {}
    for edge in all_edges:
        if not edge.deferred:
            graph.setdefault(edge.source, set()).add(edge.target)
    back = [e for e in all_edges if e.deferred and e.source in reachable(graph, e.target)]
    return cycles(graph), sorted(set(back), key=lambda e: (e.source, e.line, e.target))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default=str(ROOT / "gateway"), help="package directory")
    parser.add_argument("--quiet", action="store_true", help="print only cycles")
    args = parser.parse_args(argv)
    package_dir = Path(args.package)
    found_cycles, back = report(package_dir)
    n_edges = sum(not e.deferred for e in edges(package_dir))
    print(f"{len(module_names(package_dir))} modules, {n_edges} module-level import edges")
    print(f"cycles: {len(found_cycles)}")
    for group in found_cycles:
        print("  " + " <-> ".join(group))
    if not args.quiet:
        print(f"back-edges (deferred imports pointing back up): {len(back)}")
        for edge in back:
            print(f"  {edge.source}:{edge.line} -> {edge.target}")
    return 1 if found_cycles else 0


if __name__ == "__main__":
    sys.exit(main())

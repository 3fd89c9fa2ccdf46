"""``bench/`` has no import circle.

Every ``bench/*.py`` is parsed with :mod:`ast` (never imported: that would need
MariaDB and Redis settings), and every ``import`` in it counts, including the
ones inside functions, which only hide a circle until a case runs.  The cases
import :mod:`bench.harness` and :mod:`bench.report`; nothing imports
:mod:`bench.run`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def module_name(path: Path) -> str:
    return "bench" if path.stem == "__init__" else f"bench.{path.stem}"


def imported(tree: ast.AST, modules: set[str], this: str) -> set[str]:
    """The ``bench`` modules (of ``modules``) that ``tree`` imports, anywhere in it."""
    found: set[str] = set()

    def add(name: str) -> None:
        # ``bench.x.y`` (no such module today) counts as ``bench.x``.
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                found.add(candidate)
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package bench
                base = "bench" if node.level == 1 else ""
                source = ".".join(p for p in (base, node.module or "") if p)
            else:
                source = node.module or ""
            add(source)
            # ``from bench import fixtures`` imports the module bench.fixtures.
            for alias in node.names:
                add(f"{source}.{alias.name}")
    found.discard(this)
    return found


def bench_graph(directory: Path = BENCH) -> dict[str, set[str]]:
    paths = sorted(directory.glob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported(ast.parse(p.read_text(encoding="utf-8"), str(p)),
                                     modules, module_name(p))
            for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated at
    the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


class BenchImportGraphTests(unittest.TestCase):
    def test_no_cycle(self) -> None:
        graph = bench_graph()
        self.assertIn("bench.run", graph)
        cycle = find_cycle(graph)
        self.assertIsNone(cycle, "bench import circle: " + " -> ".join(cycle or []))

    def test_nothing_imports_run(self) -> None:
        importers = sorted(m for m, deps in bench_graph().items() if "bench.run" in deps)
        self.assertEqual(importers, [])

    def test_finds_a_circle_inside_a_function(self) -> None:
        """The check itself: an import inside a function closes a circle."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "run.py").write_text("from bench.cases import case\n")
        (directory / "cases.py").write_text("def case():\n    from bench import run\n")
        (directory / "leaf.py").write_text("import json\n")
        graph = bench_graph(directory)
        self.assertEqual(graph["bench.leaf"], set())
        self.assertEqual(find_cycle(graph), ["bench.cases", "bench.run", "bench.cases"])

    def test_relative_imports_count(self) -> None:
        tree = ast.parse("def f():\n    from .harness import spawn\n    from . import report\n")
        modules = {"bench", "bench.harness", "bench.report", "bench.run"}
        # ``from . import report`` runs the package too.
        self.assertEqual(imported(tree, modules, "bench.run"),
                         {"bench", "bench.harness", "bench.report"})

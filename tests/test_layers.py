"""The package's rooms keep their direction: no import circle anywhere in
``btu_twisted/`` or ``bench/``, and no import that runs against the layer order.

The order (an arrow = may import), read from the imports themselves, those
inside functions and under ``TYPE_CHECKING`` included (for circles too: two
modules that name each other's types are one thing in two files):

- core (the modules at the top of ``btu_twisted/``): nothing of ours but core
- store, sources, jobs: core only, never each other
- planning: core, store, sources
- timing: core, store, sources, jobs, planning
- ops: core, store
- daemon: all of the above
- tap: core, ops, daemon
- cli: core, store, jobs, sources (a synchronous command: never the daemon)

``btu_twisted.seams`` (core) holds the Protocols where the rooms meet; it may
name any room's types for annotations (under ``TYPE_CHECKING``) and imports
none of them at run time.  ``docs/architecture.rst`` says why each room sits
where it does.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

ALLOWED: Mapping[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "store": frozenset({"core", "store"}),
    "sources": frozenset({"core", "sources"}),
    "jobs": frozenset({"core", "jobs"}),
    "planning": frozenset({"core", "store", "sources", "planning"}),
    "timing": frozenset({"core", "store", "sources", "jobs", "planning", "timing"}),
    "ops": frozenset({"core", "store", "ops"}),
    "daemon": frozenset({"core", "store", "sources", "jobs", "planning", "timing", "ops",
                         "daemon"}),
    "tap": frozenset({"core", "ops", "daemon", "tap"}),
    "cli": frozenset({"core", "store", "jobs", "sources", "cli"}),
}


#: Core modules that may name any room's types under ``TYPE_CHECKING``.
TYPES_ONLY = frozenset({"btu_twisted.seams"})


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _typing_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements under ``if TYPE_CHECKING:``: never run, so no circle."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                found.update(ast.walk(inner))
    return found


def imported(path: Path, name: str, known: Mapping[str, Path],
             runtime: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) for each import in the file that names one of ``known``;
    ``runtime``: leave out those under ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skipped = _typing_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known_prefix(alias.name, known)
                if target:
                    yield node.lineno, target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for alias in node.names:
                target = _known_prefix(f"{base}.{alias.name}", known) or _known_prefix(
                    base, known)
                if target:
                    yield node.lineno, target


def _known_prefix(dotted: str, known: Mapping[str, Path]) -> str | None:
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def graph(root: Path, packages: tuple[str, ...],
          runtime: bool = False) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, over the modules of ``packages``;
    ``runtime``: only the imports that run (not those under ``TYPE_CHECKING``)."""
    known: dict[str, Path] = {}
    for package in packages:
        known.update(modules(root, package))
    edges: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, path in known.items():
        for line, target in imported(path, name, known, runtime):
            if target != name and not name.startswith(target + "."):
                edges[name].setdefault(target, line)
    return edges


def circles(edges: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, {}):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def room_of(module: str) -> str | None:
    """The room of a btu_twisted module; None outside the package."""
    parts = module.split(".")
    if parts[0] != "btu_twisted":
        return None
    if len(parts) == 1:
        return "core"
    if len(parts) == 2 and parts[1] != "cli" and parts[1] not in ALLOWED:
        return "tap" if parts[1] == "tap" else "core"
    return parts[1]


def against_the_order(edges: Mapping[str, Mapping[str, int]]) -> list[str]:
    wrong = []
    for module, targets in sorted(edges.items()):
        room = room_of(module)
        if room is None:
            continue
        for target, line in sorted(targets.items()):
            other = room_of(target)
            if other is not None and other not in ALLOWED.get(room, frozenset()):
                wrong.append(f"{module}:{line} ({room}) imports {target} ({other})")
    return wrong


class LayerTests(SynchronousTestCase):
    def test_no_circle_in_the_package_or_the_benchmarks(self) -> None:
        found = circles(graph(ROOT, ("btu_twisted", "bench")))
        self.assertEqual(found, [], "import circles: " + "; ".join(" -> ".join(c) for c in found))

    def test_every_import_follows_the_layer_order(self) -> None:
        edges = graph(ROOT, ("btu_twisted",))
        # The seams name the types that cross them for annotations only: those
        # imports never run, and the seams stay importable from every room.
        edges.update({module: targets for module, targets
                      in graph(ROOT, ("btu_twisted",), runtime=True).items()
                      if module in TYPES_ONLY})
        self.assertEqual(against_the_order(edges), [])

    def test_every_room_is_known(self) -> None:
        rooms = {path.name for path in (ROOT / "btu_twisted").iterdir()
                 if (path / "__init__.py").exists()}
        self.assertEqual(rooms - set(ALLOWED), set())


#: A module past this many lines, or a class past that many, has become two things.
MODULE_LINES, CLASS_LINES, TOP_MODULES = 450, 300, 15


class SizeTests(SynchronousTestCase):
    def test_modules_and_classes_stay_small(self) -> None:
        big = []
        for path in sorted((ROOT / "btu_twisted").rglob("*.py")):
            text = path.read_text()
            where = path.relative_to(ROOT)
            if len(text.splitlines()) > MODULE_LINES:
                big.append(f"{where}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    size = node.end_lineno - node.lineno + 1
                    if size > CLASS_LINES:
                        big.append(f"{where}: class {node.name} {size} lines")
        self.assertEqual(big, [])

    def test_the_top_of_the_package_stays_short(self) -> None:
        top = sorted(path.name for path in (ROOT / "btu_twisted").glob("*.py"))
        self.assertLessEqual(len(top), TOP_MODULES, top)


class CheckerTests(SynchronousTestCase):
    """The checks above can fail: a tree with a circle and an upward import."""

    def tree(self, files: Mapping[str, str]) -> Path:
        root = Path(tempfile.mkdtemp(prefix="btu-layers-"))
        self.addCleanup(__import__("shutil").rmtree, root, True)
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    def test_an_upward_import_inside_a_function_is_found(self) -> None:
        root = self.tree({
            "btu_twisted/__init__.py": "",
            "btu_twisted/store/__init__.py": "",
            "btu_twisted/store/keys.py": "def f():\n    from btu_twisted.timing import timer\n",
            "btu_twisted/timing/__init__.py": "",
            "btu_twisted/timing/timer.py": "from btu_twisted.store.keys import f\n",
        })
        edges = graph(root, ("btu_twisted",))
        self.assertEqual(against_the_order(edges), [
            "btu_twisted.store.keys:2 (store) imports btu_twisted.timing.timer (timing)"])
        self.assertEqual(circles(edges),
                         [["btu_twisted.store.keys", "btu_twisted.timing.timer"]])

    def test_relative_and_package_imports_resolve(self) -> None:
        root = self.tree({
            "bench/__init__.py": "",
            "bench/a.py": "from . import b\n",
            "bench/b.py": "import bench.a\n",
        })
        self.assertEqual(circles(graph(root, ("bench",))), [["bench.a", "bench.b"]])

    def test_a_type_only_import_makes_no_circle_but_keeps_its_direction(self) -> None:
        root = self.tree({
            "btu_twisted/__init__.py": "",
            "btu_twisted/a.py": "from btu_twisted import b\n",
            "btu_twisted/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from btu_twisted import a\n",
            "btu_twisted/store/__init__.py": "",
            "btu_twisted/store/k.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from btu_twisted.daemon import s\n",
            "btu_twisted/daemon/__init__.py": "",
            "btu_twisted/daemon/s.py": "",
        })
        self.assertEqual(circles(graph(root, ("btu_twisted",), runtime=True)), [])
        self.assertEqual(circles(graph(root, ("btu_twisted",))), [["btu_twisted.a", "btu_twisted.b"]])
        self.assertEqual(against_the_order(graph(root, ("btu_twisted",))), [
            "btu_twisted.store.k:3 (store) imports btu_twisted.daemon.s (daemon)"])

"""The layout shows the architecture (docs/ARCHITECTURE.md), and stays that way.

- No import cycle between facenet_cli's modules, imports inside functions counted: a lazy import
  still runs, and a cycle through one makes the import order decide what works.
- No module over 650 lines.
- The layering rule of docs/ARCHITECTURE.md: the parts under the pipeline never import the use
  cases above it; nothing imports cli/ but cli/; nothing imports serve/ but cli/serve.py.

The import graph is read from the source with `ast`, without importing anything: every
`import` and `from ... import` anywhere in a module (functions included), relative imports
resolved, `from pkg import name` counted as importing the submodule `pkg.name` when there is one.
Imports under `if TYPE_CHECKING:` are left out (they never run). Dynamic imports
(`importlib.import_module` with a computed name) are not seen: that is how the registries load
their built-in files (detect/), and how `facenet_cli/__init__.py` exports names lazily.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facenet_cli"
MAX_LINES = 650


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path) -> dict[str, int]:
    """{facenet_cli module imported: first line that imports it} for one module."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in known and target != name:
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # only the branch that runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, node.lineno)
            for alias in node.names:
                add(f"{target}.{alias.name}", node.lineno)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


@lru_cache(maxsize=None)
def import_graph() -> dict[str, dict[str, int]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def find_cycles(graph: dict[str, dict[str, int]] | dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> b -> ... -> a) per strongly connected component of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm, iterative enough for this package's depth
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_a_cycle_in(graph, set(c)) for c in components]


def _a_cycle_in(graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    return paths[v] + [start]
                if w in component and w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _describe(cycle: list[str]) -> str:
    graph = import_graph()
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
    return "\n    ".join(steps)


# ---------------------------------------------------------------- the reader itself

def test_the_reader_sees_lazy_relative_and_submodule_imports():
    # facenet_cli/detect/hog.py imports `from . import ... register_detector` at the top and
    # `from ..models.hub import cached_hog_detector` inside a function.
    hog = imports_of("facenet_cli.detect.hog", modules()["facenet_cli.detect.hog"])
    assert "facenet_cli.detect" in hog and "facenet_cli.models.hub" in hog
    # TYPE_CHECKING-only imports are not edges: pipeline/face_pipeline.py names Embedder only there
    # at its top.
    source = PACKAGE / "pipeline" / "face_pipeline.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and _is_type_checking(n.test)]
    assert guarded, "face_pipeline.py has no TYPE_CHECKING block to check the reader with"
    guarded_lines = {n.lineno for block in guarded for n in ast.walk(block) if isinstance(n, ast.ImportFrom)}
    edges = imports_of("facenet_cli.pipeline.face_pipeline", source)
    assert not guarded_lines & set(edges.values())


def test_the_cycle_finder_finds_a_cycle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


# ---------------------------------------------------------------- the layout

def test_no_import_cycle_between_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (imports inside functions count):\n  " + "\n  ".join(
        _describe(c) for c in cycles)


def test_no_module_over_650_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    too_long = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def _part(module: str) -> str:
    """`facenet_cli.store.gallery` -> `store`; top-level modules by their own name."""
    return module.split(".")[1] if module.count(".") else module


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == f"facenet_cli.{p}" or module.startswith(f"facenet_cli.{p}.") for p in prefixes)


# Below the pipeline: the parts a FacePipeline is built from, the values, the file formats and
# the executors (which move functions and items, and know nothing of what runs).
ENGINE = ("errors", "atomic", "images", "choices", "progress", "models", "formats", "detect", "nets",
          "align.specs", "align.aligner", "executors")
USE_CASES = ("pipeline", "recognition", "store", "evaluate", "training", "serve", "cli")

# (what, modules the rule is about, what they never import, modules excepted from "never")
LAYERING = [
    ("the engine under the pipeline never imports the pipeline or what is built on it",
     ENGINE, USE_CASES, ()),
    ("the file formats and the gallery store never import the engine's parts or the use cases",
     ("formats", "store"), ("pipeline", "nets", "align", "detect", "recognition", "executors", "evaluate",
                            "training", "serve", "cli"), ("align.specs",)),
    ("the pipeline never imports the use cases built on it",
     ("pipeline",), ("recognition", "store", "evaluate", "training", "serve", "cli"), ()),
    ("executors import nothing of what they run",
     ("executors",), ("align", "detect", "nets", "pipeline", "recognition", "store", "evaluate", "training",
                      "serve", "cli"), ()),
    ("the use cases never import the server or the command line",
     ("recognition", "evaluate", "training"), ("serve", "cli"), ()),
    ("nothing but cli/ (and __main__) imports cli/",
     tuple(sorted({_part(m) for m in modules()} - {"cli", "__main__"})), ("cli",), ()),
]


@pytest.mark.parametrize("what, sources, forbidden, allowed", LAYERING, ids=[r[0] for r in LAYERING])
def test_layering(what, sources, forbidden, allowed):
    graph = import_graph()
    broken = [f"{a} (line {line}) imports {b}"
              for a, targets in sorted(graph.items()) if _matches(a, sources)
              for b, line in sorted(targets.items(), key=lambda t: t[1])
              if _matches(b, forbidden) and not _matches(b, allowed) and _part(b) != _part(a)]
    assert not broken, f"{what}:\n  " + "\n  ".join(broken)


def test_only_the_serve_command_imports_the_server():
    importers = sorted(a for a, targets in import_graph().items()
                       if any(_matches(b, ("serve",)) for b in targets) and not _matches(a, ("serve",)))
    assert importers == ["facenet_cli.cli.serve"], importers

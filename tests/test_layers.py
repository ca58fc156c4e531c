"""The package's import graph, read with ``ast``: two layers, no cycles, local imports that say why.

* The **method layer** (backbone, model, DAS, data, methods, Algorithm 1, configs) never
  imports the **experiment layer** (runs, results, evaluation, reproduction, caches,
  validation, the command line, figures), so a method can be used, tested and replaced
  without the machinery that runs experiments.
* No import cycle, counting imports inside functions (and under ``TYPE_CHECKING``).
* An import inside a function exists only to keep importing light, and a comment on its
  line (or on the line above its block) says so.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vtfusion"

#: Shared by both layers: locations, atomic files, the registry class, the package root, image files.
SHARED = ("vtfusion", "vtfusion.paths", "vtfusion.io", "vtfusion.registry", "vtfusion.image_io")
#: The method: what detects anomalies, and its configs.
METHOD_LAYER = ("vtfusion.backbone", "vtfusion.weights", "vtfusion.model", "vtfusion.das", "vtfusion.data",
                "vtfusion.augment", "vtfusion.foreground", "vtfusion.patch_knn", "vtfusion.metrics",
                "vtfusion.prompts", "vtfusion.pocket", "vtfusion.methods", "vtfusion.train", "vtfusion.checkpoint",
                "vtfusion.config", "vtfusion.recipes")
#: The experiments: which cells run, where runs and results are kept, caches, tables, the CLI, figures.
EXPERIMENT_LAYER = ("vtfusion.runs", "vtfusion.results", "vtfusion.provenance", "vtfusion.evaluate",
                    "vtfusion.reproduce", "vtfusion.launch", "vtfusion.validation", "vtfusion.cache", "vtfusion.cli",
                    "vtfusion.predict", "vtfusion.viz", "vtfusion.paper_tables", "vtfusion.explorer",
                    "vtfusion.tables", "vtfusion.deploy", "vtfusion.stats")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    local: bool  # inside a function (or a class body), not at module level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    for name, members in (("shared", SHARED), ("method", METHOD_LAYER), ("experiment", EXPERIMENT_LAYER)):
        if any(module == m or (m != "vtfusion" and module.startswith(m + ".")) for m in members):
            return name
    return "unassigned"


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every import of a ``vtfusion`` module in ``path``: ``from a.b import c`` is an edge to
    ``a.b.c`` when that is a module, else to ``a.b``."""
    edges = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(child, ast.Import):
                edges.extend(Edge(module, a.name, child.lineno, local) for a in child.names
                             if a.name.split(".")[0] == "vtfusion")
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{path}:{child.lineno}: use absolute imports"
                base = child.module or ""
                if base.split(".")[0] == "vtfusion":
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        edges.append(Edge(module, sub if sub in known else base, child.lineno, local))
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return [e for e in edges if e.target != module]


@pytest.fixture(scope="module")
def graph() -> list[Edge]:
    known = modules()
    return [e for name, path in known.items() for e in imports_of(name, path, known)]


def test_every_module_belongs_to_a_layer():
    unassigned = [m for m in modules() if layer_of(m) == "unassigned"]
    assert not unassigned, f"place these modules in a layer (tests/test_layers.py): {unassigned}"


def test_the_method_layer_never_imports_the_experiment_layer(graph):
    crossing = [f"{e.source} imports {e.target} (line {e.line})" for e in graph
                if layer_of(e.source) in ("method", "shared") and layer_of(e.target) == "experiment"]
    assert not crossing, "\n".join(crossing)


def test_the_shared_modules_import_nothing_of_either_layer(graph):
    crossing = [f"{e.source} imports {e.target}" for e in graph
                if layer_of(e.source) == "shared" and layer_of(e.target) != "shared"]
    assert not crossing, "\n".join(crossing)


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), and self-loops."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in succ.get(v, ()):
            if w not in index:
                connect(w)
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

    for v in sorted(succ):
        if v not in index:
            connect(v)
    return cycles


def test_find_cycles_finds_a_cycle_through_a_local_import():
    edges = [Edge("a", "b", 1, False), Edge("b", "c", 1, False), Edge("c", "a", 9, True), Edge("c", "d", 1, False)]
    assert find_cycles(edges) == [["a", "b", "c"]]


def test_no_import_cycles_counting_local_imports(graph):
    assert find_cycles(graph) == []


def _is_import_line(text: str) -> bool:
    return text.lstrip().startswith(("import ", "from "))


def test_every_local_import_says_why_it_is_local():
    """An import inside a function needs a comment on its line or above its block of imports."""
    silent = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                first = node.lineno - 1
                while first > 0 and _is_import_line(lines[first - 1]):
                    first -= 1
                block = lines[max(first - 1, 0):node.end_lineno]
                if not any("#" in line for line in block):
                    silent.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, "local imports without a comment saying why:\n" + "\n".join(silent)


def test_the_command_line_and_the_package_import_without_torch():
    code = "import sys, vtfusion, vtfusion.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

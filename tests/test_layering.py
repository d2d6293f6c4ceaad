"""The package's import graph, read from the source: no cycles, and the pipeline flows one way
(nothing that captures, couples or analyses a model imports planning or surgery)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "surgeon"

# each layer may import only the layers before it (and itself)
BELOW_PLANNING = ("surgeon.graph", "surgeon.analysis", "surgeon.slicing", "surgeon.criteria")
ABOVE = ("surgeon.planning", "surgeon.surgery", "surgeon.api", "surgeon.cli")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """Module -> module it imports, for every import statement (function-level ones too)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")
                    up = up[:len(up) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # ``from pkg import submodule`` depends on the submodule, not on pkg/__init__
                # (every parent package is imported anyway, by any import)
                targets = subs + ([base] if any(t not in files for t in subs) else [])
            for t in targets:
                if t in files and t != name:
                    g.add_edge(name, t)
    return g


def _in(module: str, layers: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in layers)


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return import_graph()


def test_graph_sees_the_package(graph):
    assert graph.has_edge("surgeon.api", "surgeon.planning.planner")
    assert graph.has_edge("surgeon.analysis.probe", "surgeon.slicing.edits")
    assert graph.number_of_edges() > 100


def test_every_internal_import_resolves():
    """An import of a surgeon module that does not exist would hide an edge from the checks."""
    missing = []
    files = {_module_name(p, ROOT) for p in ROOT.rglob("*.py")}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path, ROOT)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                up = package.split(".")
                base = ".".join(up[:len(up) - node.level + 1] + ([node.module] if node.module else []))
                if base not in files:
                    missing.append(f"{name}: from {'.' * node.level}{node.module or ''}")
            elif isinstance(node, ast.Import):
                missing += [f"{name}: import {a.name}" for a in node.names
                            if a.name.startswith("surgeon.") and a.name not in files]
    assert missing == []


def test_no_import_cycles(graph):
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == []


def test_analysis_never_reaches_planning_or_surgery(graph):
    bad = {}
    for mod in graph:
        if _in(mod, BELOW_PLANNING):
            reached = [m for m in nx.descendants(graph, mod) if _in(m, ABOVE)]
            if reached:
                bad[mod] = sorted(reached)
    assert bad == {}


def test_the_checker_catches_a_cycle_and_a_layer_breach(tmp_path):
    pkg = tmp_path / "surgeon"
    (pkg / "analysis").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "analysis" / "__init__.py").write_text("def f():\n    from ..planning import solve\n")
    (pkg / "planning.py").write_text("from .analysis import f\n")
    g = import_graph(pkg)
    assert g.has_edge("surgeon.analysis", "surgeon.planning")
    assert any(len(c) > 1 for c in nx.strongly_connected_components(g))

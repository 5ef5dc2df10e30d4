"""fedtiny's modules import one another without cycles and only downwards through its layers.

Every import (top-level or inside a function) is an edge. The graph must have no strongly
connected component of more than one module (a cycle means two modules each need the other: a
sign that a piece belongs lower), and no edge may point to a later layer of the list in
``fedtiny/__init__.py``'s docstring; each folder's own docstring states its layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedtiny"


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:  # `from pkg import submodule` depends on the submodule
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_fedtiny_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "fedtiny.client.round" in graph["fedtiny.server.run"]  # the graph is read
    assert cycles(graph) == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles(graph))


def layers() -> dict[str, int]:
    """Top-level name (folder or module under fedtiny/) -> layer, from the package docstring."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    out = {}
    for number, names in re.findall(r"^(\d+)\. ([a-z_, ]+):", doc, re.M):
        for name in names.split(","):
            out[name.strip()] = int(number)
    return out


def layer_of(module: str, table: dict[str, int]) -> int | None:
    parts = module.split(".")
    return 0 if len(parts) == 1 else table.get(parts[1])  # the package root holds only __version__


def test_every_module_has_a_layer_and_each_folder_states_it():
    table = layers()
    assert table["errors"] == 1 and table["cli"] == 9 and table["client"] < table["devices"] < table["server"]
    unplaced = sorted(m for m in import_graph() if layer_of(m, table) is None)
    assert unplaced == [], f"modules outside every layer of fedtiny/__init__.py: {unplaced}"
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        stated = re.search(r"Layer (\d+) \(", doc)
        assert stated, f"{init.parent.name}/__init__.py does not state its layer"
        assert int(stated.group(1)) == table[init.parent.name], f"{init.parent.name}: layer {stated.group(1)}"


def upward(graph: dict[str, set[str]], table: dict[str, int]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m, table)}) imports {t} (layer {layer_of(t, table)})"
                  for m, targets in graph.items() for t in targets if layer_of(t, table) > layer_of(m, table))


def test_imports_point_only_to_the_same_or_a_lower_layer():
    bad = upward(import_graph(), layers())
    assert bad == [], "imports against the layers:\n" + "\n".join(bad)


def test_the_layer_check_sees_an_upward_import():
    graph = import_graph()
    graph["fedtiny.client.round"] = graph["fedtiny.client.round"] | {"fedtiny.devices.backend"}
    assert upward(graph, layers()) == ["fedtiny.client.round (layer 5) imports fedtiny.devices.backend (layer 6)"]

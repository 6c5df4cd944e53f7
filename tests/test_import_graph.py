"""The package's imports point one way (issue 35): no module of npdg/ reaches itself through npdg imports, at module
level or inside functions (a lazy import is still an arrow). The lower module owns a shared name."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "npdg"


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the npdg modules it imports}; ``from a import b`` counts a.b when that is a module, else a."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = ["npdg", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = (path, parts)
    graph = {}
    for name, (path, parts) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts if path.name == "__init__.py" else parts[:-1]
                    mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for alias in node.names:
                    deps.add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in modules else mod)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        # a submodule importing its own package (its __init__) is Python's loading order, not an arrow back
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert {"npdg.train", "npdg.run", "npdg.report", "npdg.config", "npdg.models.mit"} <= set(graph)
    assert "npdg.run" in graph["npdg.train"] and "npdg.train" not in graph["npdg.report"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

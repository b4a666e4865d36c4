"""The layering of src/equicare against the layer order in docs/design.md.

Walks every module's syntax tree (``ast``: module-level, function-level and ``TYPE_CHECKING``
imports; docstrings are text, not imports) and fails on

* an import of a higher layer, or of another package of the same layer ("upward import");
* an import that ``docs/design.md`` forbids explicitly (e.g. learners -> simulators);
* a package or top-level module that the layer order does not place;
* an import cycle between modules (imports that run: ``TYPE_CHECKING`` blocks excluded; a
  function-level import of the module's own parent package is not an edge, since it runs after
  every module involved has loaded).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = "equicare"
DESIGN = ROOT / "docs" / "design.md"


@dataclass(frozen=True)
class Edge:
    src: str          # importing module, e.g. "equicare.ope._fqe"
    dst: str          # imported module (or package), e.g. "equicare.policy._base"
    line: int
    deferred: bool    # inside a function (runs when called, not when the module loads)
    type_only: bool   # under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        where = "function-level " if self.deferred else ""
        where += "TYPE_CHECKING " if self.type_only else ""
        path = self.src.replace(".", "/")
        return f"{path}.py:{self.line}: {where}import of {self.dst}"


def _fenced(text: str, info: str) -> list[str]:
    m = re.search(rf"^```{info}\n(.*?)^```", text, re.S | re.M)
    assert m, f"docs/design.md has no ```{info} block"
    lines = (ln.split("#", 1)[0].strip() for ln in m.group(1).splitlines())
    return [ln for ln in lines if ln]


def layer_rank() -> dict[str, int]:
    """Rank of every package / top-level module (0 = bottom) from docs/design.md."""
    rank: dict[str, int] = {}
    for i, line in enumerate(_fenced(DESIGN.read_text(), "layers")):
        for name in line.split():
            assert name not in rank, f"{name} appears twice in the layer order"
            rank[name] = i
    return rank


def forbidden_pairs() -> set[tuple[str, str]]:
    """Pairs (importer, imported) that docs/design.md forbids whatever their layers."""
    pairs = set()
    for line in _fenced(DESIGN.read_text(), "forbidden-imports"):
        left, right = line.split("->")
        pairs |= {(a, b) for a in left.split() for b in right.split()}
    return pairs


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package __init__)."""
    out = {}
    for f in sorted((SRC / PKG).rglob("*.py")):
        rel = f.relative_to(SRC).with_suffix("")
        is_pkg = rel.name == "__init__"
        out[".".join(rel.parts[:-1] if is_pkg else rel.parts)] = (f, is_pkg)
    return out


def unit(module: str) -> str:
    """The layer unit of a module: its package under equicare, or the top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PKG


def edges(mods: dict[str, tuple[Path, bool]]) -> list[Edge]:
    """Every import of an equicare module, resolved to the module it names."""
    out = []
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        in_func: set[int] = set()
        type_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                in_func.update(id(n) for n in ast.walk(node) if n is not node)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    mod = ".".join(base[: len(base) - node.level + 1]
                                   + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name`, pkg
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                           for a in node.names]
            for t in targets:
                if t == PKG or t.startswith(PKG + "."):
                    while t not in mods and "." in t:  # `import equicare.x.y` of a non-module
                        t = t.rsplit(".", 1)[0]
                    out.append(Edge(name, t, node.lineno, id(node) in in_func,
                                    id(node) in type_only))
    return out


MODS = modules()
EDGES = edges(MODS)


def test_the_layer_order_places_every_package():
    rank = layer_rank()
    units = {unit(m) for m in MODS} - {PKG}
    missing = sorted(units - set(rank))
    assert not missing, f"docs/design.md's layer order does not place {missing}"


def test_no_upward_or_sideways_imports():
    rank = layer_rank()
    bad = []
    for e in EDGES:
        a, b = unit(e.src), unit(e.dst)
        if a == b or b == PKG:  # inside one package; the root only holds __version__
            continue
        if a == PKG:
            bad.append(f"{e} (the root package must import nothing)")
        elif rank[b] > rank[a]:
            bad.append(f"{e} ({a} is below {b})")
        elif rank[b] == rank[a]:
            bad.append(f"{e} ({a} and {b} share a layer and must not import each other)")
    assert not bad, "imports against the layer order of docs/design.md:\n" + "\n".join(bad)


def test_no_forbidden_imports():
    pairs = forbidden_pairs()
    bad = [str(e) for e in EDGES if (unit(e.src), unit(e.dst)) in pairs]
    assert not bad, "imports docs/design.md forbids:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def runtime_graph() -> dict[str, set[str]]:
    """Module graph of the imports that run (no TYPE_CHECKING; no deferred parent imports)."""
    graph: dict[str, set[str]] = {m: set() for m in MODS}
    for e in EDGES:
        if e.type_only or e.dst == e.src:
            continue
        if e.deferred and e.src.startswith(e.dst + "."):
            continue  # a function importing its own package: runs after both have loaded
        graph[e.src].add(e.dst)
    return graph


def test_no_import_cycles():
    comps = _cycles(runtime_graph())
    lines = []
    for comp in comps:
        members = set(comp)
        inner = [str(e) for e in EDGES if e.src in members and e.dst in members
                 and not e.type_only]
        lines.append("cycle: " + ", ".join(comp) + "\n  " + "\n  ".join(inner))
    assert not comps, "import cycles:\n" + "\n".join(lines)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"c"}}, []),
])
def test_cycle_finder_on_known_graphs(graph, expected):
    assert _cycles(graph) == expected


def test_edges_resolve_function_level_imports():
    # the walker sees function-level imports (a lazy import is still a dependency)
    deferred = [e for e in EDGES if e.deferred]
    assert deferred, "no function-level imports found: the walker is broken"
    assert any(e.src == "equicare.learn._base" and unit(e.dst) == "ope" for e in EDGES)

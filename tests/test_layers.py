"""The import contract (docs/architecture.md "Layers"): a module imports only from its own layer or a lower
one, the three component packages (sim, loadgen, telemetry) do not import one another, and no import
circle exists. Imports inside functions and under ``if TYPE_CHECKING`` count: a hidden import is still a
dependency (and still part of an analysis rule's code inputs). Pure AST, no module is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower first. A module is placed by its longest matching prefix (a package name places all its modules;
# "kvharness" alone is the package's __init__). A module in no layer fails the test: place it here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("kvharness", "kvharness.errors", "kvharness.units", "kvharness.records", "kvharness.tokens",
              "kvharness.stats", "kvharness.defaults", "kvharness.clock", "kvharness.procio",
              "kvharness.provenance", "kvharness.netaddr", "kvharness.cellfiles", "kvharness.cellfolder",
              "kvharness.snakemake_guard")),
    ("components", ("kvharness.sim", "kvharness.loadgen", "kvharness.telemetry")),
    ("stacks", ("kvharness.stacks",)),  # incl. the LoRA proxy and background fio beside a stack
    ("plan", ("kvharness.plan",)),
    ("measure", ("kvharness.measure",)),
    ("analysis", ("kvharness.analysis",)),
    ("report", ("kvharness.report",)),
    ("entry", ("kvharness.cli", "kvharness.__main__", "kvharness.export", "kvharness.export_schema")),
]
#: within "components", each package is independent of the others
SIBLINGS = ("kvharness.sim", "kvharness.loadgen", "kvharness.telemetry")


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """module -> {imported kvharness module: first line}, every import statement anywhere in the file."""
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out = graph.setdefault(mod, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import kvharness.x.y` of a name inside a module
                    t = t.rpartition(".")[0]
                if t.startswith("kvharness") and t != mod:
                    out.setdefault(t, node.lineno)
    return graph


def layer_of(mod: str) -> tuple[int, str]:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or (p != "kvharness" and mod.startswith(p + "."))) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    if best is None:
        raise AssertionError(f"{mod} is in no layer: place it in tests/test_layers.py and docs/architecture.md")
    return best


def violations(graph: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for mod, targets in sorted(graph.items()):
        (lm, pm) = layer_of(mod)
        for t, line in sorted(targets.items()):
            (lt, pt) = layer_of(t)
            if lt > lm:
                out.append(f"{mod}:{line} imports {t}: layer {LAYERS[lt][0]} is above {LAYERS[lm][0]}")
            elif lt == lm and pm != pt and pm in SIBLINGS and pt in SIBLINGS:
                out.append(f"{mod}:{line} imports {t}: {pm} and {pt} are independent components")
    return out


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
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


def test_no_import_goes_up_a_layer():
    bad = violations(import_graph())
    assert not bad, "upward imports (docs/architecture.md 'Layers'):\n" + "\n".join(bad)


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_contract_sees_a_hidden_upward_import(tmp_path):
    """The checker itself: an import inside a function, from a component into the analysis, is caught."""
    pkg = tmp_path / "kvharness"
    (pkg / "loadgen").mkdir(parents=True)
    (pkg / "analysis").mkdir()
    for f in ("__init__.py", "loadgen/__init__.py", "analysis/__init__.py", "analysis/cells.py"):
        (pkg / f).write_text("")
    (pkg / "loadgen" / "cli.py").write_text("def main():\n    from kvharness.analysis.cells import x\n")
    (pkg / "analysis" / "h1.py").write_text("from kvharness.loadgen import cli\n")
    graph = import_graph(tmp_path)
    assert violations(graph) == ["kvharness.loadgen.cli:2 imports kvharness.analysis.cells: "
                                 "layer analysis is above components"]
    (pkg / "loadgen" / "cli.py").write_text("def main():\n    from kvharness.analysis import h1\n")
    assert circles(import_graph(tmp_path)) == [["kvharness.analysis.h1", "kvharness.loadgen.cli"]]

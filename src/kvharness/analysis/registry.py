"""The hypothesis registry: every hypothesis declared once, and everything else derived from it.

A declaration names the question, the upstream results it needs *by name* (``uwork``, not "H0"), the
results it provides to others, its analysis function, its outputs (tables with their columns, figures with
a caption), a verdict (one computed sentence) and its quality gates. From the registry come: one generated
Snakemake analysis rule per hypothesis in the config (``rules/analyze.smk``), ``rule all``, the report's
inputs, ``kvharness analyze``'s choices, and each rule's code inputs (the import closure of its module).

Adding a hypothesis touches: its module (declaration + analysis), its config defaults, its test.
Hypothesis modules are ``kvharness.analysis.h*.py`` (found automatically) plus any file listed under the
workflow config's ``hypothesis_modules``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/kvharness
#: per-point evidence over repetitions, written by the runner for every hypothesis (kvharness.analysis.run)
POINTS = "points"


@dataclass(frozen=True)
class Table:
    """A CSV output: ``results/<H>/<name>.csv`` with these columns first (others follow)."""

    name: str
    columns: Sequence[str]
    description: str = ""
    key_columns: Sequence[str] = ()  # what the report's compact table shows (default: the first columns)


@dataclass(frozen=True)
class Figure:
    """A PNG output: ``results/<H>/<name>.png``, with a one-paragraph caption."""

    name: str
    caption: str


@dataclass
class Gate:
    """A quality gate evaluated on the data: what was measured against what limit."""

    name: str
    passed: bool | None  # None = not applicable / no data
    value: Any = None
    limit: Any = None
    note: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "value": self.value, "limit": self.limit, "note": self.note}


@dataclass
class Context:
    """What an analysis function receives."""

    hyp: str
    cell_dirs: list[Path]
    upstream: dict[str, list[dict]]   # result name -> rows of the providing table
    config: dict = field(default_factory=dict)  # the hypothesis's section of the workflow config
    notes: list[str] = field(default_factory=list)  # one-line findings the runner logs and keeps in verdict.json
    _rows: list[dict] | None = None

    @property
    def rows(self) -> list[dict]:
        """One flat row per cell (kvharness.analysis.cells.cell_row), computed once."""
        if self._rows is None:
            from kvharness.analysis.cells import cell_rows

            self._rows = cell_rows(self.cell_dirs)
        return self._rows


@dataclass
class Result:
    """What an analysis function returns: table rows by table name, figure writers by figure name."""

    tables: dict[str, list[dict]]
    figures: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # anything the verdict and gates need


@dataclass(frozen=True)
class Hypothesis:
    id: str
    question: str
    analyze: Callable[[Context], Result]
    tables: Sequence[Table]
    figures: Sequence[Figure] = ()
    verdict: Callable[[Result], str] = lambda result: ""
    gates: Callable[[Result], list[Gate]] = lambda result: []
    needs: Sequence[str] = ()                 # upstream result names
    provides: dict[str, str] = field(default_factory=dict)  # result name -> one of this hypothesis's tables
    how_to_read: str = ""
    #: gate-name prefixes the whole verdict depends on (kvharness.analysis.gates.gate_sentence): None = the
    #: common quality gates (gates.QUALITY_GATES); () = none, the verdict function gates its own sentences
    #: itself, with ``gates.gate_sentence(sentence, result.facts["gates"], prefixes)``
    verdict_gates: Sequence[str] | None = None
    module: str = ""                          # filled by register(): the declaring module's file

    def outputs(self, results_dir: str = "results") -> dict[str, str]:
        """Output name -> path, as the generated rule declares them."""
        out = {t.name: f"{results_dir}/{self.id}/{t.name}.csv" for t in self.tables}
        out.update({f.name: f"{results_dir}/{self.id}/{f.name}.png" for f in self.figures})
        out[POINTS] = f"{results_dir}/{self.id}/{POINTS}.csv"  # written by the runner for every hypothesis
        out["verdict"] = f"{results_dir}/{self.id}/verdict.json"
        return out


_REGISTRY: dict[str, Hypothesis] = {}
_LOADED = False


class RegistryError(ValueError):
    """A hypothesis declaration that cannot be used; one line."""


def register(h: Hypothesis) -> Hypothesis:
    """Declare a hypothesis (call at module level of its analysis module)."""
    import inspect

    frame = inspect.stack()[1]
    module_file = str(Path(frame.filename).resolve())
    names = [t.name for t in h.tables] + [f.name for f in h.figures]
    if len(set(names)) != len(names) or "verdict" in names or POINTS in names:
        raise RegistryError(f"{h.id}: output names must be unique and not 'verdict' or '{POINTS}' ({names})")
    for result, table in h.provides.items():
        if table not in {t.name for t in h.tables}:
            raise RegistryError(f"{h.id}: provides {result!r} from unknown table {table!r}")
    existing = _REGISTRY.get(h.id)
    if existing is not None and existing.module != module_file:
        raise RegistryError(f"hypothesis {h.id} declared twice ({existing.module} and {module_file})")
    declared = Hypothesis(**{**h.__dict__, "module": module_file})
    _REGISTRY[h.id] = declared
    return declared


def load_builtin() -> None:
    """Import every ``kvharness.analysis.h*`` module (each registers its hypothesis)."""
    global _LOADED
    if _LOADED:
        return
    import kvharness.analysis as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("h") and info.name[1:2].isdigit():
            importlib.import_module(f"kvharness.analysis.{info.name}")
    _LOADED = True


def load_module_file(path: str | Path) -> None:
    """Import a hypothesis module given as a file (the config's ``hypothesis_modules``)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise RegistryError(f"hypothesis_modules: {path}: no such file")
    name = f"kvharness_user_hypotheses_{abs(hash(str(path)))}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def load(extra_modules: Sequence[str | Path] = ()) -> dict[str, Hypothesis]:
    load_builtin()
    for path in extra_modules:
        load_module_file(path)
    return dict(_REGISTRY)


def get(hyp: str) -> Hypothesis:
    load_builtin()
    try:
        return _REGISTRY[hyp]
    except KeyError:
        raise RegistryError(
            f"hypotheses.{hyp}: no analysis is registered for {hyp} (registered: {', '.join(sorted(_REGISTRY))})"
        ) from None


def ids() -> list[str]:
    load_builtin()
    return sorted(_REGISTRY, key=_hyp_sort_key)


def _hyp_sort_key(hyp: str):
    digits = "".join(ch for ch in hyp[1:] if ch.isdigit())
    return (int(digits or 0), hyp)


def provider(result: str, present: Sequence[str]) -> tuple[str, str]:
    """(hypothesis id, table name) providing ``result`` among the hypotheses ``present`` in the config."""
    load_builtin()
    found = [(h.id, h.provides[result]) for h in _REGISTRY.values() if result in h.provides and h.id in present]
    if not found:
        known = sorted({r for h in _REGISTRY.values() for r in h.provides})
        raise RegistryError(f"no hypothesis in the config provides result {result!r} (results known: {', '.join(known)})")
    if len(found) > 1:
        raise RegistryError(f"result {result!r} is provided by several hypotheses: {', '.join(h for h, _ in found)}")
    return found[0]


def result_path(result: str, present: Sequence[str], results_dir: str = "results") -> str:
    hyp, table = provider(result, present)
    return f"{results_dir}/{hyp}/{table}.csv"


# ---------------------------------------------------------------------------------- code closure


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "kvharness":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def code_closure(module_file: str | Path) -> list[str]:
    """Every file of the ``kvharness`` package that ``module_file`` imports, transitively (itself included).

    Function-level imports count too (the AST is walked, nothing is executed), so a rule's code inputs
    are exactly the library code its analysis can run.
    """
    start = Path(module_file).resolve()
    seen: dict[Path, None] = {}
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = None
        try:
            rel = path.relative_to(PACKAGE_ROOT)
            package = ".".join(("kvharness", *rel.parent.parts))
        except ValueError:
            package = "kvharness"
        for name in _imports(path, package):
            target = _module_file(name)
            if target is not None and target not in seen:
                todo.append(target)
            # importing a submodule also runs its package's __init__
            parts = name.split(".")
            for i in range(2, len(parts)):
                init = _module_file(".".join(parts[:i]))
                if init is not None and init not in seen:
                    todo.append(init)
    return sorted(str(p) for p in seen)

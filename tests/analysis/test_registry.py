"""The hypothesis registry: declarations, upstream results by name, code closure."""

from pathlib import Path

import pytest

from kvharness.analysis import registry
from kvharness.analysis.registry import Hypothesis, RegistryError, Table, code_closure, register

PKG = Path(registry.__file__).resolve().parents[1]


def test_builtin_hypotheses_are_registered_with_their_outputs():
    assert {"H0", "H7", "H8"} <= set(registry.ids())
    h0 = registry.get("H0")
    assert h0.outputs() == {"summary": "results/H0/summary.csv", "uwork": "results/H0/uwork.csv",
                            "latency": "results/H0/latency.png", "points": "results/H0/points.csv",
                            "verdict": "results/H0/verdict.json"}
    assert registry.get("H8").needs == ("uwork",)


def test_upstream_results_resolve_by_name_among_present_hypotheses():
    assert registry.result_path("uwork", ["H0", "H8"]) == "results/H0/uwork.csv"
    with pytest.raises(RegistryError, match="no hypothesis in the config provides result 'uwork'"):
        registry.provider("uwork", ["H8"])


def test_unknown_hypothesis_names_the_registered_ones():
    with pytest.raises(RegistryError, match=r"hypotheses.H77: no analysis is registered .*H0"):
        registry.get("H77")


def test_bad_declarations_are_refused():
    with pytest.raises(RegistryError, match="output names must be unique"):
        register(Hypothesis(id="H990", question="?", analyze=lambda c: None,
                            tables=(Table("summary", []), Table("summary", []))))
    with pytest.raises(RegistryError, match="provides 'x' from unknown table 'nope'"):
        register(Hypothesis(id="H991", question="?", analyze=lambda c: None, tables=(Table("summary", []),),
                            provides={"x": "nope"}))


def test_code_closure_follows_imports_inside_the_package_only():
    files = {str(Path(p).relative_to(PKG)) for p in code_closure(registry.get("H8").module)}
    # h8 imports analysis.hero inside a function: function-level imports count
    assert {"analysis/h8.py", "analysis/registry.py", "analysis/hero.py", "stats.py", "analysis/cells.py"} <= files
    assert not any(f.startswith(("sim/engine", "sim/server", "loadgen/")) for f in files)  # nothing it cannot run
    h0 = {str(Path(p).relative_to(PKG)) for p in code_closure(registry.get("H0").module)}
    assert "analysis/knee.py" in h0 and "analysis/hero.py" not in h0

"""An analysis rule's code inputs are its module's import closure plus the runner's (rules/common.smk
`analysis_code`): editing the simulator must re-run no analysis. Before issue 26, H4/H4B/H6/H10 reached
sim/engine.py through bgio -> stacks.launcher -> proxy -> sim.cli -> sim.server."""
from pathlib import Path

from kvharness.analysis import registry
from kvharness.analysis.registry import code_closure

PKG = Path(registry.__file__).resolve().parents[1]
RUNNER = PKG / "analysis" / "run.py"  # what rules/common.smk's RUNNER names
SIMULATOR = {"sim/engine.py", "sim/server.py", "sim/kvcache.py", "sim/tier2.py", "sim/cli.py", "sim/exporters.py"}


def test_no_analysis_rule_has_the_simulator_among_its_code_inputs():
    registry.load_builtin()
    assert len(registry.ids()) >= 10
    for hyp in registry.ids():
        files = set(code_closure(registry.get(hyp).module)) | set(code_closure(RUNNER))
        rel = {str(Path(f).relative_to(PKG)) for f in files}
        assert "analysis/registry.py" in rel  # the closure is real
        assert not rel & SIMULATOR, f"{hyp}: editing {sorted(rel & SIMULATOR)} would re-run its analysis"

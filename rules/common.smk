# Helpers shared by every rule module: config validation, cell expansion, wildcard constraints.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kvharness.config import ConfigError, cell_index, validate_config  # noqa: E402

try:
    __import__("kvharness.config").config.check_config_files(workflow.configfiles)  # strict re-read: duplicate keys, emptied sections
    CFG = validate_config(config)
    CELLS = cell_index(CFG)
except ConfigError as _exc:
    sys.stderr.write(f"{_exc}\n")
    sys.exit(1)

def cells_of(hyp):
    """Cell ids of one hypothesis, in config order."""
    return [cell for (h, cell) in CELLS if h == hyp]


def cell_dirs(hyp):
    return [f"results/{hyp}/cells/{cell}" for cell in cells_of(hyp)]


def cell_spec(wildcards):
    """The resolved cell spec (plain builtins, so Snakemake fingerprints every value)."""
    return CELLS[(wildcards.hyp, wildcards.cell)]


def cell_inputs(wildcards):
    """A cell measured at U_work needs H0's cells (U_work is computed from them at run time)."""
    spec = cell_spec(wildcards)
    if spec["load"].get("concurrency") == "uwork" and wildcards.hyp != "H0":
        return {"h0_cells": cell_dirs("H0")}
    return {}


def analysis_code(*modules):
    """Library modules an analysis depends on: editing them reruns that analysis, never a cell."""
    return [f"{workflow.basedir}/src/kvharness/{m}.py" for m in modules]
